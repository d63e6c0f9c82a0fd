#!/usr/bin/env bash
# Fuzzing: builds the libFuzzer harnesses of tests/fuzz with clang + ASan + UBSan in
# build-fuzz/ and runs each for SECONDS (default 600) on seed corpora taken from the test
# fixtures and ../shared models; findings (crash-*, leak-*, timeout-*) land in
# build-fuzz/findings/HARNESS/. Usage: bench/fuzz.sh [SECONDS] [HARNESS...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(safetensors onnx gguf pipeline tokenizer spm config checkpoint)
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMPRESS_FUZZ=ON \
  -DCOMPRESS_BUILD_TESTS=OFF -DCOMPRESS_NATIVE=OFF >/dev/null
cmake --build build-fuzz --parallel "$(nproc)" --target $(printf 'fuzz_%s ' "${harnesses[@]}")
shared=../shared/models
seeds() {  # seeds HARNESS DIR: copy small fixtures of the harness's kind into DIR (best effort)
  local dir=$2
  set +e +o pipefail
  mkdir -p "$dir"
  case $1 in
    safetensors) find samples "$shared" -name '*.safetensors' -size -4M -exec cp {} "$dir/" \; 2>/dev/null || true ;;
    onnx) find "$shared" -name '*.onnx' -size -4M -exec cp {} "$dir/" \; 2>/dev/null || true
          find /usr/share -path '*onnx*' -name 'model.onnx' -size -64k 2>/dev/null | head -200 |
            while read -r f; do cp "$f" "$dir/$(echo "$f" | md5sum | cut -c1-12).onnx"; done ;;
    gguf) # Q8_0 / MXFP4 and every K-quant mix from ctest's llama.cpp checks, and
          # llama-imatrix's two forms
          # (under 1 MB only: multi-MB inputs hold the harness at a few executions a second)
          find build/llamacpp/models -maxdepth 1 \( -name 'q8_0.gguf' -o -name 'mxfp4.gguf' -o -name 'wide-*.gguf' \) \
            -size -1M -exec cp {} "$dir/" \; 2>/dev/null || true
          cp tests/golden/ggml/imatrix-pycode-tiny.gguf tests/golden/ggml/imatrix-pycode-tiny.dat "$dir/"
          cp tests/fuzz/seeds/*.gguf "$dir/"  # every block type in 262 KB (make_gguf_seed.py)
          cp tests/fuzz/seeds/gguf/*.gguf "$dir/"  # each family, 30-100 KB (make_checkpoint_seeds.py)
          printf 'GGUF\003\000\000\000' >"$dir/min.gguf" ;;
    pipeline) printf 'cast{dtype=f16}' >"$dir/p1"; printf 'quantize-int{bits=4,group-size=32,exclude=[lm_head,*norm*]},cast' >"$dir/p2"
              cp samples/recipes/*.yaml "$dir/" 2>/dev/null || true ;;
    tokenizer) cp samples/pycode-tiny/tokenizer.json tests/fuzz/seeds/tokenizer-*.json "$dir/" ;;
    spm) cp tests/fuzz/seeds/spm/*.model "$dir/" ;;  # spm_train, BPE (user-defined symbols) and unigram
    checkpoint) cp tests/fuzz/seeds/checkpoint/*.bin "$dir/" ;;  # tests/fuzz/make_checkpoint_seeds.py
    config) find samples "$shared" -name 'config.json' -exec sh -c 'cp "$1" "$2/$(echo "$1" | md5sum | cut -c1-12).json"' _ {} "$dir" \; ;;
  esac
  set -e -o pipefail
}
mkdir -p build-fuzz/findings
for h in "${harnesses[@]}"; do
  corpus=build-fuzz/corpus/$h
  seeds "$h" "$corpus"
  mkdir -p "build-fuzz/findings/$h"
  echo "== fuzz_$h for ${secs}s ($(ls "$corpus" | wc -l) seeds)"
  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
    build-fuzz/tests/fuzz/fuzz_$h "$corpus" -max_total_time="$secs" -rss_limit_mb=4096 -max_len=8388608 \
    -timeout=30 -artifact_prefix="build-fuzz/findings/$h/" -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==ERROR|SUMMARY|artifact_prefix)' || true
  echo "findings: $(ls "build-fuzz/findings/$h" | wc -l)"
done
