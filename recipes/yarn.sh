#!/bin/sh
# stoker recipe: the Yarn (berry, 2 and later) dependency step, with the node-modules linker, using the
# node_modules and the package cache stoker restored.
#
#   stoker build --workspace web \
#     --key "web/yarn-linux-x64-node20-$(cat package.json yarn.lock .yarnrc.yml | sha256sum | cut -c1-16)" \
#     --restore-key web/yarn-linux-x64-node20- \
#     --path node_modules --path .yarn/cache \
#     --file package.json --file yarn.lock --file .yarnrc.yml --file recipes/yarn.sh \
#     -- sh -c 'sh recipes/yarn.sh && yarn test'
#
# .yarnrc.yml must say `nodeLinker: node-modules`. Plug'n'Play (Yarn's default) installs no node_modules:
# there the packages are the zip archives themselves, so cache .yarn/cache and run `yarn install
# --immutable` in every build (it only writes .pnp.cjs); this recipe refuses it rather than guess.
#
# What it caches, and why:
#   node_modules  the installed tree, with Yarn's record of it (node_modules/.yarn-state.yml, paths
#                 relative to the project): a restored tree leaves Yarn nothing to link.
#   .yarn/cache   the packages as zip archives, one file each, compressed. Yarn's fetch step wants every
#                 package of the lockfile in its cache, even those node_modules already holds: without
#                 it a partial hit downloads the whole tree again. Kept in the workspace
#                 (YARN_ENABLE_GLOBAL_CACHE=false) rather than ~/.yarn/berry, which is the agent's HOME
#                 and leaks between builds outside every budget; Yarn removes the archives the lockfile
#                 no longer names, so it does not grow from entry to entry.
#
# What it does, by what the restore found (STOKER_CACHE_HIT, set by the stoker agent):
#   exact    and node_modules/.stoker-recipe says the tree was installed from this very package.json,
#            yarn.lock and .yarnrc.yml on this runtime -> no install at all.
#   partial  (an older tree from a restore-key) -> `yarn install --immutable`, which fails when the
#            lockfile would change (package.json and yarn.lock disagree) and otherwise relinks only the
#            packages that differ.
#   none, or a tree made on another platform or Node ABI (native modules would not load) -> the same
#            install into an empty node_modules.
set -eu

export YARN_ENABLE_GLOBAL_CACHE=false
export YARN_CACHE_FOLDER="${YARN_CACHE_FOLDER:-$PWD/.yarn/cache}"
export YARN_GLOBAL_FOLDER="${YARN_GLOBAL_FOLDER:-$PWD/.yarn/berry}"   # its metadata cache; not in HOME
export YARN_ENABLE_TELEMETRY=0 YARN_ENABLE_PROGRESS_BARS=0
started=$(date +%s.%N)
say() { echo "stoker-yarn: $*"; }

for f in yarn.lock .yarnrc.yml; do
  if [ ! -f "$f" ]; then
    say "no $f: a build needs a lockfile and nodeLinker: node-modules in .yarnrc.yml" >&2
    exit 1
  fi
done
inputs=$(cat package.json yarn.lock .yarnrc.yml | sha256sum | cut -c1-64)
runtime=$(node -p 'const h = process.report.getReport().header;
  [process.platform, process.arch, "node-abi" + process.versions.modules, h.glibcVersionRuntime ? "glibc" : "musl"].join("-")')
want="inputs=$inputs runtime=$runtime"
stamp=node_modules/.stoker-recipe
have=""
if [ -f "$stamp" ]; then have=$(cat "$stamp"); fi
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

if [ "$mode" != skip ]; then
  linker=$(yarn config get nodeLinker)
  if [ "$linker" != node-modules ]; then
    say "nodeLinker is $linker: this recipe caches node_modules; set nodeLinker: node-modules in .yarnrc.yml" >&2
    exit 1
  fi
fi
case "$mode" in
  skip)
    say "exact hit (${STOKER_CACHE_RESTORED_KEY:-}): node_modules matches yarn.lock; no install" ;;
  update)
    say "$hit hit (${STOKER_CACHE_RESTORED_KEY:-}): updating the restored node_modules"
    yarn install --immutable ;;
  clean)
    say "no usable tree restored: clean install"
    rm -rf node_modules
    yarn install --immutable ;;
esac
if [ "$mode" != skip ]; then
  printf '%s\n' "$want" > "$stamp"
fi
say "dependencies ready ($mode) in $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $started }") s"
