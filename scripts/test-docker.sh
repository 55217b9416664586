#!/usr/bin/env bash
# Runs the integration tests against Redpanda and PostgreSQL started by testcontainers (needs a
# Docker engine), then removes every container the run started, found by its label.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v docker >/dev/null || { echo "error: no docker command: this path needs a Docker engine" >&2; exit 1; }
cleanup() {
    docker ps -aq --filter "label=ecommerce-pipeline.it-tests" | xargs -r docker rm -f >/dev/null
}
trap cleanup EXIT
cargo build --bins
cargo test -p it-tests --features docker -- --test-threads 2
