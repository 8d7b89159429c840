//! Small helpers for relay-level tests: free loopback ports, scratch directories, signed
//! announcements, and the embedded relay.

use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use nostr::{Event, EventBuilder, Keys, Kind, Tag, TagKind};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

/// A free 127.0.0.1 port (relays that bind port 0 do not report the real one).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
}

/// An empty scratch directory unique to this process and `name`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("grasp-sync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A signed kind-30617 announcement of repo `d` listing `relays`.
pub fn announcement(keys: &Keys, d: &str, relays: &[&str]) -> Event {
    EventBuilder::new(Kind::Custom(30617), "")
        .tags([
            Tag::identifier(d),
            Tag::custom(TagKind::custom("relays"), relays.iter().copied()),
        ])
        .sign_with_keys(keys)
        .expect("sign")
}

/// A signed announcement of repo `d` listing `listed` relays: `first`, then loopback URLs
/// nothing listens on (port 9), then `own` last, past any cap, so that it must still be
/// recognised as our relay.
pub fn huge_announcement(keys: &Keys, d: &str, first: &str, own: &str, listed: usize) -> Event {
    let mut relays = vec![first.to_string()];
    relays.extend((0..listed.saturating_sub(2)).map(|i| format!("ws://127.0.0.1:9/{i}")));
    relays.push(own.to_string());
    let relays: Vec<&str> = relays.iter().map(String::as_str).collect();
    announcement(keys, d, &relays)
}

/// Starts the embedded relay on a free port with its store in `dir`.
pub async fn embedded_relay(dir: &std::path::Path) -> EmbeddedRelay {
    EmbeddedRelay::start(EmbeddedRelayConfig::new(free_addr(), dir.to_path_buf()))
        .await
        .expect("embedded relay starts")
}
