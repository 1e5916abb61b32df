# syntax=docker/dockerfile:1
#
# The tessera image: the release binary on a distroless base, nothing else. The Helm chart (helm/tessera) runs
# it as `tessera serve --config ...` with user 65532, a read-only root filesystem and no capabilities.
#
#   docker build -t tessera:0.1.0 .
#
# The tag the chart expects by default is its appVersion (= the version in Cargo.toml). For reproducible
# builds, pin both base images by digest (FROM image:tag@sha256:...).

# --- build ---------------------------------------------------------------------------------------------------
# The toolchain named by Cargo.toml's rust-version, on the same Debian release (glibc) as the runtime image.
FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate and aws-lc-rs builds its C with the image's gcc: no
# system packages are needed.
COPY . .
# Cache mounts keep the crates.io index, downloaded crates and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tessera \
    && install -D -m 0755 target/release/tessera /out/tessera

# --- runtime -------------------------------------------------------------------------------------------------
# glibc, libgcc, CA certificates (for JWKS URLs over https) and a nonroot user; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tessera /usr/local/bin/tessera
# The distroless "nonroot" user; the chart's securityContext names the same uid and gid.
USER 65532:65532
# gRPC (TokenBroker, health, reflection) and HTTP (metrics).
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/tessera"]
# Without arguments, print the usage; the chart passes `serve --config ... --grpc-addr 0.0.0.0:50051`.
CMD ["--help"]
