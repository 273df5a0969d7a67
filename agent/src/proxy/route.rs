//! What a route is: an app, the container its traffic goes to, the host ports it publishes and
//! the host names it answers, and the rules a route must follow before it is considered.
//!
//! Architecture invariant: a [`Route`] that passed [`Route::validate`] has a non-empty app and
//! container id, only TCP ports (1..=65535, no host port twice), valid lower-case host names
//! (no host twice) each with a resolved container port, and a TLS key that only
//! `secrecy` can print.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use super::error::ProxyError;

/// An app's route, as set by the agent and persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub app: String,
    pub backend: Backend,
    pub ports: Vec<PortMapping>,
    pub domains: Vec<DomainRoute>,
    /// The deployment that made this route (shown, never interpreted).
    pub deployment_id: String,
}

/// The container an app's traffic goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Connections and requests are counted (and drained) under this id.
    pub container_id: String,
    pub container_name: String,
    pub version: String,
    /// The container's IP on its network: the proxy dials `address:container_port`.
    pub address: IpAddr,
}

/// A published TCP host port and the container port it forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
}

/// A host name served over HTTP (and HTTPS when it has a certificate).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainRoute {
    pub host: String,
    /// Never 0 once validated (0 in a request means the app's first port).
    pub container_port: u16,
    pub tls: Option<TlsPem>,
}

/// A PEM certificate chain and its key, as given (parsed once into the route table).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsPem {
    pub cert_pem: String,
    #[serde(serialize_with = "expose", deserialize_with = "conceal")]
    pub key_pem: SecretString,
}

fn expose<S: serde::Serializer>(key: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(key.expose_secret())
}

fn conceal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

impl Route {
    /// Checks the rules of the module invariant and resolves each domain's container port 0
    /// to the first port's.
    pub fn validate(&mut self) -> Result<(), ProxyError> {
        let invalid = |m: String| Err(ProxyError::InvalidArgument(m));
        if self.app.trim().is_empty() {
            return invalid("the route has no app: name the application".into());
        }
        if self.backend.container_id.trim().is_empty() {
            return invalid(format!(
                "the route of app {} has no backend container id",
                self.app
            ));
        }
        let mut host_ports = BTreeSet::new();
        for port in &self.ports {
            if port.host_port == 0 || port.container_port == 0 {
                return invalid(format!(
                    "port 0 cannot be routed (app {}, {}:{}): publish ports 1-65535",
                    self.app, port.host_port, port.container_port
                ));
            }
            if !host_ports.insert(port.host_port) {
                return invalid(format!(
                    "host port {} is published twice by app {}",
                    port.host_port, self.app
                ));
            }
        }
        let first_port = self.ports.first().map(|p| p.container_port);
        let mut hosts = BTreeSet::new();
        for domain in &mut self.domains {
            validate_host(&domain.host).map_err(ProxyError::InvalidArgument)?;
            if !hosts.insert(domain.host.clone()) {
                return invalid(format!(
                    "domain {} is given twice for app {}",
                    domain.host, self.app
                ));
            }
            if domain.container_port == 0 {
                domain.container_port = match first_port {
                    Some(port) => port,
                    None => {
                        return invalid(format!(
                            "domain {} has no container port and app {} publishes none: set the domain's container port",
                            domain.host, self.app
                        ))
                    }
                };
            }
        }
        Ok(())
    }

    /// Where a connection to `container_port` of this route's backend goes.
    pub fn backend_addr(&self, container_port: u16) -> SocketAddr {
        SocketAddr::new(self.backend.address, container_port)
    }
}

/// A host name the proxy routes: lower-case letters, digits and '-', dot-separated labels of
/// 1 to 63 characters not starting or ending with '-', at most 253 characters, no IP literal.
pub fn validate_host(host: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid host name {host:?}: {why} (lower-case letters, digits, '-' and dots, no port, no trailing dot)"
        ))
    };
    if host.is_empty() {
        return bad("it is empty");
    }
    if host.len() > 253 {
        return bad("longer than 253 characters");
    }
    if host.parse::<IpAddr>().is_ok() {
        return bad("an IP address is not a domain");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("every label has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("a character is not allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for good in ["shop.example.com", "a", "x-1.example", "localhost", "1a.b2"] {
            assert_eq!(validate_host(good), Ok(()), "{good}");
        }
        let long_label = "a".repeat(64);
        let too_long = ["a"; 127].join(".") + ".ab";
        for bad in [
            "",
            "Shop.example.com",
            "shop.example.com.",
            "shop..example",
            "-shop.example",
            "shop-.example",
            "shop.example.com:443",
            "127.0.0.1",
            "::1",
            "*.example.com",
            "shop_1.example",
            long_label.as_str(),
            too_long.as_str(),
        ] {
            assert!(validate_host(bad).is_err(), "{bad:?} accepted");
        }
    }
}
