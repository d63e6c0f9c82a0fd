#!/usr/bin/env bash
# ctest's compressed-tensors conformance check: writes every compressed-tensors form compress
# produces for pycode-tiny (make_outputs.sh) and holds each to the library's schema, tensor
# layout and pack-quantized bit order (check_schema.py, facts from its source; the library itself
# needs pydantic 2, which no registry here offers).
# usage: run_conformance.sh COMPRESS_BINARY WORK_DIR SHARED_DIR
set -euo pipefail
compress=$(realpath "$1")
work=$(realpath -m "$2")
shared=$(realpath -m "$3")
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$shared/models/pycode-tiny/model.safetensors" ]; then
  echo "skipped: $shared/models/pycode-tiny not found"
  exit 77
fi
rm -rf "$work"
"$here/make_outputs.sh" "$compress" "$work" "$shared"
ORIGINAL="$shared/models/pycode-tiny" python3 "$here/check_schema.py" "$compress" \
  $(find "$work" -mindepth 1 -maxdepth 1 -type d | sort)
