#!/usr/bin/env bash
# Quality of each compression method on the small trained checkpoints of
# bench/families/train_small.py: held-out perplexity of input and output (run --eval-text),
# calibration on the training part of the text. Prints one Markdown row per family x method.
# usage: bench/families/quality.sh COMPRESS TRAINED_DIR   (TRAINED_DIR: train_small.py's output
#        plus train.txt, the text before heldout.txt)
# FAMILIES picks the checkpoints (subfolders of TRAINED_DIR); METHODS replaces the method list
# with lines "name|pipeline", e.g. the activation / KV-cache set of docs/results.md.
set -euo pipefail
compress=$1
dir=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${METHODS:-}" ]; then
  mapfile -t methods <<< "$METHODS"
else
methods=(
  "int8|quantize-int8"
  "int4 RTN g64|quantize-int{bits=4,group-size=64}"
  "int4 GPTQ g64|quantize-gptq{bits=4,group-size=64}"
  "SparseGPT 50%|prune-sparsegpt{sparsity=0.5}"
  "Wanda 50%|prune-magnitude{sparsity=0.5,score=wanda}"
  "FinerCut 25%|remove-layers-finercut{ratio=0.25}"
)
fi
echo "| family | method | perplexity before | after | ratio | output size |"
echo "|---|---|---|---|---|---|"
for fam in ${FAMILIES:-qwen3 gemma3_text phi3 qwen3_moe}; do
  for m in "${methods[@]}"; do
    name=${m%%|*}
    pipe=${m#*|}
    out="$work/$fam"
    rm -rf "$out" "$out.json"
    if ! "$compress" run "$dir/$fam" -p "$pipe" -o "$out" --force --quiet --calibration "$dir/train.txt" \
        --calib-samples 64 --calib-seqlen 256 --eval-text "$dir/heldout.txt" --report "$out.json" > "$work/log" 2>&1; then
      echo "| $fam | $name | failed: $(tail -1 "$work/log") | | | |"
      continue
    fi
    node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const a = r.accuracy;
      const mib = (r.output.bytes / 1048576).toFixed(2);
      console.log(`| ${process.argv[2]} | ${process.argv[3]} | ${a.input.toFixed(4)} | ${a.output.toFixed(4)} | ${(a.output / a.input).toFixed(4)} | ${mib} MiB |`);
    ' "$out.json" "$fam" "$name"
  done
done
