#!/usr/bin/env bash
# Private PostgreSQL cluster for the Postgres adapter tests (adapters/sqlstore).
#
#   scripts/pg-test-env.sh start DIR [PORT]   init (once) and start a cluster in DIR listening on
#                                             127.0.0.1:PORT (default 55432) and a socket in DIR;
#                                             prints its DSN on stdout. Idempotent: when the
#                                             cluster already runs it only prints the DSN.
#   scripts/pg-test-env.sh stop DIR           stop it (no-op when it is not running).
#   scripts/pg-test-env.sh status DIR         exit 0 when it runs (and print the DSN).
#
# Use: export GOOP_TEST_POSTGRES_DSN=$(scripts/pg-test-env.sh start /tmp/goop-pg 55432)
#
# The server runs as the `postgres` user when this script runs as root (PostgreSQL refuses to
# run as root; DIR is then made owned by postgres), else as the calling user. The binaries are
# taken from $PG_BIN, else the newest /usr/lib/postgresql/*/bin, else pg_config or PATH.
# Authentication is `trust` for the superuser `postgres`: for tests on loopback only.
set -euo pipefail

die() { printf 'pg-test-env: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 start DIR [PORT] | stop DIR | status DIR"; }

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
port=${3:-55432}
case "$port" in ''|*[!0-9]*) die "bad port: $port" ;; esac
case "$dir" in /*) ;; *) dir="$(pwd)/$dir" ;; esac
cd / # the server user may not be able to read the caller's directory

find_bin() {
  if [ -n "${PG_BIN:-}" ]; then printf '%s\n' "$PG_BIN"; return; fi
  local found="" d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
    [ -x "$d/initdb" ] && found=$d
  done
  if [ -z "$found" ] && command -v pg_config >/dev/null 2>&1; then found=$(pg_config --bindir); fi
  if [ -z "$found" ] && command -v initdb >/dev/null 2>&1; then found=$(dirname "$(command -v initdb)"); fi
  [ -n "$found" ] && [ -x "$found/initdb" ] || die "PostgreSQL server binaries not found (set PG_BIN)"
  printf '%s\n' "$found"
}
bin=$(find_bin)

# as_pg runs its arguments as the user the server runs as.
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user"
  as_pg() {
    if command -v runuser >/dev/null 2>&1; then
      runuser -u postgres -- "$@"
    else
      su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
  }
else
  as_pg() { "$@"; }
fi

dsn() { printf 'postgres://postgres@127.0.0.1:%s/postgres?sslmode=disable\n' "$1"; }

# running_port prints the port of the cluster running in $dir, or fails.
running_port() {
  [ -f "$dir/postmaster.pid" ] || return 1
  as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1 || return 1
  sed -n 4p "$dir/postmaster.pid"
}

case "$cmd" in
start)
  if p=$(running_port); then
    [ "$p" = "$port" ] || printf 'pg-test-env: already running in %s on port %s\n' "$dir" "$p" >&2
    dsn "$p"
    exit 0
  fi
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
    as_pg test -w "$dir" || die "user postgres cannot write $dir (is a parent directory private?)"
  fi
  chmod 700 "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    log=$(mktemp)
    as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust --no-sync >"$log" 2>&1 \
      || { cat "$log" >&2; rm -f "$log"; die "initdb failed in $dir"; }
    rm -f "$log"
  fi
  as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >&2 \
    || { tail -n 20 "$dir/server.log" >&2 2>/dev/null || true; die "could not start PostgreSQL in $dir on port $port"; }
  dsn "$port"
  ;;
stop)
  if running_port >/dev/null; then
    as_pg "$bin/pg_ctl" -D "$dir" -m fast -w stop >&2
  fi
  ;;
status)
  p=$(running_port) || exit 1
  dsn "$p"
  ;;
*)
  usage
  ;;
esac
