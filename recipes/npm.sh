#!/bin/sh
# stoker recipe: the npm dependency step, using what stoker restored instead of throwing it away.
#
#   stoker build --workspace web \
#     --key "web/npm-$(cat package.json package-lock.json | sha256sum | cut -c1-16)" \
#     --restore-key web/npm- \
#     --path node_modules --path .npm-cache \
#     --file package.json --file package-lock.json --file recipes/npm.sh \
#     -- sh -c 'sh recipes/npm.sh && npm test'
#
# What it caches, and why:
#   node_modules  the installed tree. On a warm node writing this tree is the whole cost of `npm ci`;
#                 stoker restores it faster than npm writes it, and then npm has nothing left to do.
#   .npm-cache    npm's download cache (npm_config_cache), inside the workspace so that a build never
#                 reads or fills the agent's HOME (~/.npm), which leaks between builds outside every
#                 budget; cached so that a partial hit, or the clean install below, downloads only what
#                 it has never seen.
#
# What it does, by what the restore found (STOKER_CACHE_HIT, set by the stoker agent):
#   exact    and node_modules/.stoker-recipe says the tree was installed from this very package.json and
#            package-lock.json on this runtime -> no install at all.
#   partial  (an older tree from a restore-key) -> `npm install --no-save` changes only the packages that
#            differ (npm compares the lockfile with its own record of the tree,
#            node_modules/.package-lock.json) and never writes the lockfile. The lockfile is held to
#            package.json as `npm ci` holds it, at two points, so that an edit of one without the other
#            never passes: before the install, package-lock.json's own record of package.json's
#            dependencies (its root entry, which npm compares too) must equal package.json's, or else
#            `npm ci --dry-run` runs npm ci's check and fails here as npm ci fails; after it, every
#            package npm recorded in the tree must be at package-lock.json's version, or else `npm ci`
#            decides (it fails as it fails, or installs the lockfile's tree afresh). One npm pass where
#            running npm ci's check each time would be two (bench/RESULTS.md, "End to end with real
#            package managers").
#   none, or a tree made on another platform or Node ABI (native modules would not load) -> `npm ci`.
# Not `npm ci` on a warm node: it deletes node_modules before installing, which throws the cache away.
set -eu

export npm_config_cache="${npm_config_cache:-$PWD/.npm-cache}"
export npm_config_update_notifier=false
flags="--prefer-offline --no-audit --no-fund"
started=$(date +%s.%N)
say() { echo "stoker-npm: $*"; }

if [ ! -f package-lock.json ]; then
  say "no package-lock.json: a build needs a lockfile (run npm install and commit it)" >&2
  exit 1
fi
inputs=$(cat package.json package-lock.json | sha256sum | cut -c1-64)
runtime=$(node -p 'const h = process.report.getReport().header;
  [process.platform, process.arch, "node-abi" + process.versions.modules, h.glibcVersionRuntime ? "glibc" : "musl"].join("-")')
want="inputs=$inputs runtime=$runtime"
stamp=node_modules/.stoker-recipe
have=""
if [ -f "$stamp" ]; then have=$(cat "$stamp"); fi
hit="${STOKER_CACHE_HIT:-none}"
# `node -e "$lockfile_check" package.json`: does package-lock.json record package.json's dependencies as
# they are (no overrides, workspaces or bundled dependencies, which only npm ci's check judges)?
# `... tree`: is every package npm recorded in node_modules at package-lock.json's version?
lockfile_check='
const fs = require("fs");
const read = (f) => JSON.parse(fs.readFileSync(f, "utf8"));
const lock = read("package-lock.json").packages;
if (!lock) process.exit(1);
if (process.argv[1] === "package.json") {
  const pkg = read("package.json"), root = lock[""] || {};
  const same = (a, b) => JSON.stringify(Object.entries(a || {}).sort()) === JSON.stringify(Object.entries(b || {}).sort());
  const kinds = ["dependencies", "devDependencies", "optionalDependencies", "peerDependencies", "peerDependenciesMeta"];
  const plain = !pkg.overrides && !pkg.workspaces && !pkg.bundleDependencies && !pkg.bundledDependencies;
  process.exit(plain && kinds.every((k) => same(pkg[k], root[k])) ? 0 : 1);
}
let tree = {};
try { tree = read("node_modules/.package-lock.json").packages || {}; } catch { process.exit(1); }
const wrong = Object.entries(tree).filter(([at, p]) => at && (!lock[at] || lock[at].version !== p.version));
for (const [at, p] of wrong.slice(0, 5))
  console.log(`stoker-npm: ${at} is ${p.version}, package-lock.json says ${lock[at] ? lock[at].version : "nothing"}`);
process.exit(wrong.length ? 1 : 0);
'

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
    say "exact hit (${STOKER_CACHE_RESTORED_KEY:-}): node_modules matches package-lock.json; no install" ;;
  update)
    say "$hit hit (${STOKER_CACHE_RESTORED_KEY:-}): updating the restored node_modules"
    if ! node -e "$lockfile_check" package.json; then
      # shellcheck disable=SC2086
      npm ci --dry-run $flags > /dev/null   # fails here, as npm ci would, when the lockfile is out of step
    fi
    # shellcheck disable=SC2086
    npm install --no-save $flags
    if ! node -e "$lockfile_check" tree; then
      say "the installed tree is not package-lock.json's: npm ci decides"
      # shellcheck disable=SC2086
      npm ci $flags
    fi ;;
  clean)
    say "no usable tree restored: clean install"
    # shellcheck disable=SC2086
    npm ci $flags ;;
esac
if [ "$mode" != skip ]; then
  printf '%s\n' "$want" > "$stamp"
fi
say "dependencies ready ($mode) in $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $started }") s"
