//! Who the CI caller is: the TCP peer, unless the peer is a configured trusted proxy,
//! in which case the nearest untrusted address of `X-Forwarded-For`. A header from anyone
//! else is ignored, so a caller cannot choose the address its limits and logs are keyed by.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`) and single addresses (`127.0.0.1`, `::1`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!("trusted proxy {entry:?} is neither an ip address nor a cidr")
                })?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies { nets })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For header, in order, as one list; read from the right (the hop
        // nearest to us), skipping our own proxies.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
                // A garbled hop: nothing left of it can be trusted.
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// `::ffff:1.2.3.4` (a dual-stack listener) is `1.2.3.4`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("10.0.0.5"), &headers(&["1.2.3.4"])),
            ip("10.0.0.5")
        );

        let proxies = TrustedProxies::parse(&["10.0.0.0/8", "127.0.0.1"]).unwrap();
        assert_eq!(
            proxies.client_ip(ip("10.0.0.5"), &headers(&["1.2.3.4"])),
            ip("1.2.3.4")
        );
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &headers(&[])),
            ip("127.0.0.1")
        );
        assert_eq!(
            proxies.client_ip(ip("192.0.2.1"), &headers(&["1.2.3.4"])),
            ip("192.0.2.1")
        );
        // A spoofed left-most entry is not believed: the nearest untrusted hop is the client.
        assert_eq!(
            proxies.client_ip(ip("10.0.0.5"), &headers(&["6.6.6.6, 1.2.3.4, 10.0.0.9"])),
            ip("1.2.3.4")
        );
        assert_eq!(
            proxies.client_ip(ip("10.0.0.5"), &headers(&["6.6.6.6", "1.2.3.4"])),
            ip("1.2.3.4")
        );
        assert_eq!(
            proxies.client_ip(ip("10.0.0.5"), &headers(&["garbage"])),
            ip("10.0.0.5")
        );
        assert_eq!(
            proxies.client_ip(ip("::ffff:192.0.2.1"), &headers(&[])),
            ip("192.0.2.1")
        );
        assert!(TrustedProxies::parse(&["nope"]).is_err());
    }
}
