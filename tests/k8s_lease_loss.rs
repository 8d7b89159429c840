//! A worker cut off from the API server mid-sync (issue 6, fault matrix): its Lease runs out,
//! so it closes every session (the controller may move its relays); when the API server is
//! reachable again it renews, takes its relays back, and the sync must finish with nothing
//! lost, by event id. The worker is the real `grasp-sync worker` process with its default
//! Lease (15 s, renewed every 5 s: the CLI has no flag for either); its kubeconfig points at a
//! raw TCP fault proxy in front of the real kube-apiserver (TLS passes through: the serving
//! certificate is for IP 127.0.0.1, so only the port differs). The proxy cuts every open
//! connection (watches included) and refuses new ones until the worker has let its Lease lapse,
//! plus 3 s. The controller is the real binary with a direct connection.
//!
//! Events reach the remote in three phases: 1,200 issues before the cut (the download under
//! way when the API goes; forwarding needs no API server, so it ends while the Lease still
//! holds), a live stream of 10 every 250 ms from the cut until the Lease has lapsed (the Lease
//! runs out with the live subscription busy), and 50 once it has lapsed (the worker holds no
//! session then: they must not arrive until it has taken its relay back, and must arrive
//! after). Every wait is bounded; everything is on 127.0.0.1.

mod support;

use grasp_sync::api::types::{discovered_name, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::k8s::consts::LEASE_DURATION;
use kube::api::Api;
use kube::ResourceExt;
use nostr::{EventId, Keys};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::bed::announcement;
use support::fault_proxy::FaultProxy;
use support::k8s_bed::{
    http_get, scrape, spawn_worker_with_kubeconfig, start_controlled, wait_for,
    write_kubeconfig_for, ControlledBed, Role,
};
use support::sync_bed::{
    coordinate, held, publish, tagged, wait_for_ids, RemoteRelay, FAST_SETTINGS, LOOPBACK_ALLOWLIST,
};

const NS: &str = "grasp-lease";
const REPO: &str = "lease";

/// `n` issues of the repo, published on the remote (`url`) now.
async fn issues_on_remote(keys: &Keys, url: &str, n: usize, tag: &str) -> Vec<EventId> {
    let issues: Vec<_> = (0..n)
        .map(|i| {
            tagged(
                keys,
                1621,
                "a",
                &coordinate(keys, REPO),
                &format!("{tag} issue {i}"),
            )
        })
        .collect();
    publish(url, &issues).await;
    issues.iter().map(|e| e.id).collect()
}

/// Whether the worker holds its Lease and manages the relay (`/readyz` is 200 only while its
/// Lease holds; `grasp_sync_relays_managed` counts the relays it has sessions for).
async fn holding(worker: &Role) -> (bool, f64) {
    let ready = matches!(http_get(worker.http, "/readyz").await, Some((200, _)));
    let managed = scrape(worker.http, "grasp_sync_relays_managed").await;
    (ready, managed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_its_lease_mid_download_loses_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ControlledBed {
        server,
        admin,
        dir,
        own,
        own_url,
        settings,
        mut controller,
    } = start_controlled("lease-loss", NS, LOOPBACK_ALLOWLIST, FAST_SETTINGS).await;

    // The worker reaches the API server only through the fault proxy.
    let api_addr: SocketAddr = server
        .url()
        .trim_start_matches("https://")
        .parse()
        .expect("api addr");
    let api_proxy = FaultProxy::start_raw(api_addr).await.expect("api proxy");
    let proxied_url = api_proxy.url().replacen("ws://", "https://", 1);
    let kubeconfig = write_kubeconfig_for(
        &server,
        &proxied_url,
        &dir.join("worker-via-proxy.kubeconfig"),
    );
    let mut worker =
        spawn_worker_with_kubeconfig(&kubeconfig, &dir, "worker-0", &own_url, NS, Some(&settings));
    worker.wait_ready(Duration::from_secs(30)).await;

    // A repo whose issues are only on the remote; announced on our relay.
    let remote = RemoteRelay::start().await;
    let keys = Keys::generate();
    let repo = announcement(&keys, REPO, &[&own_url, &remote.url()]);
    publish(&remote.url(), std::slice::from_ref(&repo)).await;
    let mut ids = issues_on_remote(&keys, &remote.url(), 1200, "historic").await;
    publish(&own_url, &[repo]).await;
    let relays: Api<SyncRelay> = Api::namespaced(admin.clone(), NS);
    let name = discovered_name(&RelayUrl::parse(&remote.url()).expect("url"));
    wait_for(
        "relay assigned to worker-0",
        Duration::from_secs(30),
        || {
            let relays = relays.clone();
            let name = name.clone();
            async move {
                let r = relays.get_opt(&name).await.ok()??;
                (r.labels().get("sync.grasp.dev/worker").map(String::as_str) == Some("worker-0"))
                    .then_some(())
            }
        },
    )
    .await;

    // Mid-download: the API server becomes unreachable.
    let start = Instant::now();
    let partial = loop {
        let n = held(&own_url, &ids).await.len();
        if n > 0 {
            break n;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "nothing arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let accepted_before = api_proxy.accepted();
    api_proxy.refuse(true);
    api_proxy.cut();
    let cut_at = Instant::now();
    // Live events keep coming while the Lease runs out, so that it lapses mid-stream.
    let streaming = Arc::new(AtomicBool::new(true));
    let stream = tokio::spawn({
        let (keys, url, streaming) = (keys.clone(), remote.url(), streaming.clone());
        async move {
            let mut ids = Vec::new();
            let mut batch = 0;
            while streaming.load(Ordering::SeqCst) {
                ids.extend(issues_on_remote(&keys, &url, 10, &format!("live {batch}")).await);
                batch += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            ids
        }
    });

    // The Lease runs out (at most LEASE_DURATION after its last renewal, which preceded the cut): the
    // worker turns unready and closes its session.
    wait_for(
        "the worker to let its Lease lapse and close its session",
        LEASE_DURATION + Duration::from_secs(10),
        || async {
            let (ready, managed) = holding(&worker).await;
            (!ready && managed == 0.0).then_some(())
        },
    )
    .await;
    let lapsed_after = cut_at.elapsed();
    streaming.store(false, Ordering::SeqCst);
    let live = stream.await.expect("live stream");
    let live_count = live.len();
    ids.extend(live);
    let at_lapse = held(&own_url, &ids).await.len();
    let published_at_lapse = ids.len();

    // Published while the worker holds no session: nothing may fetch them yet.
    let gap = issues_on_remote(&keys, &remote.url(), 50, "without a Lease").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        held(&own_url, &gap).await.is_empty(),
        "events arrived while the worker held no Lease"
    );
    ids.extend(gap);
    api_proxy.refuse(false);
    let outage = cut_at.elapsed();
    println!(
        "API unreachable for {outage:.1?}: {partial} of 1200 stored at the cut; the Lease lapsed \
         {lapsed_after:.1?} after it, {live_count} live events published meanwhile, {at_lapse} \
         of {published_at_lapse} stored then; the 50 published without a Lease not stored 3 s later"
    );

    // Reachable again: the worker renews, takes its relay back and finishes. The renewal comes
    // within a renew interval (5 s), but the relay is taken back only when the worker's watch
    // of its SyncRelays lists again: the regained-Lease trigger waits behind the kube-runtime
    // controller's trigger backoff (0.8 s doubling to 30 s, plus up to 100% jitter) that the
    // watch errors of the outage built up, so allow a full backoff step.
    let restored = Instant::now();
    wait_for(
        "the worker to renew its Lease and take its relay back",
        Duration::from_secs(60),
        || async {
            let (ready, managed) = holding(&worker).await;
            (ready && managed == 1.0).then_some(())
        },
    )
    .await;
    let regained_after = restored.elapsed();
    wait_for_ids(
        &own_url,
        &ids,
        Duration::from_secs(60),
        "after the Lease came back",
    )
    .await;
    let log = worker.proc.log_tail(100_000);
    let lost = log.matches("worker Lease lost").count();
    let held_lines = log.matches("worker Lease held").count();
    assert!(
        lost == 1 && held_lines == 2,
        "one Lease loss, held before and after it:\n{}",
        worker.proc.log_tail(60)
    );
    println!(
        "the worker renewed and held its relay again {regained_after:.1?} after the API came \
         back; all {} events stored {:.1?} after it; worker log: Lease lost {lost}x, held \
         {held_lines}x; API connections through the proxy: {accepted_before} before the cut, {} \
         after",
        ids.len(),
        restored.elapsed(),
        api_proxy.accepted() - accepted_before
    );

    worker.proc.stop_gracefully();
    controller.proc.stop_gracefully();
    own.shutdown();
}
