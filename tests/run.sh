#!/usr/bin/env bash
# The whole berth test suite on a fresh machine: installs what the tests need, builds the
# binaries the end-to-end tests start, and runs every test. README.md and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."

# A full build and test run writes about 6 GiB (the target dir is ~5 GiB, then the provider
# venv, test images and data dirs); say so before starting rather than failing half-way on
# ENOSPC.
avail_kib=$(df -Pk . | awk 'NR==2 {print $4}')
printf '==> disk: %s GiB free here (a full run needs about 6 GiB)\n' "$((avail_kib / 1048576))"
if [ "$avail_kib" -lt $((6 * 1048576)) ]; then
  printf '==> warning: less than 6 GiB free: the build may fail with "No space left on device"\n'
fi

log() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages the suites use (installed only when missing):
#   docker-registry  a real private registry for pulls with credentials (the Docker suites)
#   busybox-static   the static busybox test images are built from (the Docker suites)
#   apache2-utils    htpasswd, for the registry's basic auth
#   curl             the webhook CI-script test
# Python packages (provider peers and vendor SDKs) go into a venv: tests/providers/setup.sh.
need_pkgs=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need_pkgs+=(docker-registry)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need_pkgs+=(busybox-static)
command -v htpasswd >/dev/null 2>&1 || need_pkgs+=(apache2-utils)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v file >/dev/null 2>&1 || need_pkgs+=(file)
# Pebble, the ACME test server (and its DNS), the peer of the ACME suite.
[ -x /usr/bin/pebble ] && [ -x /usr/bin/pebble-challtestsrv ] || need_pkgs+=(pebble)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

log "installing the provider test peers (OpenBao, moto, the vendor SDKs) into a venv"
# Exports BERTH_PROVIDER_PYTHON and BERTH_BAO_BIN for the provider suites.
eval "$(bash tests/providers/setup.sh)"

log "checking formatting and the workspace lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

log "building the binaries the end-to-end tests start, with the test targets"
# One invocation for binaries and tests: dev-dependencies unify features once, so every
# dependency is compiled once (not once for the binaries and again for the tests), which halves
# the build's time and its disk use.
cargo build --workspace --bins --tests

log "running every test"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest does not run doctests
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
