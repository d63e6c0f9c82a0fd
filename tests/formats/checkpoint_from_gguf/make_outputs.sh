#!/usr/bin/env bash
# Checkpoints written from GGUF files, for check_transformers.py on the device machine: each
# tokenizer of tests/runtime/run_sp_tokenizer_tests.sh (Llama-2, Llama-3, Gemma 3, Qwen2.5;
# npm @lenml/tokenizer-* 3.7.2) on pycode-tiny's weights with the vocabulary resized
# (tests/llamacpp/make_vocab_model.mjs), written as GGUF and back to a safetensors folder, and
# pycode-tiny itself (its own byte-level BPE). OUT_DIR/NAME/orig holds the tokenizer files
# the GGUF was made from; OUT_DIR/NAME/ck the tokenizer files compress wrote beside the
# checkpoint (OUT_DIR/pycode/ck keeps the whole checkpoint, OUT_DIR/pycode/src the original).
# usage: make_outputs.sh COMPRESS TOKENIZER_DIR OUT_DIR [SHARED_DIR]
set -euo pipefail
compress=$(realpath "$1") tokdir=$(realpath "$2") out=$3 shared=$(realpath "${4:-../shared}")
here=$(dirname "$(realpath "$0")")
mkdir -p "$out" && out=$(realpath "$out")
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
tiny=$shared/models/pycode-tiny
# add_bos_token as each model's tokenizer_config.json says (Llama-2 and Gemma add BOS; the
# Llama-3 tokenizer.json of this package has no BOS post-processor, Qwen adds none).
declare -A bos=([llama2]=true [llama3]=false [gemma3]=true [qwen2_5]=false)
# config.json's bos / eos ids as the models of these tokenizers have them.
declare -A ids=([llama2]='1 2' [llama3]='128000 128001' [gemma3]='2 1' [qwen2_5]='151643 151643')
for name in llama2 llama3 gemma3 qwen2_5; do
  src=$work/$name-src
  vocab=$(node -e 'const t=require(process.argv[1]);let n=0;for(const v of Object.values(t.model.vocab))n=Math.max(n,v+1);for(const a of t.added_tokens)n=Math.max(n,a.id+1);console.log(n)' "$tokdir/$name.json")
  node "$here/../../llamacpp/make_vocab_model.mjs" "$tiny" "$src" "$vocab"
  read -r b e <<< "${ids[$name]}"
  node -e 'const fs=require("fs");const c=JSON.parse(fs.readFileSync(process.argv[1]));c.bos_token_id=+process.argv[2];c.eos_token_id=+process.argv[3];fs.writeFileSync(process.argv[1],JSON.stringify(c,null,2))' "$src/config.json" "$b" "$e"
  cp "$tokdir/$name.json" "$src/tokenizer.json"
  echo "{\"add_bos_token\": ${bos[$name]}}" > "$src/tokenizer_config.json"
  "$compress" run "$src" -q -p 'cast{dtype=f16}' -o "$work/$name.gguf"
  "$compress" run "$work/$name.gguf" -q -p 'cast{dtype=f32}' -o "$work/$name-ck"
  mkdir -p "$out/$name/orig" "$out/$name/ck"
  cp "$src/tokenizer.json" "$src/tokenizer_config.json" "$out/$name/orig/"
  cp "$work/$name-ck/tokenizer.json" "$work/$name-ck/tokenizer_config.json" "$work/$name-ck/config.json" "$out/$name/ck/"
done
mkdir -p "$out/pycode"
cp -r "$tiny" "$out/pycode/src"
"$compress" run "$tiny" -q -p 'cast{dtype=f32}' -o "$work/pycode.gguf"
"$compress" run "$work/pycode.gguf" -q -p 'cast{dtype=f32}' -o "$out/pycode/ck"
