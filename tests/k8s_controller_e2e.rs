//! The controller against a real kube-apiserver + etcd (tests/support/apiserver.rs), run
//! in-process with the embedded relay as our relay:
//! - the generated CRDs install and become Established; CEL refuses a non-ws(s) URL and
//!   out-of-range limits;
//! - discovery: an announcement on our relay listing two more relays creates a labelled
//!   SyncRelay for the allowed one (assigned like any other) and counts the denied one;
//! - a standby replica is live and ready, says `grasp_sync_leader 0`, and takes over when
//!   the leader shuts down;
//! - an explicit SyncRelay gets the finalizer, a worker label naming one of the two live
//!   worker Leases, `status.assignment`, and `Accepted`/`Assigned` True; the allowlist gets
//!   its counts; the controller holds the leader Lease;
//! - `kubectl get syncrelays` prints the printer columns, and the `nostr` category lists both
//!   kinds;
//! - a released worker Lease moves its relay to the other worker at once;
//! - deleting the SyncRelay drains it (annotation `-`); the test, playing the worker, applies
//!   the `Drained` acknowledgement with its own field manager (the controller's conditions
//!   survive: conditions are a list-map), and the finalizer goes;
//! - on shutdown the leader Lease is released (to the standby, then by it).
//!
//! Needs the binaries from `scripts/k8s-tools` (scripts/test builds them). Bounded waits only.

mod support;

use grasp_sync::api::types::discovered_name;
use grasp_sync::api::types::{RelayAllowlist, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::core::Millis;
use grasp_sync::k8s::consts::{
    drained_condition, CONTROLLER_LEASE, DISCOVERED_LABEL, DRAIN_ANNOTATION, FINALIZER,
    WORKER_LABEL, WORKER_MANAGER,
};
use grasp_sync::k8s::controller::{run, ControllerOptions};
use grasp_sync::k8s::lease::worker_lease;
use grasp_sync::relay::own::{OwnRelayClient, PublishOutcome};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::apiserver::TestApiServer;
use support::bed::{announcement, embedded_relay, free_addr, scratch_dir};
use support::k8s_bed::{
    condition_status, create_namespace, from_json, http_get, install_crds, wait_for,
};

const NS: &str = "grasp-e2e";
const LEASE_NS: &str = "grasp-e2e";

fn now() -> Millis {
    Millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

fn options(own: &grasp_sync::core::RelayUrl, identity: &str) -> ControllerOptions {
    let mut opts = ControllerOptions::new(own.clone(), identity.into());
    opts.namespace = Some(NS.into());
    opts.lease_namespace = LEASE_NS.into();
    opts.listen = free_addr();
    opts.debounce = Duration::from_millis(50);
    opts.renew_interval = Duration::from_secs(1);
    opts.lease_duration = Duration::from_secs(5);
    opts.drain_timeout = Duration::from_secs(60);
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_assigns_drains_and_finalizes_against_a_real_apiserver() {
    let server = TestApiServer::start();
    let client = server.client().await;
    let dir = scratch_dir("controller-e2e");
    let relay = embedded_relay(&dir).await;

    create_namespace(&client, NS).await;
    // CRDs, exactly as rendered, become Established.
    install_crds(&client).await;

    let relays: Api<SyncRelay> = Api::namespaced(client.clone(), NS);
    let allowlists: Api<RelayAllowlist> = Api::namespaced(client.clone(), NS);
    // Discovery of a just-Established CRD can lag a moment.
    let allowlist: RelayAllowlist = from_json(json!({
        "apiVersion": "sync.grasp.dev/v1alpha1",
        "kind": "RelayAllowlist",
        "metadata": {"name": "default"},
        "spec": {"allow": [{"host": "*.example.org"}], "deny": [{"host": "spam.example.org"}]},
    }));
    wait_for("allowlist created", Duration::from_secs(20), || {
        let (allowlists, allowlist) = (allowlists.clone(), allowlist.clone());
        async move {
            allowlists
                .create(&PostParams::default(), &allowlist)
                .await
                .ok()
        }
    })
    .await;

    // CEL: a non-ws(s) URL and out-of-range limits are refused at admission.
    let bad: SyncRelay = from_json(json!({
        "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
        "metadata": {"name": "bad-url"},
        "spec": {"url": "https://relay.example.org"},
    }));
    match relays.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("ws:// or wss://"), "{}", s.message);
        }
        other => panic!("an https:// SyncRelay was not refused: {other:?}"),
    }
    let bad_limits: SyncRelay = from_json(json!({
        "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
        "metadata": {"name": "bad-limits"},
        "spec": {"url": "wss://relay.example.org",
                 "limits": {"maxSubscriptions": 1, "maxFilters": 10, "maxLimit": 500}},
    }));
    match relays.create(&PostParams::default(), &bad_limits).await {
        Err(kube::Error::Api(s)) => {
            assert!(s.message.contains("maxSubscriptions"), "{}", s.message)
        }
        other => panic!("out-of-range limits were not refused: {other:?}"),
    }

    // Two live workers, by hand (an hour-long Lease, so no renewals are needed).
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NS);
    for w in ["worker-0", "worker-1"] {
        leases
            .create(
                &PostParams::default(),
                &worker_lease(w, now(), Duration::from_secs(3600)),
            )
            .await
            .expect("worker lease");
    }
    let explicit: SyncRelay = from_json(json!({
        "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
        "metadata": {"name": "relay-example-org"},
        "spec": {"url": "wss://relay.example.org", "bootstrap": true},
    }));
    relays
        .create(&PostParams::default(), &explicit)
        .await
        .expect("explicit SyncRelay");

    // The controller, in-process, and a standby replica.
    let mut opts = options(relay.url(), "controller-e2e");
    // A short self-subscriber batch window, so discovery shows up quickly.
    opts.settings.batch_window = Duration::from_millis(100);
    let leader_http = opts.listen;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(client.clone(), opts, async move {
        let _ = stop_rx.await;
    }));
    let assigned = wait_for("assignment", Duration::from_secs(30), || {
        let relays = relays.clone();
        async move {
            let r = relays.get("relay-example-org").await.ok()?;
            let worker = r.labels().get(WORKER_LABEL)?.clone();
            let status = r.status.as_ref()?;
            (status.assignment.as_ref()?.worker == worker
                && condition_status(&r, "Assigned").as_deref() == Some("True"))
            .then_some(r)
        }
    })
    .await;
    let first = assigned.labels()[WORKER_LABEL].clone();
    assert!(
        ["worker-0", "worker-1"].contains(&first.as_str()),
        "{first}"
    );
    assert!(assigned.finalizers().iter().any(|f| f == FINALIZER));
    assert_eq!(
        condition_status(&assigned, "Accepted").as_deref(),
        Some("True")
    );
    assert_eq!(
        condition_status(&assigned, "Ready").as_deref(),
        Some("False")
    );
    assert_eq!(
        assigned.status.as_ref().and_then(|s| s.observed_generation),
        Some(1)
    );
    let leader = leases.get(CONTROLLER_LEASE).await.expect("leader lease");
    assert_eq!(
        leader.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("controller-e2e")
    );
    let standby_opts = options(relay.url(), "controller-standby");
    let standby_http = standby_opts.listen;
    let (standby_stop_tx, standby_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let standby = tokio::spawn(run(client.clone(), standby_opts, async move {
        let _ = standby_stop_rx.await;
    }));
    // The standby is live and ready while it waits; only the leader says leader 1.
    wait_for("standby ready", Duration::from_secs(20), || async move {
        let (code, _) = http_get(standby_http, "/readyz").await?;
        (code == 200).then_some(())
    })
    .await;
    assert_eq!(
        http_get(standby_http, "/livez").await.map(|r| r.0),
        Some(200)
    );
    let metrics = http_get(standby_http, "/metrics").await.expect("metrics").1;
    assert!(metrics.contains("grasp_sync_leader 0"), "{metrics}");
    let metrics = http_get(leader_http, "/metrics").await.expect("metrics").1;
    assert!(metrics.contains("grasp_sync_leader 1"), "{metrics}");
    wait_for("allowlist status", Duration::from_secs(20), || {
        let allowlists = allowlists.clone();
        async move {
            let s = allowlists.get("default").await.ok()?.status?;
            (s.observed_generation == Some(1)).then_some(())
        }
    })
    .await;

    // Discovery: an announcement on our relay lists two more relays; the allowed one becomes
    // a labelled SyncRelay (and is assigned), the denied one is counted as refused.
    let own = OwnRelayClient::connect(relay.url(), Duration::from_secs(5))
        .await
        .expect("own relay client");
    let keys = nostr::Keys::generate();
    let event = announcement(
        &keys,
        "repo",
        &[
            relay.url().as_str(),
            "wss://found.example.org",
            "wss://spam.example.org",
        ],
    );
    assert_eq!(own.publish(&event).await, PublishOutcome::Stored);
    let found_name = discovered_name(&RelayUrl::parse("wss://found.example.org").expect("url"));
    let found = wait_for("discovered relay assigned", Duration::from_secs(30), || {
        let (relays, name) = (relays.clone(), found_name.clone());
        async move {
            let r = relays.get(&name).await.ok()?;
            r.labels().get(WORKER_LABEL)?;
            Some(r)
        }
    })
    .await;
    assert_eq!(
        found.labels().get(DISCOVERED_LABEL).map(String::as_str),
        Some("true")
    );
    assert_eq!(found.spec.url, "wss://found.example.org");
    assert!(found.finalizers().iter().any(|f| f == FINALIZER));
    wait_for("allowlist counts", Duration::from_secs(20), || {
        let allowlists = allowlists.clone();
        async move {
            let s = allowlists.get("default").await.ok()?.status?;
            (s.matched == 1 && s.refused == 1).then_some(())
        }
    })
    .await;
    own.shutdown().await;

    // kubectl prints the printer columns.
    let out = server
        .kubectl()
        .args(["get", "syncrelays", "-n", NS])
        .output()
        .expect("kubectl get syncrelays");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "URL",
            "WORKER",
            "CONNECTED",
            "SYNCED",
            "REPOS",
            "DESIRED",
            "EVENTS",
            "NIP77",
            "LAST-EOSE",
            "AGE"
        ],
        "{text}"
    );
    assert!(
        text.contains("wss://relay.example.org") && text.contains(&first),
        "{text}"
    );
    let out = server
        .kubectl()
        .args(["get", "nostr", "-n", NS, "-o", "name"])
        .output()
        .expect("kubectl get nostr");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("syncrelay.sync.grasp.dev/relay-example-org")
            && text.contains("relayallowlist.sync.grasp.dev/default"),
        "{text}"
    );

    // The holder releases its Lease: the relay moves to the other worker at once.
    let mut lease = leases.get(&first).await.expect("lease");
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
    }
    leases
        .replace(&first, &PostParams::default(), &lease)
        .await
        .expect("release worker lease");
    let second = if first == "worker-0" {
        "worker-1"
    } else {
        "worker-0"
    };
    wait_for(
        "relabel to the other worker",
        Duration::from_secs(20),
        || {
            let relays = relays.clone();
            async move {
                let r = relays.get("relay-example-org").await.ok()?;
                (r.labels().get(WORKER_LABEL).map(String::as_str) == Some(second)).then_some(())
            }
        },
    )
    .await;

    // Delete: the controller asks the holder to drain to nobody.
    relays
        .delete("relay-example-org", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("drain annotation", Duration::from_secs(20), || {
        let relays = relays.clone();
        async move {
            let r = relays.get("relay-example-org").await.ok()?;
            (r.annotations().get(DRAIN_ANNOTATION).map(String::as_str) == Some("-")).then_some(())
        }
    })
    .await;
    // Playing the worker: acknowledge with the worker's own field manager.
    let ack = json!({
        "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
        "status": {"conditions": [drained_condition(second, "2026-01-01T00:00:00Z", Some(1))]},
    });
    let acked = relays
        .patch_status(
            "relay-example-org",
            &PatchParams::apply(WORKER_MANAGER),
            &Patch::Apply(&ack),
        )
        .await
        .expect("the worker's acknowledgement");
    // The controller's conditions survive the worker's apply (list-map by type).
    for t in ["Accepted", "Assigned", "Ready", "Connected"] {
        assert!(
            condition_status(&acked, t).is_some(),
            "{t} missing after the worker's apply"
        );
    }
    wait_for(
        "finalizer removed and object gone",
        Duration::from_secs(20),
        || {
            let relays = relays.clone();
            async move {
                match relays.get_opt("relay-example-org").await {
                    Ok(None) => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;

    // Shutdown releases leadership; the standby takes over at once, then releases too.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), controller)
        .await
        .expect("controller stops")
        .expect("controller task")
        .expect("controller ran");
    wait_for("the standby leads", Duration::from_secs(10), || {
        let leases = leases.clone();
        async move {
            let l = leases.get(CONTROLLER_LEASE).await.ok()?;
            (l.spec?.holder_identity.as_deref() == Some("controller-standby")).then_some(())
        }
    })
    .await;
    let _ = standby_stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), standby)
        .await
        .expect("standby stops")
        .expect("standby task")
        .expect("standby ran");
    let leader = leases.get(CONTROLLER_LEASE).await.expect("leader lease");
    assert_eq!(leader.spec.and_then(|s| s.holder_identity), None);
    relay.shutdown();
}
