#!/usr/bin/env bash
# The main job: `consec lab demo` after installing whatever is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec node dist/cli/main.js lab demo "$@"
