//! Fault-matrix row: status writes answered 409 and 429 (issue 6). The worker is the real
//! `grasp-sync worker` process; its kubeconfig points at a plain-HTTP reverse proxy
//! (`support::api_proxy`) that forwards everything to the real kube-apiserver except SyncRelay
//! status PATCHes, two of every three of which it answers itself: 429 Too Many Requests (with
//! `Retry-After: 1`) and 409 Conflict, in turn. Forwarding must not notice (nothing lost, by
//! event id), the status must still converge to `Synced` with the right counts, a 429 must be
//! honoured (the next status PATCH waits at least `Retry-After`), and the worker's
//! `grasp_sync_status_patches_total` must count what reached it by result. The controller is
//! the real binary with a direct connection. Every wait is bounded; everything is on 127.0.0.1.
//!
//! The worker writes status with a kube client without kube-rs's default retry policy, so its
//! reporter sees each 429 itself: it counts it as `throttled`, keeps the latest status, and
//! waits the `retryAfterSeconds` the refusal carried before writing again. (With the default
//! policy the client retried inside, the reporter's loop waited, and nothing was counted.)

mod support;

use grasp_sync::api::types::{discovered_name, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use kube::api::Api;
use nostr::Keys;
use std::time::{Duration, Instant};
use support::api_proxy::{ApiProxy, Injected, Rule};
use support::bed::announcement;
use support::k8s_bed::{
    condition_status, http_get, spawn_worker_with_kubeconfig, start_controlled, wait_for,
    ControlledBed,
};
use support::sync_bed::{
    coordinate, metric, publish, tagged, wait_for_ids, RemoteRelay, FAST_SETTINGS,
    LOOPBACK_ALLOWLIST,
};

const NS: &str = "grasp-status-faults";
const RETRY_AFTER_SECS: u32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_answered_409_and_429_still_converge_and_lose_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let ControlledBed {
        server,
        admin,
        dir,
        own,
        own_url,
        settings,
        mut controller,
    } = start_controlled("status-faults", NS, LOOPBACK_ALLOWLIST, FAST_SETTINGS).await;

    // The worker reaches the API server only through the proxy, which refuses two of every
    // three SyncRelay status PATCHes (the worker's Lease, watches and everything else pass).
    let proxy = ApiProxy::start(
        &server,
        Rule::status_patches("syncrelays", |n| match n % 3 {
            0 => Some(Injected {
                code: 429,
                reason: "TooManyRequests",
                retry_after: Some(RETRY_AFTER_SECS),
            }),
            1 => Some(Injected {
                code: 409,
                reason: "Conflict",
                retry_after: None,
            }),
            _ => None,
        }),
    )
    .await;
    let kubeconfig = proxy.write_kubeconfig(&server, &dir.join("worker-via-proxy.kubeconfig"));
    let mut worker =
        spawn_worker_with_kubeconfig(&kubeconfig, &dir, "worker-0", &own_url, NS, Some(&settings));
    worker.wait_ready(Duration::from_secs(30)).await;

    // A repo whose 300 issues are only on the remote; announced on our relay.
    let remote = RemoteRelay::start().await;
    let keys = Keys::generate();
    let repo = announcement(&keys, "faulty-status", &[&own_url, &remote.url()]);
    let issues: Vec<_> = (0..300)
        .map(|i| {
            tagged(
                &keys,
                1621,
                "a",
                &coordinate(&keys, "faulty-status"),
                &format!("issue {i}"),
            )
        })
        .collect();
    publish(&remote.url(), std::slice::from_ref(&repo)).await;
    publish(&remote.url(), &issues).await;
    publish(&own_url, &[repo]).await;
    let ids: Vec<_> = issues.iter().map(|e| e.id).collect();

    // Nothing lost: forwarding does not depend on status writes.
    wait_for_ids(
        &own_url,
        &ids,
        Duration::from_secs(60),
        "with status writes refused",
    )
    .await;
    let stored_after = started.elapsed();

    // The status converges anyway: Connected and Synced, one repo desired and confirmed.
    let relays: Api<SyncRelay> = Api::namespaced(admin.clone(), NS);
    let name = discovered_name(&RelayUrl::parse(&remote.url()).expect("url"));
    let synced = wait_for(
        "status Synced despite 409/429",
        Duration::from_secs(60),
        || {
            let relays = relays.clone();
            let name = name.clone();
            async move {
                let r = relays.get_opt(&name).await.ok()??;
                let sync = &r.status.as_ref()?.sync;
                let done = condition_status(&r, "Connected").as_deref() == Some("True")
                    && condition_status(&r, "Synced").as_deref() == Some("True")
                    && sync.desired_repos == 1
                    && sync.confirmed_repos == 1;
                done.then_some(r)
            }
        },
    )
    .await;
    assert_eq!(
        synced.status.as_ref().map(|s| s.sync.confirmed_repos),
        Some(1)
    );
    let synced_after = started.elapsed();

    // The worker's own count by result, scraped before the proxy's counts are read: a write is
    // counted by the proxy before the worker sees its answer, so the proxy's figures bound the
    // worker's from above.
    let (_, text) = http_get(worker.http, "/metrics")
        .await
        .expect("worker metrics");
    let counted_throttled = metric(
        &text,
        "grasp_sync_status_patches_total{result=\"throttled\"}",
    );
    let counted_errors = metric(&text, "grasp_sync_status_patches_total{result=\"error\"}");
    let applied = metric(&text, "grasp_sync_status_patches_total{result=\"applied\"}");
    let log = proxy.matched();
    let throttled = proxy.answered(429);
    let conflicts = proxy.answered(409);
    let forwarded = proxy.forwarded_matching();
    let upstream_errors = proxy.upstream_errors();

    // Both faults were injected, and the writes that got through made the status above.
    assert!(throttled > 0 && conflicts > 0, "both faults were injected");
    assert!(forwarded > 0, "some status PATCHes were forwarded");
    // A 429 was honoured: the status PATCH after it came no sooner than `Retry-After`. (Status
    // writes are serial: one reporter loop, one SyncRelay.)
    let waits: Vec<Duration> = log
        .windows(2)
        .filter(|w| w[0].answered == Some(429))
        .map(|w| w[1].at.saturating_sub(w[0].at))
        .collect();
    let shortest = waits.iter().min().copied().expect("a PATCH after a 429");
    assert!(
        shortest >= Duration::from_millis(u64::from(RETRY_AFTER_SECS) * 1000 - 100),
        "a status PATCH came {shortest:?} after a 429 with Retry-After: {RETRY_AFTER_SECS}"
    );
    // What reached the worker's reporter was counted by result: the 409s as errors, the
    // forwarded writes as applied; never more than the proxy answered.
    assert!(counted_errors >= 1.0, "409s counted as errors:\n{text}");
    assert!(
        counted_errors <= (conflicts as u64 + upstream_errors) as f64,
        "errors counted ({counted_errors}) beyond the 409s and proxy failures \
         ({conflicts} + {upstream_errors}):\n{text}"
    );
    assert!(
        counted_throttled >= 1.0 && counted_throttled <= throttled as f64,
        "throttled counted ({counted_throttled}) within 1..={throttled} 429s:\n{text}"
    );
    assert!(
        applied >= 1.0 && applied <= forwarded as f64,
        "applied ({applied}) within 1..={forwarded} forwarded:\n{text}"
    );
    println!(
        "status faults (worker process via the API proxy): {} status PATCHes, {throttled} \
         answered 429 and {conflicts} answered 409 by the proxy, {forwarded} forwarded \
         ({upstream_errors} upstream errors, {} requests proxied in all); shortest wait after a \
         429: {shortest:?}; the worker counted {counted_throttled} throttled, {counted_errors} \
         errors, {applied} applied; all {} events stored after {stored_after:.1?}, Synced with \
         1/1 repos after {synced_after:.1?}",
        log.len(),
        proxy.requests(),
        ids.len()
    );

    worker.proc.stop_gracefully();
    controller.proc.stop_gracefully();
    own.shutdown();
}
