#!/usr/bin/env bash
# The test command: sets up everything the suite needs on a fresh machine, then runs it.
#   ./scripts/test.sh            the whole suite
#   ./scripts/test.sh -k cache   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
