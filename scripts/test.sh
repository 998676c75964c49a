#!/usr/bin/env bash
# The whole test suite: set-up, lint, type check, then every test (unit, native addon, lab, strongSwan).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
echo "[test] lint (eslint, prettier)"
npx --no-install eslint . && npx --no-install prettier --check .
echo "[test] type check (tsc)"
npx --no-install tsc -p tsconfig.json
echo "[test] running tests"
mapfile -t files < <(find test -name '*.test.ts' | sort)
exec node --import tsx --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
