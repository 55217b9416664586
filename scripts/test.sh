#!/usr/bin/env bash
# Sets up what is missing and runs every test: formatting, lints, unit tests, the integration
# tests against a real PostgreSQL and a real Apache Kafka (fetched once and started here), and the
# Docker path: docker compose up and the testcontainers tests on an engine started here.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
TEST_KAFKA_PORT="${TEST_KAFKA_PORT:-19093}"
KAFKA_DIR="$ROOT/target/it-kafka"

ensure_system_packages
ensure_tls_tools
ensure_kafka
ensure_postgres "$TEST_DATABASE_URL"
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
# The metrics test parses /metrics with the reference client's parser; the dashboard test drives
# Debian's Chromium headless.
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus-client
command -v chromium >/dev/null || { log "installing chromium"; apt_install chromium; }

log "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log "the Docker path compiles (testcontainers, feature docker)"
cargo clippy -p it-tests --features docker --all-targets -- -D warnings
python3 scripts/check_compose.py docker-compose.yml

log "building the binaries the integration tests run"
cargo build --bins
log "the docs cite only paths, tests, metrics and flags that exist"
python3 scripts/check_docs.py

# A fresh shared broker per run: no topics or groups left over from earlier runs. Tests that
# kill, restart or wipe a broker start private ones (it-tests/src/services.rs).
stop_kafka "$KAFKA_DIR"
rm -rf "$KAFKA_DIR"
start_kafka "$KAFKA_DIR" "$TEST_KAFKA_PORT"
trap 'stop_kafka "$KAFKA_DIR"' EXIT
export KAFKA_BROKERS="127.0.0.1:$TEST_KAFKA_PORT"

# Databases of earlier runs (each test makes its own). One with a session open belongs to a run
# still going on the same server (the bench's curve stage fills one for most of an hour): left alone.
psql -X -q -t -A "$TEST_DATABASE_URL" -c "SELECT datname FROM pg_database d WHERE datname LIKE 'it\_%'
        AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)" |
    while read -r db; do psql -X -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done

log "unit and integration tests"
results="$ROOT/target/test-results.txt"
set +e
cargo test --workspace -- --test-threads 2 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e

# Docker: the engine started here, the user's docker-compose.yml brought up for real, and the
# testcontainers tests (scripts/docker.sh sets up the engine, the Compose plugin and the images).
log "docker compose up, checked (scripts/test-compose.sh)"
bash scripts/test-compose.sh || status=1
log "the integration tests on testcontainers (scripts/test-docker.sh)"
set +e
bash scripts/test-docker.sh 2>&1 | tee -a "$results"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$results"
exit "$status"
