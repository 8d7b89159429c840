//! Relay URL normalisation and extraction from NIP-34 `clone` URLs.
//!
//! Every relay URL the core stores is normalised once, here, so that "is this our relay" is an
//! exact string comparison (never a substring test, an upstream defect) and one relay never
//! appears under two spellings.

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// Why a relay URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum UrlError {
    /// Longer than the configured byte limit.
    #[error("relay URL is too long")]
    TooLong,
    /// Not parseable as a URL.
    #[error("relay URL is not a valid URL")]
    Malformed,
    /// Not `ws://` or `wss://`.
    #[error("relay URL scheme must be ws or wss")]
    BadScheme,
    /// No host part.
    #[error("relay URL has no host")]
    NoHost,
    /// Carries `user:password@`, which a relay URL never needs.
    #[error("relay URL must not carry credentials")]
    Credentials,
}

impl UrlError {
    /// A stable, low-cardinality label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            UrlError::TooLong => "too_long",
            UrlError::Malformed => "malformed",
            UrlError::BadScheme => "bad_scheme",
            UrlError::NoHost => "no_host",
            UrlError::Credentials => "credentials",
        }
    }
}

/// A normalised `ws://` or `wss://` relay URL: lower-case scheme and host, no default port,
/// no trailing slash, no fragment. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelayUrl(Arc<str>);

impl RelayUrl {
    /// Normalises `raw`, refusing anything over `max_len` bytes.
    pub fn parse_with_limit(raw: &str, max_len: usize) -> Result<Self, UrlError> {
        if raw.len() > max_len {
            return Err(UrlError::TooLong);
        }
        let url = url::Url::parse(raw.trim()).map_err(|_| UrlError::Malformed)?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(UrlError::BadScheme);
        }
        Self::from_parsed(&url, url.scheme(), max_len)
    }

    /// Normalises `raw` with the default 512-byte limit.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        Self::parse_with_limit(raw, 512)
    }

    fn from_parsed(url: &url::Url, scheme: &str, max_len: usize) -> Result<Self, UrlError> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        // `url` already lower-cases the host of special schemes and punycodes IDNs.
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            _ => return Err(UrlError::NoHost),
        };
        let default_port = if scheme == "wss" { 443 } else { 80 };
        let mut out = format!("{scheme}://{host}");
        if let Some(port) = url.port().filter(|p| *p != default_port) {
            out.push(':');
            out.push_str(&port.to_string());
        }
        let path = url.path().trim_end_matches('/');
        out.push_str(path);
        if let Some(q) = url.query() {
            out.push('?');
            out.push_str(q);
        }
        if out.len() > max_len {
            return Err(UrlError::TooLong);
        }
        Ok(RelayUrl(out.into()))
    }

    /// The relay URL implied by a `clone` URL: `http(s)://host[:port]/…` maps to
    /// `ws(s)://host[:port]`, and `nostr://<npub|nip05>/<relay-hint>/<identifier>` yields its
    /// percent-decoded relay hint (`wss://` implied). Other clone URLs name no relay (`Ok(None)`).
    pub fn from_clone_url(raw: &str, max_len: usize) -> Result<Option<Self>, UrlError> {
        if raw.len() > max_len {
            return Err(UrlError::TooLong);
        }
        let trimmed = raw.trim();
        let lower = trimmed
            .get(..8)
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if lower.starts_with("nostr://") {
            return Self::from_nostr_clone_url(&trimmed[8..], max_len);
        }
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Ok(None);
        }
        let url = url::Url::parse(trimmed).map_err(|_| UrlError::Malformed)?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        // Clone URLs name a git path; the relay is at the host root.
        let default_port = if scheme == "wss" { 443 } else { 80 };
        let port = url.port_or_known_default().filter(|p| *p != default_port);
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            _ => return Err(UrlError::NoHost),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        let text = match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        Self::parse_with_limit(&text, max_len).map(Some)
    }

    fn from_nostr_clone_url(rest: &str, max_len: usize) -> Result<Option<Self>, UrlError> {
        let parts: Vec<&str> = rest.split('/').collect();
        // Only the three-part form carries a relay hint.
        let [_, hint, _identifier] = parts.as_slice() else {
            return Ok(None);
        };
        let decoded = percent_decode_str(hint)
            .decode_utf8()
            .map_err(|_| UrlError::Malformed)?;
        if decoded.is_empty() {
            return Err(UrlError::Malformed);
        }
        let with_scheme = if decoded.contains("://") {
            decoded.into_owned()
        } else {
            format!("wss://{decoded}")
        };
        Self::parse_with_limit(&with_scheme, max_len).map(Some)
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `wss://`.
    pub fn is_secure(&self) -> bool {
        self.0.starts_with("wss://")
    }

    /// The host part (an IPv6 literal keeps its brackets).
    pub fn host(&self) -> &str {
        let after = self.0.split_once("://").map_or(&*self.0, |(_, r)| r);
        let end = if after.starts_with('[') {
            after.find(']').map_or(after.len(), |i| i + 1)
        } else {
            after.find([':', '/', '?']).unwrap_or(after.len())
        };
        &after[..end]
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        let after = self.0.split_once("://").map_or(&*self.0, |(_, r)| r);
        let host_len = self.host().len();
        let rest = &after[host_len..];
        rest.strip_prefix(':')
            .and_then(|r| r.split(['/', '?']).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(if self.is_secure() { 443 } else { 80 })
    }
}

impl RelayUrl {
    /// `host[:port]` as sent in an HTTP `Host` header (the port only when explicit).
    pub fn host_port(&self) -> &str {
        let after = self.0.split_once("://").map_or(&*self.0, |(_, r)| r);
        let end = after.find(['/', '?']).unwrap_or(after.len());
        &after[..end]
    }

    /// The path and query, `/` when empty.
    pub fn path_and_query(&self) -> &str {
        let after = self.0.split_once("://").map_or(&*self.0, |(_, r)| r);
        match after.find(['/', '?']) {
            Some(i) if after[i..].starts_with('/') => &after[i..],
            Some(i) => &after[i..],
            None => "/",
        }
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RelayUrl {
    type Error = UrlError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RelayUrl::parse(&value)
    }
}

impl From<RelayUrl> for String {
    fn from(value: RelayUrl) -> Self {
        value.0.to_string()
    }
}

impl std::str::FromStr for RelayUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RelayUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        RelayUrl::parse(s).expect("valid").to_string()
    }

    #[test]
    fn normalises_case_port_slash_and_fragment() {
        assert_eq!(norm("WSS://Relay.Example.COM/"), "wss://relay.example.com");
        assert_eq!(
            norm("wss://relay.example.com:443"),
            "wss://relay.example.com"
        );
        assert_eq!(norm("ws://relay.example.com:80/"), "ws://relay.example.com");
        assert_eq!(
            norm("ws://relay.example.com:7777"),
            "ws://relay.example.com:7777"
        );
        assert_eq!(
            norm("wss://relay.example.com/nostr/#frag"),
            "wss://relay.example.com/nostr"
        );
        assert_eq!(norm("wss://[::1]:7000/"), "wss://[::1]:7000");
        assert_eq!(
            norm("ws://127.0.0.1:7777/sub/path/"),
            "ws://127.0.0.1:7777/sub/path"
        );
    }

    #[test]
    fn refuses_non_ws_long_and_credentialed_urls() {
        assert_eq!(
            RelayUrl::parse("https://relay.example.com"),
            Err(UrlError::BadScheme)
        );
        assert_eq!(RelayUrl::parse("not a url"), Err(UrlError::Malformed));
        assert_eq!(
            RelayUrl::parse("wss://u:p@relay.example.com"),
            Err(UrlError::Credentials)
        );
        let long = format!("wss://{}.com", "a".repeat(600));
        assert_eq!(RelayUrl::parse(&long), Err(UrlError::TooLong));
    }

    #[test]
    fn clone_urls_map_to_relays() {
        let f = |s| {
            RelayUrl::from_clone_url(s, 512)
                .expect("ok")
                .map(|u| u.to_string())
        };
        assert_eq!(
            f("https://relay.ngit.dev/npub1abc/repo.git").as_deref(),
            Some("wss://relay.ngit.dev")
        );
        assert_eq!(
            f("http://Git.Example.org:8080/x.git").as_deref(),
            Some("ws://git.example.org:8080")
        );
        assert_eq!(
            f("https://h.example:443/r").as_deref(),
            Some("wss://h.example")
        );
        assert_eq!(f("git@github.com:a/b.git"), None);
        assert_eq!(f("ssh://git@host/a.git"), None);
        assert_eq!(
            f("nostr://npub1xyz/relay.ngit.dev/ngit").as_deref(),
            Some("wss://relay.ngit.dev")
        );
        assert_eq!(
            f("nostr://dan.example/ws%3A%2F%2Flocalhost%3A7334/my-repo").as_deref(),
            Some("ws://localhost:7334")
        );
        assert_eq!(f("nostr://npub1xyz/just-an-identifier"), None);
    }

    #[test]
    fn host_and_port_accessors() {
        let u = RelayUrl::parse("ws://127.0.0.1:7777/x").expect("valid");
        assert_eq!((u.host(), u.port()), ("127.0.0.1", 7777));
        let u = RelayUrl::parse("wss://[fe80::1]/").expect("valid");
        assert_eq!((u.host(), u.port()), ("[fe80::1]", 443));
        let u = RelayUrl::parse("wss://relay.example.org").expect("valid");
        assert_eq!((u.host(), u.port()), ("relay.example.org", 443));
    }
}
