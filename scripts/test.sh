#!/usr/bin/env bash
# The project's test command (README): gofmt, vet, the whole test suite, and a
# race run of the concurrent adapters. It provides what the tests need: a private
# PostgreSQL cluster for the Postgres adapter tests and Chromium for the
# browser tests (both installed with apt-get when missing and running as
# root). Browser screenshots are kept in .artifacts/ (GOOP_ARTIFACTS).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

pg_bin=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pg_bin="$d"; done
if [ -z "$pg_bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing PostgreSQL server (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || true
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pg_bin="$d"; done
fi

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing Chromium for the browser tests (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) || true
fi
command -v chromium >/dev/null 2>&1 || log "no chromium: browser tests will skip (they fail under CI=true)"
export GOOP_ARTIFACTS="${GOOP_ARTIFACTS:-$PWD/.artifacts}"

pg_dir=""
cleanup() {
  if [ -n "$pg_dir" ] && [ -f "$pg_dir/postmaster.pid" ]; then
    scripts/pg-test-env.sh stop "$pg_dir" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if [ -z "${GOOP_TEST_POSTGRES_DSN:-}" ] && [ -n "$pg_bin" ] && [ -x scripts/pg-test-env.sh ]; then
  pg_dir=$(mktemp -d /tmp/goop-pg.XXXXXX)
  if dsn=$(scripts/pg-test-env.sh start "$pg_dir" 55439 2>/tmp/goop-pg.log); then
    export GOOP_TEST_POSTGRES_DSN="$dsn"
    log "PostgreSQL test cluster at $dsn"
  else
    log "could not start PostgreSQL (see /tmp/goop-pg.log); Postgres adapter tests will skip"
    pg_dir=""
  fi
fi

log "gofmt -l ."
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  printf 'not gofmt-formatted:\n%s\n' "$unformatted" >&2
  exit 1
fi
log "go vet ./..."
go vet ./...
log "go test ./..."
go test -count=1 -timeout 15m ./...
race_pkgs=$(go list ./adapters/... ./app/... ./ports/... 2>/dev/null | tr '\n' ' ')
log "go test -race (concurrent adapters and runtime)"
go test -count=1 -race -timeout 15m $race_pkgs
