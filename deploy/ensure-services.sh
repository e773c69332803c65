#!/usr/bin/env bash
# Make sure PostgreSQL and RabbitMQ answer on loopback: start them when they are
# installed but stopped, install them from Debian packages when missing (as
# root), otherwise say how to get them. Idempotent; used by `make run/test`.
set -euo pipefail

say() { echo "ensure-services: $*" >&2; }
port_open() { python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}
wait_port() {  # port, seconds
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
  return 1
}
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "$1 is not installed; install it (Debian: apt-get install $1) or point the settings at one"
    exit 1
  fi
  say "installing $1 from Debian packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local ver
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  say "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_port 5432 30 || { say "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  say "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_port 5672 90 || { say "RabbitMQ did not come up on 127.0.0.1:5672"; exit 1; }
}

ensure_postgres
ensure_rabbitmq
say "PostgreSQL 127.0.0.1:5432 and RabbitMQ 127.0.0.1:5672 are up"
