#!/usr/bin/env bash
# `make containers` (part of `make test`): prepare this machine for the
# container tests with the sandbox's setup script (podman, podman-compose,
# docker-compose-validate, a local base image), when it is there and we are
# root. Never fails the build: without it the container tests skip, saying why.
#   usage: deploy/prepare-containers.sh [path/to/setup.sh]
set -uo pipefail

setup=${1:-$(dirname "$0")/../../shared/containers/setup.sh}
say() { echo "containers: $*" >&2; }

if docker info >/dev/null 2>&1; then
  say "a Docker engine is running: nothing to prepare"
  exit 0
fi
if [ ! -f "$setup" ]; then
  say "no $setup here; the container tests use whatever engine there is, or skip"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "not root: skipping $setup; the container tests skip unless podman already works"
  exit 0
fi
# podman's network backend (netavark) needs iptables, which setup.sh does not
# install: without it every container start fails with "netavark: No such
# file or directory".
if command -v apt-get >/dev/null && ! command -v iptables >/dev/null; then
  say "installing iptables (needed by podman's netavark)"
  { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables; } >/dev/null 2>&1 ||
    say "WARNING: could not install iptables"
fi
log=$(mktemp)
if bash "$setup" >"$log" 2>&1; then
  say "ready: $(grep -E ' (OK|SKIPPED)$' "$log" | tr '\n' ';' | sed 's/;$//')"
  rm -f "$log"
  exit 0
fi
say "WARNING: $setup failed; the container tests will skip or fail with its reason:"
tail -n 20 "$log" >&2
rm -f "$log"
exit 0
