//! The berth.v1 protocol: generated prost messages and tonic clients/servers.
//!
//! This crate holds no logic beyond the redacting `Debug` of messages that carry secrets
//! ([`redact`]). Domain types live in the control plane; its `grpc` module is the only place
//! that converts between them and these messages.

#![forbid(unsafe_code)]

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.v1");

    /// Encoded `FileDescriptorSet` of every berth proto, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/berth_descriptor.bin"));
}

pub mod redact;
