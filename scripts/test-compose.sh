#!/usr/bin/env bash
# The user's `docker compose up`, for real: docker-compose.yml with only the images that cannot be
# pulled here swapped for the fixtures (it-tests/fixtures/docker/compose.fixtures.yml), checked by
# scripts/test_compose.py. Starts the engine and builds what it needs (scripts/docker.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/scripts/docker.sh"
cd "$ROOT"

ensure_kafka
ensure_docker
stage_pipeline_binaries
python3 scripts/test_compose.py
