#!/usr/bin/env bash
# Create the virtual environment `make` installs into: deploy/make-venv.sh VENV [PYTHON]
#
# With no PYTHON (the Makefile's PY unset), the distribution's /usr/bin/python3 comes
# first, then the first python3 on PATH. Debian builds its interpreter with
# profile-guided and link-time optimisation, statically linked (its changelog;
# sysconfig does not show those flags); pyenv's default build, what a pyenv shim on
# PATH runs, has neither and calls into libpython3.11.so. Every figure of the service
# is interpreter-bound: the same code, runs interleaved, gave processor builds of
# 86-94k events/s against 75-77k, decoding +30 %, replay 7.0 against 7.9-9.3 us a
# record (README, The two commands).
#
# A candidate must be 3.11 or newer, carry its C headers (the pure core compiles
# against them; without, it would run as plain Python, about twice as slow) and be
# able to make a venv with pip (Debian splits that into python3-venv).
set -euo pipefail

venv=${1:?usage: make-venv.sh VENV [PYTHON]}
wanted=${2:-}

usable() {
  "$1" - <<'PY' >/dev/null 2>&1
import os, sys, sysconfig
assert sys.version_info >= (3, 11)
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
PY
}

if [ -n "$wanted" ]; then
  candidates=("$wanted")
else
  candidates=(/usr/bin/python3 "$(command -v python3 || true)")
fi
for py in "${candidates[@]}"; do
  [ -n "$py" ] && command -v "$py" >/dev/null || continue
  if [ -z "$wanted" ] && ! usable "$py"; then
    continue
  fi
  if "$py" -m venv "$venv" 2>/dev/null; then
    echo "make-venv: $venv from $py ($("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])'))" >&2
    exit 0
  fi
  echo "make-venv: $py cannot create a venv (Debian: apt-get install python3-venv); trying the next" >&2
done
echo "make-venv: no usable Python 3.11+ (set PY=/path/to/python3.11 or install python3-venv and python3-dev)" >&2
exit 1
