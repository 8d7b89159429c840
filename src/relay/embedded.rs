//! The embedded relay: our relay when no `--own-relay` is given. nostr-relay-builder's
//! `LocalRelay` (NIP-01 and NIP-77) on persistent LMDB storage, with a write policy that keeps
//! only the announcements that list this relay (or every one, under `scope: All`).

use crate::core::nip34::{parse_announcement, OwnRelay, ParseLimits, KIND_REPO_ANNOUNCEMENT};
use crate::core::settings::Scope;
use crate::core::url::RelayUrl;
use nostr::{Event, Kind};
use nostr_lmdb::NostrLMDB;
use nostr_relay_builder::builder::{PolicyResult, RateLimit, RelayBuilder, WritePolicy};
use nostr_relay_builder::LocalRelay;
use nostr_sdk::prelude::NostrDatabase;
use nostr_sdk::util::BoxedFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

/// Events a REQ without `limit` returns. The self-subscriber's first read must see every
/// announcement and root event.
pub const DEFAULT_FILTER_LIMIT: usize = 5_000_000;

/// How to run the embedded relay.
#[derive(Debug, Clone)]
pub struct EmbeddedRelayConfig {
    /// Where it listens (default `127.0.0.1:7777`).
    pub listen: SocketAddr,
    /// LMDB directory; created if missing.
    pub data_dir: PathBuf,
    /// The URLs under which announcements name this relay (its listen URL is always one).
    pub public_urls: Vec<RelayUrl>,
    /// `ListingUs` refuses announcements that do not list this relay.
    pub scope: Scope,
    /// Events accepted per minute per connection. The forwarder is one busy client, so the
    /// builder's default of 60 would throttle sync to a crawl.
    pub notes_per_minute: u32,
    /// Concurrent REQs per connection.
    pub max_reqs: usize,
}

impl EmbeddedRelayConfig {
    /// Defaults for a listen address and data directory.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        EmbeddedRelayConfig {
            listen,
            data_dir,
            public_urls: Vec::new(),
            scope: Scope::ListingUs,
            notes_per_minute: 1_000_000,
            max_reqs: 500,
        }
    }

    /// The `ws://` URL of the listen address.
    pub fn listen_url(&self) -> Result<RelayUrl, EmbeddedError> {
        RelayUrl::parse(&format!("ws://{}", self.listen))
            .map_err(|_| EmbeddedError::Url(self.listen))
    }

    /// Every URL that counts as this relay.
    pub fn own_relay(&self) -> Result<OwnRelay, EmbeddedError> {
        let mut urls = self.public_urls.clone();
        urls.push(self.listen_url()?);
        Ok(OwnRelay::new(urls))
    }
}

/// Why the embedded relay did not start.
#[derive(Debug, Error)]
pub enum EmbeddedError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// LMDB refused to open.
    #[error("cannot open the event store in {path}: {message}")]
    Store {
        /// The directory.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// The relay could not bind or start.
    #[error("embedded relay failed to start on {listen}: {message}")]
    Start {
        /// The address.
        listen: SocketAddr,
        /// The cause.
        message: String,
    },
    /// The listen address does not make a relay URL.
    #[error("listen address {0} does not form a relay URL")]
    Url(SocketAddr),
}

/// Keeps an announcement only if it lists this relay (exact match after normalisation).
#[derive(Debug)]
pub struct AnnouncementPolicy {
    own: OwnRelay,
    scope: Scope,
}

impl AnnouncementPolicy {
    /// A policy for our relay's URLs.
    pub fn new(own: OwnRelay, scope: Scope) -> Self {
        AnnouncementPolicy { own, scope }
    }

    /// The verdict, as a plain function so it is testable without a socket.
    pub fn check(&self, event: &Event) -> PolicyResult {
        if event.kind != Kind::Custom(KIND_REPO_ANNOUNCEMENT) || self.scope == Scope::All {
            return PolicyResult::Accept;
        }
        match parse_announcement(event, &self.own, ParseLimits::default()) {
            Ok(a) if a.lists_own_relay => PolicyResult::Accept,
            Ok(_) => PolicyResult::Reject("blocked: announcement does not list this relay".into()),
            Err(e) => PolicyResult::Reject(format!("invalid: {e}")),
        }
    }
}

impl WritePolicy for AnnouncementPolicy {
    fn admit_event<'a>(
        &'a self,
        event: &'a Event,
        _addr: &'a SocketAddr,
    ) -> BoxedFuture<'a, PolicyResult> {
        Box::pin(async move { self.check(event) })
    }
}

/// A running embedded relay.
#[derive(Debug)]
pub struct EmbeddedRelay {
    relay: LocalRelay,
    store: Arc<dyn NostrDatabase>,
    url: RelayUrl,
    addr: SocketAddr,
}

impl EmbeddedRelay {
    /// Opens the store and starts listening.
    pub async fn start(config: EmbeddedRelayConfig) -> Result<Self, EmbeddedError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| EmbeddedError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = NostrLMDB::open(&config.data_dir).map_err(|e| EmbeddedError::Store {
            path: config.data_dir.clone(),
            message: e.to_string(),
        })?;
        let store: Arc<dyn NostrDatabase> = Arc::new(store);
        let own = config.own_relay()?;
        let url = config.listen_url()?;
        let builder = RelayBuilder::default()
            .addr(config.listen.ip())
            .port(config.listen.port())
            .database(store.clone())
            // The builder's default caps a REQ without `limit` at 500 events, which would cut
            // the self-subscriber's first read of announcements and roots short.
            .default_filter_limit(DEFAULT_FILTER_LIMIT)
            .rate_limit(RateLimit {
                max_reqs: config.max_reqs,
                notes_per_minute: config.notes_per_minute,
            })
            .write_policy(AnnouncementPolicy::new(own, config.scope));
        let relay = LocalRelay::new(builder);
        relay.run().await.map_err(|e| EmbeddedError::Start {
            listen: config.listen,
            message: e.to_string(),
        })?;
        Ok(EmbeddedRelay {
            relay,
            store,
            url,
            addr: config.listen,
        })
    }

    /// The store, for reading exact negentropy item sets without a round trip.
    pub fn store(&self) -> Arc<dyn NostrDatabase> {
        self.store.clone()
    }

    /// The relay's URL.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and closes the store.
    pub fn shutdown(&self) {
        self.relay.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventBuilder, Keys, Tag, TagKind};

    fn announcement(relays: &[&str]) -> Event {
        EventBuilder::new(Kind::Custom(30617), "")
            .tags([
                Tag::identifier("repo"),
                Tag::custom(TagKind::custom("relays"), relays.iter().copied()),
            ])
            .sign_with_keys(&Keys::generate())
            .expect("sign")
    }

    fn policy(scope: Scope) -> AnnouncementPolicy {
        let own = OwnRelay::new([RelayUrl::parse("ws://127.0.0.1:7777").expect("valid")]);
        AnnouncementPolicy::new(own, scope)
    }

    #[test]
    fn keeps_announcements_that_list_us_only() {
        let p = policy(Scope::ListingUs);
        assert!(matches!(
            p.check(&announcement(&["ws://127.0.0.1:7777/"])),
            PolicyResult::Accept
        ));
        let PolicyResult::Reject(why) = p.check(&announcement(&["wss://elsewhere.example"])) else {
            panic!("an announcement not listing us must be refused");
        };
        assert!(why.starts_with("blocked:"), "{why}");
        // Substrings do not count.
        assert!(matches!(
            p.check(&announcement(&["ws://127.0.0.1:77770"])),
            PolicyResult::Reject(_)
        ));
        // Other kinds pass; archive scope keeps every announcement.
        let note = EventBuilder::text_note("hi")
            .sign_with_keys(&Keys::generate())
            .expect("sign");
        assert!(matches!(p.check(&note), PolicyResult::Accept));
        assert!(matches!(
            policy(Scope::All).check(&announcement(&["wss://elsewhere.example"])),
            PolicyResult::Accept
        ));
    }
}
