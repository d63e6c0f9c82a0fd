#!/usr/bin/env bash
# The main job: set up, build, and compress the bundled sample model with the sample
# recipe, printing the report summary. Outputs land in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
mkdir -p out
build/cli/compress inspect samples/pycode-tiny
echo
build/cli/compress run samples/pycode-tiny -r samples/recipes/sample.yaml --force \
  -o out/pycode-tiny-compressed --report out/pycode-tiny-compressed.report.json \
  --report-md out/pycode-tiny-compressed.report.md \
  --eval-text samples/eval/pycode-sample.txt
