#!/usr/bin/env bash
# GGUF files that llama.cpp's own converter (convert_hf_to_gguf.py, run on the device by
# device/convert_with_llamacpp.sh) wrote from checkpoints: compress must read them as the
# checkpoint they came from. For each converted NAME-f32.gguf and / or NAME-q8_0.gguf beside the
# source folder MODELS/NAME:
#   - tokenizer: the ids compress takes from the GGUF's metadata equal the ids from the source's
#     tokenizer.json / tokenizer.model, on TEXTS (with the model's special tokens added);
#   - f32: `compress eval` of the GGUF equals `compress eval` of the source (text in, so the
#     tokenizer and every weight, with llama.cpp's q/k row order undone), within 1e-6 relative;
#     where the file says something else than the checkpoint (the converter left a setting out,
#     e.g. Gemma 3's sliding-window pattern), compress's perplexity of it equals llama.cpp's
#     within 1e-4;
#   - q8_0: llama.cpp's perplexity of the converter's file equals compress's on it within 0.5%,
#     and compress's own Q8_0 (quantize-gguf{type=Q8_0,pure=true,search=false} with the same
#     embedding / head types) holds the same blocks (bench/gguf_tensor_diff.py);
#   - the converter's file (q8_0, else f32) re-quantized by compress (quantize-gguf Q4_K_M) and written back as a
#     checkpoint (cast to safetensors) runs: llama.cpp's perplexity of the Q4_K_M file within 1%
#     of compress's, the checkpoint's perplexity equal to the f32 GGUF's.
# usage: run_converted_check.sh COMPRESS TOKENIZE_IDS CONVERTED_DIR MODELS_DIR WORK_DIR TEXT
set -euo pipefail
compress=$(realpath "$1")
tokenize_ids=$(realpath "$2")
conv=$(realpath "$3")
models=$(realpath "$4")
mkdir -p "$5"
work=$(realpath "$5")
text=$(realpath "$6")
here=$(cd "$(dirname "$0")" && pwd)
# node-llama-cpp: the work folder's, or its parent's (ctest runs this inside llamacpp_crosscheck's
# folder, after it, so the package is installed once).
if [ ! -f "$work/node_modules/@node-llama-cpp/linux-x64/package.json" ] &&
   [ ! -f "$work/../node_modules/@node-llama-cpp/linux-x64/package.json" ]; then
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  (cd "$work" && npm install --no-audit --no-fund --ignore-scripts --omit=optional --loglevel=error >/dev/null)
fi
cp "$here/llama_eval.mjs" "$work/"
passed=0
failed=0
declare -A seen
verdict() {  # verdict NAME OK(0|1) DETAIL
  if [ "$2" = 1 ]; then passed=$((passed + 1)); echo "ok   $1: $3"; else failed=$((failed + 1)); echo "FAIL $1: $3"; fi
}
field() { node -e 'const o = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(o[process.argv[1]])' "$1"; }
within() { node -e 'const [a, b, t] = process.argv.slice(1).map(Number); process.exit(Math.abs(a - b) <= t * Math.abs(b) ? 0 : 1)' "$@"; }
ppl_text() { "$compress" eval "$1" --text "$text" --max-tokens 2048 --ctx 256 --json -q | field perplexity; }
ppl_ids() { "$compress" eval "$1" --tokens "$2" --ctx 256 --json -q | field perplexity; }
# 60 texts: the text file cut into pieces of 1-3 KB at line ends, and a few edge cases.
node -e '
const fs = require("fs");
const lines = fs.readFileSync(process.argv[1], "utf8").split("\n");
const out = [" Hello", "  two  spaces\n\n", "", "a\tb\r\nc", "日本語のテキスト", "x".repeat(300)];
let cur = "";
for (const l of lines) { cur += l + "\n"; if (cur.length > 1000 + 40 * out.length) { out.push(cur); cur = ""; if (out.length >= 60) break; } }
fs.writeFileSync(process.argv[2], JSON.stringify(out));' "$text" "$work/texts.json"

shopt -s nullglob
for any in "$conv"/*-q8_0.gguf "$conv"/*-f32.gguf; do
  name=$(basename "$any" .gguf)
  name=${name%-q8_0}
  name=${name%-f32}
  [ -n "${seen[$name]:-}" ] && continue
  seen[$name]=1
  src="$models/$name"
  q8="$conv/$name-q8_0.gguf"
  f32="$conv/$name-f32.gguf"
  [ -d "$src" ] || { verdict "$name" 0 "no source folder $src"; continue; }
  tokfile="$src/tokenizer.json"
  [ -f "$tokfile" ] || tokfile="$src/tokenizer.model"
  "$tokenize_ids" "$tokfile" "$work/texts.json" "$work/$name.src.json" >/dev/null
  "$tokenize_ids" "$any" "$work/texts.json" "$work/$name.gguf.json" >/dev/null
  same=$(node -e '
const fs = require("fs");
const a = JSON.parse(fs.readFileSync(process.argv[1])), b = JSON.parse(fs.readFileSync(process.argv[2]));
let eq = 0; a.forEach((x, i) => { if (JSON.stringify(x) === JSON.stringify(b[i])) ++eq; });
console.log(eq + " of " + a.length);' "$work/$name.src.json" "$work/$name.gguf.json")
  ok=0; [ "${same%% of*}" = "${same##*of }" ] && ok=1
  verdict "$name tokenizer from the GGUF" $ok "$same texts give the source tokenizer's ids"

  # llama.cpp's ids of the text (the f32 and q8_0 files hold the same tokenizer metadata).
  (cd "$work" && node llama_eval.mjs tokenize "$any" "$text" "$work/$name.ids.json" 2048 >/dev/null)
  if [ -f "$f32" ]; then
    a=$(ppl_text "$src")
    b=$(ppl_text "$f32")
    if within "$b" "$a" 1e-6; then
      verdict "$name f32 GGUF" 1 "compress on the converter's file $b, on the source $a"
    else
      # The file says something other than the checkpoint (the converter left a setting out):
      # compress must then read it as llama.cpp does.
      ours=$(ppl_ids "$f32" "$work/$name.ids.json")
      theirs=$(cd "$work" && node llama_eval.mjs ppl "$f32" "$work/$name.ids.json" 256 | field perplexity)
      ok=0; within "$theirs" "$ours" 1e-4 && ok=1
      verdict "$name f32 GGUF" $ok "differs from the source ($b vs $a) and compress reads it as llama.cpp does: llama.cpp $theirs, compress $ours"
    fi
  fi

  if [ -f "$q8" ]; then
    ours=$(ppl_ids "$q8" "$work/$name.ids.json")
    theirs=$(cd "$work" && node llama_eval.mjs ppl "$q8" "$work/$name.ids.json" 256 | field perplexity)
    ok=0; within "$theirs" "$ours" 5e-3 && ok=1
    verdict "$name q8_0 GGUF" $ok "llama.cpp $theirs, compress $ours on the converter's file"
    "$compress" run "$src" -q --force -p 'quantize-gguf{type=Q8_0,pure=true,search=false,embed-type=q8_0,output-type=q8_0}' \
      -o "$work/$name-ours-q8_0.gguf"
    diff=$(python3 "$here/../../bench/gguf_tensor_diff.py" "$work/$name-ours-q8_0.gguf" "$q8" | tail -1)
    ok=0; [[ "$diff" == *" differ 0"* ]] && ok=1
    verdict "$name q8_0 blocks" $ok "compress's Q8_0 against the converter's: $diff"
    # The same blocks under compress's metadata: the converter's settings read as compress writes them.
    mine=$(ppl_ids "$work/$name-ours-q8_0.gguf" "$work/$name.ids.json")
    if within "$ours" "$mine" 1e-6; then
      verdict "$name q8_0 metadata" 1 "compress on the converter's file $ours, on its own Q8_0 of the source $mine"
    else
      ok=0; within "$theirs" "$ours" 1e-3 && ok=1
      verdict "$name q8_0 metadata" $ok "the converter's file says something else ($ours vs $mine on compress's own Q8_0 of the source) and compress reads it as llama.cpp does ($theirs, tolerance 1e-3)"
    fi
  fi

  "$compress" run "$any" -q --force -p 'dequantize,quantize-gguf{type=Q4_K_M}' -o "$work/$name-q4_k_m.gguf"
  ours=$(ppl_ids "$work/$name-q4_k_m.gguf" "$work/$name.ids.json")
  theirs=$(cd "$work" && node llama_eval.mjs ppl "$work/$name-q4_k_m.gguf" "$work/$name.ids.json" 256 | field perplexity)
  ok=0; within "$theirs" "$ours" 1e-2 && ok=1
  verdict "$name re-quantized Q4_K_M" $ok "llama.cpp $theirs, compress $ours"
  rm -rf "$work/$name-st"
  "$compress" run "$any" -q -p 'cast{dtype=f32}' -o "$work/$name-st"
  b=$(ppl_text "$any")
  c=$(ppl_text "$work/$name-st")
  ok=0; within "$c" "$b" 1e-6 && ok=1
  verdict "$name GGUF -> checkpoint" $ok "compress on the written checkpoint $c, on the GGUF $b"
done
echo "converted GGUF check: $passed passed, $failed failed"
[ "$failed" = 0 ]
