//! The scale run (issue 6), end to end and ignored by default: the real `grasp-sync
//! controller` and `grasp-sync worker` binaries as processes against the real kube-apiserver,
//! with many SyncRelays served by a few local relay processes and many repos announced on our
//! relay. Measures and prints (the figures are recorded in docs/benchmarks.md):
//!
//! - assignment balance: relays per worker from the `sync.grasp.dev/worker` labels;
//! - relays moved when a worker is added and when one is removed (SIGTERM), against
//!   [`grasp_sync::k8s::assign`] run on the same input;
//! - controller and worker RSS (`VmRSS`, `VmHWM`) and CPU (`utime + stime`) from `/proc`;
//! - worker status patches (`grasp_sync_status_patches_total{result="applied"}`), per
//!   SyncRelay per 10 s, while syncing up, idle, and around the scale changes;
//! - the time from a fresh announcement to `Synced` with the new repo counted.
//!
//! ```sh
//! GRASP_SYNC_K8S_BIN=~/.cache/grasp-sync/k8s/v1.37.2/bin \
//!   cargo test --release --test k8s_scale -- --ignored --nocapture
//! ```
//!
//! Sizes (the issue's values are the defaults): `GRASP_SYNC_SCALE_RELAYS` (2000),
//! `GRASP_SYNC_SCALE_WORKERS` (8), `GRASP_SYNC_SCALE_REPOS` (20000),
//! `GRASP_SYNC_SCALE_REMOTES` (relay processes serving the relay URLs, 4),
//! `GRASP_SYNC_SCALE_PER_REPO` (remote relays each repo lists besides ours, 3),
//! `GRASP_SYNC_SCALE_IDLE_SECS` (the idle window, 60). Relay `i` is
//! `ws://127.0.0.1:PORT/rNNNN` on remote `i % REMOTES` (nostr-relay-builder serves any
//! path, so each is a distinct relay URL with its own connection). The SyncRelays are
//! explicit objects (private addresses allowed), so no allowlist is needed and nothing is
//! discovered. The roles run with the default settings (no `--config`). Every wait is bounded.

mod support;

use futures_util::stream::{self, StreamExt};
use grasp_sync::api::types::SyncRelay;
use grasp_sync::k8s::assign::{assign, capacity, floor_load, DEFAULT_EPSILON};
use grasp_sync::k8s::consts::{DRAIN_ANNOTATION, WORKER_LABEL, WORKER_MANAGER};
use grasp_sync::k8s::worker::report::WorkerStatus;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use nostr::{Event, Keys};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::apiserver::TestApiServer;
use support::bed::{announcement, embedded_relay, scratch_dir};
use support::k8s_bed::{
    condition_status, create_namespace, create_retrying, from_json, install_crds, scrape,
    spawn_controller, spawn_worker, Role,
};
use support::sync_bed::{client, RemoteRelay};

const NS: &str = "grasp-scale";
const APPLIED: &str = "grasp_sync_status_patches_total{result=\"applied\"}";
const OVERFLOWS: &str = "grasp_sync_status_queue_overflows_total";
const RECONCILE_SUM: &str = "grasp_sync_reconcile_duration_seconds_sum";
const RECONCILE_COUNT: &str = "grasp_sync_reconcile_duration_seconds_count";
/// How often the whole SyncRelay list is read while waiting (2,000 objects per read).
const POLL: Duration = Duration::from_secs(2);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

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

fn synced(r: &SyncRelay) -> bool {
    let Some(s) = r.status.as_ref().map(|s| &s.sync) else {
        return false;
    };
    holds(r, "Connected")
        && holds(r, "Synced")
        && s.desired_repos >= 1
        && s.confirmed_repos == s.desired_repos
}

fn key(r: &SyncRelay) -> String {
    format!("{NS}/{}", r.name_any())
}

/// Relay key → worker label.
fn labels(items: &[SyncRelay]) -> BTreeMap<String, String> {
    items
        .iter()
        .filter_map(|r| Some((key(r), worker_of(r)?)))
        .collect()
}

fn loads(labels: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for w in labels.values() {
        *out.entry(w.clone()).or_insert(0) += 1;
    }
    out
}

fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    after
        .iter()
        .filter(|(k, w)| before.get(*k) != Some(*w))
        .count()
}

async fn list(relays: &Api<SyncRelay>) -> Option<Vec<SyncRelay>> {
    relays
        .list(&ListParams::default())
        .await
        .ok()
        .map(|l| l.items)
}

/// Polls the whole list every [`POLL`] until `check` accepts it, for at most `limit`;
/// prints `progress` of the latest list every 15 s.
async fn wait_list<T>(
    relays: &Api<SyncRelay>,
    what: &str,
    limit: Duration,
    mut check: impl FnMut(&[SyncRelay]) -> Option<T>,
    progress: impl Fn(&[SyncRelay]) -> String,
) -> T {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        if let Some(items) = list(relays).await {
            if let Some(v) = check(&items) {
                return v;
            }
            if last_print.elapsed() >= Duration::from_secs(15) {
                println!(
                    "  … {what}: {:.0} s: {}",
                    start.elapsed().as_secs_f64(),
                    progress(&items)
                );
                last_print = Instant::now();
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {}",
                progress(&items)
            );
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// How long the labels must stay unchanged (with no drain in progress) to count as settled.
const SETTLE: Duration = Duration::from_secs(15);

/// How long `now` has been the labelling (`last` holds the previous one and since when).
fn stable_for(
    last: &mut Option<(BTreeMap<String, String>, Instant)>,
    now: &BTreeMap<String, String>,
) -> Duration {
    match last {
        Some((prev, since)) if prev == now => since.elapsed(),
        _ => {
            *last = Some((now.clone(), Instant::now()));
            Duration::ZERO
        }
    }
}

fn counts(items: &[SyncRelay]) -> String {
    let labelled = items.iter().filter(|r| worker_of(r).is_some()).count();
    let connected = items.iter().filter(|r| holds(r, "Connected")).count();
    let done = items.iter().filter(|r| synced(r)).count();
    let draining = items
        .iter()
        .filter(|r| r.annotations().contains_key(DRAIN_ANNOTATION))
        .count();
    format!(
        "{} relays, {labelled} labelled, {connected} connected, {done} synced, {draining} draining",
        items.len()
    )
}

/// `VmRSS` and `VmHWM` (kB) and `utime + stime` (s) of a role, by the guard's pidfile.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStat {
    rss_kb: u64,
    hwm_kb: u64,
    cpu_s: f64,
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn proc_stat(dir: &Path, name: &str, tck: f64) -> ProcStat {
    let Some(pid) = std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()
        .map(|p| p.trim().to_string())
    else {
        return ProcStat::default();
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |f: &str| {
        status
            .lines()
            .find(|l| l.starts_with(f))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ProcStat {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        cpu_s: (tick(11) + tick(12)) as f64 / tck,
    }
}

struct Roles {
    dir: std::path::PathBuf,
    tck: f64,
    controller: Role,
    workers: BTreeMap<&'static str, Role>,
}

impl Roles {
    fn stats(&self) -> BTreeMap<&'static str, ProcStat> {
        let mut out = BTreeMap::new();
        out.insert("controller", proc_stat(&self.dir, "controller", self.tck));
        for name in self.workers.keys() {
            out.insert(*name, proc_stat(&self.dir, name, self.tck));
        }
        out
    }

    async fn worker_patches(&self) -> f64 {
        let mut sum = 0.0;
        for w in self.workers.values() {
            sum += scrape(w.http, APPLIED).await;
        }
        sum
    }
}

fn print_stats(
    label: &str,
    base_mb: f64,
    stats: &BTreeMap<&'static str, ProcStat>,
    load: &BTreeMap<String, usize>,
) {
    println!("{label}:");
    for (name, s) in stats {
        let held = load.get(*name).copied().unwrap_or(0);
        let per_1000 = if held > 0 {
            let rss = s.rss_kb as f64 / 1024.0;
            format!(
                ", {:.0} MB per 1,000 relays held; {:.0} MB at 1,000 relays extrapolated from \
                 the base",
                rss * 1000.0 / held as f64,
                at_1000(base_mb, rss, held)
            )
        } else {
            String::new()
        };
        println!(
            "  {name:<10} RSS {:>6.1} MB (peak {:>6.1} MB), CPU {:>7.1} s{}{per_1000}",
            s.rss_kb as f64 / 1024.0,
            s.hwm_kb as f64 / 1024.0,
            s.cpu_s,
            if *name == "controller" {
                String::new()
            } else {
                format!(", {held} relays")
            },
        );
    }
}

/// A worker's RSS at 1,000 relays: its base (no relay held) plus 1,000 times its RSS per
/// relay held above that base.
fn at_1000(base_mb: f64, rss_mb: f64, held: usize) -> f64 {
    base_mb + (rss_mb - base_mb) * 1000.0 / held as f64
}

fn cpu_delta(
    a: &BTreeMap<&'static str, ProcStat>,
    b: &BTreeMap<&'static str, ProcStat>,
    secs: f64,
) -> String {
    let mut parts = Vec::new();
    let mut workers = 0.0;
    for (name, s) in b {
        let d = s.cpu_s - a.get(name).map(|x| x.cpu_s).unwrap_or(0.0);
        if *name == "controller" {
            parts.push(format!("controller {:.1}%", d / secs * 100.0));
        } else {
            workers += d;
        }
    }
    parts.push(format!(
        "workers {:.1}% together ({:.1}% each on average)",
        workers / secs * 100.0,
        workers / secs * 100.0 / (b.len().saturating_sub(1).max(1)) as f64
    ));
    parts.join(", ")
}

fn per_relay_per_10s(patches: f64, relays: usize, secs: f64) -> f64 {
    patches / relays as f64 / (secs / 10.0)
}

/// One change of the worker-owned part of a SyncRelay's status, as a watch saw it.
#[derive(Debug, Clone, Copy)]
struct WorkerWrite {
    /// When the watch saw it, in seconds since the log started.
    seen: f64,
    /// The time of the worker field manager's `managedFields` entry (server clock, whole
    /// seconds), which the API server stamps on every change that manager makes.
    server: Option<i64>,
    /// `Connected` changed (status or reason): the reporter writes those at once.
    urgent: bool,
}

/// Per SyncRelay key, the worker's status writes in order.
type WriteLog = Arc<Mutex<BTreeMap<String, Vec<WorkerWrite>>>>;

/// Watches every SyncRelay and logs each change of the worker-owned status fields
/// ([`WorkerStatus`]), per object: the per-object view of the status write rate that the
/// workers' aggregate counter cannot give. Controller writes leave those fields alone and are
/// not counted. Returns the log, its epoch and the task (abort it at the end).
fn spawn_write_log(relays: Api<SyncRelay>) -> (WriteLog, Instant, tokio::task::JoinHandle<()>) {
    let log = WriteLog::default();
    let epoch = Instant::now();
    let task = tokio::spawn({
        let log = log.clone();
        async move {
            let mut last: BTreeMap<String, WorkerStatus> = BTreeMap::new();
            let mut events = watcher(relays, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let r = match event {
                    Ok(watcher::Event::Apply(r)) | Ok(watcher::Event::InitApply(r)) => r,
                    _ => continue,
                };
                let Some(status) = r.status.as_ref() else {
                    continue;
                };
                let now = WorkerStatus::of(status);
                let k = key(&r);
                let connected = |s: &WorkerStatus| {
                    s.condition("Connected")
                        .map(|c| (c.status, c.reason.clone()))
                };
                let before = last.get(&k).cloned().unwrap_or_default();
                if before == now {
                    continue;
                }
                let server = r
                    .metadata
                    .managed_fields
                    .as_ref()
                    .and_then(|m| {
                        m.iter().find(|e| {
                            e.manager.as_deref() == Some(WORKER_MANAGER)
                                && e.subresource.as_deref() == Some("status")
                        })
                    })
                    .and_then(|e| e.time.as_ref())
                    .map(|t| t.0.as_second());
                let write = WorkerWrite {
                    seen: epoch.elapsed().as_secs_f64(),
                    server,
                    urgent: connected(&before) != connected(&now),
                };
                log.lock()
                    .expect("log")
                    .entry(k.clone())
                    .or_default()
                    .push(write);
                last.insert(k, now);
            }
        }
    });
    (log, epoch, task)
}

/// The worker's status writes seen in `[from, to)` (seconds since the log's epoch).
#[derive(Debug, Default)]
struct WriteStats {
    /// Writes, and how many of them were urgent (`Connected` changes).
    writes: usize,
    urgent: usize,
    /// Objects written at least once.
    objects: usize,
    /// The most writes of one object within 10 s (server clock), any kind.
    max_in_10s: usize,
    /// The most non-urgent writes of one object within 10 s.
    max_routine_in_10s: usize,
    /// Non-urgent writes less than 9 s (server clock, whole seconds) after the previous write
    /// of the same object: breaches of the 10 s rule, allowing for the 1 s resolution.
    early: usize,
    /// A few of those, `key@seen`.
    early_examples: Vec<String>,
}

fn write_stats(log: &WriteLog, from: f64, to: f64) -> WriteStats {
    let log = log.lock().expect("log");
    let mut out = WriteStats::default();
    let most_in_10s = |times: &[i64]| {
        let mut best = 0;
        for (i, &t) in times.iter().enumerate() {
            best = best.max(times[i..].iter().take_while(|&&u| u - t < 10).count());
        }
        best
    };
    for (k, writes) in log.iter() {
        let time = |w: &WorkerWrite| w.server.unwrap_or(w.seen as i64);
        let mut all = Vec::new();
        let mut routine = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            if w.seen < from || w.seen >= to {
                continue;
            }
            out.writes += 1;
            all.push(time(w));
            if w.urgent {
                out.urgent += 1;
                continue;
            }
            routine.push(time(w));
            if i > 0 && time(w) - time(&writes[i - 1]) < 9 {
                out.early += 1;
                if out.early_examples.len() < 5 {
                    out.early_examples.push(format!("{k}@{:.0}s", w.seen));
                }
            }
        }
        if !all.is_empty() {
            out.objects += 1;
        }
        out.max_in_10s = out.max_in_10s.max(most_in_10s(&all));
        out.max_routine_in_10s = out.max_routine_in_10s.max(most_in_10s(&routine));
    }
    out
}

fn print_writes(label: &str, log: &WriteLog, from: f64, to: f64, relays: usize) -> WriteStats {
    let s = write_stats(log, from, to);
    let secs = (to - from).max(1.0);
    println!(
        "  per-object status writes, {label} ({secs:.0} s): {} writes ({} urgent) on {} \
         SyncRelays, {:.0} per minute, {:.3} per SyncRelay per 10 s; most on one SyncRelay \
         within 10 s: {} in all, {} routine; routine writes < 9 s after the previous one: {} {:?}",
        s.writes,
        s.urgent,
        s.objects,
        s.writes as f64 / secs * 60.0,
        per_relay_per_10s(s.writes as f64, relays, secs),
        s.max_in_10s,
        s.max_routine_in_10s,
        s.early,
        s.early_examples
    );
    s
}

/// Relays listed by repo `j` (besides ours): `j mod n` first, so every relay gets a target
/// once there are at least as many repos as relays, then a spread of others.
fn listed_by(j: usize, n: usize, per_repo: usize) -> Vec<usize> {
    let mut out = vec![j % n];
    let mut k = 1;
    while out.len() < per_repo.min(n) {
        let i = (j.wrapping_mul(7919) + k * 104_729 + j / n) % n;
        if !out.contains(&i) {
            out.push(i);
        }
        k += 1;
    }
    out
}

/// Publishes `events` to `url` over `conns` connections, `inflight` at a time; every one
/// must be accepted.
async fn publish_all(url: &str, events: &[Event], conns: usize, inflight: usize) {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(client(url).await);
    }
    let refused = stream::iter(events.iter().enumerate())
        .map(|(i, e)| {
            let c = clients[i % conns].clone();
            async move {
                match c.send_event(e).await {
                    Ok(out) if !out.success.is_empty() => 0usize,
                    _ => 1,
                }
            }
        })
        .buffer_unordered(inflight)
        .fold(0, |a, b| async move { a + b })
        .await;
    for c in clients {
        c.shutdown().await;
    }
    assert_eq!(
        refused,
        0,
        "{url} refused {refused} of {} events",
        events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale run: minutes long; cargo test --release --test k8s_scale -- --ignored"]
async fn scale_run_balance_moves_resources_status_rate_and_latency() {
    let n_relays = env_usize("GRASP_SYNC_SCALE_RELAYS", 2000);
    let n_workers = env_usize("GRASP_SYNC_SCALE_WORKERS", 8);
    let n_repos = env_usize("GRASP_SYNC_SCALE_REPOS", 20_000);
    let n_remotes = env_usize("GRASP_SYNC_SCALE_REMOTES", 4).max(1);
    let per_repo = env_usize("GRASP_SYNC_SCALE_PER_REPO", 3).max(1);
    let idle = Duration::from_secs(env_usize("GRASP_SYNC_SCALE_IDLE_SECS", 60) as u64);
    assert!(n_workers >= 2, "removing a worker needs at least 2");
    assert!(
        n_repos >= n_relays,
        "every relay needs a non-empty target: REPOS >= RELAYS"
    );
    println!(
        "scale run: {n_relays} relays on {n_remotes} relay processes, {n_workers} workers, \
         {n_repos} repos listing {per_repo} relays each besides ours"
    );
    let run_start = Instant::now();

    let server = TestApiServer::start();
    let kube = server.client().await;
    let dir = scratch_dir("scale");
    std::fs::create_dir_all(&dir).expect("scratch");
    let own = embedded_relay(&dir.join("own")).await;
    let own_url = own.url().to_string();
    create_namespace(&kube, NS).await;
    install_crds(&kube).await;

    let mut remotes = Vec::new();
    for _ in 0..n_remotes {
        remotes.push(RemoteRelay::start().await);
    }
    let urls: Vec<String> = (0..n_relays)
        .map(|i| format!("{}/r{i:04}", remotes[i % n_remotes].url()))
        .collect();
    let names: Vec<String> = (0..n_relays).map(|i| format!("relay-{i:04}")).collect();

    // 1. The SyncRelays, created 32 at a time.
    let relays: Api<SyncRelay> = Api::namespaced(kube.clone(), NS);
    let t = Instant::now();
    stream::iter(names.iter().zip(&urls))
        .map(|(name, url)| {
            let relays = relays.clone();
            let r: SyncRelay = from_json(json!({
                "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
                "metadata": {"name": name},
                "spec": {"url": url},
            }));
            async move { create_retrying(&relays, &r).await }
        })
        .buffer_unordered(32)
        .for_each(|_| async {})
        .await;
    println!(
        "created {n_relays} SyncRelays in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Every change of the worker-owned status fields, per object, from here on.
    let (write_log, log_epoch, log_task) = spawn_write_log(relays.clone());
    let mark = || log_epoch.elapsed().as_secs_f64();

    // 2. The repos, announced on our relay before the roles start.
    let t = Instant::now();
    let keys: Vec<Keys> = (0..20).map(|_| Keys::generate()).collect();
    let mut per_relay = vec![0usize; n_relays];
    let events: Vec<Event> = (0..n_repos)
        .map(|j| {
            let listed = listed_by(j, n_relays, per_repo);
            for &i in &listed {
                per_relay[i] += 1;
            }
            let mut tags: Vec<&str> = vec![own_url.as_str()];
            tags.extend(listed.iter().map(|&i| urls[i].as_str()));
            announcement(&keys[j % keys.len()], &format!("repo-{j}"), &tags)
        })
        .collect();
    assert!(per_relay.iter().all(|&c| c > 0), "a relay without a target");
    let signed = t.elapsed();
    publish_all(&own_url, &events, 4, 64).await;
    println!(
        "announced {n_repos} repos on our relay in {:.1} s (signing {:.1} s); repos per relay \
         {}..{}",
        t.elapsed().as_secs_f64(),
        signed.as_secs_f64(),
        per_relay.iter().min().unwrap_or(&0),
        per_relay.iter().max().unwrap_or(&0)
    );

    // 3. Workers first (ready once their Leases are held), then the controller, so that its
    //    first pass sees every worker and nothing moves while syncing up.
    let mut workers = BTreeMap::new();
    for i in 0..n_workers {
        let name = leak(format!("worker-{i}"));
        workers.insert(name, spawn_worker(&server, &dir, name, &own_url, NS, None));
    }
    for w in workers.values_mut() {
        w.wait_ready(Duration::from_secs(120)).await;
    }
    // Holding no relay yet, with every announcement read from our relay.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let tck = clk_tck();
    let base: Vec<ProcStat> = workers
        .keys()
        .map(|name| proc_stat(&dir, name, tck))
        .collect();
    let base_rss_mb =
        base.iter().map(|s| s.rss_kb).sum::<u64>() as f64 / 1024.0 / base.len() as f64;
    println!(
        "workers holding no relay (the {n_repos} announcements read): RSS {base_rss_mb:.1} MB \
         on average"
    );
    let spawned = Instant::now();
    let controller = spawn_controller(
        &server,
        &dir,
        "controller",
        "controller-0",
        &own_url,
        NS,
        None,
    );
    let mut roles = Roles {
        dir: dir.clone(),
        tck,
        controller,
        workers,
    };
    roles.controller.wait_ready(Duration::from_secs(120)).await;
    println!(
        "{n_workers} workers ready; controller ready {:.1} s after its spawn",
        spawned.elapsed().as_secs_f64()
    );
    let live: BTreeSet<String> = roles.workers.keys().map(|w| w.to_string()).collect();
    // The controller writes one object at a time (about four writes per new relay): 2,000
    // relays took 340-553 s on the shared 2-core machine, hence the generous bound.
    wait_list(
        &relays,
        "every relay assigned",
        Duration::from_secs(1200),
        |items| {
            (items.len() == n_relays
                && items.iter().all(|r| {
                    worker_of(r).is_some_and(|w| live.contains(&w))
                        && assigned_to(r) == worker_of(r)
                }))
            .then_some(())
        },
        counts,
    )
    .await;
    let assigned_at = spawned.elapsed();
    println!(
        "every relay labelled and assigned {:.1} s after the controller's spawn",
        assigned_at.as_secs_f64()
    );
    wait_list(
        &relays,
        "every relay Connected and Synced",
        Duration::from_secs(900),
        |items| (items.len() == n_relays && items.iter().all(synced)).then_some(()),
        counts,
    )
    .await;
    let synced_secs = spawned.elapsed().as_secs_f64();
    let m_synced = mark();
    let startup_patches = roles.worker_patches().await;
    let startup_controller = scrape(roles.controller.http, APPLIED).await;
    let at_synced = roles.stats();
    // One write per relay per 10 s window, one for the window straddling the start, and the
    // urgent `Connected` flip (the rules in src/k8s/worker/report.rs).
    let startup_bound = n_relays as f64 * ((synced_secs / 10.0).ceil() + 2.0);
    println!(
        "every relay Connected and Synced {synced_secs:.1} s after the controller's spawn; worker status \
         patches so far {startup_patches} = {:.2} per SyncRelay per 10 s ({:.0} per minute); \
         controller status applies {startup_controller}; bound by the reporter's rules \
         {startup_bound}",
        per_relay_per_10s(startup_patches, n_relays, synced_secs),
        startup_patches / synced_secs * 60.0
    );

    // 4. Balance.
    let settled = list(&relays).await.expect("list");
    let before_up = labels(&settled);
    let load = loads(&before_up);
    let mean = n_relays as f64 / n_workers as f64;
    let max = *load.values().max().unwrap_or(&0) as f64;
    let min = if load.len() < n_workers {
        0.0
    } else {
        *load.values().min().unwrap_or(&0) as f64
    };
    println!(
        "balance over {n_workers} workers: {load:?}; max/mean {:.3}, min/mean {:.3} (target \
         within 0.75..1.25; assign bounds floor {} cap {})",
        max / mean,
        min / mean,
        floor_load(n_relays, n_workers, DEFAULT_EPSILON),
        capacity(n_relays, n_workers, DEFAULT_EPSILON)
    );
    print_stats("resources once synced", base_rss_mb, &at_synced, &load);

    // 5. Idle: let the last changes settle (the reporter's 10 s), then count.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let idle_start = Instant::now();
    let m_idle = mark();
    let p0 = roles.worker_patches().await;
    let c0 = scrape(roles.controller.http, APPLIED).await;
    let s0 = roles.stats();
    let mut o0 = 0.0;
    for w in roles.workers.values() {
        o0 += scrape(w.http, OVERFLOWS).await;
    }
    tokio::time::sleep(idle).await;
    let idle_secs = idle_start.elapsed().as_secs_f64();
    let m_idle_end = mark();
    let idle_patches = roles.worker_patches().await - p0;
    let idle_controller = scrape(roles.controller.http, APPLIED).await - c0;
    let s1 = roles.stats();
    let mut overflows = 0.0;
    for w in roles.workers.values() {
        overflows += scrape(w.http, OVERFLOWS).await;
    }
    println!(
        "idle {idle_secs:.0} s: worker status patches {idle_patches} ({:.3} per SyncRelay per \
         10 s), controller status applies {idle_controller}; reporter queue overflows {} in the \
         window, {overflows} since the start; CPU {}",
        per_relay_per_10s(idle_patches, n_relays, idle_secs),
        overflows - o0,
        cpu_delta(&s0, &s1, idle_secs)
    );
    print_stats("resources after the idle window", base_rss_mb, &s1, &load);

    // 6. A fresh announcement to Synced, on one relay of each of up to 5 workers at once.
    let mut samples: Vec<(String, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &settled {
        let w = worker_of(r).unwrap_or_default();
        if seen.insert(w) {
            samples.push((r.name_any(), r.spec.url.clone()));
        }
        if samples.len() == 5 {
            break;
        }
    }
    let fresh_keys = Keys::generate();
    let latencies: Vec<(String, f64, f64)> =
        futures_util::future::join_all(samples.iter().enumerate().map(|(n, (name, url))| {
            let relays = relays.clone();
            let own_url = own_url.clone();
            let fresh_keys = fresh_keys.clone();
            async move {
                let r = relays.get(name).await.expect("get");
                let desired = r.status.as_ref().map(|s| s.sync.desired_repos).unwrap_or(0);
                let e = announcement(
                    &fresh_keys,
                    &format!("fresh-{n}"),
                    &[own_url.as_str(), url.as_str()],
                );
                let t = Instant::now();
                publish_all(&own_url, std::slice::from_ref(&e), 1, 1).await;
                let mut seen_at = None;
                loop {
                    if let Ok(r) = relays.get(name).await {
                        let d = r.status.as_ref().map(|s| s.sync.desired_repos).unwrap_or(0);
                        if d > desired && seen_at.is_none() {
                            seen_at = Some(t.elapsed());
                        }
                        if d > desired && synced(&r) {
                            break;
                        }
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(120),
                        "{name}: fresh repo not Synced within 120 s"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (
                    name.clone(),
                    seen_at.unwrap_or_default().as_secs_f64(),
                    t.elapsed().as_secs_f64(),
                )
            }
        }))
        .await;
    for (name, seen, done) in &latencies {
        println!(
            "fresh announcement → {name}: desiredRepos counted it after {seen:.1} s, Synced with \
             it confirmed after {done:.1} s"
        );
    }

    // 7. A worker more: relays moved, against the assignment function on the same input.
    let extra = leak(format!("worker-{n_workers}"));
    let p_up = roles.worker_patches().await;
    let t = Instant::now();
    let m_up = mark();
    roles.workers.insert(
        extra,
        spawn_worker(&server, &dir, extra, &own_url, NS, None),
    );
    roles
        .workers
        .get_mut(extra)
        .expect("spawned")
        .wait_ready(Duration::from_secs(60))
        .await;
    let up_workers: BTreeSet<String> = roles.workers.keys().map(|w| w.to_string()).collect();
    // The new worker is filled to `floor_load(n, w)` only while it is under the floor of one
    // worker more (`assign`'s phase 3), and the moves are carried out over several passes:
    // wait for that lower floor, then for the labels to stay put.
    let floor_up = floor_load(n_relays, up_workers.len() + 1, DEFAULT_EPSILON);
    let mut last: Option<(BTreeMap<String, String>, Instant)> = None;
    let after_up = wait_list(
        &relays,
        "rebalanced onto the extra worker",
        Duration::from_secs(300),
        |items| {
            let quiet = items.len() == n_relays
                && items.iter().all(|r| {
                    worker_of(r).is_some_and(|w| up_workers.contains(&w))
                        && assigned_to(r) == worker_of(r)
                        && holds(r, "Connected")
                        && !r.annotations().contains_key(DRAIN_ANNOTATION)
                });
            let now = labels(items);
            let on_extra = now.values().filter(|w| w.as_str() == extra).count();
            let stable = stable_for(&mut last, &now) >= SETTLE;
            (quiet && on_extra >= floor_up && stable).then_some(now)
        },
        counts,
    )
    .await;
    let up_secs = t.elapsed().as_secs_f64();
    let m_up_end = mark();
    let up_moved = moved(&before_up, &after_up);
    let up_expected = assign(before_up.keys(), &up_workers, &before_up, DEFAULT_EPSILON)
        .moves
        .len();
    let up_bound = capacity(n_relays, up_workers.len(), DEFAULT_EPSILON);
    let up_patches = roles.worker_patches().await - p_up;
    println!(
        "worker {} added: {up_moved} relays moved ({:.1}% ; 1/N = {:.0}, bound 1/N + slack = \
         cap {up_bound}; assign() on the same input moves {up_expected}), settled and \
         connected in {up_secs:.1} s; loads {:?}; worker status patches {up_patches}",
        extra,
        up_moved as f64 * 100.0 / n_relays as f64,
        n_relays as f64 / up_workers.len() as f64,
        loads(&after_up)
    );

    // 8. A worker less (SIGTERM): only its relays move.
    let victim = "worker-0";
    let victim_load = loads(&after_up).get(victim).copied().unwrap_or(0);
    let t = Instant::now();
    let m_down = mark();
    let victim_patches = scrape(roles.workers[victim].http, APPLIED).await;
    let mut gone = roles.workers.remove(victim).expect("worker-0");
    gone.proc.signal("TERM");
    let down_workers: BTreeSet<String> = roles.workers.keys().map(|w| w.to_string()).collect();
    let mut last: Option<(BTreeMap<String, String>, Instant)> = None;
    let after_down = wait_list(
        &relays,
        "relays of the stopped worker reassigned and connected",
        Duration::from_secs(300),
        |items| {
            let quiet = items.len() == n_relays
                && items.iter().all(|r| {
                    worker_of(r).is_some_and(|w| down_workers.contains(&w))
                        && assigned_to(r) == worker_of(r)
                        && holds(r, "Connected")
                        && !r.annotations().contains_key(DRAIN_ANNOTATION)
                });
            let now = labels(items);
            let stable = stable_for(&mut last, &now) >= SETTLE;
            (quiet && stable).then_some(now)
        },
        counts,
    )
    .await;
    let down_secs = t.elapsed().as_secs_f64();
    let m_down_end = mark();
    gone.proc.wait_stopped();
    let down_moved = moved(&after_up, &after_down);
    let down_expected = assign(after_up.keys(), &down_workers, &after_up, DEFAULT_EPSILON)
        .moves
        .len();
    let down_bound = capacity(n_relays, up_workers.len(), DEFAULT_EPSILON);
    println!(
        "{victim} stopped (SIGTERM, held {victim_load}): {down_moved} relays moved ({:.1}%; \
         bound 1/N + slack = cap {down_bound}; assign() on the same input moves \
         {down_expected}), reassigned and connected in {down_secs:.1} s; loads {:?}",
        down_moved as f64 * 100.0 / n_relays as f64,
        loads(&after_down)
    );

    let end = roles.stats();
    let end_load = loads(&after_down);
    print_stats("resources at the end", base_rss_mb, &end, &end_load);
    let total_patches = roles.worker_patches().await + victim_patches;
    let total_secs = spawned.elapsed().as_secs_f64();
    println!(
        "worker status patches over the whole run: {total_patches} in {total_secs:.0} s = \
         {:.0} per minute, {:.2} per SyncRelay per 10 s",
        total_patches / total_secs * 60.0,
        per_relay_per_10s(total_patches, n_relays, total_secs)
    );
    let m_end = mark();
    log_task.abort();
    println!("worker status writes per SyncRelay, from a watch (each change of the worker-owned fields):");
    print_writes("syncing up", &write_log, 0.0, m_synced, n_relays);
    print_writes("idle", &write_log, m_idle, m_idle_end, n_relays);
    print_writes("adding a worker", &write_log, m_up, m_up_end, n_relays);
    print_writes(
        "removing a worker",
        &write_log,
        m_down,
        m_down_end,
        n_relays,
    );
    let whole = print_writes("whole run", &write_log, 0.0, m_end, n_relays);
    let c_sum = scrape(roles.controller.http, RECONCILE_SUM).await;
    let c_count = scrape(roles.controller.http, RECONCILE_COUNT).await;
    println!(
        "controller: {c_count} reconcile passes, {:.3} s on average",
        if c_count > 0.0 { c_sum / c_count } else { 0.0 }
    );
    println!(
        "scale run finished in {:.1} s",
        run_start.elapsed().as_secs_f64()
    );

    // The targets, checked after everything is printed.
    assert!(
        max / mean <= 1.25 && min / mean >= 0.75,
        "balance {load:?} outside 25%"
    );
    assert!(up_moved <= up_bound, "{up_moved} moved on scale-up");
    assert!(down_moved <= down_bound, "{down_moved} moved on scale-down");
    assert!(
        startup_patches <= startup_bound,
        "{startup_patches} status patches while syncing up (bound {startup_bound})"
    );
    assert!(
        per_relay_per_10s(idle_patches, n_relays, idle_secs) <= 1.0,
        "status patches while idle"
    );
    assert_eq!(
        whole.early, 0,
        "routine status writes closer than 10 s on one SyncRelay: {:?}",
        whole.early_examples
    );
    for (name, s) in &end {
        let held = end_load.get(*name).copied().unwrap_or(0);
        if *name != "controller" && held > 0 {
            let mb = at_1000(base_rss_mb, s.rss_kb as f64 / 1024.0, held);
            assert!(mb < 300.0, "{name}: {mb:.0} MB at 1,000 relays");
        }
    }

    // Stop everything: the workers at once (a later one would pick up the others' relays).
    for w in roles.workers.values_mut() {
        w.proc.signal("TERM");
    }
    for w in roles.workers.values_mut() {
        w.proc.wait_stopped();
    }
    roles.controller.proc.stop_gracefully();
    for r in &remotes {
        r.stop();
    }
    own.shutdown();
}
