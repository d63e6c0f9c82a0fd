#!/usr/bin/env bash
# Writes the compressed-tensors forms compress produces for pycode-tiny into OUT_DIR (for
# check_loads.py on the device machine), with compress's own perplexity of each on the same
# token windows (the first 1024 tokens of samples/eval/pycode-sample.txt, windows of 128):
# OUT_DIR/compress_ppl.json.
# usage: tests/compressed_tensors/make_outputs.sh COMPRESS OUT_DIR [SHARED_DIR]
set -euo pipefail
compress=$1 out=$2 shared=${3:-../shared}
model=$shared/models/pycode-tiny
text=samples/eval/pycode-sample.txt
mkdir -p "$out"
declare -A pipelines=(
  [w8a8_int8_dynamic]='quantize-w8a8'
  [w8a8_fp8_static]='quantize-w8a8{type=fp8,activations=static}'
  [w4a16_pack]='quantize-int{bits=4,group-size=32}'
  [w8a16_int8]='quantize-int8'
  [kv_fp8_tensor]='quantize-int8,quantize-kv{type=fp8,k=tensor,v=tensor}'
  [sparse24_bf16]='prune-nm{n=2,m=4}'
  [sparse24_w8a16]='prune-nm{n=2,m=4},quantize-int8'
  [sparse24_fp8]='prune-nm{n=2,m=4},quantize-w8a8{type=fp8}'
  [sparse_bitmask_bf16]='prune-magnitude{sparsity=0.6}'
  [sparse_bitmask_w8a16]='prune-magnitude{sparsity=0.6},quantize-int8'
)
"$compress" eval "$model" --text "$text" --ctx 128 --max-tokens 1024 --json -q > "$out/dense.json"
echo "{" > "$out/compress_ppl.json"
first=1
for name in "${!pipelines[@]}"; do
  extra=()
  [[ $name == sparse24_* ]] && extra=(--sparse-storage 2:4)
  [[ $name == sparse_bitmask_* ]] && extra=(--sparse-storage bitmask)
  "$compress" run "$model" -q --force -p "${pipelines[$name]}" -o "$out/$name" --calibration "$text" \
    --calib-samples 8 --calib-seqlen 128 "${extra[@]}"
  ppl=$("$compress" eval "$out/$name" --text "$text" --ctx 128 --max-tokens 1024 --json -q |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
  [ $first = 1 ] || echo "," >> "$out/compress_ppl.json"
  first=0
  printf '"%s": %s' "$name" "$ppl" >> "$out/compress_ppl.json"
done
echo "}" >> "$out/compress_ppl.json"
