//! Historic sync both ways against real relays: NIP-77 negentropy against the set our relay
//! already holds (only the missing events move), and REQ paging on a relay without NIP-77
//! (PyPI nostr-relay), through more events than the relay's page limit with runs of equal
//! `created_at`.

mod support;

use nostr::{Event, Keys};
use std::time::Duration;
use support::bed::announcement;
use support::py_relays::{PyRelay, PyRelayKind};
use support::sync_bed::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `n` layer-2 events for `repo`, in runs of `run` sharing one `created_at`.
fn history(keys: &Keys, repo: &str, n: usize, run: usize) -> Vec<Event> {
    let base = now() - 100_000;
    (0..n)
        .map(|i| {
            tagged_at(
                keys,
                1,
                "a",
                repo,
                &format!("event {i}"),
                base + (i / run) as u64,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negentropy_moves_only_what_our_relay_lacks() {
    let a = RemoteRelay::start().await;
    let app = start_app("historic-neg", &[LOOPBACK_ALLOWLIST]).await;
    let own = app.own_url().to_string();
    let keys = Keys::generate();
    let repo = coordinate(&keys, "big");
    let events = history(&keys, &repo, 1200, 7);
    publish(&a.url(), &events).await;
    // Our relay already holds 90% of them.
    let (missing, present): (Vec<&Event>, Vec<&Event>) =
        events.iter().partition(|e| e.id.as_bytes()[0] % 10 == 0);
    let present: Vec<Event> = present.into_iter().cloned().collect();
    publish(&own, &present).await;

    publish(&own, &[announcement(&keys, "big", &[&own, &a.url()])]).await;
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    wait_for_ids(
        &own,
        &ids,
        Duration::from_secs(30),
        "history via negentropy",
    )
    .await;

    let text = app.metrics().encode();
    assert!(
        metric(
            &text,
            "grasp_sync_batches_confirmed_total{method=\"negentropy\"}"
        ) >= 1.0,
        "{text}"
    );
    // Only the missing ones crossed the wire as events (plus the 3 live REQs' nothing).
    let received = metric(&text, "grasp_sync_events_received_total");
    assert!(
        received <= missing.len() as f64 * 1.1 + 5.0,
        "{received} events received for {} missing",
        missing.len()
    );
    let status = app.status().await;
    let sa = status.iter().find(|o| o.spec.url == a.url()).expect("A");
    assert_eq!(sa.status.connection.nip77, "Supported");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn req_paging_on_a_relay_without_nip77() {
    let b = PyRelay::start(PyRelayKind::NostrRelay);
    let relay_doc = format!(
        "apiVersion: sync.grasp.dev/v1alpha1\nkind: SyncRelay\nmetadata: {{name: b}}\nspec:\n  url: {}\n  limits: {{maxSubscriptions: 10, maxFilters: 10, maxLimit: 40}}\n",
        b.url()
    );
    let app = start_app("historic-req", &[&relay_doc]).await;
    let own = app.own_url().to_string();
    let keys = Keys::generate();
    let repo = coordinate(&keys, "paged");
    // 230 events, in runs of 9 equal timestamps, pages of 40.
    let events = history(&keys, &repo, 230, 9);
    publish(&b.url(), &events).await;
    publish(&own, &[announcement(&keys, "paged", &[&own, &b.url()])]).await;
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    wait_for_ids(
        &own,
        &ids,
        Duration::from_secs(60),
        "history via REQ paging",
    )
    .await;

    let text = app.metrics().encode();
    assert!(
        metric(
            &text,
            "grasp_sync_batches_confirmed_total{method=\"req_eose\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "grasp_sync_batches_confirmed_total{method=\"negentropy\"}"
        ),
        0.0
    );
    let status = app.status().await;
    let sb = status.iter().find(|o| o.metadata.name == "b").expect("b");
    assert_ne!(
        sb.status.connection.nip77, "Supported",
        "{:?}",
        sb.status.connection
    );
    app.shutdown(Duration::from_secs(5)).await;
}
