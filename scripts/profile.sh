#!/usr/bin/env bash
# Where the consumer's CPU goes: one release consumer draining a pre-filled topic under `perf`,
# on a fresh Apache Kafka node and the local PostgreSQL. The flat profile (self time per
# function) lands in target/profile/consumer.txt. Usage: scripts/profile.sh [--postgres] [EVENTS]
#
# With --postgres, PostgreSQL's processes are profiled instead (the whole machine sampled, the
# consumer run plainly), and target/profile/postgres.txt says what share of the backends' time
# each part of a batch's work takes: the indexes, the aggregate triggers, the generated key,
# parsing, the heap, the WAL.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

TARGET=consumer
if [ "${1:-}" = "--postgres" ]; then
    TARGET=postgres
    shift
fi
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

# Messages the consumer has committed (0 before its first batch or while the database is away).
committed() {
    psql -X -q -t -A -d "$db_url" -c 'SELECT coalesce(sum(next_offset), 0) FROM ingest_checkpoints' \
        2>/dev/null || echo 0
}
consumer=(target/release/consumer --brokers "$brokers" --topic "$topic" --group "profile-$$"
    --database-url "$db_url" --metrics-addr 127.0.0.1:0)
if [ "$TARGET" = postgres ]; then
    log "profiling PostgreSQL while a consumer drains $((files * 10000)) events"
    # Migrations first, so the profile holds the batches only.
    "${consumer[@]}" --migrate-only >"$OUT/consumer.log" 2>&1
    "${consumer[@]}" >>"$OUT/consumer.log" 2>&1 &
    until [ "$(committed)" != "0" ]; do
        sleep 0.2
    done
    perf record -F 499 -a -g -o "$OUT/postgres.perf" -- sleep 600 >/dev/null 2>&1 &
else
    log "profiling the consumer draining $((files * 10000)) events"
    perf record -F 999 --call-graph dwarf,16384 -o "$OUT/consumer.perf" -- \
        "${consumer[@]}" >"$OUT/consumer.log" 2>&1 &
fi
perf_pid=$!
until [ "$(committed)" = "$messages" ]; do
    sleep 0.5
done
if [ "$TARGET" = postgres ]; then
    kill -INT "$perf_pid" || true
    wait "$perf_pid" || true
fi
pkill -TERM -f "release/consumer --brokers $brokers --topic $topic" || true
wait "$perf_pid" 2>/dev/null || true
if [ "$TARGET" = postgres ]; then
    # Inclusive time of each part, as a share of the backends' (PostgresMain's) own.
    perf report -i "$OUT/postgres.perf" --children --comm postgres --sort symbol -g none \
        --stdio 2>/dev/null | awk '
        /^ +[0-9]/ {
            for (i = 3; i < NF; i++) if ($i == "[.]" || $i == "[k]") { share[$(i + 1)] = $1 + 0; next }
        }
        END {
            total = share["PostgresMain"]
            split("CopyFrom ExecInsertIndexTuples AfterTriggerEndQuery ExecComputeStoredGenerated NextCopyFrom heap_multi_insert XLogInsert", parts, " ")
            printf "%-28s %s\n", "part of the backends time", "share"
            for (i = 1; i in parts; i++)
                if (total > 0) printf "%-28s %5.1f%%\n", parts[i], 100 * share[parts[i]] / total
        }' >"$OUT/postgres.txt"
    cat "$OUT/postgres.txt"
else
    perf report -i "$OUT/consumer.perf" --no-children --sort symbol --stdio 2>/dev/null |
        grep -v '^$' | grep -E '^ +[0-9]' | awk 'NR <= 40' >"$OUT/consumer.txt"
    cat "$OUT/consumer.txt"
fi
psql -X -q -d "$DATABASE_URL" -c "DROP DATABASE $database WITH (FORCE)"
