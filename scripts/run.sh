#!/usr/bin/env bash
# Sets up what is missing and runs the whole pipeline locally: Apache Kafka, generator, file-bridge and
# consumer, writing into PostgreSQL. Ctrl-C stops everything.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}"
export INPUT_DIR="${INPUT_DIR:-data/input}" ARCHIVE_DIR="${ARCHIVE_DIR:-data/archive}"
# Operators' views, on localhost only.
export DASHBOARD_ADDR="${DASHBOARD_ADDR:-127.0.0.1:8080}"
export CONSUMER_METRICS_ADDR="${CONSUMER_METRICS_ADDR:-127.0.0.1:9101}"
export BRIDGE_METRICS_ADDR="${BRIDGE_METRICS_ADDR:-127.0.0.1:9100}"
LOGS="data/logs"

ensure_system_packages
ensure_kafka
ensure_postgres "$DATABASE_URL"
log "building (release)"
cargo build --release --bins
mkdir -p "$LOGS" "$INPUT_DIR" "$ARCHIVE_DIR"
start_kafka "$ROOT/data/kafka" "$KAFKA_PORT"

pids=()
cleanup() {
    trap '' INT TERM
    log "stopping"
    # Generator first (started last), so the bridge and the consumer drain what it wrote.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    done
    stop_kafka "$ROOT/data/kafka"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

bin="target/release"
"$bin/consumer" >"$LOGS/consumer.log" 2>&1 & pids+=($!)
"$bin/file-bridge" >"$LOGS/file-bridge.log" 2>&1 & pids+=($!)
"$bin/generator" "$@" >"$LOGS/generator.log" 2>&1 & pids+=($!)
log "pipeline running: generator -> $INPUT_DIR -> file-bridge -> $KAFKA_BROKERS -> consumer -> $DATABASE_URL"
log "dashboard: http://$DASHBOARD_ADDR/ · metrics: http://$CONSUMER_METRICS_ADDR/metrics, http://$BRIDGE_METRICS_ADDR/metrics"
log "one-screen status: target/release/status · logs in $LOGS/ · Ctrl-C to stop"

while sleep 5; do
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { log "a component exited; see $LOGS/"; exit 1; }
    done
    psql -X -q -t -A -F ' ' "$DATABASE_URL" -c "
        SELECT 'events:', (SELECT count(*) FROM ecommerce_events),
               'rejected:', (SELECT count(*) FROM ecommerce_events_rejected),
               'last minute:', (SELECT count(*) FROM ecommerce_events WHERE ingested_at > now() - interval '1 minute'),
               'freshness p50 ms:', (SELECT coalesce(round(percentile_cont(0.5) WITHIN GROUP (
                    ORDER BY extract(epoch FROM ingested_at - landed_at) * 1000)), 0)
                    FROM ecommerce_events WHERE ingested_at > now() - interval '1 minute')" 2>/dev/null \
        || echo "waiting for the consumer to create the tables"
done
