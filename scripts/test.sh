#!/usr/bin/env bash
# The whole test suite: set-up, lint, type check, then every test (unit, native addon, lab, strongSwan).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
echo "[test] lint (eslint, prettier)"
npx --no-install eslint .
npx --no-install prettier --check .
echo "[test] type check (tsc)"
npx --no-install tsc -p tsconfig.json
echo "[test] running tests"
mapfile -t files < <(find test -name '*.test.ts' | sort)
tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
rc=0
node --import tsx --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" \
  "${files[@]}" || rc=$?
count() { awk -v k="# $1" 'index($0, k " ") == 1 { n = $3 } END { print n + 0 }' "$tap"; }
pass=$(count pass)
failed=$(($(count fail) + $(count cancelled)))
echo "$pass passed, $failed failed, $(count skipped) skipped"
if [ "$rc" -eq 0 ] && [ "$failed" -gt 0 ]; then rc=1; fi
exit "$rc"
