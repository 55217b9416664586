#!/usr/bin/env bash
# Where the consumer's CPU goes: one release consumer draining a pre-filled topic under `perf`,
# on a fresh Apache Kafka node and the local PostgreSQL. The flat profile (self time per
# function) lands in target/profile/consumer.txt. Usage: scripts/profile.sh [EVENTS]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

EVENTS="${1:-500000}"
DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
PROFILE_KAFKA_PORT="${PROFILE_KAFKA_PORT:-19097}"
KAFKA_DIR="$ROOT/target/profile-kafka"
OUT="$ROOT/target/profile"

ensure_kafka
ensure_postgres "$DATABASE_URL"
command -v perf >/dev/null || apt_install linux-perf
cargo build --release --bins
stop_kafka "$KAFKA_DIR"
rm -rf "$KAFKA_DIR" "$OUT"
mkdir -p "$OUT/input" "$OUT/archive"
start_kafka "$KAFKA_DIR" "$PROFILE_KAFKA_PORT"
trap 'stop_kafka "$KAFKA_DIR"' EXIT
brokers="127.0.0.1:$PROFILE_KAFKA_PORT"
topic="profile-$$"
database="profile_$$"
psql -X -q -d "$DATABASE_URL" -c "CREATE DATABASE $database"
db_url="${DATABASE_URL%/*}/$database"

files=$(((EVENTS + 9999) / 10000))
target/release/generator --output-dir "$OUT/input" --interval 0s --files "$files" \
    --events-per-file 10000 --seed 1
target/release/file-bridge --once --input-dir "$OUT/input" --archive-dir "$OUT/archive" \
    --brokers "$brokers" --topic "$topic" --partitions 6
messages=$((files * 10000 + files))

log "profiling the consumer draining $((files * 10000)) events"
perf record -F 999 --call-graph dwarf,16384 -o "$OUT/consumer.perf" -- \
    target/release/consumer --brokers "$brokers" --topic "$topic" --group "profile-$$" \
    --database-url "$db_url" --metrics-addr 127.0.0.1:0 >"$OUT/consumer.log" 2>&1 &
perf_pid=$!
until [ "$(psql -X -q -t -A -d "$db_url" -c \
    'SELECT coalesce(sum(next_offset), 0) FROM ingest_checkpoints' 2>/dev/null || echo 0)" = "$messages" ]; do
    sleep 0.5
done
pkill -TERM -f "release/consumer --brokers $brokers --topic $topic" || true
wait "$perf_pid" || true
perf report -i "$OUT/consumer.perf" --no-children --sort symbol --stdio 2>/dev/null |
    grep -v '^$' | grep -E '^ +[0-9]' | head -40 >"$OUT/consumer.txt"
psql -X -q -d "$DATABASE_URL" -c "DROP DATABASE $database WITH (FORCE)"
cat "$OUT/consumer.txt"
