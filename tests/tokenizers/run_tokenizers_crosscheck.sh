#!/usr/bin/env bash
# Differential test of compress's tokenizer against Hugging Face tokenizers 0.23.2 (the Rust
# library through its npm Node binding): for every tokenizer.json fetch_tokenizers.sh brings
# (Llama-2, Llama-3, Qwen2.5, Qwen3, Gemma 3, Mistral Nemo, GPT-4o, GPT-4, GPT-2, DeepSeek-V3 and
# the variant forms) and the repository's own, COUNT texts from make_texts.js (many scripts,
# every kind of whitespace, digits, emoji, the tokenizer's added tokens with whitespace around
# them, slices of pycode-dev.txt) and the whole of pycode-dev.txt must give the same ids, with
# and without the post-processor's special tokens; and again with the tokenizer written into GGUF
# metadata and read back (what llama.cpp and a bare .gguf get), except where GGUF cannot say the
# tokenizer: a Unicode normalizer (Qwen's NFC), added tokens' whitespace rules (lstrip, rstrip,
# single_word) or a Metaspace pre-tokenizer's prefix rules, which llama.cpp does not apply either
# (compress warns when it writes them).
# usage: run_tokenizers_crosscheck.sh TOKENIZE_IDS WORK_DIR SHARED_DIR [COUNT] [SEED]
set -euo pipefail
bin=$(realpath "$1")
mkdir -p "$2"
work=$(realpath "$2")
shared=$(realpath -m "$3")
count=${4:-400}
seed=${5:-20261207}
here=$(cd "$(dirname "$0")" && pwd)
"$here/install_hf_tokenizers.sh" "$work"
cp "$here/make_texts.js" "$here/compare.js" "$work/"
"$here/../runtime/fetch_tokenizers.sh" "$work/files"
text_file=""
[ -f "$shared/data/pycode-dev.txt" ] && text_file="$shared/data/pycode-dev.txt"
files=("$work"/files/*.json "$here/../../samples/pycode-tiny/tokenizer.json")
passed=0 failed=0
compare() {  # compare NAME OURS_JSON [SKIP_JSON] (against $t.theirs.json)
  local result
  if result=$(cd "$work" && node compare.js "$t.texts.json" "$2" "$t.theirs.json" ${3:+"$3"}); then
    passed=$((passed + 1))
    echo "ok   $1: $result"
  else
    failed=$((failed + 1))
    echo "FAIL $1:"
    echo "$result"
  fi
}
for f in "${files[@]}"; do
  name=$(basename "$(dirname "$f")")
  [ "$name" = files ] && name=$(basename "$f" .json)
  t="$work/$name"
  (cd "$work" && node make_texts.js "$f" "$seed" "$count" "$t.texts.json" $text_file)
  "$bin" "$f" "$t.texts.json" "$t.ours.json"
  (cd "$work" && node hf_ids.js "$f" "$t.texts.json" "$t.theirs.json")
  compare "$name" "$t.ours.json"
  gguf_says_it=$(node -e 'const t = JSON.parse(require("fs").readFileSync(process.argv[1]));
    const norm = JSON.stringify(t.normalizer || null);
    const rules = (t.added_tokens || []).some((a) => a.lstrip || a.rstrip || a.single_word);
    const metaspace = (t.pre_tokenizer || {}).type === "Metaspace";
    console.log(/"NF[KC]*[CD]"/.test(norm) || rules || metaspace ? "no" : "yes");' "$f")
  if [ "$gguf_says_it" = yes ]; then
    # A SentencePiece vocabulary's unknown piece that tokenizer.json does not list as an added
    # token (InternLM2's "<unk>") is still special in GGUF: llama.cpp matches unknown-type tokens
    # in the text, and compress reading the GGUF does as llama.cpp does. Texts holding it are left out.
    node -e 'const t = JSON.parse(require("fs").readFileSync(process.argv[1]));
      const unk = (t.model || {}).unk_token, added = (t.added_tokens || []).map((a) => a.content);
      console.log(JSON.stringify(unk && t.model.type === "BPE" && t.model.byte_fallback && !added.includes(unk) ? [unk] : []));' \
      "$f" > "$t.gguf-skip.json"
    "$bin" "$f" "$t.texts.json" "$t.gguf.json" gguf
    compare "$name through GGUF" "$t.gguf.json" "$t.gguf-skip.json"
  fi
done
echo "$passed equal, $failed differ"
[ "$failed" = 0 ]
