//! Allowlist matching: which discovered relay URLs may become SyncRelays.
//!
//! Deny wins over allow, across every allowlist. With no allowlist, discovery admits nothing.
//! The check here is on the URL; the SSRF guard checks resolved addresses again at connect time.

use super::types::{Discovery, HostRule, RelayAllowlistSpec};
use crate::core::url::RelayUrl;
use crate::relay::ssrf;
use std::net::IpAddr;

/// The verdict for one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted by the allowlist at this index; whether it allows private networks.
    Admitted {
        /// Index of the admitting allowlist.
        allowlist: usize,
        /// Its `allowPrivateNetworks`.
        allow_private_networks: bool,
    },
    /// A deny rule matched.
    Denied,
    /// No allow rule matched (or no allowlist has discovery enabled).
    NotAllowed,
    /// The host is an IP literal in a private range and no allowlist allows that.
    PrivateAddress,
    /// The admitting allowlist is full (`maxRelays`).
    Full,
}

impl Admission {
    /// A stable label for metrics and status.
    pub fn label(&self) -> &'static str {
        match self {
            Admission::Admitted { .. } => "admitted",
            Admission::Denied => "denied",
            Admission::NotAllowed => "not_allowed",
            Admission::PrivateAddress => "private_address",
            Admission::Full => "full",
        }
    }
}

/// `*` matches any run of characters (dots included); everything else literally,
/// case-insensitively.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    // Iterative matcher with backtracking to the last star: linear-ish, no recursion.
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn scheme_of(url: &RelayUrl) -> &str {
    url.as_str().split("://").next().unwrap_or_default()
}

fn rule_matches(rule: &HostRule, url: &RelayUrl, default_schemes: Option<&[&str]>) -> bool {
    let scheme = scheme_of(url);
    let scheme_ok = match (&rule.schemes, default_schemes) {
        (Some(list), _) => list.iter().any(|s| s.eq_ignore_ascii_case(scheme)),
        (None, Some(defaults)) => defaults.contains(&scheme),
        (None, None) => true,
    };
    let port_ok = rule
        .ports
        .as_ref()
        .is_none_or(|ports| ports.contains(&url.port()));
    scheme_ok && port_ok && glob_match(&rule.host, url.host())
}

/// An IP-literal host in a non-public range (checked before any DNS lookup).
pub fn literal_private(url: &RelayUrl) -> bool {
    let host = url.host().trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>()
        .is_ok_and(|ip| ssrf::classify(ip).is_some())
        || host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
}

/// Decides whether a discovered URL may be created. `admitted_counts[i]` is how many relays
/// allowlist `i` already admitted (for `maxRelays`).
pub fn admit(
    allowlists: &[RelayAllowlistSpec],
    admitted_counts: &[u32],
    url: &RelayUrl,
) -> Admission {
    if allowlists
        .iter()
        .any(|a| a.deny.iter().any(|r| rule_matches(r, url, None)))
    {
        return Admission::Denied;
    }
    let mut verdict = Admission::NotAllowed;
    for (i, list) in allowlists.iter().enumerate() {
        if list.discovery == Discovery::Disabled
            || !list
                .allow
                .iter()
                .any(|r| rule_matches(r, url, Some(&["wss"])))
        {
            continue;
        }
        if literal_private(url) && !list.allow_private_networks {
            verdict = Admission::PrivateAddress;
            continue;
        }
        if admitted_counts.get(i).copied().unwrap_or(0) >= list.max_relays {
            verdict = Admission::Full;
            continue;
        }
        return Admission::Admitted {
            allowlist: i,
            allow_private_networks: list.allow_private_networks,
        };
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RelayUrl {
        RelayUrl::parse(s).expect("valid")
    }

    fn list(yaml: &str) -> RelayAllowlistSpec {
        serde_yaml::from_str(yaml).expect("valid allowlist")
    }

    #[test]
    fn glob_matches_like_a_shell_host_glob() {
        assert!(glob_match("*.example.org", "relay.example.org"));
        assert!(glob_match("*.example.org", "a.b.example.org"));
        assert!(!glob_match("*.example.org", "example.org"));
        assert!(!glob_match("*.example.org", "example.org.evil.com"));
        assert!(glob_match("relay-*.nostr.*", "relay-1.nostr.net"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("RELAY.example.org", "relay.EXAMPLE.org"));
        assert!(!glob_match("relay", "relay2"));
    }

    #[test]
    fn deny_wins_and_defaults_apply() {
        let a = list("allow:\n- host: '*.example.org'\ndeny:\n- host: spam.example.org\n");
        let lists = [a];
        assert!(matches!(
            admit(&lists, &[0], &url("wss://relay.example.org")),
            Admission::Admitted { .. }
        ));
        assert_eq!(
            admit(&lists, &[0], &url("wss://spam.example.org")),
            Admission::Denied
        );
        // Allow rules default to wss only.
        assert_eq!(
            admit(&lists, &[0], &url("ws://relay.example.org")),
            Admission::NotAllowed
        );
        assert_eq!(
            admit(&lists, &[0], &url("wss://other.net")),
            Admission::NotAllowed
        );
        assert_eq!(
            admit(&[], &[], &url("wss://relay.example.org")),
            Admission::NotAllowed
        );
    }

    #[test]
    fn ports_schemes_caps_and_discovery() {
        let a =
            list("maxRelays: 1\nallow:\n- host: '*'\n  schemes: [ws, wss]\n  ports: [443, 7777]\n");
        let lists = [a];
        assert!(matches!(
            admit(&lists, &[0], &url("ws://relay.example.org:7777")),
            Admission::Admitted { .. }
        ));
        assert_eq!(
            admit(&lists, &[0], &url("ws://relay.example.org:8080")),
            Admission::NotAllowed
        );
        assert_eq!(
            admit(&lists, &[1], &url("wss://relay.example.org")),
            Admission::Full
        );
        let off = list("discovery: Disabled\nallow:\n- host: '*'\n");
        assert_eq!(
            admit(&[off], &[0], &url("wss://relay.example.org")),
            Admission::NotAllowed
        );
    }

    #[test]
    fn private_literals_need_allow_private_networks() {
        let strict = list("allow:\n- host: '*'\n  schemes: [ws]\n");
        let open =
            list("allowPrivateNetworks: true\nallow:\n- host: '127.0.0.1'\n  schemes: [ws]\n");
        for u in [
            "ws://127.0.0.1:7000",
            "ws://10.0.0.1",
            "ws://[::1]:7000",
            "ws://localhost:7000",
            "ws://169.254.169.254",
        ] {
            assert_eq!(
                admit(std::slice::from_ref(&strict), &[0], &url(u)),
                Admission::PrivateAddress,
                "{u}"
            );
        }
        assert_eq!(
            admit(&[strict, open], &[0, 0], &url("ws://127.0.0.1:7000")),
            Admission::Admitted {
                allowlist: 1,
                allow_private_networks: true
            }
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_yaml::from_str::<RelayAllowlistSpec>("alow: []").is_err());
    }
}
