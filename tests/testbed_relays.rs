//! The out-of-process test-bed relays behave as DESIGN.md's test bed says, on this machine:
//! both store and serve events; the nostr-sdk wheel's LocalRelay speaks NIP-77; PyPI
//! nostr-relay does not, and a negentropy attempt against it ends in an error within the
//! short initial timeout (no reply to NEG-OPEN), not a hang.

mod support;

use nostr_sdk::prelude::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::py_relays::{PyRelay, PyRelayKind};

async fn connected(url: &str) -> Client {
    let client = Client::default();
    client.add_relay(url).await.expect("add relay");
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(10)).await;
    client
}

async fn publish_three(client: &Client, keys: &Keys) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..3u64 {
        let ev = EventBuilder::new(Kind::Custom(1621), format!("issue {i}"))
            // Backdated a year: nostr-relay's `oldest_event` must have been configured.
            .custom_created_at(Timestamp::from_secs(
                Timestamp::now().as_secs() - 365 * 86_400 + i,
            ))
            .sign_with_keys(keys)
            .expect("sign");
        let sent = client.send_event(&ev).await.expect("send");
        assert!(sent.failed.is_empty(), "publish refused: {:?}", sent.failed);
        out.push(ev);
    }
    out
}

async fn check(kind: PyRelayKind) {
    let relay = PyRelay::start(kind);
    let client = connected(&relay.url()).await;
    let keys = Keys::generate();
    let events = publish_three(&client, &keys).await;
    let filter = Filter::new()
        .author(keys.public_key())
        .kind(Kind::Custom(1621));
    let got = client
        .fetch_events(filter.clone(), Duration::from_secs(10))
        .await
        .expect("fetch");
    let got: HashSet<EventId> = got.iter().map(|e| e.id).collect();
    let want: HashSet<EventId> = events.iter().map(|e| e.id).collect();
    assert_eq!(got, want, "{kind:?} stores and serves");

    let handle = client.relay(relay.url()).await.expect("handle");
    let held = vec![(events[0].id, events[0].created_at)];
    let opts = SyncOptions::default()
        .dry_run()
        .initial_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let result = handle.sync_with_items(filter, held, &opts).await;
    match kind {
        PyRelayKind::SdkLocalRelay => {
            let recon = result.expect("NIP-77 reconciliation");
            let missing: HashSet<EventId> = events[1..].iter().map(|e| e.id).collect();
            assert_eq!(recon.remote, missing);
        }
        PyRelayKind::NostrRelay => {
            assert!(result.is_err(), "nostr-relay has no NIP-77: {result:?}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the failure must come from the short initial timeout"
            );
        }
    }
    client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_local_relay_speaks_nip77() {
    check(PyRelayKind::SdkLocalRelay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nostr_relay_has_no_nip77() {
    check(PyRelayKind::NostrRelay).await;
}
