#!/bin/bash
# Data-free passes end to end (load, pass, write safetensors) beside `cp` of the input, one run
# (issue #22). usage: bench/data_free.sh MODEL_DIR   (after scripts/build.sh; bench/make_llama
# DIR 1b makes the generated 1.1B model). Prints wall seconds, CPU, peak RSS and the pass's
# own seconds from the report.
set -euo pipefail
model=${1:?usage: bench/data_free.sh MODEL_DIR}
compress=${COMPRESS:-build/cli/compress}
work=$(mktemp -d /tmp/data-free.XXXXXX)
trap 'rm -rf "$work"' EXIT
sync
/usr/bin/time -f "cp of the input: %e s" cp "$model/model.safetensors" "$work/copy"
rm -f "$work/copy"
for p in 'quantize-int{bits=4,group-size=32,scale-dtype=f16}' 'quantize-int8' 'quantize-nf4' 'quantize-mxfp4' \
  'quantize-fp4{search=false}' 'cast{dtype=f16}'; do
  rm -rf "$work/out"
  sync
  /usr/bin/time -f "%e s %P %M KB" -o "$work/t" "$compress" run "$model" -q -p "$p" -o "$work/out" --report "$work/r.json"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], '|', open(sys.argv[3]).read().strip(), '| pass %.2f s' % r['passes'][0]['seconds'])" \
    "$work/r.json" "$p" "$work/t"
done
