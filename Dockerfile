# Multi-stage build: cargo-chef caches the dependency layer, so a code change rebuilds only the
# shop itself. No query needs a database at build time (sqlx's runtime-checked queries), and
# SQLX_OFFLINE keeps any future `query!` macro from reaching for one.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ENV SQLX_OFFLINE=true
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --bin shop

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 shop
WORKDIR /app
COPY --from=builder /app/target/release/shop /usr/local/bin/shop
COPY config ./config
USER shop
ENV SHOP_ENV=production SHOP__SERVER__HOST=0.0.0.0 SHOP__SERVER__PORT=8080
EXPOSE 8080
ENTRYPOINT ["shop"]
CMD ["serve"]
