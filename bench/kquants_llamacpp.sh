#!/usr/bin/env bash
# compress's quantize-gguf against llama.cpp's llama-quantize at the same mix, both evaluated by
# llama.cpp's llama-perplexity on the same held-out text, as a Markdown table on stdout:
# file size and perplexity of llama-quantize (plain, with llama-imatrix's importance matrix of the
# calibration text, and with `compress imatrix`'s of the same text) and of compress (plain, and
# with --calibration on the same text).
# Text: ../shared/data/pycode-dev.txt split as bench/quality.sh does (calibration never sees the
# evaluation half). The f16 GGUF that llama-quantize starts from is written by compress.
# usage: bench/kquants_llamacpp.sh [MODEL_DIR [CHUNKS [TYPE...]]]   (after scripts/build.sh)
# EVAL_TEXT=FILE evaluates on FILE instead of the second half (CALIB_TEXT likewise).
# LLAMA_BIN: a folder with llama-quantize, llama-imatrix and llama-perplexity; without it they are
# built from llama.cpp's source in the npm package node-llama-cpp (build/llamacpp, which one ctest
# run installs) into build/llamacpp-src (a few minutes, once).
set -euo pipefail
model=${1:-../shared/models/pycode-llama}
chunks=${2:-32}
shift 2 2>/dev/null || shift $# || true
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Q4_K_M Q3_K_M Q2_K IQ4_XS Q5_K_M Q6_K)
compress=${COMPRESS:-build/cli/compress}
threads=${THREADS:-2}
if [ -z "${LLAMA_BIN:-}" ]; then
  src=build/llamacpp-src
  if [ ! -x "$src/build/bin/llama-perplexity" ]; then
    bundle=build/llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle
    [ -f "$bundle" ] || { echo "run ctest -R llamacpp_crosscheck first (it installs node-llama-cpp)" >&2; exit 1; }
    [ -d "$src" ] || git clone -q "$bundle" "$src"
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
    cmake --build "$src/build" -j"$(nproc)" --target llama-quantize llama-imatrix llama-perplexity >/dev/null
  fi
  LLAMA_BIN=$src/build/bin
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/split_dev_text.py "$work"
# EVAL_TEXT / CALIB_TEXT replace the halves (e.g. a trained model's held-out text).
[ -z "${EVAL_TEXT:-}" ] || cp "$EVAL_TEXT" "$work/eval.txt"
[ -z "${CALIB_TEXT:-}" ] || cp "$CALIB_TEXT" "$work/calib.txt"
ppl() {  # ppl FILE -> llama-perplexity's final estimate (its log on stderr when it has none)
  local log p try
  # Now and then llama-perplexity ends after its last window without printing the estimate
  # (seen on a loaded machine): the same deterministic run is repeated.
  for try in 1 2 3; do
    log=$("$LLAMA_BIN/llama-perplexity" -m "$1" -f "$work/eval.txt" -c 512 --chunks "$chunks" -t "$threads" 2>&1) || true
    p=$(echo "$log" | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
    [ -z "$p" ] || break
  done
  [ -n "$p" ] || { echo "llama-perplexity gave no estimate for $1:" >&2; echo "$log" | tail -5 >&2; exit 1; }
  echo "$p"
}
kld() {  # kld FILE -> mean KL divergence of FILE's next-token distributions from the f16 model's
  local log k try
  for try in 1 2 3; do
    log=$("$LLAMA_BIN/llama-perplexity" -m "$1" --kl-divergence-base "$work/base.kld" --kl-divergence \
          -t "$threads" 2>&1) || true
    k=$(echo "$log" | sed -n 's/^.*Mean    KLD: *\([0-9.e-]*\).*/\1/p')
    [ -z "$k" ] || break
  done
  [ -n "$k" ] || { echo "llama-perplexity gave no KLD for $1:" >&2; echo "$log" | tail -5 >&2; exit 1; }
  echo "$k"
}
mib() { python3 -c "import os,sys; print(f'{os.path.getsize(sys.argv[1]) / 2**20:.2f}')" "$1"; }
"$compress" run "$model" -q --force -p 'cast{dtype=f16}' -o "$work/f16.gguf"
"$LLAMA_BIN/llama-imatrix" -m "$work/f16.gguf" -f "$work/calib.txt" -o "$work/imatrix.gguf" -c 512 --chunks 64 \
  -t "$threads" >/dev/null 2>&1
# compress's importance matrix of the same text (64 windows of 512), for llama-quantize --imatrix
"$compress" imatrix "$model" -q --calibration "$work/calib.txt" --calib-samples 64 -o "$work/cimatrix.gguf"
base=$(ppl "$work/f16.gguf")
"$LLAMA_BIN/llama-perplexity" -m "$work/f16.gguf" -f "$work/eval.txt" -c 512 --chunks "$chunks" -t "$threads" \
  --kl-divergence-base "$work/base.kld" >/dev/null 2>&1
echo "llama-perplexity, $chunks windows of 512 tokens; f16: $(mib "$work/f16.gguf") MiB, perplexity $base."
echo "KLD: mean KL divergence from the f16 model's next-token distributions (llama-perplexity --kl-divergence)."
echo
echo "| mix | MiB (both) | llama-quantize ppl / KLD | + imatrix ppl / KLD | + compress's imatrix ppl / KLD | compress ppl / KLD | + calibration ppl / KLD | KLD compress / llama-quantize (calibrated) |"
echo "|---|---|---|---|---|---|---|---|"
for t in "${types[@]}"; do
  "$LLAMA_BIN/llama-quantize" "$work/f16.gguf" "$work/lq.gguf" "$t" "$threads" >/dev/null 2>&1
  "$LLAMA_BIN/llama-quantize" --imatrix "$work/imatrix.gguf" "$work/f16.gguf" "$work/lqi.gguf" "$t" "$threads" >/dev/null 2>&1
  "$LLAMA_BIN/llama-quantize" --imatrix "$work/cimatrix.gguf" "$work/f16.gguf" "$work/lqc.gguf" "$t" "$threads" >/dev/null 2>&1
  "$compress" run "$model" -q --force -p "quantize-gguf{type=$t}" -o "$work/c.gguf"
  "$compress" run "$model" -q --force -p "quantize-gguf{type=$t}" -o "$work/ci.gguf" \
    --calibration "$work/calib.txt" --calib-samples 64
  a=$(ppl "$work/lq.gguf"); b=$(ppl "$work/lqi.gguf"); e=$(ppl "$work/lqc.gguf"); c=$(ppl "$work/c.gguf")
  d=$(ppl "$work/ci.gguf")
  ka=$(kld "$work/lq.gguf"); kb=$(kld "$work/lqi.gguf"); ke=$(kld "$work/lqc.gguf"); kc=$(kld "$work/c.gguf")
  kd=$(kld "$work/ci.gguf")
  python3 - "$t" "$(mib "$work/lq.gguf")" "$(mib "$work/c.gguf")" "$base" "$a" "$ka" "$b" "$kb" "$e" "$ke" "$c" "$kc" \
    "$d" "$kd" <<'PY'
import sys
t, lm, cm = sys.argv[1:4]
base, a, ka, b, kb, e, ke, c, kc, d, kd = map(float, sys.argv[4:15])
f = lambda p, k: f"{p:.4f} ({100 * (p / base - 1):+.2f}%) / {k:.5f}"
size = lm if lm == cm else f"{lm} vs {cm}"
print(f"| {t} | {size} | {f(a, ka)} | {f(b, kb)} | {f(e, ke)} | {f(c, kc)} | {f(d, kd)} | {kd / kb:.3f} |")
PY
done
