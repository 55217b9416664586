#!/usr/bin/env bash
# Sets up what is missing and runs the benchmark: release binaries, a fresh Apache Kafka, the local
# PostgreSQL. Arguments go to the bench binary (e.g. --events 200000); figures land in
# target/bench/results.json.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
BENCH_KAFKA_PORT="${BENCH_KAFKA_PORT:-19096}"
KAFKA_DIR="$ROOT/target/bench-kafka"

ensure_system_packages
ensure_kafka
ensure_postgres "$TEST_DATABASE_URL"
cargo build --release --bins
# The curve stage reads pg_stat_statements, which a server loads only at its start: the local
# server is restarted once with it (and keeps it; it costs a hash lookup per statement).
if ! psql -X -At -d "$TEST_DATABASE_URL" -c 'SHOW shared_preload_libraries' | grep -q pg_stat_statements \
    && command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    psql -X -q -d "$TEST_DATABASE_URL" -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -n | tail -1)" main restart
    until pg_isready -q -h 127.0.0.1 -p 5432; do sleep 0.2; done
fi
stop_kafka "$KAFKA_DIR"
rm -rf "$KAFKA_DIR"
start_kafka "$KAFKA_DIR" "$BENCH_KAFKA_PORT"
trap 'stop_kafka "$KAFKA_DIR"' EXIT
export KAFKA_BROKERS="127.0.0.1:$BENCH_KAFKA_PORT" PIPELINE_BIN_DIR="$ROOT/target/release"
"$ROOT/target/release/bench" "$@"
