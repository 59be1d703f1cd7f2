#!/usr/bin/env bash
# The test command: sets up everything the suite needs on a fresh machine, then runs it.
#   ./scripts/test.sh            the static checks (scripts/lint.sh), then the whole suite
#   ./scripts/test.sh -k cache   extra arguments go to pytest (and the static checks are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if [ "$#" -eq 0 ]; then
  ./scripts/lint.sh
fi
exec .venv/bin/python -m pytest "$@"
