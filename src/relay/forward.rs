//! What may be forwarded to our relay, and how our relay's `OK false` replies are counted.
//!
//! An event from a remote relay is published to ours only if its size is within the limit,
//! it matches a filter of the subscription it arrived on (a relay cannot inject unrelated
//! events), it is not a recent duplicate, and its id and Schnorr signature verify. The cheap
//! checks run first; the id enters the dedup set only after it verified, so a forged copy
//! cannot shadow the real event.

use super::dedup::RecentIds;
use nostr::filter::MatchEventOptions;
use nostr::secp256k1::{Message, XOnlyPublicKey};
use nostr::{Event, Filter, PublicKey};
use std::collections::HashMap;
use thiserror::Error;

/// Why an event was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum Reject {
    /// Larger than the size limit.
    #[error("event is larger than the size limit")]
    TooLarge,
    /// Matches no filter of the subscription it came on.
    #[error("event matches no filter of its subscription")]
    Unrequested,
    /// Forwarded recently.
    #[error("event was forwarded recently")]
    Duplicate,
    /// The id is not the hash of the content.
    #[error("event id does not match its content")]
    InvalidId,
    /// The signature does not verify.
    #[error("event signature does not verify")]
    InvalidSignature,
}

impl Reject {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::Unrequested => "unrequested",
            Reject::Duplicate => "duplicate",
            Reject::InvalidId => "invalid_id",
            Reject::InvalidSignature => "invalid_signature",
        }
    }
}

/// The cheap checks: size, then a match with a filter of the subscription.
pub fn check_shape(
    event: &Event,
    raw_len: usize,
    filters: &[Filter],
    max_size: usize,
) -> Result<(), Reject> {
    if raw_len > max_size {
        return Err(Reject::TooLarge);
    }
    // `limit` is irrelevant to matching; every other field must match.
    if !filters
        .iter()
        .any(|f| f.match_event(event, MatchEventOptions::new()))
    {
        return Err(Reject::Unrequested);
    }
    Ok(())
}

/// The costly checks: the id is the hash of the content, and the signature verifies.
fn check_crypto(event: &Event) -> Result<(), Reject> {
    if !event.verify_id() {
        return Err(Reject::InvalidId);
    }
    if !event.verify_signature() {
        return Err(Reject::InvalidSignature);
    }
    Ok(())
}

/// Parsed author keys, so a relay's many events by the same few authors do not each pay for
/// decompressing the key (a square root, about an eighth of a signature check). Bounded: it is
/// emptied when full.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: HashMap<PublicKey, XOnlyPublicKey>,
}

/// Authors remembered per cache.
const KEY_CACHE: usize = 4096;

impl KeyCache {
    /// The author's parsed key (`None` if it is not a valid point).
    pub fn xonly(&mut self, pubkey: &PublicKey) -> Option<XOnlyPublicKey> {
        if let Some(k) = self.keys.get(pubkey) {
            return Some(*k);
        }
        let key = pubkey.xonly().ok()?;
        if self.keys.len() >= KEY_CACHE {
            self.keys.clear();
        }
        self.keys.insert(*pubkey, key);
        Some(key)
    }

    /// The id is the hash of the content, and the signature verifies (as
    /// `Event::verify_signature`, with the author's key from the cache).
    pub fn check_crypto(&mut self, event: &Event) -> Result<(), Reject> {
        check_crypto_with(event, self.xonly(&event.pubkey))
    }
}

/// The id is the hash of the content, and the signature verifies under `key`, the author's
/// key parsed beforehand (`None`: not a valid key). Runs off the session task.
pub fn check_crypto_with(event: &Event, key: Option<XOnlyPublicKey>) -> Result<(), Reject> {
    if !event.verify_id() {
        return Err(Reject::InvalidId);
    }
    let valid = key.is_some_and(|key| {
        let msg = Message::from_digest(event.id.to_bytes());
        nostr::SECP256K1
            .verify_schnorr(&event.sig, &msg, &key)
            .is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(Reject::InvalidSignature)
    }
}

/// Whether `event` (whose wire size is `raw_len` bytes) may be forwarded. On success its id is
/// recorded in `recent`.
pub fn admit(
    event: &Event,
    raw_len: usize,
    filters: &[Filter],
    max_size: usize,
    recent: &mut RecentIds,
) -> Result<(), Reject> {
    check_shape(event, raw_len, filters, max_size)?;
    if recent.contains(&event.id) {
        return Err(Reject::Duplicate);
    }
    check_crypto(event)?;
    recent.insert(event.id);
    Ok(())
}

/// The per-session part of [`admit`]: size, filter match, id, signature. Deduplication happens
/// in the forwarder, across sessions, after this passed (so a forged copy never enters the
/// dedup set).
pub fn check(
    event: &Event,
    raw_len: usize,
    filters: &[Filter],
    max_size: usize,
) -> Result<(), Reject> {
    check_shape(event, raw_len, filters, max_size)?;
    check_crypto(event)
}

/// [`check`] with the author's key from `keys`.
pub fn check_cached(
    event: &Event,
    raw_len: usize,
    filters: &[Filter],
    max_size: usize,
    keys: &mut KeyCache,
) -> Result<(), Reject> {
    check_shape(event, raw_len, filters, max_size)?;
    keys.check_crypto(event)
}

/// Category of our relay's `OK false` message (NIP-01 machine-readable prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OkRejection {
    /// `duplicate:` — already stored; counts as delivered.
    Duplicate,
    /// `rate-limited:` — retry after a pause.
    RateLimited,
    /// `blocked:` — the write policy refused it (e.g. an announcement not listing us).
    Blocked,
    /// `invalid:`.
    Invalid,
    /// `pow:`.
    Pow,
    /// `restricted:` or `auth-required:`.
    Restricted,
    /// `error:` or anything else.
    Error,
}

impl OkRejection {
    /// Classifies an `OK false` message.
    pub fn classify(message: &str) -> Self {
        let prefix = message
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match prefix.as_str() {
            "duplicate" => OkRejection::Duplicate,
            "rate-limited" => OkRejection::RateLimited,
            "blocked" => OkRejection::Blocked,
            "invalid" => OkRejection::Invalid,
            "pow" => OkRejection::Pow,
            "restricted" | "auth-required" => OkRejection::Restricted,
            _ => OkRejection::Error,
        }
    }

    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            OkRejection::Duplicate => "duplicate",
            OkRejection::RateLimited => "rate_limited",
            OkRejection::Blocked => "blocked",
            OkRejection::Invalid => "invalid",
            OkRejection::Pow => "pow",
            OkRejection::Restricted => "restricted",
            OkRejection::Error => "error",
        }
    }

    /// Whether publishing again later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, OkRejection::RateLimited | OkRejection::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag};

    fn signed(keys: &Keys, kind: u16, tags: Vec<Tag>) -> Event {
        EventBuilder::new(Kind::Custom(kind), "hello")
            .tags(tags)
            .sign_with_keys(keys)
            .expect("sign")
    }

    /// A fresh key, its repo ref, and a signed issue (1621) tagging that repo.
    fn issue_for_new_repo() -> (Keys, String, Event) {
        let keys = Keys::generate();
        let repo = format!("30617:{}:r", keys.public_key().to_hex());
        let ev = signed(
            &keys,
            1621,
            vec![Tag::parse(["a", repo.as_str()]).expect("tag")],
        );
        (keys, repo, ev)
    }

    fn l2_filter(repo: &str) -> Filter {
        Filter::new().custom_tag(nostr::SingleLetterTag::lowercase(nostr::Alphabet::A), repo)
    }

    #[test]
    fn admits_a_valid_requested_event_once() {
        let (_, repo, ev) = issue_for_new_repo();
        let mut recent = RecentIds::new(100);
        let len = ev.as_json().len();
        let filters = [l2_filter(&repo).limit(0)];
        assert_eq!(admit(&ev, len, &filters, 256 * 1024, &mut recent), Ok(()));
        assert_eq!(
            admit(&ev, len, &filters, 256 * 1024, &mut recent),
            Err(Reject::Duplicate)
        );
    }

    #[test]
    fn refuses_unrequested_oversized_and_forged_events() {
        let (keys, repo, ev) = issue_for_new_repo();
        let mut recent = RecentIds::new(100);
        let other = [l2_filter("30617:00:other")];
        assert_eq!(
            admit(&ev, 10, &other, 1000, &mut recent),
            Err(Reject::Unrequested)
        );
        let ok = [l2_filter(&repo)];
        assert_eq!(
            admit(&ev, 2000, &ok, 1000, &mut recent),
            Err(Reject::TooLarge)
        );

        // Same id, content changed: the id no longer matches.
        let mut json: serde_json::Value = serde_json::from_str(&ev.as_json()).expect("json");
        json["content"] = serde_json::Value::String("tampered".into());
        let forged = Event::from_json(json.to_string()).expect("parses");
        assert_eq!(
            admit(&forged, 10, &ok, 1000, &mut recent),
            Err(Reject::InvalidId)
        );

        // Valid id, signature from another event.
        let other_ev = signed(&keys, 1, Vec::new());
        assert_ne!(other_ev.id, ev.id);
        let mut json: serde_json::Value = serde_json::from_str(&ev.as_json()).expect("json");
        json["sig"] = serde_json::Value::String(other_ev.sig.to_string());
        let bad_sig = Event::from_json(json.to_string()).expect("parses");
        assert_eq!(
            admit(&bad_sig, 10, &ok, 1000, &mut recent),
            Err(Reject::InvalidSignature)
        );

        // The forged copies did not poison the dedup set: the real one still goes through.
        assert_eq!(admit(&ev, 10, &ok, 1000, &mut recent), Ok(()));
    }

    #[test]
    fn the_key_cache_checks_like_the_plain_check() {
        let (keys, repo, ev) = issue_for_new_repo();
        let ok = [l2_filter(&repo)];
        let mut cache = KeyCache::default();
        assert_eq!(check_cached(&ev, 10, &ok, 1000, &mut cache), Ok(()));
        // Same author (cached key), signature of another event.
        let other_ev = signed(&keys, 1, Vec::new());
        let mut json: serde_json::Value = serde_json::from_str(&ev.as_json()).expect("json");
        json["sig"] = serde_json::Value::String(other_ev.sig.to_string());
        let bad_sig = Event::from_json(json.to_string()).expect("parses");
        assert_eq!(
            check_cached(&bad_sig, 10, &ok, 1000, &mut cache),
            Err(Reject::InvalidSignature)
        );
        assert_eq!(
            check(&bad_sig, 10, &ok, 1000),
            Err(Reject::InvalidSignature)
        );
        assert_eq!(check_cached(&ev, 10, &ok, 1000, &mut cache), Ok(()));
    }

    #[test]
    fn classifies_ok_false_messages() {
        assert_eq!(
            OkRejection::classify("duplicate: have it"),
            OkRejection::Duplicate
        );
        assert_eq!(
            OkRejection::classify("rate-limited: slow"),
            OkRejection::RateLimited
        );
        assert_eq!(
            OkRejection::classify("blocked: not listing us"),
            OkRejection::Blocked
        );
        assert_eq!(
            OkRejection::classify("auth-required: x"),
            OkRejection::Restricted
        );
        assert_eq!(OkRejection::classify("whatever"), OkRejection::Error);
        assert!(OkRejection::RateLimited.is_retryable());
        assert!(!OkRejection::Invalid.is_retryable());
    }
}
