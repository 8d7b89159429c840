//! SSRF guard: discovered relay URLs are untrusted, so the addresses they resolve to are
//! checked before any socket is opened. Loopback, private, link-local, unique-local,
//! unspecified and other special-purpose ranges are refused unless an allowlist explicitly
//! allows private networks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;

/// Why an address is not a public unicast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT).
    Private,
    /// 169.254/16 (including cloud metadata at 169.254.169.254), fe80::/10.
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// Multicast, broadcast, documentation, benchmarking and reserved ranges.
    Special,
}

impl AddressClass {
    /// A stable label for metrics and status.
    pub fn label(self) -> &'static str {
        match self {
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link_local",
            AddressClass::UniqueLocal => "unique_local",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Special => "special",
        }
    }
}

/// A refused connection target.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SsrfError {
    /// The host resolved to a non-public address.
    #[error("refusing {addr}: {} address (allowPrivateNetworks is off)", class.label())]
    Forbidden {
        /// The resolved address.
        addr: IpAddr,
        /// Its class.
        class: AddressClass,
    },
    /// The host resolved to nothing.
    #[error("host resolved to no address")]
    NoAddress,
}

impl SsrfError {
    /// A stable label for metrics: the address class, or `no_address`.
    pub fn class_label(&self) -> &'static str {
        match self {
            SsrfError::Forbidden { class, .. } => class.label(),
            SsrfError::NoAddress => "no_address",
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        return Some(AddressClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        return Some(AddressClass::Private);
    }
    if ip.is_link_local() {
        return Some(AddressClass::LinkLocal);
    }
    let special = ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19));
    special.then_some(AddressClass::Special)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip.is_unspecified() {
        return Some(AddressClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    let seg0 = ip.segments()[0];
    if seg0 & 0xfe00 == 0xfc00 {
        return Some(AddressClass::UniqueLocal);
    }
    if seg0 & 0xffc0 == 0xfe80 {
        return Some(AddressClass::LinkLocal);
    }
    // Multicast, documentation (2001:db8::/32), and deprecated site-local (fec0::/10).
    let special = ip.is_multicast()
        || (seg0 == 0x2001 && ip.segments()[1] == 0x0db8)
        || seg0 & 0xffc0 == 0xfec0;
    special.then_some(AddressClass::Special)
}

/// The class of a non-public address; `None` for a public unicast address.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Checks every address a host resolved to: one forbidden address refuses the host, so a
/// DNS answer cannot mix a public and a private address to slip through.
pub fn check_resolved(addrs: &[IpAddr], allow_private: bool) -> Result<(), SsrfError> {
    if addrs.is_empty() {
        return Err(SsrfError::NoAddress);
    }
    if allow_private {
        return Ok(());
    }
    for addr in addrs {
        if let Some(class) = classify(*addr) {
            return Err(SsrfError::Forbidden { addr: *addr, class });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip literal")
    }

    #[test]
    fn refuses_every_non_public_range() {
        for (s, class) in [
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::Private),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("0.0.0.0", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("::", AddressClass::Unspecified),
            ("fc00::1", AddressClass::UniqueLocal),
            ("fd12:3456::1", AddressClass::UniqueLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("febf::1", AddressClass::LinkLocal),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("224.0.0.1", AddressClass::Special),
            ("255.255.255.255", AddressClass::Special),
            ("2001:db8::1", AddressClass::Special),
        ] {
            assert_eq!(classify(ip(s)), Some(class), "{s}");
            assert!(check_resolved(&[ip(s)], false).is_err(), "{s}");
            assert!(check_resolved(&[ip(s)], true).is_ok(), "{s}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert_eq!(classify(ip(s)), None, "{s}");
            assert!(check_resolved(&[ip(s)], false).is_ok(), "{s}");
        }
    }

    #[test]
    fn one_private_answer_refuses_the_host() {
        let err = check_resolved(&[ip("1.1.1.1"), ip("10.0.0.1")], false).expect_err("refused");
        assert!(err.to_string().contains("10.0.0.1"), "{err}");
        assert_eq!(check_resolved(&[], true), Err(SsrfError::NoAddress));
    }
}

/// Resolves a relay URL's host and checks every address before any connection is made.
/// Returns the addresses to dial; connecting to exactly these (not re-resolving) closes the
/// DNS-rebinding gap between check and use.
pub async fn resolve_checked(
    url: &crate::core::url::RelayUrl,
    allow_private: bool,
) -> Result<Vec<std::net::SocketAddr>, SsrfError> {
    let host = url.host().trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![std::net::SocketAddr::new(ip, url.port())],
        Err(_) => tokio::net::lookup_host((host, url.port()))
            .await
            .map_err(|_| SsrfError::NoAddress)?
            .collect(),
    };
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    check_resolved(&ips, allow_private)?;
    Ok(addrs)
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    use crate::core::url::RelayUrl;

    fn url(s: &str) -> RelayUrl {
        RelayUrl::parse(s).expect("valid")
    }

    #[tokio::test]
    async fn literals_and_localhost_are_checked_before_connecting() {
        for u in [
            "ws://127.0.0.1:7000",
            "ws://[::1]:7000",
            "ws://10.0.0.5",
            "wss://169.254.169.254",
        ] {
            let err = resolve_checked(&url(u), false).await.expect_err(u);
            assert!(matches!(err, SsrfError::Forbidden { .. }), "{u}: {err}");
        }
        // `localhost` resolves locally (no network) and is refused by address, not by name.
        let err = resolve_checked(&url("ws://localhost:7000"), false)
            .await
            .expect_err("localhost refused");
        assert!(
            matches!(
                err,
                SsrfError::Forbidden {
                    class: AddressClass::Loopback,
                    ..
                }
            ),
            "{err}"
        );
        let ok = resolve_checked(&url("ws://127.0.0.1:7000"), true)
            .await
            .expect("allowed");
        assert_eq!(ok, vec!["127.0.0.1:7000".parse().expect("addr")]);
        let public = resolve_checked(&url("wss://1.1.1.1"), false)
            .await
            .expect("public literal");
        assert_eq!(public[0].port(), 443);
    }
}
