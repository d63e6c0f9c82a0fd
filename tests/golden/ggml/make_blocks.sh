#!/usr/bin/env bash
# Regenerates blocks.json from ggml itself: clones llama.cpp's source from the npm package
# node-llama-cpp (build/llamacpp, installed by ctest's llamacpp tests), builds ggml and runs
# make_blocks.cc against it. Usage: tests/golden/ggml/make_blocks.sh [LLAMA_CPP_CHECKOUT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:-}
if [ -z "$src" ]; then
  src=$(mktemp -d)/llama.cpp
  git clone -q "$here/../../../build/llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$src"
fi
[ -f "$src/build/ggml/src/libggml.a" ] ||
  { cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF >/dev/null &&
    cmake --build "$src/build" -j"$(nproc)" --target ggml >/dev/null; }
out=$(mktemp -d)
g++ -O2 -std=c++17 "$here/make_blocks.cc" -I"$src/ggml/include" \
  "$src/build/ggml/src/libggml.a" "$src/build/ggml/src/libggml-cpu.a" "$src/build/ggml/src/libggml-base.a" \
  -fopenmp -lpthread -lm -o "$out/make_blocks"
"$out/make_blocks" > "$here/blocks.json"
echo "wrote $here/blocks.json ($(git -C "$src" log --oneline -1 | cut -c1-12))"
