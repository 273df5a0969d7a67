#![forbid(unsafe_code)]

pub mod docker;
pub mod executor;
pub mod fake;
