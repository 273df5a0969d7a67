#!/bin/sh
# Builds the local test images the Docker suites deploy, offline, from Debian's
# busybox-static. When it is missing, it is installed with apt-get first (as root, or with
# sudo when that needs no password); otherwise the script stops with the one command to run:
# `sudo apt-get install -y busybox-static`. BUSYBOX names another static busybox.
#
#   berth-test/web:v1, :v2  busybox httpd on port 80; the page is written at start from the
#                           environment: `version=<v> secret=$APP_SECRET`
#   berth-test/web:bad      exits with code 1 after one second (fails any health gate)
#   berth-test/web:hc       web:v1 plus a Docker HEALTHCHECK (GET /$BERTH_TEST_HC_PATH every
#                           second; set BERTH_TEST_HC_PATH=missing to make it unhealthy)
#   berth-test/web:zd1, :zd2  like web:hc (page `version=zd1` / `zd2`), but httpd is PID 1
#                           and ignores SIGTERM, as many real apps do: `docker stop` waits
#                           the whole grace period (the zero-downtime proxy suites)
#
# `docker import` cannot set HEALTHCHECK, so web:hc is a `docker build` of a Dockerfile
# `FROM berth-test/web:v1`; the legacy builder (DOCKER_BUILDKIT=0) resolves a local FROM
# without any registry.
#
# Idempotent and fast: an image whose `berth.test.recipe` label matches this script's recipe
# is kept. Prints one line per image on success, the failing command's output otherwise.
set -eu

BUSYBOX=${BUSYBOX:-/bin/busybox}
REPO=berth-test/web

# A static busybox: Debian's `busybox` package is dynamic and would not run in the images.
is_static() {
  [ -x "$1" ] || return 1
  if command -v file >/dev/null 2>&1; then
    file -L "$1" 2>/dev/null | grep -q 'statically linked\|static-pie'
  fi
}

if ! is_static "$BUSYBOX"; then
  INSTALL="apt-get install -y busybox-static"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "build.sh: no static busybox at $BUSYBOX: installing it ($INSTALL)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    $SUDO apt-get install -y -qq --no-install-recommends busybox-static >/dev/null 2>&1 || true
  fi
  if ! is_static "$BUSYBOX"; then
    echo "build.sh: no static busybox at $BUSYBOX; install it with: sudo $INSTALL" >&2
    echo "          (or set BUSYBOX to the path of a static busybox)" >&2
    exit 1
  fi
fi

# Parallel test processes (cargo nextest) may call this at once: build one at a time.
LOCK=${TMPDIR:-/tmp}/berth-test-images.lock
if command -v flock >/dev/null 2>&1 && [ -z "${BERTH_IMAGES_LOCKED:-}" ]; then
  export BERTH_IMAGES_LOCKED=1
  exec flock "$LOCK" sh "$0" "$@"
fi

# Everything that shapes the images feeds the recipe hash, so an edit rebuilds them.
RECIPE=$( (cat "$0"; sha256sum "$BUSYBOX") | sha256sum | cut -c1-16)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Runs a command quietly; on failure shows what it printed and stops.
quiet() {
  if ! "$@" >"$WORK/out" 2>&1; then
    echo "build.sh: failed: $*" >&2
    cat "$WORK/out" >&2
    exit 1
  fi
}

is_current() {
  [ "$(docker image inspect --format '{{ index .Config.Labels "berth.test.recipe" }}' "$1" 2>/dev/null)" = "$RECIPE" ]
}

rootfs() {
  if [ ! -f "$WORK/rootfs.tar" ]; then
    mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/tmp" "$WORK/rootfs/www" "$WORK/rootfs/etc"
    cp "$BUSYBOX" "$WORK/rootfs/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
      [ "$applet" = busybox ] || ln -s busybox "$WORK/rootfs/bin/$applet"
    done
    echo 'root:x:0:0:root:/:/bin/sh' >"$WORK/rootfs/etc/passwd"
    echo 'root:x:0:' >"$WORK/rootfs/etc/group"
    chmod 1777 "$WORK/rootfs/tmp"
    tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
  fi
}

# The web server: writes the page from the environment, then serves it. The shell stays
# PID 1 and traps TERM so `docker stop` is immediate instead of waiting for SIGKILL.
WEB_CMD='CMD ["/bin/sh", "-c", "mkdir -p /www && echo \"version=$BERTH_TEST_VERSION secret=$APP_SECRET\" > /www/index.html && httpd -f -p 80 -h /www & trap \"kill $! 2>/dev/null; exit 0\" TERM INT; wait"]'
BAD_CMD='CMD ["/bin/sh", "-c", "sleep 1; exit 1"]'
# PID 1 is httpd itself: the kernel delivers no SIGTERM to a PID 1 without a handler.
ZD_CMD='CMD ["/bin/sh", "-c", "mkdir -p /www && echo \"version=$BERTH_TEST_VERSION secret=$APP_SECRET\" > /www/index.html && exec httpd -f -p 80 -h /www"]'

import_image() { # tag, version, cmd
  tag=$1
  if is_current "$REPO:$tag"; then
    echo "$REPO:$tag up to date"
    return
  fi
  rootfs
  quiet docker import \
    --change "$3" \
    --change 'EXPOSE 80' \
    --change "ENV BERTH_TEST_VERSION=$2" \
    --change "LABEL berth.test.recipe=$RECIPE" \
    "$WORK/rootfs.tar" "$REPO:$tag"
  echo "$REPO:$tag built"
}

import_image v1 v1 "$WEB_CMD"
import_image v2 v2 "$WEB_CMD"
import_image bad bad "$BAD_CMD"

if is_current "$REPO:hc"; then
  echo "$REPO:hc up to date"
else
  mkdir -p "$WORK/hc"
  cat >"$WORK/hc/Dockerfile" <<EOF
FROM $REPO:v1
ENV BERTH_TEST_VERSION=hc BERTH_TEST_HC_PATH=
HEALTHCHECK --interval=1s --timeout=1s --retries=2 CMD wget -q -O /dev/null "http://127.0.0.1/\$BERTH_TEST_HC_PATH" || exit 1
LABEL berth.test.recipe=$RECIPE
EOF
  quiet env DOCKER_BUILDKIT=0 docker build -q -t "$REPO:hc" "$WORK/hc"
  echo "$REPO:hc built"
fi

for zd in zd1 zd2; do
  if is_current "$REPO:$zd"; then
    echo "$REPO:$zd up to date"
    continue
  fi
  mkdir -p "$WORK/$zd"
  cat >"$WORK/$zd/Dockerfile" <<EOF
FROM $REPO:v1
ENV BERTH_TEST_VERSION=$zd BERTH_TEST_HC_PATH=
$ZD_CMD
HEALTHCHECK --interval=1s --timeout=1s --retries=2 CMD wget -q -O /dev/null "http://127.0.0.1/\$BERTH_TEST_HC_PATH" || exit 1
LABEL berth.test.recipe=$RECIPE
EOF
  quiet env DOCKER_BUILDKIT=0 docker build -q -t "$REPO:$zd" "$WORK/$zd"
  echo "$REPO:$zd built"
done
