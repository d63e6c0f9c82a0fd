#!/usr/bin/env bash
# Plugin tests: installs compress into a temporary prefix, builds plugins/example against the
# installed CMake package and runs its own test, then checks the loader's error cases (each a
# one-line error with exit code 2) with the broken plugins from tests/plugins/bad_plugin.cc.
# usage: run_plugin_tests.sh BUILD_DIR WORK_DIR BAD_PLUGIN_DIR MODEL
set -euo pipefail
build=$(realpath "$1")
work=$(realpath -m "$2")
bad=$(realpath "$3")
model=$(realpath "$4")
src=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
compress="$work/prefix/bin/compress"
cmake -S "$src/plugins/example" -B "$work/example" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCOMPRESS_BINARY="$compress" -DTEST_MODEL="$model" >/dev/null
cmake --build "$work/example" >/dev/null
ctest --test-dir "$work/example" --output-on-failure
plugin="$work/example/clip_channels.so"

failed=0
expect_error() {  # expect_error NAME NEEDLE COMMAND...
  local name=$1 needle=$2
  shift 2
  local err rc=0
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  if [ "$rc" -ne 2 ] || [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ] || [[ "$err" != *"$needle"* ]]; then
    echo "FAIL $name: exit $rc, stderr: $err"
    failed=$((failed + 1))
  else
    echo "ok   $name: $err"
  fi
}
run() { "$compress" run "$model" -q --dry-run -p cast -o "$work/out" "$@"; }
expect_error "missing file" "no such file" run --plugin "$work/nope.so"
expect_error "not a shared library" "cannot load" run --plugin "$src/README.md"
expect_error "missing symbol" "no compress_plugin_v1 symbol" run --plugin "$work/prefix/lib/libcompress_core.so"
expect_error "entry symbol is data" "compress_plugin_v1 is not a function" run --plugin "$bad/bad_plugin_data_symbol.so"
expect_error "ABI mismatch" "plugin ABI version 99" run --plugin "$bad/bad_plugin_abi.so"
expect_error "version mismatch" "built against compress 0.0.0-other" run --plugin "$bad/bad_plugin_version.so"
expect_error "registration error" "registration failed: the test plugin refuses to register" \
  run --plugin "$bad/bad_plugin_register.so"
expect_error "duplicate of a built-in pass" "pass 'cast' is already registered (by builtin)" \
  run --plugin "$bad/bad_plugin_duplicate.so"
expect_error "same plugin twice" "pass 'noop-plugin' is already registered" \
  run --plugin "$bad/good_plugin.so" --plugin "$bad/good_plugin.so"
expect_error "COMPRESS_PLUGIN_PATH applies too" "pass 'clip-channels' is already registered" \
  env COMPRESS_PLUGIN_PATH="$work/example" "$compress" run "$model" -q --dry-run -p cast -o "$work/out" \
  --plugin "$plugin"
# A plugin found through COMPRESS_PLUGIN_PATH (a directory) is listed with its origin.
COMPRESS_PLUGIN_PATH="$bad/good" "$compress" passes | grep -q "^noop-plugin .*\[$bad/good/good_plugin.so\]" ||
  { echo "FAIL COMPRESS_PLUGIN_PATH directory listing"; failed=$((failed + 1)); }
[ "$failed" -eq 0 ]
