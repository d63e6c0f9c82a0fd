#!/usr/bin/env bash
# Calibrated passes under MPI (docs/distributed.md): `mpirun -np N compress run ...` must write
# the same bytes as one process, for every calibrated path (the block-by-block driver with
# X^T X, the statistics analysis, the ONNX driver) and N = 2 and 3 on one machine
# (--oversubscribe). A failing rank must stop the job with the CLI's exit code and no output.
# usage: run_mpi_tests.sh COMPRESS_BINARY WORK_DIR SHARED_DIR
set -uo pipefail
compress=$(realpath "$1")
mkdir -p "$2"
work=$(realpath "$2")
shared=$(realpath -m "$3")
model="$shared/models/pycode-tiny"
if [ ! -f "$model/config.json" ]; then
  echo "skipped: $shared/models not found"
  exit 77
fi
if ! command -v mpirun >/dev/null 2>&1; then
  echo "skipped: no mpirun (scripts/setup.sh installs openmpi-bin)"
  exit 77
fi
# Open MPI refuses root without these (CI containers run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# Containers often forbid the cross-process memory reads of shared-memory transfers (CMA):
# copy through the shared segment instead (slower, same bytes).
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# One thread per rank: two ranks of two threads each would share two cores badly.
export OMP_NUM_THREADS=1
mpi() { local n=$1; shift; mpirun -np "$n" --oversubscribe -x OMP_NUM_THREADS "$@"; }

passed=0
failed=0
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
rm -rf "$work/out"
mkdir -p "$work/out"
calib=(--calibration "$shared/data/pycode-dev.txt" --calib-samples 20 --calib-seqlen 64)

# GPT-2 (Conv1D [in, out] weights; hidden 256: whole K-quant blocks), made by the llama.cpp
# cross-check's generator: quantize-gguf's GPTQ writes its weights [out, in] and every rank turns
# the view's layer after each block.
gpt2="$work/gpt2-wide"
if command -v node >/dev/null 2>&1 && [ ! -f "$gpt2/model.safetensors" ]; then
  node "$(dirname "$0")/../llamacpp/make_family_model.mjs" gpt2 "$gpt2" "$model/tokenizer.json" wide
fi

# name|pipeline|output suffix|further flags|model (default pycode-tiny)
cases=(
  "gptq|quantize-gptq{bits=4,group-size=32}|"
  "gptq-bf16|quantize-gptq{bits=4,group-size=32}||--calib-precision bf16"
  "sparsegpt|prune-sparsegpt{sparsity=0.5}|"
  "obs|prune-obs{sparsity=0.5}|"
  "smoothquant|smooth-quant{alpha=0.8},quantize-w8a8{activations=static}|"
  "gguf|quantize-gguf{type=Q4_K_M}|.gguf"
  "structured|prune-structured{target=neurons,ratio=0.25}|"
  "gguf-gpt2|quantize-gguf{type=Q4_K_M}|.gguf||$gpt2"
)
for c in "${cases[@]}"; do
  IFS='|' read -r name pipeline ext flags case_model <<< "$c"
  case_model=${case_model:-$model}
  if [ ! -f "$case_model/config.json" ]; then
    fail "$name: no model at $case_model (node makes the GPT-2 one)"; continue
  fi
  one="$work/out/$name.1$ext"
  # shellcheck disable=SC2086  # the flags are words
  if ! "$compress" run "$case_model" -q -p "$pipeline" "${calib[@]}" $flags -o "$one" --report "$one.json" 2>"$work/err"; then
    fail "$name: one process: $(tail -1 "$work/err")"; continue
  fi
  for n in 2 3; do
    out="$work/out/$name.$n$ext"
    # shellcheck disable=SC2086
    if ! mpi "$n" "$compress" run "$case_model" -q -p "$pipeline" "${calib[@]}" $flags -o "$out" --report "$out.json" \
        >"$work/log" 2>&1; then
      fail "$name: $n ranks: $(grep 'compress: error' "$work/log" | head -1)"; continue
    fi
    if ! grep -q "\"processes\": $n" "$out.json"; then
      fail "$name: the report of $n ranks does not say \"processes\": $n"; continue
    fi
    # The report's per-pass entries (every tensor's metrics, notes, stats) match too.
    if ! python3 -c 'import json, sys
a, b = (json.load(open(f))["passes"] for f in sys.argv[1:])
keys = ("tensors", "notes", "stats", "experts")
sys.exit(any(x.get(k) != y.get(k) for x, y in zip(a, b) for k in keys) or len(a) != len(b))' "$one.json" "$out.json"; then
      fail "$name: the report of $n ranks differs from one process's"; continue
    fi
    if diff -r "$one" "$out" >/dev/null; then
      passed=$((passed + 1)); echo "ok $name: $n ranks write the bytes and report entries of one process"
    else
      fail "$name: $n ranks wrote different bytes from one process"
    fi
  done
done

# ONNX calibration (the interpreter's driver) under MPI: every rank runs every window.
onnx="$shared/models/stories260K/model.onnx"
if [ -f "$onnx" ]; then
  seq 1 600 | awk '{ printf "%d ", ($1 * 7) % 500 }' > "$work/ids.txt"
  oc=(--calibration "$work/ids.txt" --calib-samples 6 --calib-seqlen 32)
  if "$compress" run "$onnx" -q -p 'quantize-gptq{bits=4,group-size=0}' "${oc[@]}" -o "$work/out/onnx.1.onnx" &&
     mpi 2 "$compress" run "$onnx" -q -p 'quantize-gptq{bits=4,group-size=0}' "${oc[@]}" \
       -o "$work/out/onnx.2.onnx" >"$work/log" 2>&1 &&
     cmp -s "$work/out/onnx.1.onnx" "$work/out/onnx.2.onnx"; then
    passed=$((passed + 1)); echo "ok onnx: 2 ranks write the bytes of one process"
  else
    fail "onnx: 2 ranks"
  fi
fi

# A bad input fails every rank: exit 2 (the CLI's code for bad input), nothing written.
mpi 2 "$compress" run "$model" -q -p 'quantize-gptq' --calibration "$work/missing.txt" -o "$work/out/bad" \
  >"$work/log" 2>&1
rc=$?
if [ "$rc" -eq 2 ] && [ ! -e "$work/out/bad" ] && grep -q "missing.txt" "$work/log"; then
  passed=$((passed + 1)); echo "ok bad input: exit 2 from every rank, no output"
else
  fail "bad input under MPI: exit $rc (want 2), output exists: $([ -e "$work/out/bad" ] && echo yes || echo no)"
fi

# --resume under MPI: every rank journals its own windows' states (docs/distributed.md). A
# 2-rank GPTQ run killed after its 2nd checkpoint (pycode-tiny: 4 blocks, a checkpoint per block)
# continues with --resume and writes the bytes of one process; so does one whose rank 1 died
# after writing its 2nd checkpoint's states but before committing it (the ranks agree on the
# 1st, and rank 0 still holds its states from then). Rank r > 0's journal sits beside rank 0's
# as ".NAME.compress-resume.rankR"; all of them are gone after the run.
rp=(-p 'quantize-gptq{bits=4,group-size=32}' "${calib[@]}")
"$compress" run "$model" -q "${rp[@]}" -o "$work/out/resume.1" 2>"$work/err" || fail "resume: one process: $(tail -1 "$work/err")"
resume_case() {  # name, then the mpirun arguments before the program for the killed run
  local name=$1; shift
  local out="$work/out/resume.$name"
  rm -rf "$out" "$work/out/.resume.$name".compress-resume*
  # shellcheck disable=SC2086
  COMPRESS_CHECKPOINT_SECONDS=0 mpirun --oversubscribe -x OMP_NUM_THREADS -x COMPRESS_CHECKPOINT_SECONDS "$@" \
    >"$work/log" 2>&1
  if [ -e "$out" ] || ! ls -d "$work/out/.resume.$name".compress-resume* >/dev/null 2>&1; then
    fail "resume $name: the killed run left an output or no journal"; return
  fi
  if ! mpi 2 "$compress" run "$model" -q "${rp[@]}" -o "$out" --report "$out.json" --resume >"$work/log" 2>&1; then
    fail "resume $name: --resume under MPI: $(grep 'compress: error' "$work/log" | head -1)"; return
  fi
  if ! grep -q "blocks from the journal" "$out.json"; then
    fail "resume $name: the report does not say what was resumed"; return
  fi
  if ls -d "$work/out/.resume.$name".compress-resume* >/dev/null 2>&1; then
    fail "resume $name: a journal is left after the run"; return
  fi
  if diff -r "$work/out/resume.1" "$out" >/dev/null; then
    passed=$((passed + 1)); echo "ok resume $name: 2 ranks killed and resumed write the bytes of one process ($(grep -o '[0-9] of [0-9] blocks from the journal' "$out.json"))"
  else
    fail "resume $name: the resumed run wrote different bytes from one process"
  fi
}
run_args=(run "$model" -q "${rp[@]}")
resume_case killed -np 2 -x COMPRESS_JOURNAL_KILL_AFTER=2 "$compress" "${run_args[@]}" -o "$work/out/resume.killed"
resume_case behind -np 1 -x COMPRESS_JOURNAL_KILL_AFTER=2 "$compress" "${run_args[@]}" -o "$work/out/resume.behind" : \
  -np 1 -x COMPRESS_JOURNAL_KILL_BEFORE_COMMIT=2 "$compress" "${run_args[@]}" -o "$work/out/resume.behind"

# GPT-2's quantize-gguf GPTQ is journaled like the others: 2 ranks killed after block 0 of 2,
# then resumed by 2 ranks, write the bytes of one uninterrupted process (the case above).
if [ -f "$work/out/gguf-gpt2.1.gguf" ]; then
  out="$work/out/resume.gpt2.gguf"
  rm -rf "$out" "$work/out/.resume.gpt2.gguf".compress-resume*
  COMPRESS_CHECKPOINT_SECONDS=0 COMPRESS_JOURNAL_KILL_AFTER=1 mpi 2 -x COMPRESS_CHECKPOINT_SECONDS \
    -x COMPRESS_JOURNAL_KILL_AFTER "$compress" run "$gpt2" -q -p 'quantize-gguf{type=Q4_K_M}' "${calib[@]}" \
    -o "$out" >"$work/log" 2>&1
  if [ -e "$out" ] || ! ls -d "$work/out/.resume.gpt2.gguf".compress-resume* >/dev/null 2>&1; then
    fail "resume gpt2: the killed run left an output or no journal"
  elif ! mpi 2 "$compress" run "$gpt2" -q -p 'quantize-gguf{type=Q4_K_M}' "${calib[@]}" -o "$out" \
      --report "$out.json" --resume >"$work/log" 2>&1; then
    fail "resume gpt2: --resume under MPI: $(grep 'compress: error' "$work/log" | head -1)"
  elif ! grep -q "1 of 2 blocks from the journal" "$out.json"; then
    fail "resume gpt2: the report does not say that block 0 came from the journal"
  elif cmp -s "$work/out/gguf-gpt2.1.gguf" "$out"; then
    passed=$((passed + 1)); echo "ok resume gpt2: quantize-gguf's GPTQ on Conv1D weights, 2 ranks killed and resumed, writes the bytes of one process"
  else
    fail "resume gpt2: the resumed run wrote different bytes from one process"
  fi
fi

echo "mpi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
