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

# What the TLS tests need: the openssl command for a throwaway CA per test.
ensure_tls_tools() {
    command -v openssl >/dev/null || { log "installing openssl"; apt_install openssl; }
}

# Apache Kafka (KRaft) from Maven Central: the jars scripts/kafka/pom.xml names, copied once per
# version into a cache outside the checkout ($KAFKA_LIBS), so fresh clones reuse them.
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")"
KAFKA_HOME="${KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ecommerce-pipeline/kafka-$KAFKA_VERSION}"
export KAFKA_LIBS="${KAFKA_LIBS:-$KAFKA_HOME/libs}"
export KAFKA_LOG4J="${KAFKA_LOG4J:-$ROOT/scripts/kafka/log4j2.yaml}"

ensure_kafka() {
    command -v java >/dev/null || { log "installing Java"; apt_install openjdk-17-jre-headless; }
    [ -f "$KAFKA_LIBS/.complete" ] && return
    command -v mvn >/dev/null || { log "installing Maven"; apt_install maven; }
    log "fetching Apache Kafka $KAFKA_VERSION with Maven (once)"
    rm -rf "$KAFKA_LIBS"
    mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >&2 ||
        die "fetching Kafka's jars failed (mvn dependency:copy-dependencies, see above)"
    touch "$KAFKA_LIBS/.complete"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

kafka_java() { java -Dlog4j2.configurationFile="$KAFKA_LOG4J" -cp "$KAFKA_LIBS/*" "$@"; }

# start_kafka DIR PORT: one combined broker+controller node on 127.0.0.1:PORT (its controller on
# PORT+1, so give two nodes ports at least 2 apart), storage in DIR formatted once, unless something already listens on PORT. Waits until
# the broker answers a metadata request. Its pid goes to DIR/kafka.pid.
start_kafka() {
    local dir="$1" port="$2" controller=$(($2 + 1))
    if port_open "$port"; then
        log "a broker already listens on 127.0.0.1:$port; using it"
        return
    fi
    mkdir -p "$dir"
    {
        cat "$ROOT/scripts/kafka/server.properties"
        echo "node.id=1"
        echo "controller.quorum.bootstrap.servers=127.0.0.1:$controller"
        echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller"
        echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port"
        echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        echo "inter.broker.listener.name=PLAINTEXT"
        echo "log.dirs=$dir/data"
    } >"$dir/server.properties"
    if [ ! -f "$dir/data/meta.properties" ]; then
        kafka_java kafka.tools.StorageTool format --standalone \
            -t "$(kafka_java kafka.tools.StorageTool random-uuid)" -c "$dir/server.properties" >>"$dir/kafka.log" 2>&1 ||
            die "formatting Kafka's storage failed; see $dir/kafka.log"
    fi
    log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (data in $dir)"
    # The heap bounded, as the tarball's scripts do (-Xmx1G there).
    nohup java -Xmx512m -Xms128m -Dlog4j2.configurationFile="$KAFKA_LOG4J" -cp "$KAFKA_LIBS/*" \
        kafka.Kafka "$dir/server.properties" >>"$dir/kafka.log" 2>&1 &
    echo $! >"$dir/kafka.pid"
    for _ in $(seq 1 150); do
        port_open "$port" && break
        kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null || die "Kafka exited; see $dir/kafka.log"
        sleep 0.2
    done
    kafka_java org.apache.kafka.tools.ClusterTool cluster-id --bootstrap-server "127.0.0.1:$port" >/dev/null 2>&1 ||
        die "Kafka does not answer on 127.0.0.1:$port; see $dir/kafka.log"
}

stop_kafka() {
    local dir="$1" pid
    [ -f "$dir/kafka.pid" ] || return 0
    pid="$(cat "$dir/kafka.pid")"
    kill "$pid" 2>/dev/null || true
    # A clean shutdown takes a few seconds; then it is killed.
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/kafka.pid"
}

# Settings for a table of tens of millions of events, for the local server the scripts start: the
# hot indexes in memory (a quarter of the RAM, at most 4 GB of shared buffers), full-page images
# rarer and compressed with lz4 (docs/performance.md, "The curve": pglz spent 24 µs a row trying
# to compress the primary key's random 16-byte keys, which do not compress). The WAL between
# checkpoints may grow to a quarter of the disk's free space, at most 16 GB: after each checkpoint
# every primary-key page a row lands on is written whole into the WAL once (2 GB at 50 million
# events), and a cycle much longer than that pays it over many more rows (docs/performance.md,
# "The bound the key puts on the curve"). Written into the cluster's conf.d before the server
# starts (a server already running is left as it is), again over an earlier version of this
# file; a file of the operator's own there is left as it is.
tune_local_postgres() {
    local version="$1" conf ram_mb buffers_mb free_gb wal_gb header wanted
    conf="/etc/postgresql/$version/main/conf.d/ecommerce-pipeline.conf"
    header="# Written by the ecommerce pipeline's scripts (scripts/lib.sh, tune_local_postgres)."
    [ -d "$(dirname "$conf")" ] || return 0
    if [ -e "$conf" ] && [ "$(head -n1 "$conf")" != "$header" ]; then
        return 0
    fi
    ram_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
    buffers_mb=$((ram_mb / 4 > 4096 ? 4096 : ram_mb / 4))
    [ "$buffers_mb" -ge 128 ] || return 0
    # A power of two, so the figure does not change with every few GB the disk fills or frees.
    free_gb=$(df -BG --output=avail /var/lib/postgresql 2>/dev/null | tail -n1 | tr -dc '0-9')
    wal_gb=1
    while [ $((wal_gb * 2)) -le $((${free_gb:-16} / 4)) ] && [ "$wal_gb" -lt 16 ]; do
        wal_gb=$((wal_gb * 2))
    done
    wanted="$(printf '%s\n' "$header" "shared_buffers = '${buffers_mb}MB'" "wal_compression = lz4" \
        "max_wal_size = '${wal_gb}GB'" "checkpoint_timeout = '15min'")"
    [ -e "$conf" ] && [ "$(cat "$conf")" = "$wanted" ] && return 0
    log "PostgreSQL $version: ${buffers_mb} MB of shared buffers, lz4 WAL compression, up to ${wal_gb} GB of WAL between checkpoints (local server, for a large table)"
    printf '%s\n' "$wanted" | as_root tee "$conf" >/dev/null
}

# PostgreSQL at $DATABASE_URL, or the local server; on a machine with none, install and start one.
# Debian's server (installed but stopped on a fresh machine) asks for passwords on loopback: the
# local cluster is set to trust loopback, as a development server, and gets the `test` database.
ensure_postgres() {
    local url="$1"
    psql -X -q -d "$url" -c 'SELECT 1' >/dev/null 2>&1 && return
    if ! { command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; }; then
        command -v apt-get >/dev/null || die "PostgreSQL is not reachable at $url; set DATABASE_URL"
        log "installing PostgreSQL"
        apt_install postgresql
    fi
    local version hba
    version="$(ls /etc/postgresql | sort -V | tail -n1)"
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
        log "PostgreSQL $version: trusting loopback connections (local development server)"
        as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    fi
    tune_local_postgres "$version"
    if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        log "starting the local PostgreSQL $version"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
    for _ in $(seq 1 50); do
        pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && break
        sleep 0.2
    done
    as_root su postgres -c "psql -X -tAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\" | grep -q 1 || createdb test" ||
        true
    for _ in $(seq 1 50); do
        psql -X -q -d "$url" -c 'SELECT 1' >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "PostgreSQL is not reachable at $url; set DATABASE_URL"
}
