#!/usr/bin/env bash
# CLI golden tests: each tests/golden/cli/NAME.cmd holds compress arguments; NAME.out holds
# the expected stdout, stderr and exit code. Run from the project root.
# usage: run_golden.sh COMPRESS_BINARY [--update]
set -uo pipefail
compress=$1
update=${2:-}
dir=$(dirname "$0")/cli
passed=0
failed=0
for cmd in "$dir"/*.cmd; do
  name=$(basename "$cmd" .cmd)
  expected="$dir/$name.out"
  actual=$(eval "\"$compress\" $(cat "$cmd")" 2>&1; echo "exit code: $?")
  if [ "$update" = "--update" ]; then
    printf '%s\n' "$actual" > "$expected"
    continue
  fi
  if diff -u "$expected" <(printf '%s\n' "$actual") > /tmp/golden-diff.$$; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    cat /tmp/golden-diff.$$
  fi
done
rm -f /tmp/golden-diff.$$
[ "$update" = "--update" ] && { echo "updated goldens in $dir"; exit 0; }
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
