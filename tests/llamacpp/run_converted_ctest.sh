#!/usr/bin/env bash
# ctest entry of the converted-GGUF check: makes the source checkpoints of
# tests/golden/llamacpp_converted (make_converted_sources.sh), then runs run_converted_check.sh on
# the committed files llama.cpp's converter wrote from them.
# usage: run_converted_ctest.sh COMPRESS TOKENIZE_IDS WORK_DIR SHARED_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
golden="$here/../golden/llamacpp_converted"
text="$4/data/pycode-dev.txt"
[ -f "$text" ] || { echo "skipped: $text not found"; exit 77; }
mkdir -p "$3"
"$here/make_converted_sources.sh" "$golden" "$3/sources"
exec "$here/run_converted_check.sh" "$1" "$2" "$golden" "$3/sources" "$3" "$text"
