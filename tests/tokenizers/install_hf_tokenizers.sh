#!/usr/bin/env bash
# Installs Hugging Face tokenizers (npm's Node binding of the Rust library, the version
# package-lock.json pins) into WORK_DIR once, with hf_ids.js beside it.
# usage: install_hf_tokenizers.sh WORK_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$1/node_modules/tokenizers/package.json" ]; then
  cp "$here/package.json" "$here/package-lock.json" "$1/"
  (cd "$1" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
cp "$here/hf_ids.js" "$1/"
