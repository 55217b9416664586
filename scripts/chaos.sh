#!/usr/bin/env bash
# Sets up what is missing and runs the pipeline under random SIGKILLs of every component (generator,
# bridge, two or three consumers, a private Kafka node, a private PostgreSQL), then prints the invariant.
#   bash scripts/chaos.sh --seconds 300 --seed 42
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
ensure_system_packages
ensure_kafka
ensure_postgres "$TEST_DATABASE_URL"
cargo build --release --bins
export PIPELINE_BIN_DIR="$ROOT/target/release"
"$ROOT/target/release/chaos" "$@"
