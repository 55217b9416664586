#!/usr/bin/env bash
# The integration tests with their broker and PostgreSQL started by testcontainers (feature
# `docker`): end to end, a consumer killed mid-stream again and again, scaling. The images are the
# fixtures scripts/docker.sh builds where no registry answers (set IT_POSTGRES_IMAGE and
# IT_KAFKA_IMAGE to others). Removes every container of this run, with its volumes, and nothing
# of any other run on the same engine.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/scripts/docker.sh"
cd "$ROOT"

ensure_kafka
ensure_docker
export IT_POSTGRES_IMAGE="${IT_POSTGRES_IMAGE:-$FIXTURE_POSTGRES_IMAGE}"
export IT_KAFKA_IMAGE="${IT_KAFKA_IMAGE:-$FIXTURE_KAFKA_IMAGE}"
export IT_DOCKER_RUN="${IT_DOCKER_RUN:-$$-$(date +%s)}"
cleanup() {
    docker ps -aq --filter "label=ecommerce-pipeline.it-tests=$IT_DOCKER_RUN" | xargs -r docker rm -f -v >/dev/null
}
trap cleanup EXIT
cargo build --bins
log "integration tests on testcontainers ($IT_KAFKA_IMAGE, $IT_POSTGRES_IMAGE)"
cargo test --no-fail-fast -p it-tests --features docker --test pipeline --test crash --test scaling -- --test-threads 2
