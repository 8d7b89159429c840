//! End to end over loopback: an announcement on our relay makes the remote relay it lists a
//! target; discovery admits it; layer 2 (`a`, `A`, `q`) and layer 3 (`e`, `E`, `q`) events
//! arrive on our relay; a second hop is followed; events published later arrive live.

mod support;

use nostr::Keys;
use std::time::{Duration, Instant};
use support::bed::announcement;
use support::sync_bed::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_pulls_layer2_and_layer3_then_follows_a_second_hop_and_stays_live() {
    let a = RemoteRelay::start().await;
    let c = RemoteRelay::start().await;
    let app = start_app("discovery", &[LOOPBACK_ALLOWLIST]).await;
    let own = app.own_url().to_string();
    let keys = Keys::generate();
    let repo = coordinate(&keys, "repo");

    // Layer 2 on A: a root issue (`a`), a NIP-22 comment on the repo (`A`), a quote (`q`).
    let root = tagged(&keys, 1621, "a", &repo, "issue");
    let l2_upper = tagged(&keys, 1111, "A", &repo, "comment on the repo");
    let l2_quote = tagged(&keys, 1, "q", &repo, "quoting the repo");
    // Layer 3 on A: replies to the root (`e`, `E`, `q`).
    let root_id = root.id.to_hex();
    let l3_lower = tagged(&keys, 1, "e", &root_id, "reply");
    let l3_upper = tagged(&keys, 1111, "E", &root_id, "comment");
    let l3_quote = tagged(&keys, 1, "q", &root_id, "quote");
    // Unrelated traffic on A stays there.
    let unrelated = tagged(&keys, 1, "t", "nostr", "noise");
    publish(
        &a.url(),
        &[
            root.clone(),
            l2_upper.clone(),
            l2_quote.clone(),
            l3_lower.clone(),
            l3_upper.clone(),
            l3_quote.clone(),
            unrelated.clone(),
        ],
    )
    .await;

    // The announcement on our relay lists A.
    let ann = announcement(&keys, "repo", &[&own, &a.url()]);
    publish(&own, &[ann]).await;

    let ids = [
        root.id,
        l2_upper.id,
        l2_quote.id,
        l3_lower.id,
        l3_upper.id,
        l3_quote.id,
    ];
    wait_for_ids(&own, &ids, Duration::from_secs(20), "layer 2 and 3 from A").await;
    assert!(
        held(&own, &[unrelated.id]).await.is_empty(),
        "unrequested event was copied"
    );

    // Second hop: an announcement of another repo, held only on A, lists us and C.
    let keys2 = Keys::generate();
    let repo2 = coordinate(&keys2, "second");
    let root2 = tagged(&keys2, 1617, "a", &repo2, "patch");
    publish(&c.url(), std::slice::from_ref(&root2)).await;
    publish(
        &a.url(),
        &[announcement(&keys2, "second", &[&own, &c.url()])],
    )
    .await;
    wait_for_ids(
        &own,
        &[root2.id],
        Duration::from_secs(30),
        "event from C (two hops)",
    )
    .await;

    // Live: an event published on A after sync arrives within 2 s.
    let names: Vec<String> = app
        .status()
        .await
        .iter()
        .map(|o| o.spec.url.clone())
        .collect();
    assert!(
        names.contains(&a.url()) && names.contains(&c.url()),
        "{names:?}"
    );
    let live = tagged(&keys, 1, "e", &root_id, "late reply");
    let t0 = Instant::now();
    publish(&a.url(), std::slice::from_ref(&live)).await;
    wait_for_ids(&own, &[live.id], Duration::from_secs(2), "live event").await;
    eprintln!("live latency {:?}", t0.elapsed());

    let status = app.status().await;
    let sa = status
        .iter()
        .find(|o| o.spec.url == a.url())
        .expect("A in status");
    assert_eq!(
        sa.metadata
            .labels
            .get("sync.grasp.dev/discovered")
            .map(String::as_str),
        Some("true")
    );
    assert!(sa.status.sync.events_forwarded >= 7, "{:?}", sa.status.sync);
    app.shutdown(Duration::from_secs(5)).await;
}
