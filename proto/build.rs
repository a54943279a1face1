//! Compiles `proto/edgewise/v1/*.proto` with `protox` (pure Rust), so no system `protoc` is needed.

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
