//! The berth control plane as a library: the binaries (`berth-control-plane`, `berth dev`)
//! are thin wrappers around [`node::start`] and [`node::Node::serve`].

#![forbid(unsafe_code)]

pub mod acme;
pub mod backup;
pub mod crypto;
pub mod error;
pub mod exit;
pub mod fleet;
pub mod grpc;
pub mod model;
pub mod node;
pub mod notify;
pub mod outbound;
pub mod pki;
pub mod provider;
pub mod service;
pub mod store;
pub mod validate;
pub mod webhook;

pub use error::{Error, ErrorCode, Result};
