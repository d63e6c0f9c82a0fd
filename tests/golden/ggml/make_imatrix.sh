#!/usr/bin/env bash
# Regenerates imatrix-pycode-tiny.gguf and .dat with llama.cpp's own llama-imatrix: pycode-tiny
# written as an f32 GGUF by compress, the first 4 chunks of 128 tokens of
# ../shared/data/pycode-dev.txt (pycode-tiny adds no BOS, so chunk i is tokens 128i..128i+127),
# with an f32 KV cache and flash attention off (llama.cpp's f16 cache and its CPU flash
# attention round the attention values to f16).
# tests/calibrate/imatrix_test.cc checks compress's imatrix reader on both forms and its
# calibration statistics against these sums. Usage:
#   tests/golden/ggml/make_imatrix.sh COMPRESS_BINARY [LLAMA_CPP_CHECKOUT]
# (the checkout: a clone of build/llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
compress=$(realpath "$1")
src=${2:-}
[ -z "$src" ] || src=$(realpath "$src")
shared=$here/../../../../shared
if [ -z "$src" ]; then
  src=$(mktemp -d)/llama.cpp
  git clone -q "$here/../../../build/llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$src"
fi
[ -x "$src/build/bin/llama-imatrix" ] ||
  { cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF >/dev/null &&
    cmake --build "$src/build" -j"$(nproc)" --target llama-imatrix >/dev/null; }
work=$(mktemp -d)
"$compress" run "$shared/models/pycode-tiny" -q -p 'cast{dtype=f32}' -o "$work/tiny-f32.gguf"
for fmt in gguf dat; do
  (cd "$shared/data" && "$src/build/bin/llama-imatrix" -m "$work/tiny-f32.gguf" -f pycode-dev.txt -c 128 --chunks 4 \
    --no-ppl -t 2 -ctk f32 -ctv f32 -fa off --output-format $fmt -o "$work/imatrix.$fmt" >/dev/null 2>&1)
  cp "$work/imatrix.$fmt" "$here/imatrix-pycode-tiny.$fmt"
done
echo "wrote $here/imatrix-pycode-tiny.{gguf,dat} ($(git -C "$src" log --oneline -1 | cut -c1-12))"
