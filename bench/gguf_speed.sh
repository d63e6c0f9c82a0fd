#!/bin/bash
# GGUF outputs side by side with llama-quantize, same input, same run (issue #22).
# usage: bench/gguf_speed.sh MODEL_DIR [TYPE...]     (after scripts/build.sh and one ctest run
#        of llamacpp_crosscheck, which installs node-llama-cpp; see bench/kquants_llamacpp.sh)
# MODEL_DIR is a safetensors checkpoint (bench/make_llama DIR 1b makes the generated 1.1B one);
# its bf16 GGUF, written by compress, is llama-quantize's input. Prints seconds (wall) and
# peak RSS of: cp of the input, llama-quantize TYPE, compress quantize-gguf{type=TYPE}, and for
# Q8_0 / Q4_0 the round-to-nearest quantize-int that writes the same block type; and
# quantize-gguf{search=false} (llama-quantize's rounding) with a tensor-by-tensor byte
# comparison against llama-quantize's file (bench/gguf_tensor_diff.py). OLD=path
# to another compress binary adds its quantize-gguf time (before/after in one run).
# IMATRIX=FILE (llama.cpp's importance matrix, e.g. from `compress imatrix`) adds the searched,
# importance-weighted pair: llama-quantize --imatrix FILE and quantize-gguf{imatrix=FILE}.
set -euo pipefail
model=${1:?usage: bench/gguf_speed.sh MODEL_DIR [TYPE...]}
shift
types=("${@:-Q8_0 Q4_0 Q4_K_M}")
read -r -a types <<<"${types[*]}"
compress=${COMPRESS:-build/cli/compress}
bin=build/llamacpp-src/build/bin
[ -x "$bin/llama-quantize" ] || { echo "no $bin/llama-quantize: run bench/kquants_llamacpp.sh once (it builds llama.cpp)" >&2; exit 1; }
work=$(mktemp -d /tmp/gguf-speed.XXXXXX)
trap 'rm -rf "$work"' EXIT
[ -f "$model/tokenizer.json" ] || { echo "$model has no tokenizer.json (GGUF embeds one)" >&2; exit 1; }
"$compress" run "$model" -q -p 'cast{dtype=bf16}' -o "$work/in.gguf" 2>/dev/null
timed() {  # label, command...
  local label=$1
  shift
  sync
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  read -r secs rss <"$work/t"
  printf '%-44s %8.2f s %8.0f MiB\n' "$label" "$secs" "$((rss / 1024))"
}
timed "cp of the safetensors input" cp "$model/model.safetensors" "$work/copy"
rm -f "$work/copy"
for t in "${types[@]}"; do
  timed "llama-quantize $t" "$bin/llama-quantize" "$work/in.gguf" "$work/lq.gguf" "$t" "$(nproc)"
  timed "compress quantize-gguf{type=$t}" "$compress" run "$model" -q -p "quantize-gguf{type=$t}" -o "$work/c.gguf"
  if [ -n "${OLD:-}" ]; then
    timed "  (OLD) quantize-gguf{type=$t}" "$OLD" run "$model" -q -p "quantize-gguf{type=$t}" -o "$work/o.gguf"
    cmp -s "$work/c.gguf" "$work/o.gguf" && echo "  same bytes as OLD" || echo "  bytes differ from OLD"
    rm -f "$work/o.gguf"
  fi
  printf '  sizes: llama-quantize %s, compress %s bytes\n' "$(stat -c %s "$work/lq.gguf")" "$(stat -c %s "$work/c.gguf")"
  # A fresh path, as llama-quantize's (replacing a 0.6-1.2 GB file cost up to a second more).
  mv "$work/c.gguf" "$work/searched.gguf"
  timed "compress quantize-gguf{type=$t,search=false}" "$compress" run "$model" -q \
    -p "quantize-gguf{type=$t,search=false}" -o "$work/c.gguf"
  echo "  tensors vs llama-quantize: $(python3 bench/gguf_tensor_diff.py "$work/c.gguf" "$work/lq.gguf" | tail -1)"
  rm -f "$work/searched.gguf"
  rm -f "$work/lq.gguf" "$work/c.gguf"
  if [ -n "${IMATRIX:-}" ]; then
    timed "llama-quantize --imatrix $t" "$bin/llama-quantize" --imatrix "$IMATRIX" "$work/in.gguf" "$work/lq.gguf" "$t" "$(nproc)"
    timed "compress quantize-gguf{type=$t,imatrix=...}" "$compress" run "$model" -q \
      -p "quantize-gguf{type=$t,imatrix=$IMATRIX}" -o "$work/ci.gguf"
    rm -f "$work/ci.gguf" "$work/lq.gguf"
  fi
  case $t in
    Q8_0) bits=8 ;;
    Q4_0) bits=4 ;;
    *) continue ;;
  esac
  timed "compress quantize-int{bits=$bits,group-size=32,f16} (RTN)" "$compress" run "$model" -q \
    -p "quantize-int{bits=$bits,group-size=32,scale-dtype=f16}" -o "$work/r.gguf"
  rm -f "$work/r.gguf"
done
