#!/usr/bin/env bash
# The static checks (.ci/run runs them before the tests; so can you): ruff, mypy and the layer contracts.
#   ./scripts/lint.sh
# mypy and import-linter read modules by their installed names (stoker.coordinator.…), which pyproject's
# package-dir maps from the top-level folders; a shadow tree of links gives them that layout, and their
# messages are mapped back to the files in this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=.venv/bin
for tool in ruff mypy lint-imports; do
  if [ ! -x "$bin/$tool" ]; then
    echo "lint.sh: $bin/$tool is missing: run ./scripts/test.sh once (or: $bin/pip install -e '.[test]')" >&2
    exit 1
  fi
done
shadow=$(mktemp -d)
trap 'rm -rf "$shadow"' EXIT
"$bin/python" scripts/shadow_tree.py "$shadow"
status=0
echo "== ruff check" >&2
"$bin/ruff" check . || status=1
echo "== mypy" >&2
(cd "$shadow" && "$root/$bin/mypy" --config-file "$root/pyproject.toml" -p stoker) 2>&1 \
  | "$bin/python" scripts/shadow_tree.py --unmap "$shadow" || status=1
echo "== import-linter" >&2
(cd "$shadow" && PYTHONPATH="$shadow" "$root/$bin/lint-imports" --no-cache "$root/.importlinter") \
  || status=1
exit $status
