//! Fault-matrix row: an announcement listing 10,000 relays (issue 6). The core takes at most
//! `maxRelaysPerAnnouncement` (20) relays of one announcement, in the order listed, counts the
//! rest as `over_cap`, and still recognises our relay wherever it is listed. Standalone mode
//! over loopback: the listed relay that holds the repo's events is synced, the process opens
//! no more than the cap of sessions, and everything the announcement's repo has is stored.

mod support;

use nostr::Keys;
use std::time::Duration;
use support::bed::huge_announcement;
use support::sync_bed::*;

const LISTED: usize = 10_000;
const CAP: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_listing_10000_relays_is_capped_and_its_repo_still_syncs() {
    let remote = RemoteRelay::start().await;
    let app = start_app("huge-announcement", &[LOOPBACK_ALLOWLIST]).await;
    let own = app.own_url().to_string();
    let keys = Keys::generate();
    let issues: Vec<_> = (0..20)
        .map(|i| {
            tagged(
                &keys,
                1621,
                "a",
                &coordinate(&keys, "huge"),
                &format!("issue {i}"),
            )
        })
        .collect();
    publish(&remote.url(), &issues).await;

    // The remote first, then 9,998 loopback URLs nothing listens on, then our relay.
    let huge = huge_announcement(&keys, "huge", &remote.url(), &own, LISTED);
    let size = nostr::JsonUtil::as_json(&huge).len();
    assert!(size > 150_000, "the announcement is large: {size} bytes");
    publish(&own, &[huge]).await;

    let ids: Vec<_> = issues.iter().map(|e| e.id).collect();
    wait_for_ids(
        &own,
        &ids,
        Duration::from_secs(30),
        "the capped announcement's repo",
    )
    .await;

    // At most the cap of relays is managed and connected to, and the rest counted.
    let status = app.status().await;
    assert!(
        status.len() <= CAP,
        "{} relays managed for one announcement (cap {CAP})",
        status.len()
    );
    assert!(status.iter().any(|o| o.spec.url == remote.url()));
    let text = app.metrics().encode();
    let discovered = metric(&text, "grasp_sync_relays_discovered_total");
    assert!(
        discovered <= CAP as f64,
        "{discovered} relays discovered (cap {CAP})"
    );
    println!(
        "announcement of {size} bytes listing {LISTED} relays: {} managed, {discovered} \
         discovered, all {} events stored",
        status.len(),
        ids.len()
    );
    app.shutdown(Duration::from_secs(5)).await;
    remote.stop();
}
