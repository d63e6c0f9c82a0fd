#!/usr/bin/env bash
# GGUF outputs of pycode-llama run in llama.cpp (npm node-llama-cpp, prebuilt CPU binaries) vs
# compress's own evaluation of the same files, as a Markdown table on stdout.
# Calibration: first half of ../shared/data/pycode-dev.txt (as bench/quality.sh); perplexity on
# the first EVAL_TOKENS tokens of the second half, windows of 512, ids from llama.cpp's
# tokenizer (identical to Hugging Face's, checked by tests/llamacpp).
# usage: bench/gguf_llamacpp.sh [EVAL_TOKENS] (from the project root after scripts/build.sh and
# one ctest run, which installs node-llama-cpp into build/llamacpp)
set -euo pipefail
eval_tokens=${1:-8192}
compress=${COMPRESS:-build/cli/compress}
node_dir=$(realpath build/llamacpp)
[ -d "$node_dir/node_modules/node-llama-cpp" ] || { echo "run ctest -R llamacpp_crosscheck first" >&2; exit 1; }
cp tests/llamacpp/llama_eval.mjs "$node_dir/"
model=../shared/models/pycode-llama
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/split_dev_text.py "$work"
echo "| pipeline -> GGUF | file MiB | compress perplexity | llama.cpp perplexity | llama.cpp vs compress |"
echo "|---|---|---|---|---|"
first=1
for p in 'cast{dtype=bf16}' 'cast{dtype=f32}' 'quantize-int{bits=8,group-size=32,scale-dtype=f16}' \
         'quantize-int{bits=4,group-size=32,scale-dtype=f16}' \
         'quantize-gptq{bits=4,group-size=32,scale-dtype=f16}'; do
  "$compress" run "$model" -q --force -p "$p" -o "$work/m.gguf" --calibration "$work/calib.txt"
  if [ $first = 1 ]; then
    (cd "$node_dir" && node llama_eval.mjs tokenize "$work/m.gguf" "$work/eval.txt" "$work/ids.json" "$eval_tokens" >/dev/null)
    first=0
  fi
  ours=$("$compress" eval "$work/m.gguf" --tokens "$work/ids.json" --ctx 512 --json -q |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
  theirs=$(cd "$node_dir" && node llama_eval.mjs ppl "$work/m.gguf" "$work/ids.json" 512 |
           python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
  python3 - "$p" "$(stat -c %s "$work/m.gguf")" "$ours" "$theirs" <<'PY'
import sys
p, size, ours, theirs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"| `{p}` | {size / 2**20:.2f} | {ours:.4f} | {theirs:.4f} | {100 * (theirs / ours - 1):+.3f}% |")
PY
  rm -f "$work/m.gguf"
done
