#!/usr/bin/env bash
# The demo command: installs stoker into .venv if needed, then runs `stoker demo` (extra arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/stoker demo "$@"
