//! The embedded relay: our relay when no `--own-relay` is given. nostr-relay-builder's
//! `LocalRelay` (NIP-01 and NIP-77) on persistent LMDB storage, with a write policy that keeps
//! only the announcements that list this relay (or every one, under `scope: All`).
//!
//! In the same process, the forwarder writes into the store directly ([`DirectWriter`], found
//! by URL through [`direct_writer`]) instead of through the relay's websocket: the relay would
//! verify every signature a second time, and it handles one connection's events one at a time,
//! so LMDB would commit (and fsync) each on its own. Direct saves run concurrently and
//! nostr-lmdb's ingester commits all that are waiting in one transaction. The writer applies
//! the same rules the relay applies to an EVENT, and tells the relay's subscribers (the
//! self-subscriber among them) about each stored event.

use super::forward::OkRejection;
use super::own::PublishOutcome;
use crate::core::nip34::{parse_announcement, OwnRelay, ParseLimits, KIND_REPO_ANNOUNCEMENT};
use crate::core::settings::Scope;
use crate::core::url::RelayUrl;
use nostr::{Event, Kind};
use nostr_lmdb::NostrLMDB;
use nostr_relay_builder::builder::{PolicyResult, RateLimit, RelayBuilder, WritePolicy};
use nostr_relay_builder::LocalRelay;
use nostr_sdk::prelude::{NostrDatabase, RejectedReason, SaveEventStatus};
use nostr_sdk::util::BoxedFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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

/// Writes checked events straight into a running embedded relay's store.
///
/// Holds the relay weakly: the [`EmbeddedRelay`] owns its store, and a client that outlives it
/// must not keep the LMDB environment open (a restart on the same directory could not open it
/// again). Writes after the relay is gone fail, and are retried, as over a closed websocket.
#[derive(Clone)]
pub struct DirectWriter {
    inner: Weak<WriterInner>,
}

struct WriterInner {
    url: RelayUrl,
    store: Arc<dyn NostrDatabase>,
    relay: LocalRelay,
    policy: AnnouncementPolicy,
    /// Set by [`EmbeddedRelay::shutdown`]: writes then fail (and are retried) as they would
    /// over a closed websocket.
    closed: AtomicBool,
}

impl std::fmt::Debug for WriterInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterInner")
            .field("url", &self.url)
            .field("closed", &self.closed)
            .finish()
    }
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWriter")
            .field("url", &self.inner.upgrade().map(|w| w.url.clone()))
            .finish()
    }
}

/// Embedded relays running in this process, by URL (weak: a dropped relay leaves no writer).
static RUNNING: Mutex<Vec<Weak<WriterInner>>> = Mutex::new(Vec::new());

/// The direct writer of the embedded relay listening at `url` in this process, if any.
pub fn direct_writer(url: &RelayUrl) -> Option<DirectWriter> {
    let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    running.retain(|w| w.strong_count() > 0);
    running
        .iter()
        .filter_map(Weak::upgrade)
        .find(|w| w.url == *url && !w.closed.load(Ordering::Relaxed))
        .map(|inner| DirectWriter {
            inner: Arc::downgrade(&inner),
        })
}

impl DirectWriter {
    /// Stores an event whose id and signature the caller has verified, applying the rules the
    /// relay applies to an EVENT after verification (NIP-70 protected events need AUTH, which
    /// the forwarder never does; the write policy; deletions), with the same `OK` messages.
    pub async fn publish_checked(&self, event: &Event) -> PublishOutcome {
        let Some(w) = self.inner.upgrade() else {
            return PublishOutcome::Failed("our relay is shut down".into());
        };
        if w.closed.load(Ordering::Relaxed) {
            return PublishOutcome::Failed("our relay is shut down".into());
        }
        if event.is_protected() {
            return PublishOutcome::Rejected(
                OkRejection::Restricted,
                "auth-required: you must auth".into(),
            );
        }
        if let PolicyResult::Reject(m) = w.policy.check(event) {
            return PublishOutcome::Rejected(OkRejection::Blocked, format!("blocked: {m}"));
        }
        if event.kind.is_ephemeral() {
            w.relay.notify_event(event.clone());
            return PublishOutcome::Stored;
        }
        match w.store.save_event(event).await {
            Ok(SaveEventStatus::Success) => {
                w.relay.notify_event(event.clone());
                PublishOutcome::Stored
            }
            Ok(SaveEventStatus::Rejected(RejectedReason::Duplicate)) => PublishOutcome::Stored,
            // The relay checks deleted ids before saving and answers this; an event whose
            // address was deleted after it was made is refused by the store itself, which the
            // relay reports as `error: unknown`. Both are final: `blocked`, not retried.
            Ok(SaveEventStatus::Rejected(RejectedReason::Deleted)) => PublishOutcome::Rejected(
                OkRejection::Blocked,
                "blocked: this event is deleted".into(),
            ),
            // What the relay answers for the other refusals (a replaced event, …).
            Ok(SaveEventStatus::Rejected(_)) => {
                PublishOutcome::Rejected(OkRejection::Error, "error: unknown".into())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot save an event into the embedded store");
                PublishOutcome::Rejected(OkRejection::Error, "error: database error".into())
            }
        }
    }
}

/// A running embedded relay.
#[derive(Debug)]
pub struct EmbeddedRelay {
    relay: LocalRelay,
    store: Arc<dyn NostrDatabase>,
    url: RelayUrl,
    addr: SocketAddr,
    /// The only strong reference: writers hold it weakly.
    writer: Arc<WriterInner>,
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
        let policy = AnnouncementPolicy::new(own.clone(), config.scope);
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
        let writer = Arc::new(WriterInner {
            url: url.clone(),
            store: store.clone(),
            relay: relay.clone(),
            policy,
            closed: AtomicBool::new(false),
        });
        RUNNING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&writer));
        Ok(EmbeddedRelay {
            relay,
            store,
            url,
            addr: config.listen,
            writer,
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

    /// Writes into the store without a websocket (see [`DirectWriter`]).
    pub fn writer(&self) -> DirectWriter {
        DirectWriter {
            inner: Arc::downgrade(&self.writer),
        }
    }

    /// Stops accepting connections and closes the store.
    pub fn shutdown(&self) {
        self.writer.closed.store(true, Ordering::Relaxed);
        self.relay.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventBuilder, Keys, Tag, TagKind};
    use std::time::Duration;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_direct_writer_applies_the_relays_rules() {
        use nostr_sdk::prelude::{Client, Filter, RelayPoolNotification};
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let dir = std::env::temp_dir().join(format!(
            "grasp-direct-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let relay = EmbeddedRelay::start(EmbeddedRelayConfig::new(addr, dir.clone()))
            .await
            .expect("starts");
        let writer = direct_writer(relay.url()).expect("registered under its URL");
        let client = Client::default();
        client.add_relay(relay.url().as_str()).await.expect("add");
        client.connect().await;
        client.wait_for_connection(Duration::from_secs(5)).await;
        client
            .subscribe(Filter::new().kind(Kind::TextNote), None)
            .await
            .expect("subscribe");
        let mut notes = client.notifications();
        let keys = Keys::generate();

        // Stored, told to the relay's subscribers, then a duplicate (stored as well).
        let note = EventBuilder::text_note("hi")
            .sign_with_keys(&keys)
            .expect("sign");
        assert_eq!(writer.publish_checked(&note).await, PublishOutcome::Stored);
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match notes.recv().await {
                    Ok(RelayPoolNotification::Event { event, .. }) if event.id == note.id => {
                        return true
                    }
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        assert_eq!(seen, Ok(true), "subscribers hear of a direct write");
        assert_eq!(writer.publish_checked(&note).await, PublishOutcome::Stored);

        // NIP-70 protected: the relay would ask for AUTH, which the forwarder never gives.
        let protected = EventBuilder::text_note("mine")
            .tag(Tag::protected())
            .sign_with_keys(&keys)
            .expect("sign");
        assert!(matches!(
            writer.publish_checked(&protected).await,
            PublishOutcome::Rejected(OkRejection::Restricted, _)
        ));
        // The write policy.
        assert!(matches!(
            writer
                .publish_checked(&announcement(&["wss://elsewhere.example"]))
                .await,
            PublishOutcome::Rejected(OkRejection::Blocked, _)
        ));
        // Stored, then deleted by its author: offered again, refused for good.
        let doomed = EventBuilder::text_note("bye")
            .sign_with_keys(&keys)
            .expect("sign");
        assert_eq!(
            writer.publish_checked(&doomed).await,
            PublishOutcome::Stored
        );
        let deletion =
            EventBuilder::delete(nostr::nips::nip09::EventDeletionRequest::new().id(doomed.id))
                .sign_with_keys(&keys)
                .expect("sign");
        assert_eq!(
            writer.publish_checked(&deletion).await,
            PublishOutcome::Stored
        );
        assert!(matches!(
            writer.publish_checked(&doomed).await,
            PublishOutcome::Rejected(OkRejection::Blocked, _)
        ));

        // Gone with the relay: a failure to retry, and no writer found for its URL.
        client.shutdown().await;
        relay.shutdown();
        assert!(matches!(
            writer.publish_checked(&note).await,
            PublishOutcome::Failed(_)
        ));
        assert!(direct_writer(relay.url()).is_none());
        drop(relay);
        assert!(matches!(
            writer.publish_checked(&note).await,
            PublishOutcome::Failed(_)
        ));
        let _ = std::fs::remove_dir_all(dir);
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
