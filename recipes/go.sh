#!/bin/sh
# stoker recipe: the Go dependency step, with Go's module cache and build cache in the workspace.
#
#   stoker build --workspace api \
#     --key "api/go-linux-amd64-go$(go env GOVERSION)-$(cat go.sum | sha256sum | cut -c1-16)" \
#     --restore-key "api/go-linux-amd64-go$(go env GOVERSION)-" \
#     --path .gomodcache --path .gocache \
#     --file go.mod --file go.sum --file recipes/go.sh \
#     -- sh -c '. recipes/go.sh && go build ./... && go test ./...'
#
# Sourced (". recipes/go.sh"), so that the variables below reach the go commands after it.
#
# What it caches, and why:
#   .gomodcache  the module cache (GOMODCACHE): every module go.sum names, downloaded and unpacked once.
#   .gocache     Go's build cache (GOCACHE): compiled packages, the standard library's included. With
#                -trimpath (set below) its entries do not depend on where the workspace is, so a cache
#                restored into a new workspace is used as it is (measured: no package of the program or
#                its modules recompiled; tests/recipes/test_go.py).
# Both inside the workspace, so that a build never reads or fills the agent's HOME (~/go, ~/.cache/go-build).
#
# What it does, by what the restore found (STOKER_CACHE_HIT, set by the stoker agent):
#   exact    -> nothing to download: the modules go.sum names are in .gomodcache.
#   partial  -> `go mod download`: only the modules the restored cache lacks are fetched.
#   none     -> `go mod download`: every module.
# -mod=readonly (set below) makes go fail, as it fails in CI anywhere, when go.mod and go.sum disagree with
# the code instead of updating them; `go mod verify` checks the cached modules against go.sum.
export GOMODCACHE="${GOMODCACHE:-$PWD/.gomodcache}"
export GOCACHE="${GOCACHE:-$PWD/.gocache}"
export GOFLAGS="${GOFLAGS:--trimpath -mod=readonly}"
stoker_go_started=$(date +%s.%N)

if [ ! -f go.mod ]; then
  echo "stoker-go: no go.mod here" >&2
  return 1 2>/dev/null || exit 1
fi
case "${STOKER_CACHE_HIT:-none}" in
  exact)
    echo "stoker-go: exact hit (${STOKER_CACHE_RESTORED_KEY:-}): modules and build cache restored; no download" ;;
  *)
    echo "stoker-go: ${STOKER_CACHE_HIT:-none} hit: downloading the modules the cache lacks"
    go mod download || { return 1 2>/dev/null || exit 1; } ;;
esac
go mod verify > /dev/null || { return 1 2>/dev/null || exit 1; }
echo "stoker-go: dependencies ready in $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $stoker_go_started }") s"
