# syntax=docker/dockerfile:1
# The grasp-sync image: one static-ish binary (glibc only; TLS is rustls) on distroless.
#   docker build -t grasp-sync .
# Build stage: the release binary, exactly as locked in Cargo.lock.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked

# Runtime stage: distroless (glibc, CA certificates, no shell), non-root uid/gid 65532.
# Only the binary is copied in.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /src/target/release/grasp-sync /usr/local/bin/grasp-sync
USER 65532:65532
EXPOSE 9090 7777
ENTRYPOINT ["/usr/local/bin/grasp-sync"]
CMD ["--help"]
