//! The embedded relay, over real websockets on 127.0.0.1: its write policy keeps only
//! announcements that list it, it speaks NIP-77, and its LMDB store survives a restart.

mod support;

use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use nostr_sdk::prelude::*;
use std::time::Duration;
use support::bed::{announcement, free_addr, scratch_dir};

async fn client_for(url: &str) -> Client {
    let client = Client::default();
    client.add_relay(url).await.expect("add relay");
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(5)).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_negentropy_and_restart() {
    let addr = free_addr();
    let dir = scratch_dir("embedded");
    let relay = EmbeddedRelay::start(EmbeddedRelayConfig::new(addr, dir.clone()))
        .await
        .expect("embedded relay starts");
    let url = relay.url().to_string();
    assert_eq!(url, format!("ws://{addr}"));
    let client = client_for(&url).await;
    let keys = Keys::generate();

    // Announcements: one listing us (spelled with a trailing slash), one not.
    let ours = announcement(
        &keys,
        "ours",
        &[&format!("ws://{addr}/"), "wss://other.example"],
    );
    let sent = client.send_event(&ours).await.expect("send");
    assert!(
        sent.failed.is_empty(),
        "listing us must be accepted: {:?}",
        sent.failed
    );
    let foreign = announcement(&keys, "foreign", &["wss://other.example"]);
    let sent = client.send_event(&foreign).await.expect("send");
    let why: Vec<&String> = sent.failed.values().collect();
    assert!(
        why.iter().any(|m| m.contains("does not list this relay")),
        "not listing us must be refused with a reason: {why:?}"
    );

    // Ten issues for the repo.
    let repo = format!("30617:{}:ours", keys.public_key().to_hex());
    let mut issues = Vec::new();
    for i in 0..10 {
        let ev = EventBuilder::new(Kind::Custom(1621), format!("issue {i}"))
            .tag(Tag::parse(["a", repo.as_str()]).expect("tag"))
            .sign_with_keys(&keys)
            .expect("sign");
        let sent = client.send_event(&ev).await.expect("send");
        assert!(sent.failed.is_empty(), "issue {i}: {:?}", sent.failed);
        issues.push(ev);
    }

    // NIP-77: we claim to hold 4 of the 10; the relay must report exactly the other 6.
    let filter = Filter::new().kind(Kind::Custom(1621));
    let held: Vec<(EventId, Timestamp)> =
        issues[..4].iter().map(|e| (e.id, e.created_at)).collect();
    let remote = client.relay(url.as_str()).await.expect("relay handle");
    let recon = remote
        .sync_with_items(filter.clone(), held, &SyncOptions::default().dry_run())
        .await
        .expect("negentropy reconciliation");
    let want: std::collections::HashSet<EventId> = issues[4..].iter().map(|e| e.id).collect();
    assert_eq!(recon.remote, want, "ids the relay has and we lack");
    assert!(recon.local.is_empty());

    client.disconnect().await;
    relay.shutdown();
    drop(relay);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Restart on the same store (new port): everything accepted is still there.
    let addr2 = free_addr();
    let relay = EmbeddedRelay::start(EmbeddedRelayConfig::new(addr2, dir.clone()))
        .await
        .expect("restarts on the same store");
    let client = client_for(&relay.url().to_string()).await;
    let stored = client
        .fetch_events(
            Filter::new().kinds([Kind::Custom(1621), Kind::Custom(30617)]),
            Duration::from_secs(5),
        )
        .await
        .expect("fetch");
    let ids: std::collections::HashSet<EventId> = stored.iter().map(|e| e.id).collect();
    assert!(ids.contains(&ours.id));
    assert!(!ids.contains(&foreign.id));
    for ev in &issues {
        assert!(ids.contains(&ev.id), "issue {} lost across restart", ev.id);
    }
    client.disconnect().await;
    relay.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
