#!/bin/sh
# stoker recipe: the pnpm dependency step, using the node_modules stoker restored.
#
#   stoker build --workspace web \
#     --key "web/pnpm-linux-x64-node20-$(cat package.json pnpm-lock.yaml | sha256sum | cut -c1-16)" \
#     --restore-key web/pnpm-linux-x64-node20- \
#     --path node_modules \
#     --file package.json --file pnpm-lock.yaml --file recipes/pnpm.sh \
#     -- sh -c 'sh recipes/pnpm.sh && pnpm test'
#
# What it caches, and why:
#   node_modules  the installed tree. With pnpm's default (isolated) linker every package lives once in
#                 node_modules/.pnpm and the top level links into it, so the tree holds every file the
#                 lockfile needs and nothing else; a restored tree leaves pnpm nothing to do.
#   not the store pnpm's content-addressable store holds the same files again (pnpm hard-links them into
#                 node_modules/.pnpm): cached beside node_modules, a restore would write every file
#                 twice. A partial hit needs only the packages that changed, which pnpm downloads. The
#                 store (and pnpm's metadata cache and state) still live in the workspace, never in the
#                 agent's HOME (~/.local/share/pnpm, ~/.cache/pnpm), which leaks between builds outside
#                 every budget.
#
# What it does, by what the restore found (STOKER_CACHE_HIT, set by the stoker agent):
#   exact    and node_modules/.stoker-recipe says the tree was installed from this very package.json and
#            pnpm-lock.yaml on this runtime -> no install at all.
#   partial  (an older tree from a restore-key) -> `pnpm install --frozen-lockfile`, which fails when
#            package.json and pnpm-lock.yaml disagree and otherwise adds and removes only the packages
#            that differ. pnpm records the store's absolute path in node_modules/.modules.yaml and
#            recreates the whole tree when it differs ("Unexpected store location"); the workspace's
#            path changes from build to build, so the recipe points that record at this workspace first.
#   none, or a tree made on another platform or Node ABI (native modules would not load) -> a fresh
#            `pnpm install --frozen-lockfile`.
set -eu

# pnpm's settings through its environment, as pnpm 12 (the version tested) reads them; pnpm 10 and
# older take them as npm_config_store_dir and so on instead (not tested here).
export pnpm_config_store_dir="${pnpm_config_store_dir:-$PWD/.pnpm-store}"
export pnpm_config_cache_dir="${pnpm_config_cache_dir:-$PWD/.pnpm-cache}"
export pnpm_config_state_dir="${pnpm_config_state_dir:-$PWD/.pnpm-state}"
export pnpm_config_update_notifier=false
started=$(date +%s.%N)
say() { echo "stoker-pnpm: $*"; }

if [ ! -f pnpm-lock.yaml ]; then
  say "no pnpm-lock.yaml: a build needs a lockfile (run pnpm install and commit it)" >&2
  exit 1
fi
inputs=$(cat package.json pnpm-lock.yaml | sha256sum | cut -c1-64)
runtime=$(node -p 'const h = process.report.getReport().header;
  [process.platform, process.arch, "node-abi" + process.versions.modules, h.glibcVersionRuntime ? "glibc" : "musl"].join("-")')
want="inputs=$inputs runtime=$runtime"
stamp=node_modules/.stoker-recipe
have=""
if [ -f "$stamp" ]; then have=$(sed -n 1p "$stamp"); fi
hit="${STOKER_CACHE_HIT:-none}"

if [ "$hit" = exact ] && [ "$have" = "$want" ]; then
  mode=skip
elif [ -d node_modules ] && [ "${have#* }" = "runtime=$runtime" ]; then
  mode=update   # an older tree, or an exact entry whose stamp disagrees (a key without package.json)
elif [ -d node_modules ] && [ -n "$have" ]; then
  say "restored tree was made for ${have#* runtime=}, this node runs $runtime: installing afresh"
  mode=clean
else
  mode=clean
fi

case "$mode" in
  skip)
    say "exact hit (${STOKER_CACHE_RESTORED_KEY:-}): node_modules matches pnpm-lock.yaml; no install" ;;
  update)
    say "$hit hit (${STOKER_CACHE_RESTORED_KEY:-}): updating the restored node_modules"
    old=$(sed -n 's/^workspace=//p' "$stamp")
    if [ -n "$old" ] && [ "$old" != "$PWD" ] && [ -f node_modules/.modules.yaml ]; then
      sed -i "s|$old/|$PWD/|g" node_modules/.modules.yaml
    fi
    pnpm install --frozen-lockfile --prefer-offline ;;
  clean)
    say "no usable tree restored: clean install"
    rm -rf node_modules
    pnpm install --frozen-lockfile --prefer-offline ;;
esac
if [ "$mode" != skip ]; then
  printf '%s\nworkspace=%s\n' "$want" "$PWD" > "$stamp"
fi
say "dependencies ready ($mode) in $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $started }") s"
