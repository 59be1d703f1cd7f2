#!/usr/bin/env bash
# Debian packages some parts of stoker need, installed only when missing (idempotent):
#   haproxy     the load balancer in front of the local-process rollout target (tests, demo, bench)
#   prometheus  the real Prometheus the PromQL metrics-provider test scrapes the sample service with, and
#               the monitoring test scrapes a loopback fleet with; its promtool checks and tests the
#               alerting rules (tests/deploy/test_monitoring.py)
#   gcc         compiles the cache's file writer (agent/cache/_fastio.c) when pip installs stoker
#   podman      runs each build in its own container (the agent's `podman` executor)
#   catatonit   the init (podman run --init) that reaps a build's orphans and takes them down with it
#   runc        the OCI runtime podman uses here (crun refuses cgroup v1/hybrid hosts)
#   iptables    the rules that keep builds on their bridge off this machine's own addresses
#   docker-registry  a local OCI registry on 127.0.0.1 the sandbox tests push their test image to
#   busybox     (busybox-static) the static binary the sandbox tests build their tiny image from
#   node, npm   the real package manager the recipe tests (tests/recipes) and bench/e2e.py run; pnpm and
#               Yarn come from the npm registry through it
#   go          (golang-go) the real Go toolchain the Go recipe's test runs
#   chromium    headless Chromium: the tests render the HTML reports (stoker plan, stoker report dead-time)
#               and check the screenshot's pixels
# Runs with no stdin, as root (or through sudo when available). While another apt/dpkg process holds
# the lock (unattended-upgrades, a parallel setup), it waits and retries for up to ~10 minutes.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

declare -A wanted=([haproxy]=haproxy [prometheus]=prometheus [gcc]='gcc libc6-dev'
  [podman]=podman [catatonit]=catatonit [runc]=runc [iptables]=iptables [docker-registry]=docker-registry
  [busybox]=busybox-static
  [node]=nodejs [npm]=npm [go]=golang-go [chromium]=chromium)   # command -> Debian package
missing=()
for cmd in "${!wanted[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    read -r -a packages <<<"${wanted[$cmd]}"
    missing+=("${packages[@]}")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "system_deps.sh: need root (or passwordless sudo) to install: ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps.sh: no apt-get here; install ${missing[*]} with this system's package manager" >&2
  exit 1
fi

# Run an apt command, retrying while another apt/dpkg process holds its lock (exit 100 + lock message).
apt_retry() {
  local deadline=$((SECONDS + 600)) out rc
  while true; do
    set +e
    out=$("${sudo[@]}" "$@" -o DPkg::Lock::Timeout=30 </dev/null 2>&1)
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
      return 0
    fi
    if grep -qiE 'could not get lock|unable to lock|is another process using it|dpkg was interrupted|lock-frontend' <<<"$out" \
        && [ "$SECONDS" -lt "$deadline" ]; then
      echo "system_deps.sh: another apt/dpkg process holds the lock; waiting to run: $*" >&2
      sleep 10
      continue
    fi
    printf '%s\n' "$out" >&2
    return "$rc"
  done
}

echo "system_deps.sh: installing ${missing[*]} (Debian packages)" >&2
apt_retry apt-get update -q
apt_retry apt-get install -y -q --no-install-recommends "${missing[@]}"

for cmd in "${!wanted[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "system_deps.sh: $cmd is still missing after installing ${wanted[$cmd]}" >&2
    exit 1
  fi
done
