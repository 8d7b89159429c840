//! End-to-end sync helpers: standalone mode on an embedded relay, plain NIP-77 remote relays
//! (nostr-relay-builder in memory), NIP-34 event builders, publishing, and waiting for ids on
//! our relay. Every wait is bounded.

use super::bed::{free_addr, scratch_dir};
use grasp_sync::config::load_config;
use grasp_sync::relay::session::SessionConfig;
use grasp_sync::standalone::{Standalone, StandaloneOptions};
use nostr::{Event, EventBuilder, EventId, Filter, Keys, Kind, Tag, TagKind, Timestamp};
use nostr_relay_builder::builder::{RateLimit, RelayBuilder};
use nostr_relay_builder::LocalRelay;
use nostr_sdk::Client;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A plain NIP-77 relay (nostr-relay-builder, in memory), rate limit raised.
pub struct RemoteRelay {
    relay: LocalRelay,
    /// Its address.
    pub addr: SocketAddr,
}

impl RemoteRelay {
    /// Starts one on a free port.
    pub async fn start() -> RemoteRelay {
        Self::start_at(free_addr()).await
    }

    /// Starts one on `addr` (a restart on the same port: the listener of a relay just stopped
    /// may take a moment to go, so binding is retried for up to 5 s).
    pub async fn start_at(addr: SocketAddr) -> RemoteRelay {
        let start = Instant::now();
        loop {
            match Self::try_start(addr).await {
                Some(r) => return r,
                None if start.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => panic!("remote relay cannot bind {addr}"),
            }
        }
    }

    /// Starts one on a free port that keeps at most `max_reqs` REQ subscriptions open per
    /// connection: nostr-relay-builder answers one more with
    /// `CLOSED "rate-limited: too many REQs"` (it publishes no NIP-11, so a client can learn
    /// the cap only from that CLOSED). NEG-OPEN sessions do not count against it.
    pub async fn start_max_reqs(max_reqs: usize) -> RemoteRelay {
        let addr = free_addr();
        Self::try_start_with(addr, max_reqs)
            .await
            .unwrap_or_else(|| panic!("remote relay cannot bind {addr}"))
    }

    async fn try_start(addr: SocketAddr) -> Option<RemoteRelay> {
        Self::try_start_with(addr, 500).await
    }

    async fn try_start_with(addr: SocketAddr, max_reqs: usize) -> Option<RemoteRelay> {
        std::net::TcpListener::bind(addr).ok()?;
        let builder = RelayBuilder::default()
            .addr(addr.ip())
            .port(addr.port())
            .default_filter_limit(100_000)
            .rate_limit(RateLimit {
                max_reqs,
                notes_per_minute: 1_000_000,
            });
        let relay = LocalRelay::new(builder);
        relay.run().await.ok()?;
        Some(RemoteRelay { relay, addr })
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops it.
    pub fn stop(&self) {
        self.relay.shutdown();
    }
}

/// Settings that make tests quick.
pub const FAST_SETTINGS: &str = "\
apiVersion: sync.grasp.dev/v1alpha1
kind: Settings
metadata: {name: fast}
spec:
  batchWindow: 100ms
  eoseTimeout: 5s
  backoff: {base: 200ms, max: 2s, deadAfter: 1h}
  rateLimitCooldown: 1s
  reapGrace: 2s
  reapInterval: 500ms
";

/// [`FAST_SETTINGS`] with a 2 s EOSE timeout, for relays that never send EOSE for history.
pub const SHORT_EOSE_SETTINGS: &str = "\
apiVersion: sync.grasp.dev/v1alpha1
kind: Settings
metadata: {name: short-eose}
spec:
  batchWindow: 100ms
  eoseTimeout: 2s
  backoff: {base: 500ms, max: 2s, deadAfter: 1h}
  rateLimitCooldown: 1s
  reapGrace: 2s
  reapInterval: 500ms
";

/// An allowlist admitting every loopback `ws://` relay (private networks allowed).
pub const LOOPBACK_ALLOWLIST: &str = "\
apiVersion: sync.grasp.dev/v1alpha1
kind: RelayAllowlist
metadata: {name: loopback}
spec:
  allowPrivateNetworks: true
  allow:
    - host: \"127.0.0.1\"
      schemes: [ws]
";

/// Session tuning for tests: fast stall detection and NIP-77 fallback.
pub fn fast_session() -> SessionConfig {
    let defaults = SessionConfig::default();
    SessionConfig {
        keepalive: Duration::from_millis(500),
        neg_initial_timeout: Duration::from_secs(2),
        dial: grasp_sync::relay::wire::DialOptions {
            timeout: Duration::from_secs(3),
            ..defaults.dial
        },
        ..defaults
    }
}

/// Standalone mode with its embedded relay, configured by `docs` (YAML documents joined by
/// `---`; `FAST_SETTINGS` is used when they hold no Settings).
pub async fn start_app(name: &str, docs: &[&str]) -> Standalone {
    // Logs go to the test's captured output; `RUST_LOG` selects them.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut all: Vec<&str> = docs.to_vec();
    if !docs.iter().any(|d| d.contains("kind: Settings")) {
        all.push(FAST_SETTINGS);
    }
    let config = load_config(&all.join("---\n")).expect("test config");
    let mut opts = StandaloneOptions::new(config);
    opts.data = scratch_dir(name);
    opts.relay_listen = free_addr();
    opts.listen = free_addr();
    opts.session = fast_session();
    Standalone::start(opts).await.expect("standalone starts")
}

/// `30617:<pubkey>:<d>`.
pub fn coordinate(keys: &Keys, d: &str) -> String {
    format!("30617:{}:{d}", keys.public_key().to_hex())
}

/// A signed event of `kind` with one tag `[letter, value]` and some content.
pub fn tagged(keys: &Keys, kind: u16, letter: &str, value: &str, content: &str) -> Event {
    EventBuilder::new(Kind::Custom(kind), content)
        .tags([Tag::custom(TagKind::custom(letter), [value])])
        .sign_with_keys(keys)
        .expect("sign")
}

/// Like [`tagged`], at a fixed `created_at`.
pub fn tagged_at(
    keys: &Keys,
    kind: u16,
    letter: &str,
    value: &str,
    content: &str,
    at: u64,
) -> Event {
    EventBuilder::new(Kind::Custom(kind), content)
        .tags([Tag::custom(TagKind::custom(letter), [value])])
        .custom_created_at(Timestamp::from_secs(at))
        .sign_with_keys(keys)
        .expect("sign")
}

/// A client connected to `url`.
pub async fn client(url: &str) -> Client {
    let c = Client::default();
    c.add_relay(url).await.expect("add relay");
    c.connect().await;
    c.wait_for_connection(Duration::from_secs(5)).await;
    c
}

/// Publishes every event to `url` and checks each was accepted.
pub async fn publish(url: &str, events: &[Event]) {
    let c = client(url).await;
    for e in events {
        let out = c.send_event(e).await.expect("send");
        assert!(
            !out.success.is_empty(),
            "{url} refused {}: {:?}",
            e.id,
            out.failed
        );
    }
    c.shutdown().await;
}

/// The subset of `ids` that `url` holds.
pub async fn held(url: &str, ids: &[EventId]) -> HashSet<EventId> {
    let c = client(url).await;
    let mut found = HashSet::new();
    for chunk in ids.chunks(200) {
        let filter = Filter::new().ids(chunk.iter().copied()).limit(chunk.len());
        if let Ok(events) = c.fetch_events(filter, Duration::from_secs(5)).await {
            found.extend(events.iter().map(|e| e.id));
        }
    }
    c.shutdown().await;
    found
}

/// Waits (polling, at most `timeout`) until `url` holds every id; panics listing the missing.
pub async fn wait_for_ids(url: &str, ids: &[EventId], timeout: Duration, what: &str) {
    let start = Instant::now();
    let unique: HashSet<EventId> = ids.iter().copied().collect();
    loop {
        let found = held(url, ids).await;
        if found.len() == unique.len() {
            return;
        }
        if start.elapsed() > timeout {
            let missing: Vec<_> = ids.iter().filter(|i| !found.contains(i)).collect();
            panic!(
                "{what}: {} of {} ids missing after {timeout:?}: {missing:?}",
                missing.len(),
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` until it holds (at most `timeout`).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "{what}: not true after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of the samples whose lines start with `prefix`, 0 when there is none.
pub fn metric(text: &str, prefix: &str) -> f64 {
    // A fold from +0: `Sum` for floats starts at -0.0, which prints as "-0".
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}
