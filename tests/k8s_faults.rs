//! The fault matrix (issue 6) against the whole system: two `grasp-sync controller` processes
//! (leader and standby) and two `grasp-sync worker` processes, a real kube-apiserver + etcd,
//! the embedded relay as ours and a nostr-relay-builder relay as the remote, every relay URL
//! behind its own fault proxy (our relay too). Each row injects one fault while a repo's
//! events are being synced and then checks, by id, that our relay holds every event the
//! remote holds for that repo: nothing lost.
//!
//! Rows (in order, on one bed):
//! 1. the websocket is cut right after the announcement (during the NIP-77 exchange) and
//!    again mid-download;
//! 2. the remote stalls (connection open, no frames) for 8 s while live events arrive;
//! 3. our relay is down for 30 s while live events keep arriving at the remote;
//! 4. the worker holding the relay is SIGKILLed mid-sync;
//! 5. the leader controller is SIGKILLed; the standby takes over and discovers a new relay;
//! 6. the API server restarts (watches drop and re-list) while a new repo is synced.
//!
//! What each row injected and what the system did is in docs/reliability.md. Every wait is
//! bounded; everything is on 127.0.0.1.

mod support;

use grasp_sync::api::types::{discovered_name, RelayAllowlist, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use kube::api::Api;
use kube::ResourceExt;
use nostr::{Event, EventId, Keys};
use std::path::Path;
use std::time::{Duration, Instant};
use support::apiserver::TestApiServer;
use support::bed::{announcement, free_addr, scratch_dir};
use support::fault_proxy::FaultProxy;
use support::k8s_bed::{
    condition_status, create_namespace, create_retrying, install_crds, spawn_controller,
    spawn_worker, wait_for, Role,
};
use support::sync_bed::{
    coordinate, held, publish, tagged, wait_for_ids, RemoteRelay, FAST_SETTINGS, LOOPBACK_ALLOWLIST,
};

const NS: &str = "grasp-faults";
const EVENTS: usize = 1200;

struct Bed {
    server: TestApiServer,
    dir: std::path::PathBuf,
    /// Our relay, reached directly (the test's own reads and writes).
    own_direct: String,
    /// Our relay as grasp-sync knows it: through a proxy.
    own_proxy: FaultProxy,
    remote: RemoteRelay,
    relays: Api<SyncRelay>,
    keys: Keys,
}

impl Bed {
    /// A repo `d` listing our relay and `relay`, with `n` issues on the remote.
    async fn repo_on_remote(&self, d: &str, relay: &str, n: usize) -> Vec<EventId> {
        let repo = announcement(&self.keys, d, &[&self.own_proxy.url(), relay]);
        let issues: Vec<Event> = (0..n)
            .map(|i| {
                tagged(
                    &self.keys,
                    1621,
                    "a",
                    &coordinate(&self.keys, d),
                    &format!("{d} issue {i}"),
                )
            })
            .collect();
        publish(&self.remote.url(), std::slice::from_ref(&repo)).await;
        publish(&self.remote.url(), &issues).await;
        issues.iter().map(|e| e.id).collect()
    }

    /// Announces `d` on our relay (the controller discovers its relays from there).
    async fn announce(&self, d: &str, relay: &str) {
        let repo = announcement(&self.keys, d, &[&self.own_proxy.url(), relay]);
        publish(&self.own_direct, &[repo]).await;
    }

    /// Live issues for `d`, published on the remote now.
    async fn live(&self, d: &str, n: usize, tag: &str) -> Vec<EventId> {
        let issues: Vec<Event> = (0..n)
            .map(|i| {
                tagged(
                    &self.keys,
                    1621,
                    "a",
                    &coordinate(&self.keys, d),
                    &format!("{d} {tag} {i}"),
                )
            })
            .collect();
        publish(&self.remote.url(), &issues).await;
        issues.iter().map(|e| e.id).collect()
    }

    /// Waits until our relay holds some but not all of `ids` (the sync is under way).
    async fn wait_partial(&self, ids: &[EventId], what: &str) -> usize {
        let start = Instant::now();
        loop {
            let n = held(&self.own_direct, ids).await.len();
            if n > 0 {
                return n;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: nothing arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The SyncRelay for a discovered URL, once it is assigned.
    async fn holder(&self, url: &str) -> String {
        let name = discovered_name(&RelayUrl::parse(url).expect("url"));
        wait_for("discovered relay assigned", Duration::from_secs(30), || {
            let relays = self.relays.clone();
            let name = name.clone();
            async move {
                let r = relays.get_opt(&name).await.ok()??;
                r.labels().get("sync.grasp.dev/worker").cloned()
            }
        })
        .await
    }

    /// Waits until the discovered relay for `url` is Synced.
    async fn synced(&self, url: &str, limit: Duration) {
        let name = discovered_name(&RelayUrl::parse(url).expect("url"));
        wait_for("relay Synced", limit, || {
            let relays = self.relays.clone();
            let name = name.clone();
            async move {
                let r = relays.get_opt(&name).await.ok()??;
                (condition_status(&r, "Synced").as_deref() == Some("True")).then_some(())
            }
        })
        .await
    }

    fn settings(&self) -> String {
        self.dir.join("settings.yaml").display().to_string()
    }

    fn controller(&self, name: &'static str) -> Role {
        let settings = self.settings();
        let own = self.own_proxy.url();
        spawn_controller(
            &self.server,
            &self.dir,
            name,
            name,
            &own,
            NS,
            Some(&settings),
        )
    }

    fn worker(&self, name: &'static str) -> Role {
        let settings = self.settings();
        let own = self.own_proxy.url();
        spawn_worker(&self.server, &self.dir, name, &own, NS, Some(&settings))
    }
}

async fn own_relay(dir: &Path) -> (EmbeddedRelay, FaultProxy) {
    let addr = free_addr();
    let proxy = FaultProxy::start(addr).await.expect("own proxy");
    let mut config = EmbeddedRelayConfig::new(addr, dir.to_path_buf());
    config.public_urls = vec![RelayUrl::parse(&proxy.url()).expect("url")];
    let relay = EmbeddedRelay::start(config).await.expect("own relay");
    (relay, proxy)
}

fn leader(server: &TestApiServer) -> Option<String> {
    let out = server
        .kubectl()
        .args([
            "get",
            "lease",
            "grasp-sync-controller",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .output()
        .ok()?;
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!holder.is_empty()).then_some(holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_under_the_fault_matrix() {
    let server = TestApiServer::start();
    let kube = server.client().await;
    let dir = scratch_dir("faults");
    std::fs::create_dir_all(&dir).expect("scratch");
    std::fs::write(dir.join("settings.yaml"), FAST_SETTINGS).expect("settings");
    let (own, own_proxy) = own_relay(&dir.join("own")).await;
    create_namespace(&kube, NS).await;
    install_crds(&kube).await;
    let allowlists: Api<RelayAllowlist> = Api::namespaced(kube.clone(), NS);
    let allowlist: RelayAllowlist = serde_yaml::from_str(LOOPBACK_ALLOWLIST).expect("allowlist");
    create_retrying(&allowlists, &allowlist).await;
    let remote = RemoteRelay::start().await;
    let mut proxies = Vec::new();
    for _ in 0..6 {
        proxies.push(FaultProxy::start(remote.addr).await.expect("proxy"));
    }
    let bed = Bed {
        own_direct: own.url().to_string(),
        own_proxy,
        remote,
        relays: Api::namespaced(kube.clone(), NS),
        keys: Keys::generate(),
        server,
        dir,
    };
    let mut controllers = vec![
        bed.controller("controller-0"),
        bed.controller("controller-1"),
    ];
    let mut workers = vec![bed.worker("worker-0"), bed.worker("worker-1")];
    for r in controllers.iter_mut().chain(workers.iter_mut()) {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    let mut report = Vec::new();

    // 1. Cut during NIP-77, and again mid-download.
    let p = &proxies[0];
    let ids = bed.repo_on_remote("cut", &p.url(), EVENTS).await;
    bed.announce("cut", &p.url()).await;
    bed.holder(&p.url()).await;
    let first = p.accepted();
    wait_for("first connection", Duration::from_secs(30), || async {
        (p.active() >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.cut();
    let partial = bed.wait_partial(&ids, "cut").await;
    p.cut();
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(90),
        "row 1: cuts",
    )
    .await;
    bed.synced(&p.url(), Duration::from_secs(30)).await;
    report.push(format!(
        "cut: 2 cuts ({partial} of {EVENTS} stored at the second), {} reconnects, all {EVENTS} stored",
        p.accepted().saturating_sub(first + 1)
    ));

    // 2. A stall: connection open, no frames, while live events arrive.
    let p = &proxies[1];
    let mut ids = bed.repo_on_remote("stall", &p.url(), 50).await;
    bed.announce("stall", &p.url()).await;
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(60),
        "row 2: before",
    )
    .await;
    bed.synced(&p.url(), Duration::from_secs(30)).await;
    p.stall(true);
    ids.extend(bed.live("stall", 100, "during").await);
    tokio::time::sleep(Duration::from_secs(8)).await;
    p.stall(false);
    ids.extend(bed.live("stall", 20, "after").await);
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(90),
        "row 2: stall",
    )
    .await;
    report.push(format!("stall 8 s: all {} stored", ids.len()));

    // 3. Our relay down for 30 s (refused and cut) while the remote keeps receiving.
    let own_down = Instant::now();
    bed.own_proxy.refuse(true);
    bed.own_proxy.cut();
    let mut ids = bed.live("stall", 200, "own-down").await;
    ids.extend(bed.live("cut", 200, "own-down").await);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(own_down.elapsed())).await;
    bed.own_proxy.refuse(false);
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(120),
        "row 3: own down",
    )
    .await;
    report.push(format!(
        "our relay down 30 s: all {} live events stored after it came back ({:?} after the outage began)",
        ids.len(),
        own_down.elapsed()
    ));

    // 4. SIGKILL the worker holding a relay mid-sync.
    let p = &proxies[2];
    let ids = bed.repo_on_remote("kill", &p.url(), EVENTS).await;
    bed.announce("kill", &p.url()).await;
    let holder = bed.holder(&p.url()).await;
    let partial = bed.wait_partial(&ids, "kill").await;
    let idx = workers
        .iter()
        .position(|w| w.proc.name() == holder.as_str())
        .expect("holder is ours");
    let mut dead = workers.remove(idx);
    dead.proc.signal("KILL");
    dead.proc.wait_stopped();
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(90),
        "row 4: worker killed",
    )
    .await;
    report.push(format!(
        "worker {holder} SIGKILLed with {partial} of {EVENTS} stored: all {EVENTS} stored by the other"
    ));

    // 5. SIGKILL the leading controller; the standby leads and discovers a new relay.
    let lead = wait_for("a leader", Duration::from_secs(30), || async {
        leader(&bed.server)
    })
    .await;
    let idx = controllers
        .iter()
        .position(|c| c.proc.name() == lead.as_str())
        .expect("leader is ours");
    let mut killed = controllers.remove(idx);
    killed.proc.signal("KILL");
    killed.proc.wait_stopped();
    let p = &proxies[3];
    let ids = bed.repo_on_remote("failover", &p.url(), 100).await;
    bed.announce("failover", &p.url()).await;
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(90),
        "row 5: controller killed",
    )
    .await;
    let new_lead = leader(&bed.server).unwrap_or_default();
    assert_ne!(new_lead, lead, "the standby leads");
    report.push(format!(
        "leader {lead} SIGKILLed: {new_lead} took over, discovered the new relay, all 100 stored"
    ));

    // 6. The API server restarts while a new repo is being synced. The restart can outlive
    //    the worker's Lease: the worker drops and re-takes its relays mid-download (this row
    //    lost the interrupted download's last chunk before the negentropy fixes described in
    //    docs/reliability.md).
    let p = &proxies[4];
    let ids = bed.repo_on_remote("restart", &p.url(), EVENTS).await;
    let mut server = bed.server;
    let restarted = tokio::task::spawn_blocking(move || {
        server.restart_apiserver();
        server
    });
    bed_announce_direct(
        &bed.own_direct,
        &bed.keys,
        &bed.own_proxy.url(),
        "restart",
        &p.url(),
    )
    .await;
    let server = restarted.await.expect("restart");
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(90),
        "row 6: apiserver restart",
    )
    .await;
    let name = discovered_name(&RelayUrl::parse(&p.url()).expect("url"));
    wait_for(
        "relay created across the restart",
        Duration::from_secs(30),
        || {
            let relays = bed.relays.clone();
            let name = name.clone();
            async move { relays.get_opt(&name).await.ok()? }
        },
    )
    .await;
    report.push(format!(
        "API server restarted mid-sync: all {EVENTS} stored"
    ));

    println!("{}", report.join("\n"));
    for r in controllers.iter_mut().chain(workers.iter_mut()) {
        r.proc.signal("TERM");
    }
    for r in controllers.iter_mut().chain(workers.iter_mut()) {
        r.proc.wait_stopped();
    }
    drop(server);
    own.shutdown();
}

async fn bed_announce_direct(own_direct: &str, keys: &Keys, own_proxy: &str, d: &str, relay: &str) {
    let repo = announcement(keys, d, &[own_proxy, relay]);
    publish(own_direct, &[repo]).await;
}
