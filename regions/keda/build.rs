//! Compiles KEDA's `externalscaler.proto` (vendored in `proto/`) with protox, a protobuf
//! compiler in pure Rust, into a file descriptor set, and generates the prost messages and the
//! tonic server and client from it: no `protoc` binary is needed to build the workspace.

use std::error::Error;

const PROTO: &str = "proto/externalscaler.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(true)
        .compile_fds(descriptors)?;
    Ok(())
}
