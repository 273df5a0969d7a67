//! Generates the berth.v1 code with protox (a pure-Rust protobuf compiler), so building berth
//! never needs a system `protoc`. The encoded descriptor set is kept for gRPC reflection.

// Build scripts talk to cargo on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "berth/v1/berth.proto",
    "berth/v1/agent.proto",
    "berth/v1/deploy.proto",
    "berth/v1/webhook.proto",
    "berth/v1/notify.proto",
    "berth/v1/providers.proto",
    "berth/v1/proxy.proto",
    "berth/v1/domains.proto",
    "berth/v1/import.proto",
    "berth/v1/keys.proto",
    "berth/v1/audit.proto",
];

/// Messages that carry a secret: no derived `Debug` (src/redact.rs writes a redacting one).
const REDACTED_MESSAGES: &[&str] = &include!("src/redacted_messages.in");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/redacted_messages.in");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("berth_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Clients are built from a Channel; this also frees the name `connect` for the
        // agent stream RPC.
        .build_transport(false)
        .skip_debug(REDACTED_MESSAGES)
        .compile_fds(descriptors)?;
    Ok(())
}
