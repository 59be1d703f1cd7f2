#!/usr/bin/env bash
# Create .venv and install stoker with its test dependencies (sourced by test.sh and demo.sh).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
# System packages some tests and the demo need (Debian): installed only when missing.
if [ -x scripts/system_deps.sh ]; then
  scripts/system_deps.sh
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "stoker needs Python 3.11 or newer (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.stoker-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
    || [ agent/cache/_fastio.c -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
if ! .venv/bin/python -c 'import stoker.agent.cache._fastio' 2>/dev/null; then
  echo "setup.sh: the cache's compiled writer (agent/cache/_fastio.c) is not built: restores use the slower" \
       "Python writer, and the tests that check it fail. Install gcc and run this again." >&2
  rm -f "$stamp"
fi
