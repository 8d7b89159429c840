//! End-to-end load harness for the relay shell (run in release):
//!
//! `cargo run --release --example sync_load -- [ingest|resync|idle] [N]`
//!
//! - `ingest`: N events on a remote relay → our relay through discovery, REQ/negentropy,
//!   checks and the forwarder. Baseline in the same run: single-core Schnorr verification of
//!   the same N events. Prints events/s and the ratio.
//! - `resync`: our relay already holds 99% of N events; prints how many crossed the link.
//! - `idle`: N idle relay sessions (distinct URLs, paths on one local relay); prints the RSS
//!   they add.
//!
//! Everything runs on 127.0.0.1.

use grasp_sync::config::load_config;
use grasp_sync::relay::session::SessionConfig;
use grasp_sync::standalone::{Standalone, StandaloneOptions};
use nostr::{Event, EventBuilder, Keys, Kind, Tag, TagKind, Timestamp};
use nostr_relay_builder::builder::{RateLimit, RelayBuilder};
use nostr_relay_builder::LocalRelay;
use nostr_sdk::Client;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
}

/// User + system CPU time of this process so far, in seconds (0 where /proc is unavailable).
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: indices 11 and 12 here. 100 ticks/s is
    // the Linux USER_HZ everywhere this runs.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn remote() -> (LocalRelay, String) {
    let addr = free_addr();
    let relay = LocalRelay::new(
        RelayBuilder::default()
            .addr(addr.ip())
            .port(addr.port())
            .default_filter_limit(1_000_000)
            .max_connections(100_000)
            .rate_limit(RateLimit {
                max_reqs: 5000,
                notes_per_minute: 100_000_000,
            }),
    );
    relay.run().await.expect("relay");
    (relay, format!("ws://{addr}"))
}

async fn publish(url: &str, events: &[Event]) {
    let c = Client::default();
    c.add_relay(url).await.expect("add");
    c.connect().await;
    c.wait_for_connection(Duration::from_secs(5)).await;
    for chunk in events.chunks(256) {
        let sends = chunk.iter().map(|e| c.send_event(e));
        for r in futures_util::future::join_all(sends).await {
            r.expect("publish");
        }
    }
    c.shutdown().await;
}

fn history(keys: &Keys, repo: &str, n: usize) -> Vec<Event> {
    let base = Timestamp::now().as_secs() - 1_000_000;
    (0..n)
        .map(|i| {
            EventBuilder::new(Kind::Custom(1), format!("event {i}"))
                .tags([Tag::custom(TagKind::custom("a"), [repo])])
                .custom_created_at(Timestamp::from_secs(base + i as u64 / 3))
                .sign_with_keys(keys)
                .expect("sign")
        })
        .collect()
}

fn announcement(keys: &Keys, relays: &[&str]) -> Event {
    EventBuilder::new(Kind::Custom(30617), "")
        .tags([
            Tag::identifier("load"),
            Tag::custom(TagKind::custom("relays"), relays.iter().copied()),
        ])
        .sign_with_keys(keys)
        .expect("sign")
}

const DOCS: &str = "apiVersion: sync.grasp.dev/v1alpha1\nkind: RelayAllowlist\nmetadata: {name: l}\nspec:\n  allowPrivateNetworks: true\n  allow: [{host: \"127.0.0.1\", schemes: [ws]}]\n---\napiVersion: sync.grasp.dev/v1alpha1\nkind: Settings\nmetadata: {name: s}\nspec: {batchWindow: 100ms}\n";

async fn app(name: &str, extra: &str) -> Standalone {
    let config = load_config(&format!("{DOCS}{extra}")).expect("config");
    let mut opts = StandaloneOptions::new(config);
    opts.data = std::env::temp_dir().join(format!("grasp-sync-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&opts.data);
    opts.relay_listen = free_addr();
    opts.listen = free_addr();
    opts.session = SessionConfig::default();
    Standalone::start(opts).await.expect("start")
}

fn counter(app: &Standalone, name: &str) -> f64 {
    app.metrics()
        .encode()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_forwarded(app: &Standalone, n: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    while counter(app, "grasp_sync_events_forwarded_total") < n as f64 {
        assert!(
            start.elapsed() < limit,
            "only {} of {n} forwarded",
            counter(app, "grasp_sync_events_forwarded_total")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn ingest(n: usize, memory_own: bool) {
    let keys = Keys::generate();
    let repo = format!("30617:{}:load", keys.public_key().to_hex());
    let events = history(&keys, &repo, n);
    // Baseline: verify every signature on one core.
    let t = Instant::now();
    for e in &events {
        assert!(e.verify_signature());
    }
    let verify_rate = n as f64 / t.elapsed().as_secs_f64();
    let (_r, url) = remote().await;
    publish(&url, &events).await;
    // Our relay: the embedded one (LMDB on disk), or an in-memory relay, to separate the
    // shell's rate from the store's.
    let (_own_relay, own_url) = remote().await;
    let app = if memory_own {
        app_with_own("ingest-mem", &own_url).await
    } else {
        app("ingest", "").await
    };
    let own = app.own_url().to_string();
    perf_control("enable");
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    publish(&own, &[announcement(&keys, &[&own, &url])]).await;
    wait_forwarded(&app, 1, Duration::from_secs(60)).await;
    let first = t0.elapsed();
    wait_forwarded(&app, n, Duration::from_secs(600)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let rate = n as f64 / elapsed;
    perf_control("disable");
    println!(
        "ingest ({}): {n} events in {elapsed:.2}s = {rate:.0} ev/s; single-core verify {verify_rate:.0} ev/s; ratio {:.2}; first event after {:.2}s; process CPU {cpu:.2}s ({:.0} µs/event, both relays included)",
        if memory_own { "in-memory own relay" } else { "embedded LMDB own relay" },
        rate / verify_rate,
        first.as_secs_f64(),
        cpu * 1e6 / n as f64,
    );
    app.shutdown(Duration::from_secs(10)).await;
}

/// With `SYNC_LOAD_PERF_CTL=FIFO` (perf record's `--control fifo:FIFO` with `-D -1`), profiles
/// only the measured phase.
fn perf_control(what: &str) {
    if let Ok(path) = std::env::var("SYNC_LOAD_PERF_CTL") {
        let _ = std::fs::write(path, format!("{what}\n"));
    }
}

async fn app_with_own(name: &str, own: &str) -> Standalone {
    let config = load_config(DOCS).expect("config");
    let mut opts = StandaloneOptions::new(config);
    opts.data = std::env::temp_dir().join(format!("grasp-sync-load-{name}-{}", std::process::id()));
    opts.own_relay = Some(grasp_sync::core::url::RelayUrl::parse(own).expect("url"));
    opts.listen = free_addr();
    Standalone::start(opts).await.expect("start")
}

async fn resync(n: usize) {
    let keys = Keys::generate();
    let repo = format!("30617:{}:load", keys.public_key().to_hex());
    let events = history(&keys, &repo, n);
    let (_r, url) = remote().await;
    publish(&url, &events).await;
    let app = app("resync", "").await;
    let own = app.own_url().to_string();
    let present: Vec<Event> = events
        .iter()
        .filter(|e| e.id.as_bytes()[0] >= 3)
        .cloned()
        .collect();
    let missing = n - present.len();
    let tp = Instant::now();
    publish(&own, &present).await;
    println!(
        "resync: direct publish of {} events to our relay: {:.0} ev/s",
        present.len(),
        present.len() as f64 / tp.elapsed().as_secs_f64()
    );
    let before = counter(&app, "grasp_sync_events_forwarded_total");
    publish(&own, &[announcement(&keys, &[&own, &url])]).await;
    let t0 = Instant::now();
    while counter(&app, "grasp_sync_events_forwarded_total") - before < missing as f64 {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "resync did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let any stragglers of the reconciliation arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moved = counter(&app, "grasp_sync_events_received_total");
    let neg_bytes = counter(&app, "grasp_sync_sync_bytes_total{method=\"negentropy\"}");
    println!(
        "resync: {n} events, {missing} missing ({:.2}%); {moved} events crossed the link ({:.2}% of all); {neg_bytes} negentropy bytes; forwarded {} ; {:.2}s",
        100.0 * missing as f64 / n as f64,
        100.0 * moved / n as f64,
        counter(&app, "grasp_sync_events_forwarded_total") - before,
        t0.elapsed().as_secs_f64()
    );
    app.shutdown(Duration::from_secs(10)).await;
}

async fn idle(n: usize) {
    let (_r, url) = remote().await;
    let app = app("idle", "").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib();
    let mut docs = String::new();
    for i in 0..n {
        docs.push_str(&format!(
            "---\napiVersion: sync.grasp.dev/v1alpha1\nkind: SyncRelay\nmetadata: {{name: r{i}}}\nspec: {{url: \"{url}/s{i}\", bootstrap: true}}\n"
        ));
    }
    app.shutdown(Duration::from_secs(5)).await;
    let app = self::app("idle2", &docs).await;
    let t0 = Instant::now();
    while counter(&app, "grasp_sync_connections{state=\"connected\"}") < n as f64 {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "only {} connected",
            counter(&app, "grasp_sync_connections")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_kib();
    println!(
        "idle: {n} sessions connected in {:.1}s; process RSS {} MiB (before sessions {} MiB; relay and app included); {:.1} KiB per session",
        t0.elapsed().as_secs_f64(),
        rss / 1024,
        base / 1024,
        (rss.saturating_sub(base)) as f64 / n as f64
    );
    app.shutdown(Duration::from_secs(10)).await;
}

#[tokio::main]
async fn main() {
    // `RUST_LOG` selects log lines (e.g. `nostr_lmdb=debug` shows the store's batch sizes).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("ingest");
    let n: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(match what {
            "idle" => 1000,
            _ => 20_000,
        });
    match what {
        "ingest" => ingest(n, false).await,
        "ingest-mem" => ingest(n, true).await,
        "resync" => resync(n).await,
        "idle" => idle(n).await,
        other => eprintln!("unknown mode {other}: ingest | resync | idle"),
    }
}
