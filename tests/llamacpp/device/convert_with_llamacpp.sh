#!/bin/bash
# Device step of the "GGUF files that llama.cpp's own converter wrote" check (not run by ctest:
# llama.cpp's convert_hf_to_gguf.py needs torch). For every checkpoint folder under MODELS
# (make_family_model.mjs outputs and ../shared checkpoints copied there), runs the converter from
# the npm bundle's llama.cpp source (CONV: a folder holding convert_hf_to_gguf.py, conversion/ and
# gguf-py/) with --outtype f32 and q8_0, writing NAME-f32.gguf, NAME-q8_0.gguf and the
# converter's logs into $OUT/converted.tar.gz (one file: `run` brings back only a few). compress then reads those files on the CI machine
# (tests/llamacpp/run_converted_check.sh).
#   bash tests/llamacpp/device/convert_with_llamacpp.sh .device/conv/llconv .device/conv/models
set -u
conv=${1:?usage: convert_with_llamacpp.sh CONV_DIR MODELS_DIR}
models=${2:?usage: convert_with_llamacpp.sh CONV_DIR MODELS_DIR}
out=$(mktemp -d)
python3 -c 'import torch, transformers, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)'
for d in "$models"/*/; do
  name=$(basename "$d")
  for t in f32 q8_0; do
    if python3 "$conv/convert_hf_to_gguf.py" "$d" --outtype "$t" --outfile "$out/$name-$t.gguf" >"$out/$name-$t.log" 2>&1; then
      echo "$name $t: ok ($(stat -c %s "$out/$name-$t.gguf") bytes)"
    else
      echo "$name $t: FAILED: $(grep -v '^INFO' "$out/$name-$t.log" | tail -3 | tr '\n' ' ' | cut -c1-400)"
    fi
  done
done
tar -C "$out" -czf "${OUT:-/tmp/out}/converted.tar.gz" .
