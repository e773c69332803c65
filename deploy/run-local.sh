#!/usr/bin/env bash
# `make run`: start the collector stub (demo topology and a slow update stream),
# the persistor and one graph service on this machine; Ctrl-C stops them all.
# Logs go to .run/*.log. `make stop` stops a run left in the background.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-.run}
BIN=${VENV:-.venv}/bin
mkdir -p "$RUN_DIR"

stop_all() {
  for f in "$RUN_DIR"/*.pid; do
    [ -e "$f" ] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}
if [ "${1:-}" = stop ]; then stop_all; exit 0; fi
stop_all
trap 'echo; echo "stopping..."; stop_all; exit 0' INT TERM

start() {  # name, command...
  local name=$1; shift
  "$@" >"$RUN_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

export COLLECTOR_RATE=${COLLECTOR_RATE:-5}
start collector "$BIN/collector-stub"
if [ -x "$BIN/persistor-service" ] && "$BIN/python" -c "import persistor_service.main" 2>/dev/null; then
  start persistor "$BIN/persistor-service"
fi
start graph "$BIN/graph-service"

port=${HTTP_PORT:-8999}
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 1
done
cat <<MSG

The system is up (logs in $RUN_DIR/):
  status     http://127.0.0.1:$port/status
  topology   http://127.0.0.1:$port/v1/topology
  alarms     http://127.0.0.1:$port/v1/alarms
  metrics    http://127.0.0.1:$port/metrics
Ctrl-C stops everything.
MSG
wait
