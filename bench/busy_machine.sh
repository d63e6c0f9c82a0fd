#!/usr/bin/env bash
# compress eval on pycode-llama (8192 tokens, 512-token windows) with OpenMP spin counts of
# 10,000 and 300,000 (libgomp's default) and passive waits (or CONFIGS="VAR=VALUE ..."), each
# idle and beside two busy loops that hold both cores of a 2-core machine. Prints seconds per
# run. Usage: bench/busy_machine.sh [BUILD_DIR] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build}/cli/compress
REPS=${2:-3}
M=../shared/models/pycode-llama
T=../shared/data/pycode-dev.txt
run() {
  local s e
  s=$(date +%s.%N)
  env "$@" "$BIN" eval "$M" --text "$T" --max-tokens 8192 --ctx 512 --json -q >/dev/null
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
busy() { for _ in 1 2; do (timeout 60 sh -c 'while :; do :; done' &); done; sleep 0.3; }
calm() { pkill -f "while :; do :; done" || true; }
for ((r = 1; r <= REPS; r++)); do
  for cfg in ${CONFIGS:-GOMP_SPINCOUNT=10000 GOMP_SPINCOUNT=300000 OMP_WAIT_POLICY=PASSIVE}; do
    idle=$(run "$cfg")
    busy
    loaded=$(run "$cfg")
    calm
    echo "$cfg idle ${idle}s busy ${loaded}s"
  done
done
