#!/usr/bin/env bash
# Installs every build and test dependency of compress from Debian's packages.
# Idempotent: does nothing (and prints nothing) when all packages are present.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config
  libprotobuf-dev protobuf-compiler libonnx-dev
  libeigen3-dev libabsl-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev nlohmann-json3-dev libyaml-cpp-dev libpcre2-dev libutf8proc-dev libxxhash-dev
  libonnx-testdata
  libsentencepiece-dev sentencepiece
  libopenmpi-dev openmpi-bin
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js is needed only by the ONNX Runtime cross-checks; any install of node works.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Python 3 (standard library only) runs the compressed-tensors conformance check.
command -v python3 >/dev/null 2>&1 || missing+=(python3)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
