#!/bin/sh
# The container tests (pytest -m containers) need podman and its helpers. This makes sure they
# are there: as root with apt-get (CI), the missing Debian packages are installed.
#   exit 0: the tools are there (installed now if need be): run every test;
#   exit 1: they are missing and cannot be installed here (no root): the caller runs the other
#           tests and says so; with CI=true, missing tools are an error instead (exit 2).
# Why these packages: runc is named so that apt does not pick crun (which fails on hosts with
# cgroups in hybrid mode); catatonit is what `--init` runs; debootstrap builds a base image
# where no registry is reachable. Rootless extras (uidmap, slirp4netns, fuse-overlayfs) are not
# needed as root.
set -eu
PACKAGES="podman runc catatonit debootstrap"

missing=""
if command -v dpkg-query >/dev/null 2>&1; then
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
elif ! command -v podman >/dev/null 2>&1; then
    missing=" podman"
fi
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "container tests: installing$missing (apt-get, as root)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    exit 0
fi

echo "container tests: missing$missing. Install as root:" >&2
echo "    apt-get install --no-install-recommends$missing" >&2
if [ "${CI:-}" = "true" ]; then
    echo "CI=true: the container tests must run; failing." >&2
    exit 2
fi
echo "Running the other tests now; the container tests (-m containers) are NOT run." >&2
exit 1
