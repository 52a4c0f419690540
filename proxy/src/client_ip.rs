//! The client address of a request: the TCP peer, or — only when the peer is a trusted proxy
//! (`network.trusted_proxies`) — the address `X-Forwarded-For` names.
//!
//! Owns: the trusted-proxy set and the `X-Forwarded-For` walk.
//!
//! Invariants:
//! - `X-Forwarded-For` from an untrusted peer is ignored entirely (it is client-controlled);
//! - from a trusted peer the header is walked from the right (the hop closest to us), skipping
//!   trusted hops; the first untrusted address wins; if every hop is trusted, the leftmost one;
//! - only the part of the header written by trusted proxies is parsed: a malformed entry there
//!   is an error (400); entries left of the first untrusted address are never looked at;
//! - IPv4-mapped IPv6 addresses are returned (and matched) as IPv4;
//! - no input makes it panic.

use std::net::{IpAddr, SocketAddr};

use crate::fields::{visible_ascii, HeaderLookup};
use ipnet::IpNet;
use prescale_config::NetworkConfig;

/// `X-Forwarded-For` as sent by a trusted proxy cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed X-Forwarded-For from a trusted proxy: {reason}")]
pub struct ClientIpError {
    pub reason: &'static str,
}

impl ClientIpError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        400
    }
}

/// Finds the client address of a request. Build once at start; share.
#[derive(Clone, Debug, Default)]
pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
}

/// Header entries examined at most; a longer trusted chain is treated as malformed.
pub const MAX_FORWARDED_HOPS: usize = 64;

impl ClientIpResolver {
    pub fn new(config: &NetworkConfig) -> Self {
        ClientIpResolver {
            trusted: config
                .trusted_proxies
                .iter()
                .map(|net| net.trunc())
                .collect(),
        }
    }

    /// Whether `ip` is inside one of the trusted proxy networks.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    pub fn client_ip(
        &self,
        peer: IpAddr,
        headers: &(impl HeaderLookup + ?Sized),
    ) -> Result<IpAddr, ClientIpError> {
        let peer = peer.to_canonical();
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return Ok(peer);
        }
        let mut chosen = peer;
        let mut examined = 0usize;
        // Several X-Forwarded-For headers form one list, in order: walk them last to first.
        for value in headers.get_all("x-forwarded-for").rev() {
            let Some(text) = visible_ascii(value) else {
                return Err(ClientIpError {
                    reason: "it is not visible ASCII",
                });
            };
            for entry in text.rsplit(',') {
                examined += 1;
                if examined > MAX_FORWARDED_HOPS {
                    return Err(ClientIpError {
                        reason: "too many hops",
                    });
                }
                let hop = parse_hop(entry).ok_or(ClientIpError {
                    reason: "an entry is not an IP address",
                })?;
                chosen = hop;
                if !self.is_trusted(hop) {
                    return Ok(hop);
                }
            }
        }
        Ok(chosen)
    }
}

/// One `X-Forwarded-For` entry: a bare IPv4/IPv6 address, or one with a port
/// (`1.2.3.4:5678`, `[::1]:5678`), as some proxies write.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim_matches([' ', '\t']);
    if entry.is_empty() {
        return None;
    }
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;

    use super::*;

    fn resolver(trusted: &[&str]) -> ClientIpResolver {
        ClientIpResolver::new(&NetworkConfig {
            trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
        })
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_xff() {
        let r = resolver(&["10.0.0.0/8"]);
        assert_eq!(
            r.client_ip(ip("198.51.100.9"), &xff(&["1.2.3.4"])).unwrap(),
            ip("198.51.100.9")
        );
        // Even garbage is ignored from an untrusted peer.
        assert_eq!(
            r.client_ip(ip("198.51.100.9"), &xff(&["not an ip"]))
                .unwrap(),
            ip("198.51.100.9")
        );
        // No trusted proxies at all.
        let none = resolver(&[]);
        assert_eq!(
            none.client_ip(ip("10.1.1.1"), &xff(&["1.2.3.4"])).unwrap(),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn trusted_peer_walks_from_the_right() {
        let r = resolver(&["10.0.0.0/8", "::1/128"]);
        let peer = ip("10.0.0.1");
        assert_eq!(r.client_ip(peer, &HeaderMap::new()).unwrap(), peer);
        assert_eq!(
            r.client_ip(peer, &xff(&["81.2.69.142"])).unwrap(),
            ip("81.2.69.142")
        );
        // Spoofed left part is skipped: the first untrusted from the right wins.
        assert_eq!(
            r.client_ip(peer, &xff(&["6.6.6.6, 81.2.69.142, 10.0.0.5"]))
                .unwrap(),
            ip("81.2.69.142")
        );
        // Garbage left of the first untrusted address is never parsed.
        assert_eq!(
            r.client_ip(peer, &xff(&["garbage, 81.2.69.142"])).unwrap(),
            ip("81.2.69.142")
        );
        // Several headers are one list.
        assert_eq!(
            r.client_ip(peer, &xff(&["6.6.6.6", "81.2.69.142, 10.9.9.9"]))
                .unwrap(),
            ip("81.2.69.142")
        );
        // All hops trusted: the leftmost.
        assert_eq!(
            r.client_ip(peer, &xff(&["10.1.1.1, 10.2.2.2"])).unwrap(),
            ip("10.1.1.1")
        );
        // Ports and brackets, IPv6, IPv4-mapped.
        assert_eq!(
            r.client_ip(peer, &xff(&["81.2.69.142:4711"])).unwrap(),
            ip("81.2.69.142")
        );
        assert_eq!(
            r.client_ip(peer, &xff(&["[2001:db8::1]:80"])).unwrap(),
            ip("2001:db8::1")
        );
        assert_eq!(
            r.client_ip(peer, &xff(&["[2001:db8::1]"])).unwrap(),
            ip("2001:db8::1")
        );
        assert_eq!(
            r.client_ip(peer, &xff(&["::ffff:81.2.69.142"])).unwrap(),
            ip("81.2.69.142")
        );
        assert_eq!(
            r.client_ip(ip("::ffff:10.0.0.1"), &xff(&["81.2.69.142"]))
                .unwrap(),
            ip("81.2.69.142")
        );
        assert_eq!(
            r.client_ip(ip("::1"), &xff(&["2001:db8::2"])).unwrap(),
            ip("2001:db8::2")
        );
    }

    #[test]
    fn malformed_xff_from_trusted_peer_is_an_error() {
        let r = resolver(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        for bad in [
            "",
            "not-an-ip",
            "1.2.3.4,",
            "1.2.3.4,,10.0.0.2",
            "999.1.1.1",
            "unknown",
        ] {
            let err = r.client_ip(peer, &xff(&[bad])).unwrap_err();
            assert_eq!(err.status(), 400, "{bad:?}");
        }
        let mut map = HeaderMap::new();
        map.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert!(r.client_ip(peer, &map).is_err());
        let long = vec!["10.0.0.2"; MAX_FORWARDED_HOPS + 1].join(",");
        assert!(r.client_ip(peer, &xff(&[&long])).is_err());
    }

    proptest! {
        #[test]
        fn xff_parsing_never_panics(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let r = resolver(&["0.0.0.0/0", "::/0"]);
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                let mut map = HeaderMap::new();
                map.insert("x-forwarded-for", v);
                let _ = r.client_ip(ip("10.0.0.1"), &map);
            }
        }

        #[test]
        fn xff_text_never_panics(value in "[0-9a-f:.,\\[\\] ]{0,80}") {
            let r = resolver(&["10.0.0.0/8"]);
            let _ = r.client_ip(ip("10.0.0.1"), &xff(&[&value]));
        }
    }
}
