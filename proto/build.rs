//! Compiles `proto/edgewise/v1/*.proto` with `protox` (pure Rust), so no system `protoc` is
//! needed, and writes the encoded descriptor set for gRPC server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/edgewise/v1/common.proto",
        "proto/edgewise/v1/agent.proto",
        "proto/edgewise/v1/fleet.proto",
        "proto/edgewise/v1/gateway.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("edgewise_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
