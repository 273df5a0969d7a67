//! The berth agent as a library: enrollment, the control-plane stream, and the executors.
//! `berth-agent` (and `berth dev`'s local agent, and the fleet simulator) call [`run`].

#![forbid(unsafe_code)]

pub mod connection;
pub mod docker;
pub mod enroll;
pub mod executor;
pub mod exit;
pub mod fake;
pub mod identity;
pub mod journal;
pub mod proxy;

pub use connection::{run, AgentRuntime, CommandReceipt};
pub use identity::Identity;
