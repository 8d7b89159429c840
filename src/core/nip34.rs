//! NIP-34 parsing: repository announcements (kind 30617) and root events (1617, 1618, 1621).
//!
//! Parsing never fails on a bad tag: the tag is skipped and counted by reason, so one hostile
//! value cannot hide the rest of an announcement. Only a missing identity (`d` tag, repo ref)
//! rejects the whole event.

use super::url::{RelayUrl, UrlError};
use nostr::{Event, EventId, Kind, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// Kind of a repository announcement.
pub const KIND_REPO_ANNOUNCEMENT: u16 = 30617;
/// Kind of a repository state event.
pub const KIND_REPO_STATE: u16 = 30618;
/// Kind of a patch (a root event).
pub const KIND_PATCH: u16 = 1617;
/// Kind of a pull request (a root event).
pub const KIND_PULL_REQUEST: u16 = 1618;
/// Kind of a pull request update (reached through tags, not a root).
pub const KIND_PULL_REQUEST_UPDATE: u16 = 1619;
/// Kind of an issue (a root event).
pub const KIND_ISSUE: u16 = 1621;
/// Kinds that are root events.
pub const ROOT_KINDS: [u16; 3] = [KIND_PATCH, KIND_PULL_REQUEST, KIND_ISSUE];
/// Kinds the self-subscriber watches on our relay.
pub const SELF_SUBSCRIBER_KINDS: [u16; 4] = [
    KIND_REPO_ANNOUNCEMENT,
    KIND_PATCH,
    KIND_PULL_REQUEST,
    KIND_ISSUE,
];

/// Longest `d` identifier accepted; NIP-34 ids are short names.
const MAX_IDENTIFIER_LEN: usize = 256;

/// A repository's addressable reference, `30617:<pubkey-hex>:<d>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RepoRef(Arc<str>);

impl RepoRef {
    /// The ref of the repository `d` announced by `pubkey_hex`.
    pub fn new(pubkey_hex: &str, identifier: &str) -> Self {
        RepoRef(format!("{KIND_REPO_ANNOUNCEMENT}:{pubkey_hex}:{identifier}").into())
    }

    /// Reads an `a` tag value; `None` unless it is a well-formed 30617 coordinate.
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix("30617:")?;
        let (pubkey, identifier) = rest.split_once(':')?;
        let hex_ok = pubkey.len() == 64
            && pubkey
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok || identifier.len() > MAX_IDENTIFIER_LEN {
            return None;
        }
        Some(RepoRef(value.into()))
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a whole event was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Not the kind this parser reads.
    #[error("event kind {0} is not handled here")]
    WrongKind(u16),
    /// An announcement without a usable `d` tag.
    #[error("announcement has no valid d tag")]
    MissingIdentifier,
    /// A root event with no `a` tag naming a repository.
    #[error("root event names no repository in an a tag")]
    NoRepoRef,
}

impl ParseError {
    /// A stable, low-cardinality label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::WrongKind(_) => "wrong_kind",
            ParseError::MissingIdentifier => "missing_identifier",
            ParseError::NoRepoRef => "no_repo_ref",
        }
    }
}

/// Counts of skipped tag values, by reason label.
pub type RejectCounts = BTreeMap<&'static str, u32>;

fn count(rejects: &mut RejectCounts, reason: &'static str) {
    *rejects.entry(reason).or_insert(0) += 1;
}

fn url_reason(prefix: &'static str, e: UrlError) -> &'static str {
    match (prefix, e) {
        ("relays", UrlError::TooLong) => "relays_too_long",
        ("relays", UrlError::Malformed) => "relays_malformed",
        ("relays", UrlError::BadScheme) => "relays_bad_scheme",
        ("relays", UrlError::NoHost) => "relays_no_host",
        ("relays", UrlError::Credentials) => "relays_credentials",
        (_, UrlError::TooLong) => "clone_too_long",
        (_, UrlError::Malformed) => "clone_malformed",
        (_, UrlError::BadScheme) => "clone_bad_scheme",
        (_, UrlError::NoHost) => "clone_no_host",
        (_, UrlError::Credentials) => "clone_credentials",
    }
}

/// The URLs under which our own relay is known (public name, in-cluster name, …).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnRelay {
    urls: Vec<RelayUrl>,
}

impl OwnRelay {
    /// Our relay, known by these normalised URLs.
    pub fn new(urls: impl IntoIterator<Item = RelayUrl>) -> Self {
        let mut urls: Vec<RelayUrl> = urls.into_iter().collect();
        urls.sort();
        urls.dedup();
        OwnRelay { urls }
    }

    /// Exact comparison after normalisation; never a substring test.
    pub fn is_own(&self, url: &RelayUrl) -> bool {
        self.urls.iter().any(|u| u == url)
    }

    /// The URLs, sorted.
    pub fn urls(&self) -> &[RelayUrl] {
        &self.urls
    }
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Relays taken from one announcement.
    pub max_relays: usize,
    /// Longest relay URL in bytes.
    pub max_url_len: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_relays: 20,
            max_url_len: 512,
        }
    }
}

/// A parsed repository announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// `30617:<pubkey>:<d>`.
    pub repo: RepoRef,
    /// The event id (tie-break for equal `created_at`).
    pub id: EventId,
    /// The event time; the newest announcement wins.
    pub created_at: Timestamp,
    /// Other relays to sync from: normalised, deduplicated, our relay excluded, capped.
    pub relays: Vec<RelayUrl>,
    /// Whether any listed relay is ours.
    pub lists_own_relay: bool,
    /// Skipped values by reason, including `over_cap` for relays past the cap.
    pub rejects: RejectCounts,
}

impl Announcement {
    /// The ordering key: newest by `created_at`, then by id.
    pub fn version(&self) -> (Timestamp, EventId) {
        (self.created_at, self.id)
    }
}

/// Parses a kind-30617 announcement.
pub fn parse_announcement(
    event: &Event,
    own: &OwnRelay,
    limits: ParseLimits,
) -> Result<Announcement, ParseError> {
    if event.kind != Kind::Custom(KIND_REPO_ANNOUNCEMENT) {
        return Err(ParseError::WrongKind(event.kind.as_u16()));
    }
    let identifier = event
        .tags
        .iter()
        .map(|t| t.as_slice())
        .find(|t| t.first().map(String::as_str) == Some("d"))
        .and_then(|t| t.get(1))
        .filter(|d| d.len() <= MAX_IDENTIFIER_LEN)
        .ok_or(ParseError::MissingIdentifier)?;
    let repo = RepoRef::new(&event.pubkey.to_hex(), identifier);

    let mut rejects = RejectCounts::new();
    let mut relays: Vec<RelayUrl> = Vec::new();
    let mut lists_own_relay = false;
    let mut take = |url: RelayUrl, relays: &mut Vec<RelayUrl>, rejects: &mut RejectCounts| {
        if own.is_own(&url) {
            lists_own_relay = true;
        } else if relays.contains(&url) {
            // A duplicate spelling of a relay already taken.
        } else if relays.len() >= limits.max_relays {
            count(rejects, "over_cap");
        } else {
            relays.push(url);
        }
    };
    for tag in event.tags.iter().map(|t| t.as_slice()) {
        match tag.first().map(String::as_str) {
            Some("relays") => {
                for value in &tag[1..] {
                    match RelayUrl::parse_with_limit(value, limits.max_url_len) {
                        Ok(url) => take(url, &mut relays, &mut rejects),
                        Err(e) => count(&mut rejects, url_reason("relays", e)),
                    }
                }
            }
            Some("clone") => {
                for value in &tag[1..] {
                    match RelayUrl::from_clone_url(value, limits.max_url_len) {
                        Ok(Some(url)) => take(url, &mut relays, &mut rejects),
                        Ok(None) => {}
                        Err(e) => count(&mut rejects, url_reason("clone", e)),
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Announcement {
        repo,
        id: event.id,
        created_at: event.created_at,
        relays,
        lists_own_relay,
        rejects,
    })
}

/// A parsed root event (patch, pull request or issue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootEvent {
    /// The event id, which layer-3 filters reference.
    pub id: EventId,
    /// Every repository named in an `a` tag (all of them count, not only the first).
    pub repos: Vec<RepoRef>,
    /// Skipped `a` values by reason.
    pub rejects: RejectCounts,
}

/// Parses a root event of kind 1617, 1618 or 1621.
pub fn parse_root_event(event: &Event) -> Result<RootEvent, ParseError> {
    let kind = event.kind.as_u16();
    if !ROOT_KINDS.contains(&kind) {
        return Err(ParseError::WrongKind(kind));
    }
    let mut repos: Vec<RepoRef> = Vec::new();
    let mut rejects = RejectCounts::new();
    for tag in event.tags.iter().map(|t| t.as_slice()) {
        if tag.first().map(String::as_str) != Some("a") {
            continue;
        }
        match tag.get(1) {
            Some(v) if v.starts_with("30617:") => match RepoRef::parse(v) {
                Some(r) if !repos.contains(&r) => repos.push(r),
                Some(_) => {}
                None => count(&mut rejects, "a_malformed"),
            },
            // An `a` tag for some other kind is legitimate and simply not a repo.
            Some(_) => {}
            None => count(&mut rejects, "a_empty"),
        }
    }
    if repos.is_empty() {
        return Err(ParseError::NoRepoRef);
    }
    Ok(RootEvent {
        id: event.id,
        repos,
        rejects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventBuilder, Keys, Tag, TagKind};

    fn own() -> OwnRelay {
        OwnRelay::new([RelayUrl::parse("wss://our.relay.example").expect("valid")])
    }

    fn announcement(keys: &Keys, tags: Vec<Vec<&str>>) -> Event {
        let tags = tags.into_iter().map(|t| {
            let (k, v) = t.split_first().expect("non-empty");
            Tag::custom(TagKind::custom(*k), v.iter().copied())
        });
        EventBuilder::new(Kind::Custom(30617), "")
            .tags(tags)
            .sign_with_keys(keys)
            .expect("sign")
    }

    #[test]
    fn announcement_takes_relays_and_clone_hosts_and_excludes_us() {
        let keys = Keys::generate();
        let ev = announcement(
            &keys,
            vec![
                vec!["d", "repo"],
                vec![
                    "relays",
                    "wss://Our.Relay.Example/",
                    "wss://a.example",
                    "ftp://x",
                ],
                vec!["clone", "https://b.example/npub/repo.git", "git@c:x"],
                vec!["relays", "wss://a.example:443"],
            ],
        );
        let a = parse_announcement(&ev, &own(), ParseLimits::default()).expect("parses");
        assert!(a.lists_own_relay);
        let urls: Vec<&str> = a.relays.iter().map(RelayUrl::as_str).collect();
        assert_eq!(urls, ["wss://a.example", "wss://b.example"]);
        assert_eq!(a.rejects.get("relays_bad_scheme"), Some(&1));
        assert_eq!(
            a.repo.as_str(),
            format!("30617:{}:repo", keys.public_key().to_hex())
        );
    }

    #[test]
    fn own_relay_is_matched_exactly_not_by_substring() {
        let keys = Keys::generate();
        let ev = announcement(
            &keys,
            vec![
                vec!["d", "r"],
                vec!["relays", "wss://our.relay.example.evil.com"],
            ],
        );
        let a = parse_announcement(&ev, &own(), ParseLimits::default()).expect("parses");
        assert!(!a.lists_own_relay);
        assert_eq!(a.relays.len(), 1);
    }

    #[test]
    fn relays_past_the_cap_are_counted_and_ignored() {
        let keys = Keys::generate();
        let urls: Vec<String> = (0..30).map(|i| format!("wss://r{i}.example")).collect();
        let mut relays_tag = vec!["relays"];
        relays_tag.extend(urls.iter().map(String::as_str));
        relays_tag.push("wss://our.relay.example");
        let ev = announcement(&keys, vec![vec!["d", "r"], relays_tag]);
        let a = parse_announcement(&ev, &own(), ParseLimits::default()).expect("parses");
        assert_eq!(a.relays.len(), 20);
        assert_eq!(a.rejects.get("over_cap"), Some(&10));
        // Our relay past the cap still counts as listed.
        assert!(a.lists_own_relay);
    }

    #[test]
    fn announcement_without_d_is_refused() {
        let keys = Keys::generate();
        let ev = announcement(&keys, vec![vec!["relays", "wss://a.example"]]);
        assert_eq!(
            parse_announcement(&ev, &own(), ParseLimits::default()),
            Err(ParseError::MissingIdentifier)
        );
    }

    #[test]
    fn root_event_honours_every_a_tag() {
        let keys = Keys::generate();
        let pk = "a".repeat(64);
        let r1 = format!("30617:{pk}:one");
        let r2 = format!("30617:{pk}:two");
        let ev = EventBuilder::new(Kind::Custom(1621), "issue")
            .tags([
                Tag::parse(["a", r1.as_str()]).expect("tag"),
                Tag::parse(["a", "30617:nothex:x"]).expect("tag"),
                Tag::parse(["a", "30023:abc:article"]).expect("tag"),
                Tag::parse(["a", r2.as_str()]).expect("tag"),
            ])
            .sign_with_keys(&keys)
            .expect("sign");
        let root = parse_root_event(&ev).expect("parses");
        let refs: Vec<&str> = root.repos.iter().map(RepoRef::as_str).collect();
        assert_eq!(refs, [r1.as_str(), r2.as_str()]);
        assert_eq!(root.rejects.get("a_malformed"), Some(&1));
    }

    #[test]
    fn root_event_kinds_are_checked() {
        let keys = Keys::generate();
        let ev = EventBuilder::new(Kind::Custom(1619), "update")
            .sign_with_keys(&keys)
            .expect("sign");
        assert_eq!(parse_root_event(&ev), Err(ParseError::WrongKind(1619)));
        let ev = EventBuilder::new(Kind::Custom(1617), "patch")
            .sign_with_keys(&keys)
            .expect("sign");
        assert_eq!(parse_root_event(&ev), Err(ParseError::NoRepoRef));
    }
}
