#!/usr/bin/env bash
# Each text-decoder family of tests/golden/families (tiny random checkpoints transformers wrote,
# with its logits for fixed ids in golden.safetensors) written as GGUF by compress and back to a
# safetensors folder: OUT_DIR/FAMILY holds that folder and the golden, for
# check_family_logits.py on the device (transformers loads the folder; its logits must be the
# golden's). The GGUF writer needs a tokenizer: pycode-tiny's cut to the families' 96 ids.
# Families whose GGUF compress refuses are listed in OUT_DIR/refused.txt with the reason.
# usage: make_family_outputs.sh COMPRESS OUT_DIR [SHARED_DIR]
set -euo pipefail
compress=$(realpath "$1") out=$2 shared=$(realpath "${3:-../shared}")
here=$(dirname "$(realpath "$0")")
families=$here/../../golden/families
mkdir -p "$out" && out=$(realpath "$out")
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
node -e '
const fs = require("fs");
const t = JSON.parse(fs.readFileSync(process.argv[1]));
const keep = {};
for (const [k, i] of Object.entries(t.model.vocab)) if (i < 96) keep[k] = i;
t.model.vocab = keep;
t.model.merges = t.model.merges.filter(m => { const [a, b] = Array.isArray(m) ? m : m.split(" ");
  return a in keep && b in keep && (a + b) in keep; });
t.added_tokens = t.added_tokens.filter(a => a.id < 96);
fs.writeFileSync(process.argv[2], JSON.stringify(t));' "$shared/models/pycode-tiny/tokenizer.json" "$work/tokenizer.json"
: > "$out/refused.txt"
for fam in llama mistral qwen2 qwen2_yarn qwen3 gemma gemma2 gemma3_text phi3 phi3_longrope gpt2 mixtral qwen2_moe qwen3_moe; do
  src=$work/$fam
  cp -r "$families/$fam" "$src"
  cp "$work/tokenizer.json" "$src/"
  if [ "$fam" = gemma2 ] || [ "$fam" = gemma3_text ]; then
    # llama.cpp's Gemma graphs scale scores by head_dim^-1/2 (below the 27B block counts); the
    # fixture's query_pre_attn_scalar is set to its head_dim, and transformers' logits for this
    # edited source (OUT_DIR/FAMILY/source) are the reference instead of the golden ones.
    # (a text replacement: JSON.stringify would write the config's floats such as 3.0 as 3,
    # which transformers 5's typed config fields refuse)
    node -e 'const fs = require("fs"); const f = process.argv[1] + "/config.json";
      const text = fs.readFileSync(f, "utf8"); const c = JSON.parse(text); const t = c.text_config || c;
      const hd = t.head_dim || t.hidden_size / t.num_attention_heads;
      fs.writeFileSync(f, text.replace(/("query_pre_attn_scalar":\s*)[0-9.]+/, `$1${hd}`));' "$src"
  fi
  if ! err=$("$compress" run "$src" -q -p 'cast{dtype=f32}' -o "$work/$fam.gguf" 2>&1); then
    echo "$fam: $err" >> "$out/refused.txt"
    continue
  fi
  "$compress" run "$work/$fam.gguf" -q -p 'cast{dtype=f32}' -o "$out/$fam"
  cp "$families/$fam/golden.safetensors" "$out/$fam/"
  if [ "$fam" = gemma2 ] || [ "$fam" = gemma3_text ]; then
    mkdir -p "$out/$fam/source" && cp "$src"/config.json "$src"/model.safetensors "$out/$fam/source/"
  fi
done
cat "$out/refused.txt"
