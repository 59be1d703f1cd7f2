#!/bin/sh
# stoker recipe: the uv dependency step (a project with pyproject.toml and uv.lock), into a virtualenv
# that stoker keeps warm.
#
#   stoker build --workspace api \
#     --key "api/uv-linux-x86_64-py311-$(cat pyproject.toml uv.lock | sha256sum | cut -c1-16)" \
#     --restore-key api/uv-linux-x86_64-py311- \
#     --path .venv --path .uv-cache \
#     --file pyproject.toml --file uv.lock --file recipes/uv.sh \
#     -- sh -c 'sh recipes/uv.sh && .venv/bin/python -m pytest'
#
# What it caches, and why:
#   .venv      the installed environment, made relocatable (`uv venv --relocatable`: its scripts find
#              their interpreter relative to themselves) with a copy of the interpreter rather than uv's
#              symlink to it, which leaves the workspace and which stoker refuses to save. Call its tools
#              as `.venv/bin/tool` or `.venv/bin/python -m tool`.
#   .uv-cache  uv's cache (UV_CACHE_DIR), inside the workspace so that a build never reads or fills the
#              agent's HOME (~/.cache/uv), which leaks between builds outside every budget. Before it is
#              saved, `uv cache prune --ci` empties it of what is quick to download again (wheels from
#              the index, unpacked) and keeps the wheels uv built from source distributions, which are
#              slow to build again: the cache does not hold the venv's files a second time.
#
# What it does, by what the restore found (STOKER_CACHE_HIT, set by the stoker agent):
#   exact    and .venv/.stoker-recipe says the venv was made from this very pyproject.toml and uv.lock
#            with this interpreter -> no install at all.
#   partial  (an older venv, same interpreter) -> `uv sync --locked`, which fails when uv.lock no longer
#            matches pyproject.toml and otherwise installs and uninstalls only the packages that differ.
#   none, or a venv made by another interpreter or platform -> a fresh venv, then `uv sync --locked`.
set -eu

export UV_CACHE_DIR="${UV_CACHE_DIR:-$PWD/.uv-cache}"
export UV_PROJECT_ENVIRONMENT="$PWD/.venv"
# An interpreter uv downloads would land in HOME (~/.local/share/uv): use the node's own, named by PYTHON.
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
export UV_NO_PROGRESS=1
python=${PYTHON:-python3}
started=$(date +%s.%N)
say() { echo "stoker-uv: $*"; }

if [ ! -f uv.lock ]; then
  say "no uv.lock: a build needs a lockfile (run uv lock and commit it)" >&2
  exit 1
fi
inputs=$(cat pyproject.toml uv.lock | sha256sum | cut -c1-64)
runtime=$("$python" -c 'import sys, sysconfig; print(sysconfig.get_platform() + "-" + sys.implementation.cache_tag + sys.abiflags)')
want="inputs=$inputs runtime=$runtime"
stamp=.venv/.stoker-recipe
have=""
if [ -f "$stamp" ]; then have=$(cat "$stamp"); fi
hit="${STOKER_CACHE_HIT:-none}"

if [ "$hit" = exact ] && [ "$have" = "$want" ]; then
  mode=skip
elif [ -x .venv/bin/python ] && [ "${have#* }" = "runtime=$runtime" ]; then
  mode=update   # an older venv, or an exact entry whose stamp disagrees (a key without pyproject.toml)
elif [ -d .venv ] && [ -n "$have" ]; then
  say "restored venv was made for ${have#* runtime=}, this node runs $runtime: making a fresh one"
  mode=clean
else
  mode=clean
fi

case "$mode" in
  skip)
    say "exact hit (${STOKER_CACHE_RESTORED_KEY:-}): .venv matches uv.lock; no install" ;;
  update)
    say "$hit hit (${STOKER_CACHE_RESTORED_KEY:-}): updating the restored .venv"
    uv sync --locked ;;
  clean)
    say "no usable venv restored: fresh venv"
    rm -rf .venv
    uv venv --relocatable --python "$python" .venv
    interpreter=$(readlink -f .venv/bin/python)
    rm .venv/bin/python
    cp "$interpreter" .venv/bin/python
    uv sync --locked ;;
esac
if [ "$mode" != skip ]; then
  printf '%s\n' "$want" > "$stamp"
  uv cache prune --ci
fi
say "dependencies ready ($mode) in $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $started }") s"
