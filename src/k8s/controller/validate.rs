//! Phase "validate": is a SyncRelay acceptable? Its URL must normalise as a ws:// or wss://
//! relay URL (CEL already refuses most bad ones at admission; this catches what CEL cannot,
//! such as a malformed host), and only one SyncRelay per normalised URL is accepted (the
//! oldest), so two objects never make two workers sync the same relay.

use super::view;
use crate::api::types::SyncRelay;
use crate::core::url::RelayUrl;
use crate::k8s::consts::controller_reason;
use std::collections::BTreeMap;

/// The verdict on one SyncRelay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid; the normalised URL.
    Accepted(RelayUrl),
    /// Refused, with a CamelCase reason and a message for humans.
    Refused {
        /// Reason.
        reason: &'static str,
        /// Message.
        message: String,
    },
}

impl Verdict {
    /// The normalised URL when accepted.
    pub fn url(&self) -> Option<&RelayUrl> {
        match self {
            Verdict::Accepted(u) => Some(u),
            Verdict::Refused { .. } => None,
        }
    }
}

/// `Accepted` = False: another SyncRelay already has this URL.
pub const DUPLICATE_URL: &str = "DuplicateUrl";

/// Checks one spec's URL.
pub fn validate_url(url: &str, max_len: usize) -> Verdict {
    match RelayUrl::parse_with_limit(url, max_len) {
        Ok(u) => Verdict::Accepted(u),
        Err(e) => Verdict::Refused {
            reason: controller_reason::INVALID_URL,
            message: format!("url {:?}: {e}", truncate(url, 128)),
        },
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Verdicts for every relay by key. Among relays with the same normalised URL, the oldest
/// (then the first by key) is accepted and the others refused as duplicates. Relays being
/// deleted do not claim their URL.
pub fn validate_all(relays: &[SyncRelay], max_len: usize) -> BTreeMap<String, Verdict> {
    let mut order: Vec<&SyncRelay> = relays.iter().collect();
    order.sort_by_key(|r| (view::created(r), view::key(r)));
    let mut owner: BTreeMap<RelayUrl, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for r in order {
        let key = view::key(r);
        let mut verdict = validate_url(&r.spec.url, max_len);
        if let Verdict::Accepted(url) = &verdict {
            if !view::is_deleting(r) {
                match owner.get(url) {
                    Some(first) => {
                        verdict = Verdict::Refused {
                            reason: DUPLICATE_URL,
                            message: format!("{url} is already synced by SyncRelay {first}"),
                        }
                    }
                    None => {
                        owner.insert(url.clone(), key.clone());
                    }
                }
            }
        }
        out.insert(key, verdict);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::SyncRelaySpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn relay(name: &str, url: &str, created_s: i64) -> SyncRelay {
        let mut r = SyncRelay::new(
            name,
            SyncRelaySpec {
                url: url.into(),
                bootstrap: false,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
        );
        r.metadata.namespace = Some("ns".into());
        r.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(created_s).expect("valid time")));
        r
    }

    #[test]
    fn urls_are_normalised_and_checked() {
        assert_eq!(
            validate_url("wss://Relay.Example.org/", 512),
            Verdict::Accepted(RelayUrl::parse("wss://relay.example.org").expect("valid"))
        );
        for bad in [
            "https://relay.example.org",
            "wss://",
            "wss://u:p@host",
            "nonsense",
        ] {
            assert!(
                matches!(
                    validate_url(bad, 512),
                    Verdict::Refused { reason, .. } if reason == controller_reason::INVALID_URL
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            validate_url(&format!("wss://{}.org", "a".repeat(600)), 512),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn the_oldest_of_duplicates_wins() {
        let relays = [
            relay("b", "wss://relay.example.org", 10),
            relay("a", "wss://RELAY.example.org:443/", 20),
            relay("c", "wss://other.example.org", 30),
        ];
        let v = validate_all(&relays, 512);
        assert!(matches!(v["ns/b"], Verdict::Accepted(_)));
        assert!(matches!(
            &v["ns/a"],
            Verdict::Refused { reason, message } if *reason == DUPLICATE_URL && message.contains("ns/b")
        ));
        assert!(matches!(v["ns/c"], Verdict::Accepted(_)));
    }
}
