#!/bin/bash
# Data-free passes end to end (load, pass, write safetensors) beside `cp` of the input (issue
# #22). usage: bench/data_free.sh MODEL_DIR [RUNS]   (after scripts/build.sh; bench/make_llama DIR
# 1b|3b makes the generated 1.1B / 2.4B models). Each command runs RUNS times (default 3),
# alternating with `cp`, page cache warm, writeback flushed (sync) before each; prints the best
# wall seconds of each, the pass's own, write and read-back seconds from the report of that run
# (phase_seconds), CPU, peak RSS, and
# the rate as a fraction of cp's (the same bytes read; cp writes as many, the passes as many or
# fewer). cp copies inside the kernel (copy_file_range: one copy per byte); a program that
# converts the bytes must read them into its memory and write them back (two), so the rate of
# `dd bs=64M` (read and write through a user buffer) is printed beside it as the second yardstick.
set -euo pipefail
model=${1:?usage: bench/data_free.sh MODEL_DIR [RUNS]}
runs=${2:-3}
compress=${COMPRESS:-build/cli/compress}
work=$(mktemp -d /tmp/data-free.XXXXXX)
trap 'rm -rf "$work"' EXIT
input=$(du -cb "$model"/*.safetensors | tail -1 | cut -f1)
cat "$model"/*.safetensors > /dev/null
best_cp=
best_dd=
results=()
timed() {  # timed OUT_FILE cmd...: wall seconds into OUT_FILE's first line (GNU time format below)
  local out=$1; shift
  /usr/bin/time -f "%e %P %M" -o "$out" "$@"
}
for p in 'cast{dtype=f16}' 'quantize-int8' 'quantize-int{bits=4,group-size=32,scale-dtype=f16}' 'quantize-nf4' \
  'quantize-mxfp4' 'quantize-fp4{search=false}'; do
  best=
  for r in $(seq "$runs"); do
    rm -f "$work/copy"; sync
    timed "$work/c" cp "$model/model.safetensors" "$work/copy"
    c=$(cut -d' ' -f1 "$work/c")
    if [ -z "$best_cp" ] || (( $(echo "$c < $best_cp" | bc) )); then best_cp=$c; fi
    rm -f "$work/copy"; sync
    timed "$work/c" dd if="$model/model.safetensors" of="$work/copy" bs=64M status=none
    c=$(cut -d' ' -f1 "$work/c")
    if [ -z "$best_dd" ] || (( $(echo "$c < $best_dd" | bc) )); then best_dd=$c; fi
    rm -rf "$work/copy" "$work/out"; sync
    timed "$work/t" "$compress" run "$model" -q -p "$p" -o "$work/out" --report "$work/r.json"
    t=$(cut -d' ' -f1 "$work/t")
    if [ -z "$best" ] || (( $(echo "$t < $best" | bc) )); then
      best=$t
      line="$(cat "$work/t") $(python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
ph = r.get('phase_seconds', {})
print('%.2f %.2f %.2f' % (r['passes'][0]['seconds'], ph.get('write', float('nan')), ph.get('read_back', float('nan'))))" "$work/r.json")"
    fi
  done
  results+=("$p $line")
  rm -rf "$work/out"
done
printf 'input %.2f GB; cp of it: best %.2f s (%.2f GB/s), dd bs=64M: best %.2f s (%.2f GB/s) over all runs\n' \
  "$(echo "$input / 1000000000" | bc -l)" "$best_cp" "$(echo "$input / $best_cp / 1000000000" | bc -l)" \
  "$best_dd" "$(echo "$input / $best_dd / 1000000000" | bc -l)"
echo '| pass | best wall s | pass s | write s | read-back s | CPU | peak RSS GB | GB/s of input | rate / cp rate | rate / dd rate |'
echo '|---|---|---|---|---|---|---|---|---|---|'
for r in "${results[@]}"; do
  read -r p wall cpu rss pass write back <<< "$r"
  printf '| `%s` | %.2f | %.2f | %.2f | %.2f | %s | %.2f | %.2f | %.0f%% | %.0f%% |\n' "$p" "$wall" "$pass" "$write" "$back" "$cpu" \
    "$(echo "$rss / 1000000" | bc -l)" "$(echo "$input / $wall / 1000000000" | bc -l)" \
    "$(echo "100 * $best_cp / $wall" | bc -l)" "$(echo "100 * $best_dd / $wall" | bc -l)"
done
