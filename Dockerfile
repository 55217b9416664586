# One image with the three binaries; docker-compose.yml picks the command per service.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/generator /src/target/release/file-bridge /src/target/release/consumer /usr/local/bin/
# Named volumes mounted at /data inherit this ownership.
RUN mkdir -p /data && chown 10001 /data
USER 10001
ENV RUST_LOG=info
