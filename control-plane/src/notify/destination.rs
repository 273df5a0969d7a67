//! Where a notification may be delivered. A receiver's URL is chosen by whoever holds a
//! writer key, and the control plane usually sits inside a network it can reach more of than
//! that person can: by default a delivery connects only to public addresses, never to
//! loopback, link-local, private, shared (CGNAT), unspecified, multicast, broadcast or
//! reserved ones, nor to an IPv6 address that embeds one of those.
//!
//! Architecture invariant: the check is made on the addresses the host name *resolved to*,
//! at connect time, and the connection goes to one of those checked addresses (never to the
//! name again), so a name that resolves differently the second time (DNS rebinding) cannot
//! get around it. A refused destination is refused before any connection is tried, so the
//! recorded error cannot tell whether something listens there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which destinations a delivery may connect to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DestinationPolicy {
    /// Public addresses only (the default).
    #[default]
    PublicOnly,
    /// Any address, private and loopback included (`--notify-allow-private`): for receivers
    /// on the operator's own network.
    AllowPrivate,
}

impl DestinationPolicy {
    pub fn allows(self, ip: IpAddr) -> bool {
        self == DestinationPolicy::AllowPrivate || is_public(ip)
    }

    /// The addresses of `resolved` a delivery may connect to, in their order.
    pub fn filter(self, resolved: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
        resolved
            .into_iter()
            .filter(|a| self.allows(a.ip()))
            .collect()
    }
}

/// Whether `ip` is an address of the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let this_network = a == 0; // 0.0.0.0/8, the unspecified address included
    let shared = a == 100 && (b & 0b1100_0000) == 64; // 100.64.0.0/10 (CGNAT)
    let reserved = a >= 240; // 240.0.0.0/4, broadcast included
    !(this_network
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || shared
        || ip.is_multicast()
        || ip.is_broadcast()
        || reserved)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) addresses reach the IPv4
    // address they carry.
    if let Some(v4) = ip.to_ipv4() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address on the translator's network;
    // the local-use prefix 64:ff9b:1::/48 is private by definition.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if segments[..3] == [0x64, 0xff9b, 1] {
        return false;
    }
    let site_local = (segments[0] & 0xffc0) == 0xfec0; // fec0::/10, deprecated
    !(ip.is_unique_local() || ip.is_unicast_link_local() || site_local || ip.is_multicast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_special_addresses_are_not_public() {
        for text in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456:789a::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert!(!is_public(ip), "{text} counted as public");
            assert!(!DestinationPolicy::PublicOnly.allows(ip), "{text}");
            assert!(DestinationPolicy::AllowPrivate.allows(ip), "{text}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert!(is_public(ip), "{text} counted as private");
            assert!(DestinationPolicy::PublicOnly.allows(ip), "{text}");
        }
    }

    #[test]
    fn only_the_allowed_resolved_addresses_are_kept_in_order() {
        let resolved: Vec<SocketAddr> = ["127.0.0.1:80", "8.8.8.8:80", "[::1]:80", "1.1.1.1:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            DestinationPolicy::PublicOnly.filter(resolved.clone()),
            vec![
                "8.8.8.8:80".parse::<SocketAddr>().unwrap(),
                "1.1.1.1:80".parse().unwrap()
            ]
        );
        assert_eq!(
            DestinationPolicy::AllowPrivate.filter(resolved.clone()),
            resolved
        );
    }
}
