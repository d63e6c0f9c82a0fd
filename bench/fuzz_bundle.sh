#!/usr/bin/env bash
# Packs the libFuzzer harnesses that bench/fuzz.sh built (build-fuzz/), every shared library
# they load (with this machine's dynamic loader) and their seed corpora into one tarball that
# runs on any x86-64 Linux machine, for fuzzing on more cores than a workstation has:
#   bench/fuzz_bundle.sh OUT.tar.gz                 # here, after bench/fuzz.sh built the harnesses
#   tar xzf OUT.tar.gz && fuzz/run.sh SECONDS JOBS  # there: every harness at once, JOBS
#                                                   # processes each sharing a corpus; findings
#                                                   # and a summary in fuzz/out/
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "$1")
command -v patchelf >/dev/null || { echo "needs patchelf (apt-get install patchelf)" >&2; exit 2; }
compgen -G "build-fuzz/tests/fuzz/fuzz_*" >/dev/null || { echo "build the harnesses first: bench/fuzz.sh 1 [HARNESS...]" >&2; exit 2; }
stage=$(mktemp -d)/fuzz
mkdir -p "$stage/bin" "$stage/lib" "$stage/corpus"
for f in build-fuzz/tests/fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  # The bundled loader as interpreter (at the fixed path run.sh links) and the bundled libraries
  # by rpath, so the kernel maps the harness itself and ASan's reports name its offsets
  # (symbolize them here with addr2line on build-fuzz's unstripped binaries).
  strip --strip-debug -o "$stage/bin/$(basename "$f")" "$f"
  patchelf --force-rpath --set-interpreter /tmp/compress-fuzz/lib/ld-linux-x86-64.so.2 --set-rpath '$ORIGIN/../lib' \
    "$stage/bin/$(basename "$f")"
  ldd "$f" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
    [ -f "$lib" ] && cp -Ln "$lib" "$stage/lib/" 2>/dev/null || true
  done
done
# Every bundled library finds its own dependencies beside it (a library's RUNPATH, such as
# libcompress_core's build folder, would otherwise hide the harness's RPATH from them).
for lib in "$stage"/lib/*.so*; do
  case $(basename "$lib") in ld-linux*|libc.so*) continue ;; esac
  chmod u+w "$lib"
  patchelf --force-rpath --set-rpath '$ORIGIN' "$lib"
done
# Check: the bundled loader resolves every library of every harness inside the bundle.
ln -sfn "$stage" /tmp/compress-fuzz
for f in "$stage"/bin/*; do
  if /tmp/compress-fuzz/lib/ld-linux-x86-64.so.2 --list "$f" | grep '=>' | grep -v "$stage/\|/tmp/compress-fuzz/\|linux-vdso"; then
    echo "$f loads libraries from outside the bundle (above)" >&2
    exit 1
  fi
done
# Seeds: the corpora bench/fuzz.sh grew, smallest first, up to 6 MB per harness (large seeds
# such as K-quant GGUF files take a few; the fuzzers grow the rest there).
for dir in build-fuzz/corpus/*/; do
  h=$(basename "$dir")
  mkdir -p "$stage/corpus/$h"
  total=0
  while read -r size f; do
    [ $((total + size)) -le $((6 << 20)) ] || [ "$total" = 0 ] || continue
    cp "$f" "$stage/corpus/$h/"
    total=$((total + size))
  done < <(find "$dir" -type f -printf '%s %p\n' | sort -n)
done
# K-quant GGUF seeds are large: keep one of each family of block types when they exist.
for f in build-fuzz/corpus/gguf/wide-{Q4_K_M,Q2_K,IQ4_XS}.gguf; do [ -f "$f" ] && cp "$f" "$stage/corpus/gguf/"; done
cat >"$stage/run.sh" <<'RUN'
#!/usr/bin/env bash
# fuzz/run.sh SECONDS JOBS [HARNESS...]: each harness for SECONDS in JOBS independent processes
# sharing its corpus folder (restarted after a finding until the time is up), with the bundled
# loader and libraries.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ln -sfn "$here" /tmp/compress-fuzz  # the harnesses' interpreter path
secs=${1:-600}; jobs=${2:-2}; shift 2 || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(safetensors onnx gguf pipeline tokenizer config checkpoint)
deadline=$(( $(date +%s) + secs ))
worker() {  # worker HARNESS INDEX
  local h=$1 i=$2 run=0
  while [ $(( deadline - $(date +%s) )) -gt 5 ]; do
    run=$((run + 1))
    (cd "$here/out/$h" && ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
      "$here/bin/fuzz_$h" "$here/corpus/$h" \
      -seed=$((1000 * i + run)) -max_total_time=$(( deadline - $(date +%s) )) -rss_limit_mb=4096 \
      -max_len=8388608 -timeout=30 -artifact_prefix="$here/out/$h/" -print_final_stats=1 \
      >>"$here/out/$h.$i.log" 2>&1)
  done
}
for h in "${harnesses[@]}"; do
  mkdir -p "$here/out/$h" "$here/corpus/$h"
  for i in $(seq 1 "$jobs"); do worker "$h" "$i" & done
done
wait
for h in "${harnesses[@]}"; do
  execs=$(cat "$here/out/$h".*.log | awk '/stat::number_of_executed_units/ {n += $2} END {print n + 0}')
  echo "$h: $jobs processes x $secs s, $execs executions, corpus $(ls "$here/corpus/$h" | wc -l)," \
    "findings $(ls "$here/out/$h" | grep -cE '^(crash|leak|timeout|oom|slow-unit)-' || true)"
done | tee "$here/out/summary.txt"
RUN
chmod +x "$stage/run.sh"
tar czf "$out" -C "$(dirname "$stage")" fuzz
echo "wrote $out ($(du -h "$out" | cut -f1)): $(ls "$stage/bin" | wc -l) harnesses, $(ls "$stage/lib" | wc -l) libraries"
