//! Index-scale benchmarks: 100k repos, 1M root events, 2k relays, 5 relays per repo.
//!
//! Run with `cargo bench --bench core_index`. Every figure should be read as a ratio to the
//! `baseline` group of the same run, because the machine is shared and noisy.
//! Under `cargo test --benches` (no `--bench` flag) the fixture is built at 1/100 scale and
//! each benchmark runs once, as a smoke test.

mod support;

use criterion::{Criterion, SamplingMode};
use grasp_sync::core::actions::{compute_actions, compute_relay_delta_actions, Action};
use grasp_sync::core::pending::PendingSyncIndex;
use grasp_sync::core::relay_index::RelaySyncIndex;
use grasp_sync::core::repo_index::{derive_relay_targets, TargetChanges};
use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};
use support::{Fixture, Lcg, Scale};

/// The trivial reference operation: 1M `u32` into a default (SipHash) `HashSet`.
fn baseline(c: &mut Criterion, small: &Fixture) {
    let mut g = c.benchmark_group("baseline");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("hashset_insert_1m_u32", |b| {
        b.iter(|| {
            let mut s = HashSet::new();
            for i in 0..1_000_000u32 {
                s.insert(black_box(i));
            }
            s
        })
    });
    g.bench_function("derive_relay_targets_1_100_scale", |b| {
        b.iter(|| derive_relay_targets(black_box(&small.index)))
    });
    g.finish();
}

/// Sums an action list, so the work cannot be optimised away and the shape can be checked.
fn action_totals(actions: &[Action]) -> (usize, usize, usize) {
    actions
        .iter()
        .fold((0, 0, 0), |(n, repos, roots), a| match a {
            Action::Add(a) => (n + 1, repos + a.repos.len(), roots + a.root_events.len()),
            Action::Remove(r) => (n + 1, repos + r.repos.len(), roots + r.root_events.len()),
        })
}

/// Full derive plus the three-way diff with every relay connected and nothing held.
fn full(c: &mut Criterion, fx: &Fixture) {
    let pending = PendingSyncIndex::new();
    let connected: RelaySyncIndex = fx.relays_connected_empty();

    // The diff must ask for the whole target: one Add per relay, every entry new.
    let actions = compute_actions(&derive_relay_targets(&fx.index), &pending, &connected);
    let (n, repos, roots) = action_totals(&actions);
    let (want_repos, want_roots) = fx.target_entries();
    assert_eq!(n, fx.relay_ids.len());
    assert_eq!((repos, roots), (want_repos, want_roots));
    assert_eq!(derive_relay_targets(&fx.index), fx.targets);
    drop(actions);

    let mut g = c.benchmark_group("full");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    g.bench_function("derive_plus_compute_actions", |b| {
        b.iter(|| {
            let targets = derive_relay_targets(black_box(&fx.index));
            compute_actions(&targets, &pending, &connected)
        })
    });
    g.bench_function("derive_relay_targets", |b| {
        b.iter(|| derive_relay_targets(black_box(&fx.index)))
    });
    g.bench_function("compute_actions", |b| {
        b.iter(|| compute_actions(black_box(&fx.targets), &pending, &connected))
    });
    g.finish();
}

/// One new root event for an existing repo on the full index, in the steady state (every
/// relay connected and fully confirmed): `apply_root`, then the delta diff per touched relay.
fn incremental(c: &mut Criterion, fx: &mut Fixture) {
    let pending = PendingSyncIndex::new();
    let confirmed = fx.relays_confirmed_full();
    let mut rng = Lcg::new(42);

    // Check the shape once: a new root of a 5-relay repo yields 5 Adds of one root each.
    let root = fx.new_root_event(&mut rng);
    let mut changes = TargetChanges::new();
    assert!(fx
        .index
        .apply_root(&mut fx.symbols, &root, &mut fx.targets, &mut changes));
    assert_eq!(changes.len(), fx.scale.relays_per_repo);
    for (relay, delta) in &changes {
        let state = confirmed.get(relay).expect("every relay is known");
        let (add, remove) = compute_relay_delta_actions(
            *relay,
            delta,
            fx.targets.get(*relay),
            pending.get(relay),
            state,
        );
        assert!(remove.is_none());
        let add = add.expect("the new root is not held yet");
        assert_eq!((add.repos.len(), add.root_events.len()), (0, 1));
    }

    let mut g = c.benchmark_group("incremental");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("new_root_event", |b| {
        b.iter_custom(|iters| {
            // Fresh events, built outside the timed region. The index keeps them: criterion
            // runs a few hundred thousand iterations, so the index only grows past 1M roots,
            // which makes the figure slightly pessimistic, never optimistic.
            let roots: Vec<_> = (0..iters).map(|_| fx.new_root_event(&mut rng)).collect();
            let start = Instant::now();
            for root in &roots {
                let mut changes = TargetChanges::new();
                fx.index
                    .apply_root(&mut fx.symbols, root, &mut fx.targets, &mut changes);
                for (relay, delta) in &changes {
                    let Some(state) = confirmed.get(relay) else {
                        continue;
                    };
                    black_box(compute_relay_delta_actions(
                        *relay,
                        delta,
                        fx.targets.get(*relay),
                        pending.get(relay),
                        state,
                    ));
                }
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let scale = if benchmarking {
        Scale::FULL
    } else {
        Scale::FULL.divided(100)
    };
    let mut c = Criterion::default().configure_from_args();

    let small = Fixture::build(Scale::FULL.divided(100));
    let t = Instant::now();
    let mut fx = Fixture::build(scale);
    let (repo_entries, root_entries) = fx.target_entries();
    eprintln!(
        "fixture: {} repos, {} root events, {} relays, {} repo + {} root target entries, built in {:.2?}",
        fx.index.len(),
        fx.symbols.roots.len(),
        fx.targets.by_relay.len(),
        repo_entries,
        root_entries,
        t.elapsed()
    );

    baseline(&mut c, &small);
    full(&mut c, &fx);
    incremental(&mut c, &mut fx);
    c.final_summary();
}
