#!/usr/bin/env bash
# Docker for the tests, on a machine with no image registry and no BuildKit (sourced after lib.sh):
# the engine (Debian's docker.io, dockerd started here when none answers), the Compose v2 plugin
# built from the Go module proxy, a Debian base image made with debootstrap, and the fixture images
# that stand in for what cannot be pulled (it-tests/fixtures/docker/README.md). Everything is made
# once, outside the checkout, and reused by later runs.

COMPOSE_VERSION="${COMPOSE_VERSION:-v5.6.0}"
DOCKER_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ecommerce-pipeline/docker"
FIXTURE_BASE_IMAGE=ecommerce-pipeline-fixture/debian:bookworm
FIXTURE_POSTGRES_IMAGE=ecommerce-pipeline-fixture/postgres:15
FIXTURE_KAFKA_IMAGE="ecommerce-pipeline-fixture/kafka:$KAFKA_VERSION"
# No BuildKit here: the classic builder, which needs no frontend image from a registry.
export DOCKER_BUILDKIT=0

ensure_docker_engine() {
    command -v docker >/dev/null && docker info >/dev/null 2>&1 && return
    command -v dockerd >/dev/null || { log "installing docker.io"; apt_install docker.io; }
    if ! docker info >/dev/null 2>&1; then
        mkdir -p "$DOCKER_CACHE"
        log "starting dockerd (log in $DOCKER_CACHE/dockerd.log)"
        as_root bash -c "nohup dockerd >>'$DOCKER_CACHE/dockerd.log' 2>&1 &"
        for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
        docker info >/dev/null 2>&1 || die "dockerd did not answer within 30 s; see $DOCKER_CACHE/dockerd.log"
    fi
}

# The Compose v2 CLI plugin, built from its module (a plain `go install` refuses: its go.mod has
# exclude directives).
ensure_compose_plugin() {
    local plugin="$HOME/.docker/cli-plugins/docker-compose" built="$DOCKER_CACHE/docker-compose-$COMPOSE_VERSION"
    if [ ! -x "$built" ]; then
        command -v go >/dev/null || die "Go is needed once to build the Compose plugin (docker compose $COMPOSE_VERSION)"
        log "building the Compose plugin $COMPOSE_VERSION from the Go module proxy (once)"
        local module source
        module="$(go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')" ||
            die "downloading github.com/docker/compose/v5@$COMPOSE_VERSION failed"
        source="$(mktemp -d)"
        cp -r "$module/." "$source" && chmod -R u+w "$source"
        mkdir -p "$DOCKER_CACHE"
        (cd "$source" && go build -o "$built.partial" ./cmd) || die "building docker compose failed (see above)"
        mv "$built.partial" "$built"
        rm -rf "$source"
    fi
    if ! cmp -s "$built" "$plugin"; then
        mkdir -p "$(dirname "$plugin")"
        cp "$built" "$plugin"
    fi
    docker compose version >/dev/null || die "docker compose does not run ($plugin)"
}

# debian:bookworm-slim's stand-in: Debian's minimal base, with the same package sources.
ensure_base_image() {
    docker image inspect "$FIXTURE_BASE_IMAGE" >/dev/null 2>&1 && return
    command -v debootstrap >/dev/null || { log "installing debootstrap"; apt_install debootstrap; }
    local rootfs="$DOCKER_CACHE/bookworm-rootfs"
    log "making $FIXTURE_BASE_IMAGE with debootstrap (once)"
    as_root rm -rf "$rootfs"
    as_root debootstrap --variant=minbase bookworm "$rootfs" >"$DOCKER_CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $DOCKER_CACHE/debootstrap.log"
    printf '%s\n' \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main" |
        as_root tee "$rootfs/etc/apt/sources.list" >/dev/null
    as_root rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
    as_root tar -C "$rootfs" -c . |
        docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' - "$FIXTURE_BASE_IMAGE" >/dev/null
    as_root rm -rf "$rootfs"
}

# The stand-ins for postgres:15 and Redpanda. The classic builder's layer cache makes a repeat
# build a few seconds.
ensure_fixture_images() {
    ensure_base_image
    local fixtures="$ROOT/it-tests/fixtures/docker" context="$ROOT/target/docker/kafka-context"
    log "building $FIXTURE_POSTGRES_IMAGE"
    docker build -q --pull=false --build-arg "BASE_IMAGE=$FIXTURE_BASE_IMAGE" -t "$FIXTURE_POSTGRES_IMAGE" \
        "$fixtures/postgres" >/dev/null || die "building $FIXTURE_POSTGRES_IMAGE failed"
    log "building $FIXTURE_KAFKA_IMAGE"
    rm -rf "$context" && mkdir -p "$context"
    cp "$fixtures/kafka/"* "$context/"
    cp "$ROOT/scripts/kafka/log4j2.yaml" "$ROOT/scripts/kafka/server.properties" "$context/"
    cp -r "$KAFKA_LIBS" "$context/libs"
    rm -f "$context/libs/.complete"
    docker build -q --pull=false --build-arg "BASE_IMAGE=$FIXTURE_BASE_IMAGE" -t "$FIXTURE_KAFKA_IMAGE" \
        "$context" >/dev/null || die "building $FIXTURE_KAFKA_IMAGE failed"
}

ensure_docker() {
    ensure_docker_engine
    ensure_compose_plugin
    ensure_fixture_images
}

# The binaries the Dockerfile's prebuilt target takes, from this host's `cargo build --bins`
# (PIPELINE_PROFILE=release for release ones), without their debug sections (a sixth of the size).
stage_pipeline_binaries() {
    local profile="${PIPELINE_PROFILE:-debug}" bin="$ROOT/target/docker/bin" name
    if [ "$profile" = release ]; then cargo build --release --bins; else cargo build --bins; fi
    rm -rf "$bin" && mkdir -p "$bin"
    for name in generator file-bridge consumer status explain quarantine aggregates retention; do
        objcopy --strip-debug "$ROOT/target/$profile/$name" "$bin/$name"
    done
}
