//! The whole Kubernetes mode end to end: the real `grasp-sync controller` and `grasp-sync
//! worker` binaries as separate processes, against a real kube-apiserver + etcd, with real
//! relays (the embedded relay as ours; a nostr-relay-builder relay behind one fault proxy per
//! SyncRelay, so every SyncRelay is a distinct URL and each proxy counts the connections
//! open through it).
//!
//! 1. CRDs, a RelayAllowlist, 12 explicit bootstrap SyncRelays, and an announcement on our
//!    relay listing one more relay.
//! 2. The discovered SyncRelay appears, is assigned, reaches `Connected` and `Synced` with
//!    confirmed counts equal to desired; the repo's issues are on our relay.
//! 3. `kubectl get syncrelays` prints the printer columns with values.
//! 4. SIGKILL the worker holding the discovered relay: its relays are relabelled to the other
//!    worker and connected again (a new connection through their proxies) within the Lease
//!    duration + 5 s.
//! 5. A third worker: relays drain to it, and no proxy ever sees two connections at once.
//! 6. Deleting a SyncRelay closes its connection and the finalizer goes.
//! 7. An allowlist that starts denying the discovered relay makes the controller remove it.
//! 8. SIGTERM: every relay reports `Connected` = False, `WorkerStopped`.
//!
//! Needs the binaries from `scripts/k8s-tools`. Every wait is bounded.

mod support;

use grasp_sync::api::types::{discovered_name, RelayAllowlist, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::k8s::consts::{DRAIN_ANNOTATION, LEASE_DURATION, WORKER_LABEL};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use nostr::Keys;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::apiserver::TestApiServer;
use support::bed::{announcement, embedded_relay, scratch_dir};
use support::fault_proxy::FaultProxy;
use support::k8s_bed::{
    condition_status, create_namespace, create_retrying, from_json, install_crds, spawn_controller,
    spawn_worker, wait_for, Role,
};
use support::sync_bed::{
    coordinate, publish, tagged, wait_for_ids, RemoteRelay, FAST_SETTINGS, LOOPBACK_ALLOWLIST,
};

const NS: &str = "grasp-workers";
const EXPLICIT: usize = 12;

fn worker_of(r: &SyncRelay) -> Option<String> {
    r.labels().get(WORKER_LABEL).cloned()
}

fn assigned_to(r: &SyncRelay) -> Option<String> {
    r.status
        .as_ref()?
        .assignment
        .as_ref()
        .map(|a| a.worker.clone())
}

fn holds(r: &SyncRelay, t: &str) -> bool {
    condition_status(r, t).as_deref() == Some("True")
}

fn start_worker(
    server: &TestApiServer,
    dir: &std::path::Path,
    name: &'static str,
    own: &str,
) -> Role {
    let settings = dir.join("settings.yaml").display().to_string();
    spawn_worker(server, dir, name, own, NS, Some(&settings))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_worker_processes_sync_fail_over_rebalance_and_finalize() {
    let server = TestApiServer::start();
    let client = server.client().await;
    let dir = scratch_dir("workers-e2e");
    std::fs::create_dir_all(&dir).expect("scratch");
    std::fs::write(dir.join("settings.yaml"), FAST_SETTINGS).expect("settings");
    let own = embedded_relay(&dir.join("own")).await;
    let own_url = own.url().to_string();
    create_namespace(&client, NS).await;
    install_crds(&client).await;

    // One remote relay, reached through a proxy per SyncRelay (index 0: the discovered one).
    let remote = RemoteRelay::start().await;
    let mut proxies = Vec::new();
    for _ in 0..=EXPLICIT {
        proxies.push(FaultProxy::start(remote.addr).await.expect("proxy"));
    }
    let by_url: BTreeMap<String, usize> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.url(), i))
        .collect();

    let relays: Api<SyncRelay> = Api::namespaced(client.clone(), NS);
    let allowlists: Api<RelayAllowlist> = Api::namespaced(client.clone(), NS);
    let allowlist: RelayAllowlist = serde_yaml::from_str(LOOPBACK_ALLOWLIST).expect("allowlist");
    create_retrying(&allowlists, &allowlist).await;
    for (i, p) in proxies.iter().enumerate().skip(1) {
        let r: SyncRelay = from_json(json!({
            "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
            "metadata": {"name": format!("explicit-{i}")},
            "spec": {"url": p.url(), "bootstrap": true},
        }));
        create_retrying(&relays, &r).await;
    }

    // A repo on the discovered relay, announced on our relay; its issues only on the remote.
    let keys = Keys::generate();
    let discovered_url = proxies[0].url();
    let repo = announcement(&keys, "grasp", &[&own_url, &discovered_url]);
    let issues: Vec<_> = (0..5)
        .map(|i| {
            tagged(
                &keys,
                1621,
                "a",
                &coordinate(&keys, "grasp"),
                &format!("issue {i}"),
            )
        })
        .collect();
    publish(&remote.url(), std::slice::from_ref(&repo)).await;
    publish(&remote.url(), &issues).await;
    publish(&own_url, &[repo]).await;

    let settings = dir.join("settings.yaml").display().to_string();
    let mut controller = spawn_controller(
        &server,
        &dir,
        "controller",
        "controller-0",
        &own_url,
        NS,
        Some(&settings),
    );
    let mut workers: BTreeMap<&'static str, Role> = BTreeMap::new();
    workers.insert(
        "worker-a",
        start_worker(&server, &dir, "worker-a", &own_url),
    );
    workers.insert(
        "worker-b",
        start_worker(&server, &dir, "worker-b", &own_url),
    );
    controller.wait_ready(Duration::from_secs(30)).await;
    for w in workers.values_mut() {
        w.wait_ready(Duration::from_secs(30)).await;
    }

    // 2. Discovered, assigned, connected, synced, and the issues are on our relay.
    let name = discovered_name(&RelayUrl::parse(&discovered_url).expect("url"));
    let issue_count = issues.len() as u64;
    let synced = wait_for("discovered relay Synced", Duration::from_secs(90), || {
        let relays = relays.clone();
        let name = name.clone();
        async move {
            let r = relays.get_opt(&name).await.ok()??;
            let s = r.status.as_ref()?.sync.clone();
            (worker_of(&r).is_some()
                && assigned_to(&r) == worker_of(&r)
                && holds(&r, "Connected")
                && holds(&r, "Synced")
                && s.desired_repos >= 1
                && s.confirmed_repos == s.desired_repos
                && s.confirmed_root_events == s.desired_root_events
                && s.desired_root_events >= issue_count)
                .then_some(r)
        }
    })
    .await;
    let ids: Vec<_> = issues.iter().map(|e| e.id).collect();
    wait_for_ids(
        &own_url,
        &ids,
        Duration::from_secs(30),
        "issues on our relay",
    )
    .await;
    let all_connected = |relays: Api<SyncRelay>| async move {
        let list = relays.list(&ListParams::default()).await.ok()?;
        (list.items.len() == EXPLICIT + 1
            && list.items.iter().all(|r| {
                holds(r, "Connected") && worker_of(r).is_some() && assigned_to(r) == worker_of(r)
            }))
        .then_some(list.items)
    };
    let before = wait_for("every relay Connected", Duration::from_secs(60), || {
        all_connected(relays.clone())
    })
    .await;
    for p in &proxies {
        assert_eq!(p.active(), 1, "{} has one connection", p.url());
    }

    // 3. The printer columns, with values.
    let out = server
        .kubectl()
        .args(["get", "syncrelays", "-n", NS])
        .output()
        .expect("kubectl");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for column in [
        "URL",
        "WORKER",
        "CONNECTED",
        "SYNCED",
        "REPOS",
        "DESIRED",
        "NIP77",
    ] {
        assert!(
            table.lines().next().is_some_and(|h| h.contains(column)),
            "{table}"
        );
    }
    let row = table
        .lines()
        .find(|l| l.starts_with(name.as_str()))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
    let holder = worker_of(&synced).expect("labelled");
    for value in [
        discovered_url.as_str(),
        holder.as_str(),
        "True",
        "Supported",
    ] {
        assert!(row.contains(value), "{value} missing in {row}");
    }

    // 4. SIGKILL the holder: its relays move to the survivor and connect again in time.
    let survivor = workers
        .keys()
        .find(|w| **w != holder)
        .map(|w| w.to_string())
        .expect("two workers");
    let moved: Vec<(String, usize, usize)> = before
        .iter()
        .filter(|r| worker_of(r).as_deref() == Some(holder.as_str()))
        .map(|r| {
            let i = by_url[&r.spec.url];
            (r.name_any(), i, proxies[i].accepted())
        })
        .collect();
    assert!(!moved.is_empty());
    let killed = Instant::now();
    let mut dead = workers.remove(holder.as_str()).expect("holder");
    dead.proc.signal("KILL");
    let limit = LEASE_DURATION + Duration::from_secs(5);
    wait_for("relays of the killed worker reconnected", limit, || {
        let (relays, moved, survivor) = (relays.clone(), moved.clone(), survivor.clone());
        let proxies = &proxies;
        async move {
            for (name, i, accepted) in &moved {
                let r = relays.get(name).await.ok()?;
                let fresh = proxies[*i].accepted() > *accepted && proxies[*i].active() == 1;
                if worker_of(&r).as_deref() != Some(&survivor)
                    || assigned_to(&r).as_deref() != Some(&survivor)
                    || !holds(&r, "Connected")
                    || !fresh
                {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    println!(
        "failover: {} relays reconnected {:?} after SIGKILL (limit {limit:?})",
        moved.len(),
        killed.elapsed()
    );
    dead.proc.wait_stopped();

    // 5. A third worker: relays drain to it, never two connections through one proxy.
    for p in &proxies {
        p.reset_max_active();
    }
    let mut third = start_worker(&server, &dir, "worker-c", &own_url);
    third.wait_ready(Duration::from_secs(30)).await;
    // Under the controller's 30 s drain timeout: the moves went by acknowledgement.
    let settled = wait_for("rebalanced onto worker-c", Duration::from_secs(25), || {
        let relays = relays.clone();
        let proxies = &proxies;
        let by_url = &by_url;
        async move {
            let items = all_connected(relays).await?;
            let on_c = items
                .iter()
                .filter(|r| worker_of(r).as_deref() == Some("worker-c"))
                .count();
            let quiet = items.iter().all(|r| {
                !r.annotations().contains_key(DRAIN_ANNOTATION)
                    && proxies[by_url[&r.spec.url]].active() == 1
            });
            (on_c >= 1 && quiet).then_some(items)
        }
    })
    .await;
    workers.insert("worker-c", third);
    for p in &proxies {
        assert!(
            p.max_active() <= 1,
            "{} was held by two workers at once ({} connections)",
            p.url(),
            p.max_active()
        );
    }
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for r in &settled {
        *load.entry(worker_of(r).unwrap_or_default()).or_default() += 1;
    }
    println!("after scale-up: {load:?}");
    assert!(
        !load.contains_key(holder.as_str()),
        "nothing on the dead worker"
    );

    // 6. Delete a relay held by the new worker: its connection closes, the finalizer goes.
    let victim = settled
        .iter()
        .find(|r| worker_of(r).as_deref() == Some("worker-c"))
        .expect("one on worker-c");
    let victim_proxy = &proxies[by_url[&victim.spec.url]];
    relays
        .delete(&victim.name_any(), &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "deleted relay gone and closed",
        Duration::from_secs(40),
        || {
            let relays = relays.clone();
            let name = victim.name_any();
            async move {
                let gone = relays.get_opt(&name).await.ok()?.is_none();
                (gone && victim_proxy.active() == 0).then_some(())
            }
        },
    )
    .await;

    // 7. The allowlist now denies the discovered relay's host: the controller removes the
    //    discovered relay (its worker drains it first); explicit relays on that host stay.
    allowlists
        .patch(
            "loopback",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deny": [{"host": "127.0.0.1"}]}})),
        )
        .await
        .expect("deny");
    wait_for(
        "denied discovered relay removed",
        Duration::from_secs(40),
        || {
            let relays = relays.clone();
            let name = name.clone();
            let discovered = &proxies[0];
            async move {
                let gone = relays.get_opt(&name).await.ok()?.is_none();
                (gone && discovered.active() == 0).then_some(())
            }
        },
    )
    .await;
    let left = relays.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        left.items.len(),
        EXPLICIT - 1,
        "explicit relays are never reaped"
    );

    // Graceful stop: workers report WorkerStopped and release their Leases.
    // All at once: a worker that stops later would pick up the relays of one that stopped.
    for w in workers.values_mut() {
        w.proc.signal("TERM");
    }
    for w in workers.values_mut() {
        w.proc.wait_stopped();
    }
    let after = relays.list(&ListParams::default()).await.expect("list");
    for r in &after.items {
        let reason = r
            .status
            .as_ref()
            .and_then(|s| s.condition("Connected"))
            .map(|c| c.reason.clone());
        assert_eq!(
            reason.as_deref(),
            Some("WorkerStopped"),
            "{} after the workers stopped",
            r.name_any()
        );
    }
    // …and released their Leases (the controller would otherwise wait for them to expire).
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    for w in workers.keys() {
        let lease = leases.get(w).await.expect("worker lease");
        let holder = lease.spec.and_then(|s| s.holder_identity);
        assert_eq!(holder, None, "{w} released its Lease");
    }
    controller.proc.stop_gracefully();
    own.shutdown();
}
