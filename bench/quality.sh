#!/usr/bin/env bash
# Accuracy of quantization methods on pycode-llama, written to stdout as a Markdown table.
# Calibration windows come from the first half of ../shared/data/pycode-dev.txt, perplexity
# is measured on the first EVAL_TOKENS tokens of the second half (split at a document
# boundary), so calibration never sees evaluation text.
# usage: bench/quality.sh [EVAL_TOKENS [PIPELINE...]]   (from the project root after scripts/build.sh)
# CALIB_ARGS adds calibration options to every run, e.g. CALIB_ARGS='--calib-samples 32'.
# Without pipelines it runs the quantization set below.
set -euo pipefail
eval_tokens=${1:-65536}
shift || true
pipelines=("$@")
if [ ${#pipelines[@]} -eq 0 ]; then
  pipelines=('quantize-int8'
             'quantize-int{bits=4,group-size=128}' 'quantize-gptq{bits=4,group-size=128}'
             'quantize-int{bits=3,group-size=128}' 'quantize-gptq{bits=3,group-size=128}'
             'quantize-int{bits=4,group-size=0}' 'quantize-gptq{bits=4,group-size=0}')
fi
compress=${COMPRESS:-build/cli/compress}  # a copy keeps long runs safe from rebuilds
model=../shared/models/pycode-llama
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/split_dev_text.py "$work"
echo "| pipeline | bits/param (file) | perplexity | change vs bf16 | pass seconds |"
echo "|---|---|---|---|---|"
for p in "${pipelines[@]}"; do
  "$compress" run "$model" -q --force -p "$p" -o "$work/out" --calibration "$work/calib.txt" ${CALIB_ARGS:-} \
    --eval-text "$work/eval.txt" --eval-tokens "$eval_tokens" --report "$work/r.json"
  python3 - "$work/r.json" "$p" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); a = r["accuracy"]; o = r["output"]
st = r['passes'][0]['stats']
extra = ""
if 'sublayers_removed' in st:  # FinerCut: what went, and how much of the blocks' parameters
    extra = f" removed {int(st['sublayers_removed'])} sublayers, {100 * st['block_parameter_fraction_removed']:.1f}% of block parameters: " + "; ".join(n for n in r['passes'][0]['notes'] if n.startswith('step'))
print(f"| `{sys.argv[2]}` | {o['bits_per_parameter']:.2f} | {a['output']:.4f} | {a['change_percent']:+.2f}% | {r['passes'][0]['seconds']:.1f} |{extra}")
if True:  # the input row is the same for every run
    print(f"| (bf16 input) | {r['input']['bits_per_parameter']:.2f} | {a['input']:.4f} | | |", file=sys.stderr)
PY
done
