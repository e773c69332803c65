#!/usr/bin/env bash
# The container failover drill: bring the docker-compose.yml stack up, wait for
# exactly one active graph, let events flow, record the active's topology and
# last seq, kill the active container, time how long the other graph takes to
# answer /readyz, check it lost nothing, bring the victim back as a standby;
# KILLS times, alternating victims. Prints a JSON report on stdout (progress on
# stderr); exit status 0 only when the report says ok. Always `down -v` at the
# end, unless KEEP=1.
#
# Environment (all optional):
#   COMPOSE        compose command: "docker compose", "docker-compose" or
#                  "podman-compose" (default: the first that works here)
#   ENGINE         docker or podman (default: follows COMPOSE)
#   COMPOSE_PROJECT_NAME  project name (default rca-drill)
#   KILLS          number of kills (default 2)
#   KILL_HOW       compose: `compose kill -s KILL <service>` (the engine counts
#                  it as a manual stop: the drill starts the victim again);
#                  crash: SIGKILL of the service process inside the container
#                  (the restart policy brings it back). A comma list cycles.
#   TRAFFIC        flowing: events keep arriving through the kill (the new graph
#                  must hold the old one plus what arrived since); quiesced: the
#                  collector is paused around the kill (the graphs must be equal).
#                  A comma list cycles. Default flowing.
#   FLOW_S         seconds of events before each kill (default 5)
#   READY_TIMEOUT  seconds for a graph to become ready (default 120)
#   BUILD          1: build the images on `up` (default); 0: use what exists
#   KEEP           1: leave the stack running afterwards
#   DRILL_LOG_DIR  where the report and, on failure, container logs go
#                  (default drill-logs/compose)
#   GRAPH_A_PORT, GRAPH_B_PORT, BASE_IMAGE, POSTGRES_IMAGE, RABBITMQ_IMAGE and
#   the rest of .env.example are passed on to compose.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "compose-drill: $*" >&2; }

detect_compose() {
  if [ -n "${COMPOSE:-}" ]; then echo "$COMPOSE"; return; fi
  if docker compose version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null && docker info >/dev/null 2>&1; then
    echo "docker-compose"
  elif command -v podman-compose >/dev/null && command -v podman >/dev/null; then
    echo "podman-compose"
  else
    return 1
  fi
}

COMPOSE=$(detect_compose) || {
  say "no compose implementation with a running engine found" \
      "(docker compose, docker-compose or podman-compose); set COMPOSE"
  exit 2
}
case "$COMPOSE" in
  *podman*) ENGINE=${ENGINE:-podman} ;;
  *) ENGINE=${ENGINE:-docker} ;;
esac
PROJECT=${COMPOSE_PROJECT_NAME:-rca-drill}
export COMPOSE_PROJECT_NAME=$PROJECT
export GRAPH_A_PORT=${GRAPH_A_PORT:-8999} GRAPH_B_PORT=${GRAPH_B_PORT:-9000}
LOG_DIR=${DRILL_LOG_DIR:-drill-logs/compose}
read -r -a C <<<"$COMPOSE"
C+=(-p "$PROJECT" -f docker-compose.yml)
helper=(python3 deploy/compose_drill.py --compose "${C[*]}" --engine "$ENGINE"
        --project "$PROJECT" --graph-a-port "$GRAPH_A_PORT" --graph-b-port "$GRAPH_B_PORT")

compose() { "${C[@]}" "$@" >&2; }

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" != 0 ]; then
    "${helper[@]}" logs "$LOG_DIR/containers" || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    say "KEEP=1: the stack $PROJECT is still running; stop it with:" \
        "${C[*]} down -v"
  else
    say "tearing down $PROJECT"
    # Project services first: some do not stop promptly once the broker is gone.
    compose stop -t 20 graph-a graph-b collector persistor || true
    compose down -v || true
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

mkdir -p "$LOG_DIR"
say "using '$COMPOSE' ($ENGINE), project $PROJECT," \
    "graph APIs on 127.0.0.1:$GRAPH_A_PORT and 127.0.0.1:$GRAPH_B_PORT"
compose down -v >/dev/null 2>&1 || true  # leftovers of a KEEP=1 run
t0=$(date +%s)
# Infrastructure first: not every compose implementation waits for
# `condition: service_healthy` (podman-compose with podman < 4.6 does not).
# Meanwhile build the project image, once: the four project services share it.
compose up -d postgres rabbitmq
build_pid=
if [ "${BUILD:-1}" = 1 ]; then
  compose build graph-a &
  build_pid=$!
fi
"${helper[@]}" wait-healthy postgres rabbitmq --timeout "${READY_TIMEOUT:-120}"
if [ -n "$build_pid" ]; then
  wait "$build_pid" || { say "building the project image failed"; exit 1; }
  say "project image built"
fi
compose up -d
"${helper[@]}" wait-healthy persistor --timeout "${READY_TIMEOUT:-120}"
say "stack up in $(( $(date +%s) - t0 ))s"

rc=0
"${helper[@]}" run --kills "${KILLS:-2}" --kill-how "${KILL_HOW:-compose}" \
  --traffic "${TRAFFIC:-flowing}" --flow-s "${FLOW_S:-5}" \
  --ready-timeout "${READY_TIMEOUT:-120}" >"$LOG_DIR/report.json" || rc=$?
cat "$LOG_DIR/report.json"
exit "$rc"
