#!/bin/bash
# The 13B GPTQ run of issue #22 item 4: a generated Llama-2-13B-shaped checkpoint (26 GB bf16,
# more than this 24 GiB machine's memory) through quantize-gptq with 128 x 512 calibration
# tokens, peak RSS by /usr/bin/time -v, RSS sampled every 10 s (RssAnon / RssFile kB) into
# DIR/rss.log. Journaled: a killed run continues with `bench/gptq_13b.sh DIR --resume`.
# usage: bench/gptq_13b.sh DIR [extra compress run flags...]   (after scripts/build.sh; needs
# about 26 GB for the model and 36 GB more for the journal, its spilled results and the output)
set -euo pipefail
dir=${1:?usage: bench/gptq_13b.sh DIR [flags...]}
shift
compress=${COMPRESS:-build/cli/compress}
mkdir -p "$dir"
if [ ! -f "$dir/llama13b/model.safetensors.index.json" ] && [ ! -f "$dir/llama13b/model.safetensors" ]; then
  build/bench/make_llama "$dir/llama13b" 13b
  cp ../shared/models/pycode-llama/tokenizer.json "$dir/llama13b/"
fi
/usr/bin/time -v "$compress" run "$dir/llama13b" -q -p 'quantize-gptq{bits=4,group-size=128}' \
  --calibration ../shared/data/pycode-dev.txt --calib-samples 128 --calib-seqlen 512 \
  ${PRECISION:+--calib-precision "$PRECISION"} -o "$dir/gptq13b" --report "$dir/gptq13b.json" "$@" \
  2> "$dir/time.log" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  c=$(pgrep -P "$pid" | head -1 || true)
  [ -n "$c" ] && echo "$(date +%T) $(grep -E 'RssAnon|RssFile' "/proc/$c/status" 2>/dev/null | awk '{printf "%s ", $2}')" >> "$dir/rss.log"
  sleep 10
done
wait "$pid"
grep -E "Elapsed|Maximum resident" "$dir/time.log"
