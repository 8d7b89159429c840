//! Peak RSS of the sync index at the project's scale (100k repos, 1M root events, 2k relays,
//! 5 relays per repo), in the steady state where every relay has confirmed its whole target.
//!
//! Run with `cargo run --release --example index_rss`. Linux only (reads `/proc/self/status`).
//! Exits non-zero if the peak RSS of the steady-state index exceeds 600 MB.

#[path = "../benches/support/mod.rs"]
mod support;

use grasp_sync::core::actions::{compute_actions, compute_relay_delta_actions};
use grasp_sync::core::pending::PendingSyncIndex;
use grasp_sync::core::repo_index::{derive_relay_targets, TargetChanges};
use std::hint::black_box;
use std::time::{Duration, Instant};
use support::{Fixture, Lcg, Scale};

const TARGET_MB: f64 = 600.0;

/// `(VmHWM, VmRSS)` in MB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn report(stage: &str, t: Duration) {
    let (hwm, rss) = memory();
    println!("{stage:<44} VmHWM {hwm:>7.1} MB  VmRSS {rss:>7.1} MB  ({t:.2?})");
}

fn main() {
    let scale = Scale::FULL;
    report("start", Duration::ZERO);

    let t = Instant::now();
    let mut fx = Fixture::build(scale);
    report("index + symbols + incremental targets", t.elapsed());
    let (repo_entries, root_entries) = fx.target_entries();
    println!(
        "  {} repos, {} root events, {} relays with a target, {repo_entries} repo + {root_entries} root target entries",
        fx.index.len(),
        fx.symbols.roots.len(),
        fx.targets.by_relay.len()
    );

    let t = Instant::now();
    let confirmed = fx.relays_confirmed_full();
    report("+ RelaySyncIndex, every target confirmed", t.elapsed());
    let (steady_hwm, _) = memory();

    // Transient peak of a full resync of every relay: a second RelayTargets plus the actions.
    // Against the confirmed index nothing is new, so also diff against empty relays.
    let pending = PendingSyncIndex::new();
    let t = Instant::now();
    let derived = derive_relay_targets(&fx.index);
    let actions = compute_actions(&derived, &pending, &confirmed);
    assert!(actions.is_empty(), "steady state: nothing to do");
    drop(derived);
    report("+ transient derive + compute_actions (no-op)", t.elapsed());
    let connected = fx.relays_connected_empty();
    let t = Instant::now();
    let actions = compute_actions(&fx.targets, &pending, &connected);
    report("+ compute_actions, everything new", t.elapsed());
    drop(actions);
    drop(connected);

    // Single-event latency distribution on the steady-state index.
    let mut rng = Lcg::new(7);
    let roots: Vec<_> = (0..20_000).map(|_| fx.new_root_event(&mut rng)).collect();
    let mut lat: Vec<Duration> = Vec::with_capacity(roots.len());
    for root in &roots {
        let t = Instant::now();
        let mut changes = TargetChanges::new();
        fx.index
            .apply_root(&mut fx.symbols, root, &mut fx.targets, &mut changes);
        for (relay, delta) in &changes {
            if let Some(state) = confirmed.get(relay) {
                black_box(compute_relay_delta_actions(
                    *relay,
                    delta,
                    fx.targets.get(*relay),
                    pending.get(relay),
                    state,
                ));
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "incremental new root event x{}: p50 {:.2?}  p99 {:.2?}  p99.9 {:.2?}  max {:.2?}",
        lat.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    report("end", Duration::ZERO);

    println!(
        "steady-state peak RSS {steady_hwm:.1} MB, target < {TARGET_MB} MB: {}",
        if steady_hwm < TARGET_MB {
            "met"
        } else {
            "MISSED"
        }
    );
    if steady_hwm >= TARGET_MB {
        std::process::exit(1);
    }
}
