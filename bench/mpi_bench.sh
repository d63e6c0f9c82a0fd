#!/usr/bin/env bash
# Speed-up of a calibrated pass under MPI (docs/distributed.md), and the byte-identity of its
# output: the same GPTQ run as 1 process x 1 thread, 2 ranks x 1 thread and 1 process x 2
# threads, in one session. Prints seconds, ratios and whether the outputs are equal.
# usage: bench/mpi_bench.sh MODEL [SAMPLES [SEQLEN [PIPELINE]]]   (COMPRESS: the binary)
set -euo pipefail
model=$1
samples=${2:-16}
seqlen=${3:-512}
pipeline=${4:-quantize-gptq{bits=4,group-size=128\}}
compress=${COMPRESS:-build/cli/compress}
text=${TEXT:-../shared/data/pycode-dev.txt}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(-q -p "$pipeline" --calibration "$text" --calib-samples "$samples" --calib-seqlen "$seqlen")
run() {  # run NAME LAUNCHER...
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" "$compress" run "$model" "${args[@]}" -o "$work/$name" --report "$work/$name.json"
  echo "$name $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" >> "$work/times"
}
OMP_NUM_THREADS=1 run one_1t env
mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS=1 true  # warm the launcher
run two_1t mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS=1
OMP_NUM_THREADS=2 run one_2t env
cat "$work/times"
a=$(awk '$1 == "one_1t" {print $2}' "$work/times")
b=$(awk '$1 == "two_1t" {print $2}' "$work/times")
c=$(awk '$1 == "one_2t" {print $2}' "$work/times")
awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN {
  printf "2 ranks x 1 thread vs 1 process x 1 thread: %.2fx faster\n", a / b
  printf "2 ranks x 1 thread vs 1 process x 2 threads: %.2fx\n", c / b }'
for n in two_1t one_2t; do
  if diff -r "$work/one_1t" "$work/$n" >/dev/null; then echo "$n: same bytes as one_1t"; else echo "$n: DIFFERENT bytes"; fi
done
