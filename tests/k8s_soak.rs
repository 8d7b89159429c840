//! The no-loss soak (issue 6): the real `grasp-sync controller` and `grasp-sync worker`
//! binaries against a real kube-apiserver, many source relays (nostr-relay-builder, each behind
//! a fault proxy so it has a distinct URL and can be cut), a few hundred repos announced on our
//! relay (the embedded relay), and events published continuously to the source relays while a
//! chaos loop cuts connections, stalls relays, SIGKILLs workers (a replacement is started) and
//! restarts relays (stopped, started again on the same port with the events they held).
//!
//! When publishing and chaos stop, our relay must hold exactly the union of the events
//! published (issues on the repos, and replies to those issues, which the sync only wants once
//! their issue is on our relay). The test prints the counts, the faults injected and the
//! reconnects.
//!
//! CI runs the shortened default (60 s). The full soak is one command:
//!
//! ```sh
//! GRASP_SYNC_SOAK_SECS=600 GRASP_SYNC_K8S_BIN=~/.cache/grasp-sync/k8s/v1.37.2/bin \
//!   cargo test --test k8s_soak -- --nocapture
//! ```
//!
//! Sizes: `GRASP_SYNC_SOAK_RELAYS` (20), `GRASP_SYNC_SOAK_REPOS` (300),
//! `GRASP_SYNC_SOAK_WORKERS` (3), `GRASP_SYNC_SOAK_RATE` (events per second, 20),
//! `GRASP_SYNC_SOAK_CHAOS_MS` (time between faults, 3000), `GRASP_SYNC_SOAK_SEED`.
//! Every wait is bounded; everything is on 127.0.0.1.

mod support;

use grasp_sync::api::types::{RelayAllowlist, SyncRelay};
use kube::api::{Api, ListParams};
use nostr::{Event, EventId, Filter, Keys, Kind};
use nostr_sdk::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::apiserver::TestApiServer;
use support::bed::{announcement, embedded_relay, scratch_dir};
use support::fault_proxy::FaultProxy;
use support::k8s_bed::{
    condition_status, create_namespace, create_retrying, http_get, install_crds, spawn_controller,
    spawn_worker, wait_for, Role,
};
use support::sync_bed::{
    client, coordinate, held, metric, publish, tagged, RemoteRelay, FAST_SETTINGS,
    LOOPBACK_ALLOWLIST,
};
use tokio::sync::Mutex;

const NS: &str = "grasp-soak";
/// Maintainer keys the repos are spread over.
const MAINTAINERS: usize = 10;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A source relay: the relay itself (replaced on restart), its proxy, and what it holds.
struct Source {
    relay: RemoteRelay,
    proxy: FaultProxy,
    /// Events it accepted, replayed into it after a restart (its "disk").
    held: Vec<Event>,
    /// A client publishing to it (directly, not through the proxy).
    client: Client,
}

/// One repo: its coordinate and the two source relays it lists beside ours.
struct Repo {
    keys: Keys,
    coordinate: String,
    relays: [usize; 2],
    /// Issues published so far (replies pick one).
    issues: Vec<EventId>,
}

#[derive(Default)]
struct Faults {
    cuts: AtomicU64,
    stalls: AtomicU64,
    kills: AtomicU64,
    restarts: AtomicU64,
}

fn start_worker(server: &TestApiServer, dir: &std::path::Path, name: &str, own: &str) -> Role {
    // Role names are borrowed for the life of the test; a few replacement names leak.
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    let settings = dir.join("settings.yaml").display().to_string();
    spawn_worker(server, dir, name, own, NS, Some(&settings))
}

/// Publishes `event` to source `i` (holding its lock, so a restart sees a consistent "disk");
/// true when the relay accepted it.
async fn publish_to(source: &Mutex<Source>, event: &Event) -> bool {
    let mut s = source.lock().await;
    let sent = tokio::time::timeout(Duration::from_secs(5), s.client.send_event(event)).await;
    let accepted = matches!(&sent, Ok(Ok(out)) if !out.success.is_empty());
    // A timed-out publish may still have been stored: keep it on the "disk" too, so a restart
    // cannot make an event vanish from the source after it was synced.
    if accepted || sent.is_err() {
        s.held.push(event.clone());
    }
    accepted
}

/// Stops source `i`, starts it again on the same port with the events it held, and lets
/// connections through again.
async fn restart(source: &Mutex<Source>) {
    let mut s = source.lock().await;
    s.proxy.refuse(true);
    s.proxy.cut();
    s.relay.stop();
    let addr = s.relay.addr;
    s.relay = RemoteRelay::start_at(addr).await;
    let held = s.held.clone();
    publish(&s.relay.url(), &held).await;
    s.proxy.refuse(false);
}

/// Ids of every issue (1621) and reply (1622) `url` holds.
async fn issues_and_replies(url: &str) -> HashSet<EventId> {
    let reader = client(url).await;
    let events = reader
        .fetch_events(
            Filter::new()
                .kinds([Kind::Custom(1621), Kind::Custom(1622)])
                .limit(1_000_000),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("read {url}: {e}"));
    reader.shutdown().await;
    events.iter().map(|e| e.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_cuts_stalls_worker_kills_and_relay_restarts_loses_nothing() {
    let secs = env_num("GRASP_SYNC_SOAK_SECS", 60);
    let n_relays = env_num("GRASP_SYNC_SOAK_RELAYS", 20) as usize;
    let n_repos = env_num("GRASP_SYNC_SOAK_REPOS", 300) as usize;
    let n_workers = env_num("GRASP_SYNC_SOAK_WORKERS", 3) as usize;
    let rate = env_num("GRASP_SYNC_SOAK_RATE", 20).max(1);
    let chaos_every = Duration::from_millis(env_num("GRASP_SYNC_SOAK_CHAOS_MS", 3000));
    let seed = env_num(
        "GRASP_SYNC_SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_secs()),
    );
    println!(
        "soak: {secs}s, {n_relays} relays, {n_repos} repos, {n_workers} workers, {rate} events/s, \
         a fault every {chaos_every:?}, seed {seed}"
    );
    assert!(n_relays >= 2, "each repo lists two source relays");
    let mut rng = StdRng::seed_from_u64(seed);

    let server = TestApiServer::start();
    let kube = server.client().await;
    let dir = scratch_dir("soak");
    std::fs::create_dir_all(&dir).expect("scratch");
    std::fs::write(dir.join("settings.yaml"), FAST_SETTINGS).expect("settings");
    let own = embedded_relay(&dir.join("own")).await;
    let own_url = own.url().to_string();
    create_namespace(&kube, NS).await;
    install_crds(&kube).await;
    let allowlists: Api<RelayAllowlist> = Api::namespaced(kube.clone(), NS);
    let allowlist: RelayAllowlist = serde_yaml::from_str(LOOPBACK_ALLOWLIST).expect("allowlist");
    create_retrying(&allowlists, &allowlist).await;

    let mut sources = Vec::new();
    for _ in 0..n_relays {
        let relay = RemoteRelay::start().await;
        let proxy = FaultProxy::start(relay.addr).await.expect("proxy");
        let client = client(&relay.url()).await;
        sources.push(Arc::new(Mutex::new(Source {
            relay,
            proxy,
            held: Vec::new(),
            client,
        })));
    }
    let mut urls = Vec::new();
    for s in &sources {
        urls.push(s.lock().await.proxy.url());
    }

    // Repos, announced on our relay; discovery creates a SyncRelay per source relay.
    let maintainers: Vec<Keys> = (0..MAINTAINERS).map(|_| Keys::generate()).collect();
    let mut repos = Vec::new();
    let mut announcements = Vec::new();
    for j in 0..n_repos {
        let keys = maintainers[j % MAINTAINERS].clone();
        let a = j % n_relays;
        let b = (a + 1 + (j / n_relays) % (n_relays - 1)) % n_relays;
        let d = format!("repo-{j}");
        announcements.push(announcement(&keys, &d, &[&own_url, &urls[a], &urls[b]]));
        repos.push(Repo {
            coordinate: coordinate(&keys, &d),
            keys,
            relays: [a, b],
            issues: Vec::new(),
        });
    }
    publish(&own_url, &announcements).await;

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
    let mut workers: Vec<Role> = (0..n_workers)
        .map(|i| start_worker(&server, &dir, &format!("soak-w{i}"), &own_url))
        .collect();
    controller.wait_ready(Duration::from_secs(30)).await;
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(30)).await;
    }
    let relays: Api<SyncRelay> = Api::namespaced(kube.clone(), NS);
    wait_for(
        "every source relay discovered and connected",
        Duration::from_secs(120),
        || {
            let relays = relays.clone();
            async move {
                let list = relays.list(&ListParams::default()).await.ok()?;
                let connected = list
                    .items
                    .iter()
                    .filter(|r| condition_status(r, "Connected").as_deref() == Some("True"))
                    .count();
                (connected >= n_relays).then_some(())
            }
        },
    )
    .await;

    // Publishing and chaos, side by side, for the soak's length.
    let faults = Arc::new(Faults::default());
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let publisher = {
        let sources = sources.clone();
        let stop = stop.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut published: Vec<EventId> = Vec::new();
            let mut details: BTreeMap<EventId, String> = BTreeMap::new();
            let mut refused = 0u64;
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let repo = &mut repos[rng.random_range(0..n_repos)];
                let event = match repo.issues.len() {
                    k if k > 0 && rng.random_bool(0.25) => {
                        let root = repo.issues[rng.random_range(0..k)].to_hex();
                        tagged(&repo.keys, 1622, "e", &root, &format!("reply {n}"))
                    }
                    _ => tagged(
                        &repo.keys,
                        1621,
                        "a",
                        &repo.coordinate,
                        &format!("issue {n}"),
                    ),
                };
                let first = rng.random_range(0..2);
                let mut accepted = None;
                for k in [first, 1 - first] {
                    if publish_to(&sources[repo.relays[k]], &event).await {
                        accepted = Some(repo.relays[k]);
                        break;
                    }
                }
                if let Some(on) = accepted {
                    if event.kind == Kind::Custom(1621) {
                        repo.issues.push(event.id);
                    }
                    published.push(event.id);
                    details.insert(
                        event.id,
                        format!(
                            "kind {} on relay {on} at {:.1?} ({})",
                            event.kind.as_u16(),
                            t0.elapsed(),
                            event.content
                        ),
                    );
                } else {
                    refused += 1;
                }
            }
            (published, refused, details)
        })
    };
    let started = Instant::now();
    let mut spare = n_workers;
    let mut chaos_log: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(chaos_every).await;
        let pick = rng.random_range(0..100);
        let i = rng.random_range(0..n_relays);
        let at = t0.elapsed();
        if pick < 40 {
            chaos_log.push(format!("{at:.1?} cut relay {i}"));
            sources[i].lock().await.proxy.cut();
            faults.cuts.fetch_add(1, Ordering::Relaxed);
        } else if pick < 55 {
            chaos_log.push(format!("{at:.1?} stall relay {i}"));
            let s = sources[i].clone();
            s.lock().await.proxy.stall(true);
            faults.stalls.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                s.lock().await.proxy.stall(false);
            });
        } else if pick < 75 {
            let w = rng.random_range(0..workers.len());
            chaos_log.push(format!("{at:.1?} kill {}", workers[w].proc.name()));
            workers[w].proc.signal("KILL");
            workers[w].proc.wait_stopped();
            let mut replacement = start_worker(&server, &dir, &format!("soak-w{spare}"), &own_url);
            spare += 1;
            replacement.wait_ready(Duration::from_secs(30)).await;
            workers[w] = replacement;
            faults.kills.fetch_add(1, Ordering::Relaxed);
        } else {
            chaos_log.push(format!("{at:.1?} restart relay {i}"));
            restart(&sources[i]).await;
            faults.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (published, refused, details) = tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .expect("the publisher stops")
        .expect("the publisher does not panic");
    for s in &sources {
        s.lock().await.proxy.stall(false);
    }
    let soak_done = Instant::now();

    // The wanted set: every issue and reply the source relays hold now (each is on a repo
    // listing our relay). Every published event is among them.
    let mut wanted: HashSet<EventId> = HashSet::new();
    for s in &sources {
        let url = s.lock().await.relay.url();
        wanted.extend(issues_and_replies(&url).await);
    }
    let missing_at_source = published.iter().filter(|id| !wanted.contains(id)).count();
    assert_eq!(
        missing_at_source, 0,
        "every accepted event is on its source relay"
    );
    let wanted_ids: Vec<EventId> = wanted.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut found = held(&own_url, &wanted_ids).await;
    while found.len() < wanted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        found = held(&own_url, &wanted_ids).await;
    }
    if found.len() < wanted.len() {
        let missing: Vec<String> = wanted_ids
            .iter()
            .filter(|id| !found.contains(id))
            .map(|id| {
                format!(
                    "{id}: {}",
                    details.get(id).map_or("not published by the test", |d| d)
                )
            })
            .collect();
        panic!(
            "after the soak: {} of {} wanted events missing on our relay after 180 s:\n{}\n\
             faults:\n{}\nlogs in {}",
            missing.len(),
            wanted.len(),
            missing.join("\n"),
            chaos_log.join("\n"),
            dir.display()
        );
    }
    let converged = soak_done.elapsed();
    // …and nothing else of those kinds is on our relay.
    let on_own = issues_and_replies(&own_url).await;
    assert_eq!(
        on_own.len(),
        wanted.len(),
        "our relay holds exactly the union of the wanted events"
    );
    assert_eq!(on_own, wanted);

    // Report.
    let mut connections = 0;
    for s in &sources {
        connections += s.lock().await.proxy.accepted();
    }
    let mut reconnects = 0.0;
    for w in &workers {
        // Summed over the `kind` label (quick and long).
        if let Some((200, text)) = http_get(w.http, "/metrics").await {
            reconnects += metric(&text, "grasp_sync_reconnects_total{");
        }
    }
    let list = relays.list(&ListParams::default()).await.expect("list");
    let mut conditions: BTreeMap<String, usize> = BTreeMap::new();
    for r in &list.items {
        let synced = condition_status(r, "Synced").unwrap_or_else(|| "None".into());
        *conditions.entry(format!("Synced={synced}")).or_default() += 1;
    }
    let replies = {
        let mut ids = HashSet::new();
        for s in &sources {
            for e in &s.lock().await.held {
                if e.kind == Kind::Custom(1622) {
                    ids.insert(e.id);
                }
            }
        }
        ids.len()
    };
    println!(
        "soak report: {} events published ({} replies), {refused} refused by both relays of \
         their repo; {} wanted, {} on our relay, all of them and nothing else; converged \
         {converged:.1?} \
         after the last fault. Faults: {} cuts, {} stalls, {} worker kills, {} relay restarts. \
         Connections through the proxies: {connections} for {n_relays} relays ({} reconnects); \
         reconnects counted by the live workers: {reconnects}. SyncRelays: {conditions:?}",
        published.len(),
        replies,
        wanted.len(),
        on_own.len(),
        faults.cuts.load(Ordering::Relaxed),
        faults.stalls.load(Ordering::Relaxed),
        faults.kills.load(Ordering::Relaxed),
        faults.restarts.load(Ordering::Relaxed),
        connections.saturating_sub(n_relays),
    );

    for w in &mut workers {
        w.proc.signal("TERM");
    }
    for w in &mut workers {
        w.proc.wait_stopped();
    }
    controller.proc.stop_gracefully();
    for s in &sources {
        s.lock().await.relay.stop();
    }
    own.shutdown();
}
