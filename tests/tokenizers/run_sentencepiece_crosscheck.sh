#!/usr/bin/env bash
# Differential test of compress's reading of SentencePiece tokenizer.model files (checkpoints
# without a tokenizer.json) against SentencePiece itself: models trained here with spm_train
# (BPE in the forms Llama / Mistral / Gemma use: byte fallback or an unk piece, the space
# prefix or not, digits split, user-defined symbols) on pycode-dev.txt (or the bundled sample
# text) plus many-script texts; then COUNT texts from make_texts.js (scripts, whitespace kinds,
# digits, emoji) and the training text itself
# must give libsentencepiece's ids (spm_ids), with and without BOS; so must Hugging Face tokenizers
# running the tokenizer.json compress converts the model into; and compress again with the
# tokenizer written into GGUF metadata and read back (what llama.cpp gets). A unigram model must be
# refused by name.
# usage: run_sentencepiece_crosscheck.sh TOKENIZE_IDS SPM_IDS SPM_TRAIN WORK_DIR SHARED_DIR [COUNT] [SEED]
set -euo pipefail
ours=$(realpath "$1")
theirs=$(realpath "$2")
spm_train=$3
mkdir -p "$4"
work=$(realpath "$4")
shared=$(realpath -m "$5")
count=${6:-400}
seed=${7:-20261207}
here=$(cd "$(dirname "$0")" && pwd)
# Hugging Face tokenizers (npm's Node binding, as run_tokenizers_crosscheck.sh installs it) runs
# the tokenizer.json compress converts each model into: its own BPE must give SentencePiece's ids.
"$here/install_hf_tokenizers.sh" "$work"
text_file="$shared/data/pycode-dev.txt"
[ -f "$text_file" ] || text_file="$here/../../samples/eval/pycode-sample.txt"

# Training text: the code text and 3,000 many-script texts (so the vocabulary has non-ASCII
# pieces and byte fallback / unk are still needed for rare characters).
echo '{"added_tokens": []}' > "$work/none.json"
(cd "$here" && node make_texts.js "$work/none.json" 7 3000 "$work/train_texts.json")
node -e 'const fs = require("fs"); const t = JSON.parse(fs.readFileSync(process.argv[1]));
  fs.writeFileSync(process.argv[3], fs.readFileSync(process.argv[2], "utf8") + "\n" + t.join("\n"));' \
  "$work/train_texts.json" "$text_file" "$work/corpus.txt"

common=(--input="$work/corpus.txt" --model_type=bpe --vocab_size=3000 --normalization_rule_name=identity
        --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true --max_sentence_length=1000000
        --num_threads=2 --minloglevel=2)
declare -A forms=(
  [llama]="--byte_fallback=true --split_digits=true --character_coverage=0.9995"
  [noprefix]="--byte_fallback=true --split_digits=true --add_dummy_prefix=false --character_coverage=0.9995"
  [unk]="--byte_fallback=false --character_coverage=0.995"
  [userdefined]="--byte_fallback=true --user_defined_symbols=<start_of_turn>,<end_of_turn>,<tab>,==="
)
passed=0 failed=0
check() {  # check NAME OURS_JSON
  local result
  if result=$(cd "$here" && node compare.js "$t.texts.json" "$2" "$t.theirs.json" "$t.skip.json"); then
    passed=$((passed + 1)); echo "ok   $1: $result"
  else
    failed=$((failed + 1)); echo "FAIL $1:"; echo "$result"
  fi
}
for name in llama noprefix unk userdefined; do
  t="$work/$name"
  # shellcheck disable=SC2086
  "$spm_train" "${common[@]}" --model_prefix="$t" ${forms[$name]} >/dev/null 2>&1
  # Texts holding a user-defined symbol are left out: compress reads those symbols as transformers'
  # conversion does (added tokens, split from the raw text before the space marker is prepended
  # to each piece), where SentencePiece matches them inside the escaped text ("a === b": ▁a ▁ ===
  # ▁b there, ▁a ▁ === ▁ ▁b in transformers and compress). So are texts holding the unknown,
  # BOS or EOS piece's text: transformers and llama.cpp (and compress) read those as the token,
  # SentencePiece as characters.
  node -e 'console.log(JSON.stringify(["<unk>", "<s>", "</s>", ...process.argv[1].split(",").filter((x) => x)]))' \
    "$(echo "${forms[$name]}" | sed -n 's/.*--user_defined_symbols=\([^ ]*\).*/\1/p')" > "$t.skip.json"
  (cd "$here" && node make_texts.js "$work/none.json" "$seed" "$count" "$t.texts.json" "$text_file")
  "$theirs" "$t.model" "$t.texts.json" "$t.theirs.json"
  "$ours" "$t.model" "$t.texts.json" "$t.ours.json"
  check "$name" "$t.ours.json"
  "$ours" --dump-json "$t.model" "$t.converted.json"
  (cd "$work" && node hf_ids.js "$t.converted.json" "$t.texts.json" "$t.hf.json")
  check "$name as tokenizer.json in Hugging Face tokenizers" "$t.hf.json"
  if [ "$name" = unk ]; then  # llama.cpp fails on unknown characters without byte pieces: refused
    if msg=$("$ours" "$t.model" "$t.texts.json" "$t.gguf.json" gguf 2>&1); then
      failed=$((failed + 1)); echo "FAIL $name: written to GGUF without byte fallback"
    elif grep -q "needs byte fallback" <<<"$msg"; then
      passed=$((passed + 1)); echo "ok   $name through GGUF refused: $msg"
    else
      failed=$((failed + 1)); echo "FAIL $name through GGUF: $msg"
    fi
    continue
  fi
  "$ours" "$t.model" "$t.texts.json" "$t.gguf.json" gguf
  check "$name through GGUF" "$t.gguf.json"
done
# A unigram model (T5-style) is refused, naming the model type.
"$spm_train" "${common[@]}" --model_type=unigram --model_prefix="$work/unigram" >/dev/null 2>&1
echo '[]' > "$work/empty.json"
if msg=$("$ours" "$work/unigram.model" "$work/empty.json" "$work/unigram.ours.json" 2>&1); then
  failed=$((failed + 1)); echo "FAIL unigram: read as if supported"
elif grep -q "model type is unigram" <<<"$msg"; then
  passed=$((passed + 1)); echo "ok   unigram refused: $msg"
else
  failed=$((failed + 1)); echo "FAIL unigram: $msg"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
