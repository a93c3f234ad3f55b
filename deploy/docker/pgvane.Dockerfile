# Multi-stage pgvane image: build with the Rust toolchain, run on slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin pgvane

FROM debian:bookworm-slim
RUN useradd --system --no-create-home pgvane
COPY --from=build /src/target/release/pgvane /usr/local/bin/pgvane
USER pgvane
EXPOSE 6432 6433 6434 8009
ENTRYPOINT ["/usr/local/bin/pgvane"]
CMD ["--config", "/etc/pgvane/pgvane.yaml"]
