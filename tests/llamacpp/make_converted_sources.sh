#!/usr/bin/env bash
# The checkpoints behind tests/golden/llamacpp_converted (files llama.cpp's converter wrote from
# them on the device): random-weight models of nine families made by make_family_model.mjs with
# SentencePiece tokenizers trained by spm_train (Llama's settings; Gemma's without the dummy
# prefix), vocabulary 3000. The generator is deterministic, so these are the converter's inputs.
# usage: make_converted_sources.sh GOLDEN_DIR OUT_DIR
set -euo pipefail
golden=$(realpath "$1")
out=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
make() {  # make NAME FAMILY TOKENIZER_MODEL TOKENIZER_CLASS [OPTIONS...]
  local name=$1 fam=$2 spm=$3 cls=$4
  shift 4
  rm -rf "${out:?}/$name"
  node "$here/make_family_model.mjs" "$fam" "$out/$name" "$golden/$spm" vocab=3000 "$@"
  printf '{"tokenizer_class": "%s", "add_bos_token": true, "add_eos_token": false}\n' "$cls" >"$out/$name/tokenizer_config.json"
}
for fam in llama qwen2 qwen3 mixtral; do make "spm-$fam" "$fam" spm_llama.model LlamaTokenizer; done
make spm-p3 phi3 spm_llama.model LlamaTokenizer  # no "phi3" in the name (llama.cpp's Phi-3 token rules)
make spm-llama-rope3 llama spm_llama.model LlamaTokenizer rope=llama3
for fam in gemma gemma2 gemma3_text; do make "spm-$fam" "$fam" spm_noprefix.model GemmaTokenizer; done
