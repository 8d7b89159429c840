//! Status-write rate of a worker, measured end to end (issue 4): the real controller and
//! worker binaries against the real kube-apiserver, 10 SyncRelays (distinct URLs, one fault
//! proxy each, in front of one nostr-relay-builder relay).
//!
//! - **Churn**: a new repo listing all 10 relays is announced every 500 ms, so every relay
//!   runs a historic sync and reports EOSE about twice a second and its counts (and `Synced`)
//!   keep changing. The worker must write at most one status patch per SyncRelay per 10 s.
//! - **Idle**: publishing stops; after the last interval has passed, neither the worker nor
//!   the controller writes any status at all.
//!
//! The figures are printed (`--nocapture`) and recorded in docs/benchmarks.md.

mod support;

use grasp_sync::api::types::{RelayAllowlist, SyncRelay};
use kube::api::{Api, ListParams};
use nostr::Keys;
use serde_json::json;
use std::time::{Duration, Instant};
use support::apiserver::TestApiServer;
use support::bed::{announcement, embedded_relay, scratch_dir};
use support::fault_proxy::FaultProxy;
use support::k8s_bed::{
    condition_status, create_namespace, create_retrying, from_json, install_crds, scrape,
    spawn_controller, spawn_worker, wait_for,
};
use support::sync_bed::{client, RemoteRelay, FAST_SETTINGS, LOOPBACK_ALLOWLIST};

const NS: &str = "grasp-rate";
const RELAYS: usize = 10;
const CHURN: Duration = Duration::from_secs(40);
const IDLE: Duration = Duration::from_secs(20);
const APPLIED: &str = "grasp_sync_status_patches_total{result=\"applied\"}";
const OVERFLOWS: &str = "grasp_sync_status_queue_overflows_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_stay_under_one_per_relay_per_10s_and_stop_when_idle() {
    let server = TestApiServer::start();
    let kube = server.client().await;
    let dir = scratch_dir("status-rate");
    std::fs::create_dir_all(&dir).expect("scratch");
    let settings = dir.join("settings.yaml");
    std::fs::write(&settings, FAST_SETTINGS).expect("settings");
    let settings = settings.display().to_string();
    let own = embedded_relay(&dir.join("own")).await;
    let own_url = own.url().to_string();
    create_namespace(&kube, NS).await;
    install_crds(&kube).await;

    let remote = RemoteRelay::start().await;
    let mut proxies = Vec::new();
    for _ in 0..RELAYS {
        proxies.push(FaultProxy::start(remote.addr).await.expect("proxy"));
    }
    let relays: Api<SyncRelay> = Api::namespaced(kube.clone(), NS);
    let allowlists: Api<RelayAllowlist> = Api::namespaced(kube.clone(), NS);
    let allowlist: RelayAllowlist = serde_yaml::from_str(LOOPBACK_ALLOWLIST).expect("allowlist");
    create_retrying(&allowlists, &allowlist).await;
    for (i, p) in proxies.iter().enumerate() {
        let r: SyncRelay = from_json(json!({
            "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
            "metadata": {"name": format!("relay-{i}")},
            "spec": {"url": p.url()},
        }));
        create_retrying(&relays, &r).await;
    }

    let mut listed: Vec<String> = proxies.iter().map(FaultProxy::url).collect();
    listed.push(own_url.clone());
    let listed_refs: Vec<&str> = listed.iter().map(String::as_str).collect();
    let keys = Keys::generate();
    let ours = client(&own_url).await;
    let theirs = client(&remote.url()).await;
    let announce = |n: usize| {
        let e = announcement(&keys, &format!("repo-{n}"), &listed_refs);
        let (ours, theirs) = (ours.clone(), theirs.clone());
        async move {
            theirs.send_event(&e).await.expect("remote accepts");
            ours.send_event(&e).await.expect("ours accepts");
        }
    };
    announce(0).await;

    let mut controller = spawn_controller(
        &server,
        &dir,
        "controller",
        "controller-0",
        &own_url,
        NS,
        Some(&settings),
    );
    let mut worker = spawn_worker(&server, &dir, "worker-0", &own_url, NS, Some(&settings));
    controller.wait_ready(Duration::from_secs(30)).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    wait_for("all relays Synced", Duration::from_secs(90), || {
        let relays = relays.clone();
        async move {
            let list = relays.list(&ListParams::default()).await.ok()?;
            (list.items.len() == RELAYS
                && list.items.iter().all(|r| {
                    condition_status(r, "Connected").as_deref() == Some("True")
                        && condition_status(r, "Synced").as_deref() == Some("True")
                }))
            .then_some(())
        }
    })
    .await;

    // Churn: a new repo every 500 ms.
    let before = scrape(worker.http, APPLIED).await;
    let desired_before = desired_repos(&relays).await;
    let start = Instant::now();
    let mut n = 1;
    while start.elapsed() < CHURN {
        announce(n).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let churn_secs = start.elapsed().as_secs_f64();
    let churn_patches = scrape(worker.http, APPLIED).await - before;
    let desired_after = desired_repos(&relays).await;
    let per_relay_per_10s = churn_patches / RELAYS as f64 / (churn_secs / 10.0);
    println!(
        "churn: {} announcements in {churn_secs:.1} s; worker status patches {churn_patches} \
         for {RELAYS} relays = {per_relay_per_10s:.2} per relay per 10 s; desired repos \
         {desired_before} -> {desired_after}",
        n - 1
    );
    assert!(
        desired_after >= desired_before + RELAYS as u64 * 10,
        "the churn did change the relays' targets"
    );
    // At most one per relay per full 10 s window, plus one for the window straddling the
    // start of the measurement.
    let windows = (churn_secs / 10.0).ceil() + 1.0;
    assert!(
        churn_patches <= RELAYS as f64 * windows,
        "{churn_patches} patches for {RELAYS} relays in {churn_secs:.1} s"
    );
    assert!(
        churn_patches >= RELAYS as f64,
        "counts changed, so statuses must have been written ({churn_patches})"
    );

    // Idle: let the last changes settle (one interval), then count.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let worker_before = scrape(worker.http, APPLIED).await;
    let controller_before = scrape(controller.http, APPLIED).await;
    tokio::time::sleep(IDLE).await;
    let idle_worker = scrape(worker.http, APPLIED).await - worker_before;
    let idle_controller = scrape(controller.http, APPLIED).await - controller_before;
    println!(
        "idle {IDLE:?}: worker patches {idle_worker}, controller patches {idle_controller}; \
         queue overflows {}",
        scrape(worker.http, OVERFLOWS).await
    );
    assert_eq!(idle_worker, 0.0, "idle worker wrote status");
    assert_eq!(idle_controller, 0.0, "idle controller wrote status");

    ours.shutdown().await;
    theirs.shutdown().await;
    worker.proc.stop_gracefully();
    controller.proc.stop_gracefully();
    own.shutdown();
}

async fn desired_repos(relays: &Api<SyncRelay>) -> u64 {
    relays
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter_map(|r| r.status.as_ref().map(|s| s.sync.desired_repos))
                .sum()
        })
        .unwrap_or(0)
}
