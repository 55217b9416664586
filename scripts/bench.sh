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
stop_kafka "$KAFKA_DIR"
rm -rf "$KAFKA_DIR"
start_kafka "$KAFKA_DIR" "$BENCH_KAFKA_PORT"
trap 'stop_kafka "$KAFKA_DIR"' EXIT
export KAFKA_BROKERS="127.0.0.1:$BENCH_KAFKA_PORT" PIPELINE_BIN_DIR="$ROOT/target/release"
"$ROOT/target/release/bench" "$@"
