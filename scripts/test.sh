#!/usr/bin/env bash
# The tests: set up, build, and run every test with ctest (unit, golden, bad-input corpus,
# ONNX Runtime cross-checks). Needs ../shared (models and data) beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd build
ctest --output-on-failure --parallel "$(nproc)" --timeout 900
