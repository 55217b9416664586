#!/usr/bin/env bash
# Shared set-up for run.sh, test.sh and bench.sh: install what is missing, reuse what is there.
# Tools are installed outside the checkout (cargo's bin folder), so a fresh clone reuses them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
# As the image runs them (see the Dockerfile): two malloc arenas and a fixed mmap threshold bound
# the services' memory.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-131072}"
TANSU_VERSION="0.6.0"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || die "missing $*; install it with your package manager"
    if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_system_packages() {
    command -v cargo >/dev/null || die "Rust (cargo) is required: install it with rustup, then run this again"
    local missing=()
    command -v cc >/dev/null || missing+=(build-essential)
    command -v make >/dev/null || missing+=(make)
    command -v perl >/dev/null || missing+=(perl)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v python3 >/dev/null || missing+=(python3)
    # librdkafka is built with OpenSSL (Kafka over TLS, SASL SCRAM).
    pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# What the TLS tests need: the openssl command for a throwaway CA, and stunnel to put TLS in front
# of Tansu (whose own TLS flags cannot be used together in 0.6).
ensure_tls_tools() {
    local missing=()
    command -v openssl >/dev/null || missing+=(openssl)
    command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# Tansu, the Kafka-protocol broker for local runs and tests, built with its SQLite engine.
ensure_tansu() {
    if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
        return
    fi
    log "installing tansu $TANSU_VERSION (once, about 10 minutes)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_tansu DIR PORT: runs a broker on 127.0.0.1:PORT with its SQLite file in DIR, unless one
# already listens there. Its pid goes to DIR/tansu.pid.
start_tansu() {
    local dir="$1" port="$2"
    if port_open "$port"; then
        log "a broker already listens on 127.0.0.1:$port; using it"
        return
    fi
    mkdir -p "$dir"
    log "starting tansu on 127.0.0.1:$port (data in $dir)"
    # Tansu takes the sqlite path relative to its working directory.
    (
        cd "$dir" || exit 1
        nohup tansu broker \
            --storage-engine sqlite://tansu.db \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            >>tansu.log 2>&1 &
        echo $! >tansu.pid
    )
    for _ in $(seq 1 100); do
        port_open "$port" && return
        sleep 0.1
    done
    die "tansu did not start; see $dir/tansu.log"
}

stop_tansu() {
    local dir="$1"
    if [ -f "$dir/tansu.pid" ]; then
        kill "$(cat "$dir/tansu.pid")" 2>/dev/null || true
        rm -f "$dir/tansu.pid"
    fi
}

# PostgreSQL at $DATABASE_URL, or the local server; on a machine with none, install and start one.
ensure_postgres() {
    local url="$1"
    if pg_isready -q -d "$url" 2>/dev/null; then
        return
    fi
    if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; then
        log "starting the local PostgreSQL"
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    elif command -v apt-get >/dev/null; then
        log "installing PostgreSQL"
        apt_install postgresql
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
        # Match the default URL: trust on loopback, as a local development server.
        local hba
        hba="$(ls /etc/postgresql/*/main/pg_hba.conf | head -n1)"
        as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main reload
        as_root su postgres -c "psql -tc \"SELECT 1 FROM pg_database WHERE datname = 'test'\" | grep -q 1 || createdb test"
    fi
    for _ in $(seq 1 50); do
        pg_isready -q -d "$url" 2>/dev/null && return
        sleep 0.2
    done
    die "PostgreSQL is not reachable at $url; set DATABASE_URL"
}
