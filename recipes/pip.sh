#!/bin/sh
# stoker recipe: the pip dependency step, into a virtualenv that stoker keeps warm.
#
#   stoker build --workspace api \
#     --key "api/pip-linux-x86_64-py311-$(sha256sum requirements.txt | cut -c1-16)" \
#     --restore-key api/pip-linux-x86_64-py311- \
#     --path .venv --path .pip-cache \
#     --file requirements.txt --file recipes/pip.sh \
#     -- sh -c 'sh recipes/pip.sh && .venv/bin/python -m pytest'
#
# requirements.txt is the lockfile: every package pinned with ==, dependencies included (the output of
# pip-compile, `uv pip compile` or `pip freeze`); with --hash lines pip checks every download.
#
# What it caches, and why:
#   .venv       the installed environment. Installing is unpacking wheels and compiling .pyc files;
#               a restored venv needs neither. Call its tools as `.venv/bin/python -m tool`: the venv
#               moved with the workspace, and this recipe fixes its scripts' #! lines for the new path.
#   .pip-cache  pip's wheel and HTTP cache (PIP_CACHE_DIR), inside the workspace so that a build never
#               reads or fills the agent's HOME (~/.cache/pip); cached so that a partial hit or a fresh
#               venv downloads only what it has never seen, and wheels built from sdists are kept.
#               pip keeps a download only when the index's response allows it (Cache-Control max-age,
#               Expires or an ETag: PyPI sends them); behind a mirror or proxy that drops those headers
#               it stays empty and costs nothing (bench/RESULTS.md, "End to end with real package
#               managers").
#
# What it does, by what the restore found (STOKER_CACHE_HIT, set by the stoker agent):
#   exact    and .venv/.stoker-recipe says the venv was made from this very requirements.txt with this
#            interpreter -> no install at all.
#   partial  (an older venv, same interpreter) -> `pip install -r requirements.txt` changes only the
#            packages whose pins changed, then what the lockfile no longer lists is uninstalled.
#   none, or a venv made by another interpreter or platform -> a fresh venv, then the install.
set -eu

export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$PWD/.pip-cache}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
python=${PYTHON:-python3}
lock=${STOKER_PIP_REQUIREMENTS:-requirements.txt}
started=$(date +%s.%N)
say() { echo "stoker-pip: $*"; }

if [ ! -f "$lock" ]; then
  say "no $lock: a build needs a pinned lockfile (pip-compile, uv pip compile or pip freeze)" >&2
  exit 1
fi
inputs=$(sha256sum "$lock" | cut -c1-64)
runtime=$("$python" -c 'import sys, sysconfig; print(sysconfig.get_platform() + "-" + sys.implementation.cache_tag + sys.abiflags)')
want="inputs=$inputs runtime=$runtime"
stamp=.venv/.stoker-recipe
have=""
if [ -f "$stamp" ]; then have=$(sed -n 1p "$stamp"); fi
hit="${STOKER_CACHE_HIT:-none}"

if [ "$hit" = exact ] && [ "$have" = "$want" ]; then
  mode=skip
elif [ -x .venv/bin/python ] && [ "${have#* }" = "runtime=$runtime" ]; then
  mode=update
elif [ -d .venv ] && [ -n "$have" ]; then
  say "restored venv was made for ${have#* runtime=}, this node runs $runtime: making a fresh one"
  mode=clean
else
  mode=clean
fi

if [ "$mode" != clean ]; then
  # The venv was made in another build's workspace: point its scripts (#! lines, activate) here.
  old=$(sed -n 's/^venv=//p' "$stamp")
  if [ -n "$old" ] && [ "$old" != "$PWD/.venv" ]; then
    grep -rlIF "$old" .venv/bin | while IFS= read -r f; do
      sed -i "s|$old|$PWD/.venv|g" "$f"
    done
  fi
fi

case "$mode" in
  skip)
    say "exact hit (${STOKER_CACHE_RESTORED_KEY:-}): .venv matches $lock; no install" ;;
  update)
    say "$hit hit (${STOKER_CACHE_RESTORED_KEY:-}): updating the restored .venv"
    .venv/bin/python -m pip install -r "$lock"
    # What the lockfile no longer lists goes (pip install only adds): a venv equal to a fresh one.
    extra=$(.venv/bin/python - "$lock" <<'EOF'
import re, sys
from importlib.metadata import distributions
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
wanted = {norm(m.group(1)) for line in open(sys.argv[1])
          if (m := re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^]]*\])?\s*(==|===|@)", line))}
keep = wanted | {"pip", "setuptools", "wheel"}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in distributions()} - keep)))
EOF
)
    if [ -n "$extra" ]; then
      # shellcheck disable=SC2086
      .venv/bin/python -m pip uninstall -y $extra
    fi ;;
  clean)
    say "no usable venv restored: fresh venv"
    rm -rf .venv
    # --copies: a venv's python is otherwise a symlink to the node's interpreter, outside the workspace,
    # and stoker refuses to save a link that leaves the tree.
    "$python" -m venv --copies .venv
    .venv/bin/python -m pip install -r "$lock" ;;
esac
if [ "$mode" != skip ]; then
  printf '%s\nvenv=%s\n' "$want" "$PWD/.venv" > "$stamp"
fi
say "dependencies ready ($mode) in $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $started }") s"
