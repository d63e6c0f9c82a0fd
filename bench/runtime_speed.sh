#!/bin/bash
# compress eval beside llama.cpp's llama-perplexity on the same GGUF files, same text, same
# context (512), same thread count, in one run (issue #22, item 2).
# usage: bench/runtime_speed.sh MODEL_DIR CHUNKS [TYPES]   (after scripts/build.sh and
#        bench/kquants_llamacpp.sh once, which builds llama.cpp's tools)
# MODEL_DIR: a safetensors checkpoint with tokenizer.json. TYPES (default "f32 bf16 q8 q4"):
# the GGUF files compress writes from it: cast{dtype=f32|f16|bf16}, and quantize-int{bits=8|4,
# group-size=32,scale-dtype=f16} (GGUF Q8_0 / Q4_0 for the linear layers, embedding and head
# bf16), or q4_k_m / q6_k / q2_k / iq4_xs: quantize-gguf{type=...} (llama-quantize's mixes,
# every tensor a block type), or mxfp4: quantize-mxfp4 (GGUF MXFP4 linear layers). Times are the evaluation only (no load, no tokenization): llama-perplexity's wall time
# after its "calculating perplexity" log line (so its exit is counted), compress's --json "seconds". Each pair is
# measured back to back, idle and (LOAD=1) beside two busy loops on the cores. THREADS
# (default 2) threads for both.
set -euo pipefail
model=${1:?usage: bench/runtime_speed.sh MODEL_DIR CHUNKS [TYPES]}
chunks=${2:?chunks of 512 tokens}
read -r -a types <<<"${3:-f32 bf16 q8 q4}"
threads=${THREADS:-2}
compress=${COMPRESS:-build/cli/compress}
bin=build/llamacpp-src/build/bin
[ -x "$bin/llama-perplexity" ] || { echo "no $bin/llama-perplexity: run bench/kquants_llamacpp.sh once" >&2; exit 1; }
text=$(realpath ../shared/data/pycode-dev.txt)
work=$(mktemp -d /tmp/runtime-speed.XXXXXX)
trap 'rm -rf "$work"; pkill -f "while :; do :; done" || true' EXIT
cp "$model/tokenizer.json" "$work/"
declare -A pipeline=([f32]='cast{dtype=f32}' [f16]='cast{dtype=f16}' [bf16]='cast{dtype=bf16}'
                     [q8]='quantize-int{bits=8,group-size=32,scale-dtype=f16}'
                     [q4]='quantize-int{bits=4,group-size=32,scale-dtype=f16}'
                     [q4_k_m]='quantize-gguf{type=Q4_K_M}' [q6_k]='quantize-gguf{type=Q6_K}'
                     [q2_k]='quantize-gguf{type=Q2_K}' [iq4_xs]='quantize-gguf{type=IQ4_XS}'
                     [mxfp4]='quantize-mxfp4')
llama_secs() {  # gguf -> seconds of evaluation: wall time after llama-perplexity's "calculating" line
  # (its log is written by a thread that may drop the last lines at exit, so the end is the wall clock)
  /usr/bin/time -f %e -o "$work/wall" env LD_LIBRARY_PATH=$bin "$bin/llama-perplexity" -m "$1" -f "$text" \
    -c 512 -b 512 --chunks "$chunks" -t "$threads" >"$work/llama.log" 2>&1 || { tail -3 "$work/llama.log" >&2; exit 1; }
  awk -v wall="$(tail -1 "$work/wall")" '
      function t(s,  p) { split(s, p, "."); return p[1] * 60 + p[2] + p[3] / 1e3 + p[4] / 1e6 }
      /calculating perplexity/ { print wall - t($1) }' "$work/llama.log"
}
ours_secs() {  # gguf matmul -> seconds
  OMP_NUM_THREADS=$threads "$compress" eval "$1" --text "$text" --max-tokens $((512 * chunks)) --ctx 512 \
    -q --json --matmul "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])'
}
busy() { for _ in 1 2; do (timeout 600 sh -c 'while :; do :; done' &); done; sleep 0.3; }
calm() { pkill -f "while :; do :; done" || true; }
printf '| weights | load | llama-perplexity s | compress f32 s | compress native s | llama / native | llama / f32 |\n'
printf '|---|---|---|---|---|---|---|\n'
for t in "${types[@]}"; do
  "$compress" run "$model" -q --force -p "${pipeline[$t]}" -o "$work/$t.gguf" 2>/dev/null
  for load in idle ${LOAD:+busy}; do
    [ "$load" = busy ] && busy
    l=$(llama_secs "$work/$t.gguf")
    f=$(ours_secs "$work/$t.gguf" f32)
    n=$(ours_secs "$work/$t.gguf" native)
    [ "$load" = busy ] && calm
    printf '| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n' "$t" "$load" "$l" "$f" "$n" \
      "$(echo "$l / $n" | bc -l)" "$(echo "$l / $f" | bc -l)"
  done
  rm -f "$work/$t.gguf"
done
