#!/usr/bin/env bash
# Install, start and stop a throwaway PostgreSQL server for ttc's PostgreSQL store tests.
#
#   scripts/postgres_server.sh install
#   scripts/postgres_server.sh start DIR PORT      # prints the test URL; the server's PID is in DIR/postgres.pid
#   scripts/postgres_server.sh stop DIR
#
# The server is a cluster of its own in DIR (trust authentication, role ttc, database ttc_test), listening on
# 127.0.0.1 only, so it touches no system cluster. As root, the cluster runs as the postgres user (initdb refuses
# to run as root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
READY_TIMEOUT_S="${TTC_PG_READY_TIMEOUT_S:-60}"

die() { echo "postgres_server.sh: $*" >&2; exit 1; }

bindir() {
    # The newest installed server's binaries (Debian keeps them out of PATH).
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

as_owner() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd_install() {
    if [[ -z "$(bindir)" ]]; then
        command -v apt-get >/dev/null 2>&1 || die "no PostgreSQL server installed and no apt-get to install one"
        [[ "$(id -u)" == 0 ]] || die "no PostgreSQL server installed; install the postgresql package (needs root)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq postgresql >/dev/null
        # The package may start a system cluster of its own: the tests use theirs, so it goes back down.
        command -v pg_ctlcluster >/dev/null 2>&1 && for conf in /etc/postgresql/*/*; do
            [[ -d "$conf" ]] && pg_ctlcluster "$(basename "$(dirname "$conf")")" "$(basename "$conf")" stop \
                >/dev/null 2>&1 || true
        done
    fi
    [[ -n "$(bindir)" ]] || die "the postgresql package installed no initdb"
    python3 -m pip install -q -e "$ROOT[postgres]"
    echo "PostgreSQL server binaries in $(bindir); psycopg installed"
}

cmd_start() {
    [[ $# -eq 2 ]] || die "usage: start DIR PORT"
    local dir="$1" port="$2" bin
    bin="$(bindir)"
    [[ -n "$bin" ]] || die "no PostgreSQL server installed; run: scripts/postgres_server.sh install"
    if [[ -d "$dir/data" ]] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        die "a server is already running on $dir/data; stop it first"
    fi
    mkdir -p "$dir"
    [[ "$(id -u)" == 0 ]] && chown postgres "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then  # a cluster made by an earlier start is started again
        as_owner "$bin/initdb" -D "$dir/data" -A trust -U ttc >"$dir/initdb.log" 2>&1 \
            || die "initdb failed; see $dir/initdb.log"
    fi
    if ! as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t "$READY_TIMEOUT_S" \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null; then
        # A start that timed out may still come up: it must not outlive this script unrecorded.
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
        die "the server did not start; see $dir/postgres.log"
    fi
    head -n 1 "$dir/data/postmaster.pid" >"$dir/postgres.pid"
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U ttc -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'ttc_test'" | grep -q 1 \
        || as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U ttc ttc_test
    echo "postgresql+psycopg://ttc@127.0.0.1:$port/ttc_test"
}

cmd_stop() {
    [[ $# -eq 1 ]] || die "usage: stop DIR"
    local dir="$1" pidfile="$1/postgres.pid" pid
    [[ -f "$pidfile" ]] || die "no pidfile $pidfile"
    pid="$(cat "$pidfile")"
    # Only the postmaster of this cluster: a PID recorded long ago may belong to another process by now.
    if [[ "$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)" == "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid"  # PostgreSQL's fast shutdown: open sessions are ended, nothing is left to recover
        for _ in $(seq 1 "$READY_TIMEOUT_S"); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) die "usage: $0 install | start DIR PORT | stop DIR" ;;
esac
