//! The fault matrix (issue 6) against the whole system: `grasp-sync controller` processes
//! (a leader, and a standby where the row needs one) and `grasp-sync worker` processes, a
//! real kube-apiserver + etcd, the embedded relay as ours and a nostr-relay-builder relay as
//! the remote, every relay URL behind its own fault proxy (our relay too). Each row injects
//! one fault while a repo's events are being synced and then checks, by id, that our relay
//! holds every event the remote holds for that repo: nothing lost.
//!
//! Rows, one test each, each on its own bed (its own API server, relays, proxies and role
//! processes, from [`Bed::start`]), so the rows run in parallel:
//! 1. the websocket is cut right after the announcement (during the NIP-77 exchange) and
//!    again mid-download (`a_websocket_cut_during_nip77_and_mid_download_loses_nothing`);
//! 2. the remote stalls (connection open, no frames) for 8 s while live events arrive
//!    (`a_remote_stalled_8s_loses_nothing`);
//! 3. our relay is down for 30 s while live events keep arriving at the remote
//!    (`our_relay_down_30s_loses_nothing`);
//! 4. the worker holding the relay is SIGKILLed mid-sync; a second worker takes over
//!    (`a_worker_sigkilled_mid_sync_loses_nothing`);
//! 5. the leader controller is SIGKILLed; the standby takes over and discovers a new relay
//!    (`the_standby_controller_takes_over_from_a_sigkilled_leader`);
//! 6. the API server restarts (watches drop and re-list) while a new repo is synced
//!    (`an_api_server_restart_mid_sync_loses_nothing`).
//!
//! Each row prints one report line. What each row injected and what the system did is in
//! docs/reliability.md. Every wait is bounded; everything is on 127.0.0.1.

mod support;

use grasp_sync::api::types::{discovered_name, RelayAllowlist, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use kube::api::Api;
use kube::ResourceExt;
use nostr::{Event, EventId, Keys};
use std::path::{Path, PathBuf};
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
const CONTROLLERS: [&str; 2] = ["controller-0", "controller-1"];
const WORKERS: [&str; 2] = ["worker-0", "worker-1"];

/// One row's bed: an API server, our relay behind a proxy, the remote, the role processes.
///
/// No `Drop`: [`Bed::stop`] is the graceful teardown at the end of a row, and a row that
/// panics drops the fields instead: each [`Role`]'s guard SIGKILLs its process once the pipe
/// from this test process closes (`support::guarded`), the [`TestApiServer`] kills etcd and
/// kube-apiserver, and our relay's and the proxies' tasks end with the test's runtime. So a
/// failed row leaves nothing running while the other rows go on in this process. (Without a
/// `Drop`, row 6 can also move the API server out for its restart and put it back.)
struct Bed {
    server: TestApiServer,
    dir: PathBuf,
    own: EmbeddedRelay,
    /// Our relay, reached directly (the test's own reads and writes).
    own_direct: String,
    /// Our relay as grasp-sync knows it: through a proxy.
    own_proxy: FaultProxy,
    remote: RemoteRelay,
    relays: Api<SyncRelay>,
    keys: Keys,
    controllers: Vec<Role>,
    workers: Vec<Role>,
}

impl Bed {
    /// Starts a bed in scratch dir `name` (distinct per row: the rows run in parallel in one
    /// process) with `controllers` controller processes (the first to take the Lease leads,
    /// the others stand by) and `workers` worker processes, and waits until all are ready.
    async fn start(name: &str, controllers: usize, workers: usize) -> Bed {
        let server = TestApiServer::start();
        let kube = server.client().await;
        let dir = scratch_dir(name);
        std::fs::create_dir_all(&dir).expect("scratch");
        std::fs::write(dir.join("settings.yaml"), FAST_SETTINGS).expect("settings");
        let (own, own_proxy) = own_relay(&dir.join("own")).await;
        create_namespace(&kube, NS).await;
        install_crds(&kube).await;
        let allowlists: Api<RelayAllowlist> = Api::namespaced(kube.clone(), NS);
        let allowlist: RelayAllowlist =
            serde_yaml::from_str(LOOPBACK_ALLOWLIST).expect("allowlist");
        create_retrying(&allowlists, &allowlist).await;
        let remote = RemoteRelay::start().await;
        let mut bed = Bed {
            own_direct: own.url().to_string(),
            own,
            own_proxy,
            remote,
            relays: Api::namespaced(kube, NS),
            keys: Keys::generate(),
            server,
            dir,
            controllers: Vec::new(),
            workers: Vec::new(),
        };
        bed.controllers = CONTROLLERS[..controllers]
            .iter()
            .map(|&name| bed.controller(name))
            .collect();
        bed.workers = WORKERS[..workers]
            .iter()
            .map(|&name| bed.worker(name))
            .collect();
        for r in bed.controllers.iter_mut().chain(bed.workers.iter_mut()) {
            r.wait_ready(Duration::from_secs(30)).await;
        }
        bed
    }

    /// A new fault proxy in front of the remote: a relay URL of its own.
    async fn proxy(&self) -> FaultProxy {
        FaultProxy::start(self.remote.addr).await.expect("proxy")
    }

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

    /// Stops the roles still running (SIGTERM, bounded wait), the API server and our relay,
    /// and removes the scratch dir (the roles' logs stay there when a row fails).
    fn stop(mut self) {
        for r in self.controllers.iter_mut().chain(self.workers.iter_mut()) {
            r.proc.signal("TERM");
        }
        for r in self.controllers.iter_mut().chain(self.workers.iter_mut()) {
            r.proc.wait_stopped();
        }
        drop(self.server);
        self.own.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
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

/// Row 1: cut during NIP-77, and again mid-download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_cut_during_nip77_and_mid_download_loses_nothing() {
    let bed = Bed::start("faults-cut", 1, 1).await;
    let p = bed.proxy().await;
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
    println!(
        "cut: 2 cuts ({partial} of {EVENTS} stored at the second), {} reconnects, all {EVENTS} stored",
        p.accepted().saturating_sub(first + 1)
    );
    bed.stop();
}

/// Row 2: a stall (connection open, no frames) while live events arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_stalled_8s_loses_nothing() {
    let bed = Bed::start("faults-stall", 1, 1).await;
    let p = bed.proxy().await;
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
    println!("stall 8 s: all {} stored", ids.len());
    bed.stop();
}

/// Row 3: our relay down for 30 s (refused and cut) while the remote keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_relay_down_30s_loses_nothing() {
    let bed = Bed::start("faults-own-down", 1, 1).await;
    // Two repos on two relays (two sessions), both synced and live before the outage, so
    // that the outage hits sessions forwarding live events, not a first download.
    let (pa, pb) = (bed.proxy().await, bed.proxy().await);
    let mut before = bed.repo_on_remote("own-a", &pa.url(), 50).await;
    before.extend(bed.repo_on_remote("own-b", &pb.url(), 50).await);
    bed.announce("own-a", &pa.url()).await;
    bed.announce("own-b", &pb.url()).await;
    wait_for_ids(
        &bed.own_direct,
        &before,
        Duration::from_secs(60),
        "row 3: before",
    )
    .await;
    bed.synced(&pa.url(), Duration::from_secs(30)).await;
    bed.synced(&pb.url(), Duration::from_secs(30)).await;
    let own_down = Instant::now();
    bed.own_proxy.refuse(true);
    bed.own_proxy.cut();
    let mut ids = bed.live("own-a", 200, "own-down").await;
    ids.extend(bed.live("own-b", 200, "own-down").await);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(own_down.elapsed())).await;
    bed.own_proxy.refuse(false);
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(120),
        "row 3: own down",
    )
    .await;
    println!(
        "our relay down 30 s: all {} live events stored after it came back ({:?} after the outage began)",
        ids.len(),
        own_down.elapsed()
    );
    bed.stop();
}

/// Row 4: SIGKILL the worker holding a relay mid-sync; the second worker takes it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sigkilled_mid_sync_loses_nothing() {
    let mut bed = Bed::start("faults-kill-worker", 1, 2).await;
    let p = bed.proxy().await;
    let ids = bed.repo_on_remote("kill", &p.url(), EVENTS).await;
    bed.announce("kill", &p.url()).await;
    let holder = bed.holder(&p.url()).await;
    let partial = bed.wait_partial(&ids, "kill").await;
    let idx = bed
        .workers
        .iter()
        .position(|w| w.proc.name() == holder.as_str())
        .expect("holder is ours");
    let mut dead = bed.workers.remove(idx);
    dead.proc.signal("KILL");
    dead.proc.wait_stopped();
    wait_for_ids(
        &bed.own_direct,
        &ids,
        Duration::from_secs(90),
        "row 4: worker killed",
    )
    .await;
    println!(
        "worker {holder} SIGKILLed with {partial} of {EVENTS} stored: all {EVENTS} stored by the other"
    );
    bed.stop();
}

/// Row 5: SIGKILL the leading controller; the standby leads and discovers a new relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_controller_takes_over_from_a_sigkilled_leader() {
    let mut bed = Bed::start("faults-kill-leader", 2, 1).await;
    let lead = wait_for("a leader", Duration::from_secs(30), || async {
        leader(&bed.server)
    })
    .await;
    let idx = bed
        .controllers
        .iter()
        .position(|c| c.proc.name() == lead.as_str())
        .expect("leader is ours");
    let mut killed = bed.controllers.remove(idx);
    killed.proc.signal("KILL");
    killed.proc.wait_stopped();
    // The repo and its relay appear only after the kill: only the standby can discover it.
    let p = bed.proxy().await;
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
    println!(
        "leader {lead} SIGKILLed: {new_lead} took over, discovered the new relay, all 100 stored"
    );
    bed.stop();
}

/// Row 6: the API server restarts while a new repo is being synced. The restart can outlive
/// the worker's Lease: the worker drops and re-takes its relays mid-download (this row lost
/// the interrupted download's last chunk before the negentropy fixes described in
/// docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_mid_sync_loses_nothing() {
    let mut bed = Bed::start("faults-restart", 1, 1).await;
    let p = bed.proxy().await;
    let ids = bed.repo_on_remote("restart", &p.url(), EVENTS).await;
    // The restart blocks (graceful stop, then up to 60 s for /readyz), so it runs on a
    // blocking thread while the repo is announced; the server goes back into the bed after.
    // On a fresh bed the announcement reaches the controller after kube-apiserver has
    // stopped listening, so the discovered relay's SyncRelay can only be created once the
    // server is back (the last check below).
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
    bed.server = restarted.await.expect("restart");
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
    println!("API server restarted mid-sync: all {EVENTS} stored");
    bed.stop();
}

/// [`Bed::announce`] without borrowing the whole bed (row 6 has moved its API server out).
async fn bed_announce_direct(own_direct: &str, keys: &Keys, own_proxy: &str, d: &str, relay: &str) {
    let repo = announcement(keys, d, &[own_proxy, relay]);
    publish(own_direct, &[repo]).await;
}
