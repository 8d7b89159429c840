//! Connection lifecycle end to end: a quick reconnect catches up layers 1, 2 and 3 after a
//! 5 s cut; a long disconnect (time compressed through Settings) leads to a fresh start; a
//! relay with a budget of 3 subscriptions still gets every event; an announcement update that
//! drops a relay ends its subscriptions and the relay is closed after the grace period, while
//! a bootstrap relay is kept.

mod support;

use grasp_sync::api::conditions::{ConditionStatus, CONNECTED, SYNCED};
use grasp_sync::observe::table::StatusObject;
use grasp_sync::standalone::Standalone;
use nostr::{Event, Keys};
use std::time::Duration;
use support::bed::announcement;
use support::fault_proxy::FaultProxy;
use support::sync_bed::*;

fn condition(objects: &[StatusObject], url: &str, kind: &str) -> Option<ConditionStatus> {
    objects
        .iter()
        .find(|o| o.spec.url == url)?
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status)
}

async fn wait_synced(app: &Standalone, url: &str) {
    wait_until(Duration::from_secs(20), "relay Synced", || async {
        condition(&app.status().await, url, SYNCED) == Some(ConditionStatus::True)
    })
    .await;
}

/// Repo + root on A, announcement on ours; returns (repo coordinate, root).
async fn seed(app: &Standalone, keys: &Keys, remote: &str, via: &str) -> (String, Event) {
    let own = app.own_url().to_string();
    let repo = coordinate(keys, "repo");
    let root = tagged(keys, 1621, "a", &repo, "issue");
    publish(remote, std::slice::from_ref(&root)).await;
    publish(&own, &[announcement(keys, "repo", &[&own, via])]).await;
    wait_for_ids(&own, &[root.id], Duration::from_secs(20), "seed root").await;
    wait_synced(app, via).await;
    (repo, root)
}

/// Events of all three layers, published on A while the proxy is down.
fn three_layers(keys: &Keys, repo: &str, root: &Event, own: &str, via: &str) -> Vec<Event> {
    let other = Keys::generate();
    vec![
        announcement(&other, "newcomer", &[own, via]),
        tagged(keys, 1617, "a", repo, "patch while cut"),
        tagged(keys, 1, "e", &root.id.to_hex(), "reply while cut"),
    ]
}

async fn reconnect_case(name: &str, cut_for: Duration, settings: Option<&str>, kind: &str) {
    let a = RemoteRelay::start().await;
    let proxy = FaultProxy::start(a.addr).await.expect("proxy");
    let mut docs = vec![LOOPBACK_ALLOWLIST];
    if let Some(s) = settings {
        docs.push(s);
    }
    let app = start_app(name, &docs).await;
    let own = app.own_url().to_string();
    let keys = Keys::generate();
    let (repo, root) = seed(&app, &keys, &a.url(), &proxy.url()).await;

    proxy.refuse(true);
    proxy.cut();
    let events = three_layers(&keys, &repo, &root, &own, &proxy.url());
    publish(&a.url(), &events).await;
    tokio::time::sleep(cut_for).await;
    proxy.refuse(false);

    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    wait_for_ids(
        &own,
        &ids,
        Duration::from_secs(30),
        "L1, L2 and L3 after reconnect",
    )
    .await;
    let text = app.metrics().encode();
    let line = format!("grasp_sync_reconnects_total{{kind=\"{kind}\"}}");
    assert!(
        metric(&text, &line) >= 1.0,
        "no {kind} reconnect counted:\n{text}"
    );
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_reconnect_catches_up_every_layer() {
    reconnect_case("quick", Duration::from_secs(5), None, "quick").await;
}

const SHORT_QUICK_WINDOW: &str = "\
apiVersion: sync.grasp.dev/v1alpha1
kind: Settings
metadata: {name: compressed}
spec:
  batchWindow: 100ms
  eoseTimeout: 5s
  backoff: {base: 200ms, max: 1s, deadAfter: 1h}
  quickReconnectWindow: 1s
  reapGrace: 2s
  reapInterval: 500ms
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_disconnect_leads_to_a_fresh_start() {
    reconnect_case(
        "long",
        Duration::from_secs(3),
        Some(SHORT_QUICK_WINDOW),
        "long",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_three_subscriptions_still_gets_everything() {
    let a = RemoteRelay::start().await;
    let doc = format!(
        "apiVersion: sync.grasp.dev/v1alpha1\nkind: SyncRelay\nmetadata: {{name: tight}}\nspec:\n  url: {}\n  limits: {{maxSubscriptions: 3, maxFilters: 2, maxLimit: 100}}\n",
        a.url()
    );
    let app = start_app("budget", &[&doc]).await;
    let own = app.own_url().to_string();
    let mut wanted = Vec::new();
    let mut on_a = Vec::new();
    let mut anns = Vec::new();
    for i in 0..12 {
        let keys = Keys::generate();
        let repo = coordinate(&keys, &format!("r{i}"));
        let root = tagged(&keys, 1617, "a", &repo, "patch");
        let reply = tagged(&keys, 1111, "E", &root.id.to_hex(), "review");
        let quote = tagged(&keys, 1, "q", &repo, "quote");
        wanted.extend([root.id, reply.id, quote.id]);
        on_a.extend([root, reply, quote]);
        anns.push(announcement(&keys, &format!("r{i}"), &[&own, &a.url()]));
    }
    publish(&a.url(), &on_a).await;
    publish(&own, &anns).await;
    let mut max_subs = 0;
    for _ in 0..100 {
        let status = app.status().await;
        if let Some(o) = status.iter().find(|o| o.metadata.name == "tight") {
            max_subs = max_subs.max(o.status.sync.subscriptions);
        }
        if held(&own, &wanted).await.len() == wanted.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_ids(
        &own,
        &wanted,
        Duration::from_secs(30),
        "every event under a budget of 3",
    )
    .await;
    assert!(
        max_subs <= 3,
        "{max_subs} subscriptions open on a relay allowing 3"
    );
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_relay_ends_its_subscriptions_and_bootstrap_relays_stay() {
    let a = RemoteRelay::start().await;
    let boot = RemoteRelay::start().await;
    let boot_doc = format!(
        "apiVersion: sync.grasp.dev/v1alpha1\nkind: SyncRelay\nmetadata: {{name: boot}}\nspec: {{url: \"{}\", bootstrap: true}}\n",
        boot.url()
    );
    let app = start_app("removal", &[LOOPBACK_ALLOWLIST, &boot_doc]).await;
    let own = app.own_url().to_string();
    let keys = Keys::generate();
    let (repo, _root) = seed(&app, &keys, &a.url(), &a.url()).await;

    // A newer announcement of the same repo no longer lists A.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish(&own, &[announcement(&keys, "repo", &[&own])]).await;
    wait_until(
        Duration::from_secs(15),
        "A closed after the grace period",
        || async {
            condition(&app.status().await, &a.url(), CONNECTED) == Some(ConditionStatus::False)
        },
    )
    .await;
    let late = tagged(&keys, 1617, "a", &repo, "after removal");
    publish(&a.url(), std::slice::from_ref(&late)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        held(&own, &[late.id]).await.is_empty(),
        "a dropped relay was still synced"
    );
    let status = app.status().await;
    let a_status = status.iter().find(|o| o.spec.url == a.url()).expect("A");
    let reason = a_status
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONNECTED)
        .map(|c| c.reason.clone());
    assert_eq!(reason.as_deref(), Some("EmptyTarget"));
    assert_eq!(
        condition(&status, &boot.url(), CONNECTED),
        Some(ConditionStatus::True),
        "bootstrap relay kept"
    );
    app.shutdown(Duration::from_secs(5)).await;
}
