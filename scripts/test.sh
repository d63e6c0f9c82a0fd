#!/usr/bin/env bash
# The tests: set up, build, and run every test with ctest (unit, golden, bad-input corpus,
# ONNX Runtime cross-checks). Needs ../shared (models and data) beside the checkout.
# --sanitize: the same suite in build-asan/, built with AddressSanitizer + UndefinedBehaviorSanitizer
# (slower; a release runs it, .ci/run does not).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${1:-}" = "--sanitize" ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMPRESS_WERROR=ON \
    -DCOMPRESS_SANITIZE=ON >/dev/null
  cmake --build build-asan --parallel "$(nproc)"
  cd build-asan
  # Leak checks stay off: the plugin loader keeps handles open by design (docs/plugins.md).
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure --parallel "$(nproc)" --timeout 3600
  exit 0
fi
scripts/build.sh
cd build
ctest --output-on-failure --parallel "$(nproc)" --timeout 900
