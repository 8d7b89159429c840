//! Hostile input end to end. A relay that forges signatures and ids, sends events matching no
//! filter, oversized events and garbage frames, and never sends EOSE for history: nothing bad
//! reaches our relay, each kind is counted, the batch times out and the relay backs off, and
//! its one valid event still arrives. An announcement naming a loopback relay is refused
//! without an allowlist that permits private networks, before any socket is opened.

mod support;

use nostr::Keys;
use std::time::Duration;
use support::bed::announcement;
use support::fault_proxy::FaultProxy;
use support::hostile_relay::HostileRelay;
use support::sync_bed::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_relay_gets_nothing_bad_through_and_everything_is_counted() {
    let h = HostileRelay::start().await;
    let app = start_app("hostile", &[LOOPBACK_ALLOWLIST, SHORT_EOSE_SETTINGS]).await;
    let own = app.own_url().to_string();
    let keys = Keys::generate();
    publish(&own, &[announcement(&keys, "repo", &[&own, &h.url()])]).await;

    wait_until(
        Duration::from_secs(20),
        "the never-EOSE batch fails",
        || async { metric(&app.metrics().encode(), "grasp_sync_batches_failed_total") >= 1.0 },
    )
    .await;
    let sent = h.sent.lock().expect("lock").clone();
    assert!(!sent.valid.is_empty() && !sent.bad.is_empty());
    let valid: Vec<_> = sent.valid.iter().map(|e| e.id).collect();
    wait_for_ids(
        &own,
        &valid[..1],
        Duration::from_secs(10),
        "the hostile relay's valid event",
    )
    .await;
    let bad: Vec<_> = sent.bad.iter().map(|e| e.id).collect();
    assert!(
        held(&own, &bad).await.is_empty(),
        "a forged, unrelated or oversized event reached our relay"
    );

    let text = app.metrics().encode();
    for reason in [
        "invalid_signature",
        "invalid_id",
        "unrequested",
        "too_large",
        "malformed",
    ] {
        let line = format!("grasp_sync_events_rejected_total{{reason=\"{reason}\"}}");
        assert!(metric(&text, &line) >= 1.0, "{reason} not counted:\n{text}");
    }
    let status = app.status().await;
    let hs = status
        .iter()
        .find(|o| o.spec.url == h.url())
        .expect("hostile relay in status");
    assert!(
        hs.status.health.failures >= 1,
        "no backoff recorded: {:?}",
        hs.status.health
    );
    assert_eq!(hs.status.connection.nip77, "Unsupported");
    app.shutdown(Duration::from_secs(5)).await;
}

const LOOPBACK_WITHOUT_PRIVATE: &str = "\
apiVersion: sync.grasp.dev/v1alpha1
kind: RelayAllowlist
metadata: {name: strict}
spec:
  allow:
    - host: \"127.0.0.1\"
      schemes: [ws]
    - host: localhost
      schemes: [ws]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_relay_in_an_announcement_is_refused_without_private_networks() {
    let target = RemoteRelay::start().await;
    // The proxy counts connection attempts: there must be none.
    let proxy = FaultProxy::start(target.addr).await.expect("proxy");
    let app = start_app("ssrf", &[LOOPBACK_WITHOUT_PRIVATE]).await;
    let own = app.own_url().to_string();
    let keys = Keys::generate();
    let by_name = proxy.url().replace("127.0.0.1", "localhost");
    publish(
        &own,
        &[announcement(&keys, "repo", &[&own, &proxy.url(), &by_name])],
    )
    .await;
    wait_until(Duration::from_secs(10), "refusals counted", || async {
        metric(
            &app.metrics().encode(),
            "grasp_sync_relays_discovered_total{reason=\"private_address\"}",
        ) >= 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        proxy.accepted(),
        0,
        "a connection was opened to a private address"
    );
    assert!(
        app.status().await.is_empty(),
        "a refused relay became a SyncRelay"
    );
    app.shutdown(Duration::from_secs(5)).await;
}
