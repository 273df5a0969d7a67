//! ACME HTTP-01 answers: token -> key authorization, each with an expiry.
//!
//! Architecture invariant: an expired or removed token is never answered; tokens are only the
//! characters ACME uses (base64url), so a path can never name anything else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::ProxyError;

/// The path prefix the HTTP listener answers from here.
pub const PATH_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, Default)]
pub struct Challenges {
    answers: Mutex<HashMap<String, (String, Instant)>>,
}

fn is_base64url(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    /// Answers `token` with `key_authorization` for `ttl`; a zero `ttl` removes it.
    pub fn set(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), ProxyError> {
        if !is_base64url(token) {
            return Err(ProxyError::InvalidArgument(
                "an ACME token is 1 to 256 base64url characters (A-Z a-z 0-9 - _)".into(),
            ));
        }
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        answers.retain(|_, (_, expires)| *expires > now);
        if ttl.is_zero() {
            answers.remove(token);
            return Ok(());
        }
        let well_formed = key_authorization
            .split_once('.')
            .is_some_and(|(t, thumbprint)| t == token && is_base64url(thumbprint));
        if !well_formed {
            return Err(ProxyError::InvalidArgument(
                "a key authorization is TOKEN.THUMBPRINT (RFC 8555 8.1) for the same token".into(),
            ));
        }
        answers.insert(token.to_owned(), (key_authorization.to_owned(), now + ttl));
        Ok(())
    }

    /// The key authorization for `token`, if set and not expired.
    pub fn answer(&self, token: &str) -> Option<String> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let (answer, expires) = answers.get(token)?;
        (*expires > Instant::now()).then(|| answer.clone())
    }
}
