//! The proxy's one error type: every refusal of a control call, with the gRPC code it maps to.
//!
//! Architecture invariant: [`ProxyError::code`] is the only place a proxy error gets a code;
//! messages never carry a TLS key or any part of one.

/// Why a control call was refused. The message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request itself is wrong (an empty app, a bad host name, a UDP port, bad PEM).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is fine but the host's state refuses it (a port or a domain routed to
    /// another app, a port another process holds, a drain of a container still routed).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The proxy could not do its part (the state file could not be written).
    #[error("{0}")]
    Internal(String),
}

impl ProxyError {
    pub fn code(&self) -> tonic::Code {
        match self {
            ProxyError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ProxyError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            ProxyError::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<ProxyError> for tonic::Status {
    fn from(error: ProxyError) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}
