//! Compiles `proto/` into Rust with tonic's build crate and writes the descriptor set that gRPC reflection
//! serves. protoc comes from the `protoc-bin-vendored` crate so that a fresh machine needs no system package.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    // protoc from $PROTOC when set, else the vendored one (told to prost directly: the environment is not
    // written).
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tessera_descriptor.bin"))
        // Messages that carry tokens get a hand-written `Debug` (in `grpc.rs`) that leaves the tokens out.
        .skip_debug([
            "tessera.v1.ExchangeTokenRequest",
            "tessera.v1.ExchangeTokenResponse",
            "tessera.v1.IntrospectRequest",
            "tessera.v1.RevokeRequest",
            "tessera.v1.RevokeRequest.target",
        ])
        .compile_with_config(config, &["proto/tessera/v1/broker.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
