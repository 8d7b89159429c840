//! Properties of relay-to-worker assignment (`grasp_sync::k8s::assign`) and of the drain
//! handshake that carries out its moves (`grasp_sync::k8s::controller::drain`):
//! - balance: every worker within 25% of the mean (2,000 relays, 8 workers), and always
//!   within `[floor, cap]`;
//! - adding a worker moves at most `⌈n/N⌉` relays plus what the lower cap evicts;
//! - removing a worker moves only the relays it held;
//! - a settled assignment moves nothing; the result does not depend on input order;
//! - driven through the drain handshake, with workers that react in any order and die at
//!   any time, a relay never has two live workers holding a session.

use grasp_sync::api::conditions::Condition;
use grasp_sync::core::Millis;
use grasp_sync::k8s::assign::{assign, capacity, floor_load, AssignmentPlan, DEFAULT_EPSILON};
use grasp_sync::k8s::consts::drained_condition;
use grasp_sync::k8s::controller::drain::{next_step, DrainTracker, HolderView, Step};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn loads(plan: &AssignmentPlan, workers: &[String]) -> Vec<usize> {
    let l = plan.loads();
    workers
        .iter()
        .map(|w| l.get(w.as_str()).copied().unwrap_or(0))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn two_thousand_relays_on_eight_workers_balance_within_25_percent(seed in any::<u32>()) {
        let relays = names(&format!("ns-{seed}/relay"), 2_000);
        let workers = names(&format!("worker-{seed}"), 8);
        let plan = assign(&relays, &workers, &BTreeMap::new(), DEFAULT_EPSILON);
        prop_assert_eq!(plan.desired.len(), 2_000);
        let mean = 2_000.0 / 8.0;
        for (w, l) in workers.iter().zip(loads(&plan, &workers)) {
            let ratio = l as f64 / mean;
            prop_assert!((0.75..=1.25).contains(&ratio), "{} holds {} ({:.2} of the mean)", w, l, ratio);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn loads_stay_within_floor_and_cap(n in 0usize..400, w in 1usize..12, seed in any::<u16>()) {
        let relays = names(&format!("r{seed}"), n);
        let workers = names(&format!("w{seed}"), w);
        let plan = assign(&relays, &workers, &BTreeMap::new(), DEFAULT_EPSILON);
        prop_assert_eq!(plan.desired.len(), n);
        let (cap, floor) = (capacity(n, w, DEFAULT_EPSILON), floor_load(n, w, DEFAULT_EPSILON));
        for l in loads(&plan, &workers) {
            prop_assert!(l <= cap && l >= floor, "load {} outside [{}, {}]", l, floor, cap);
        }
    }

    #[test]
    fn adding_a_worker_moves_about_one_nth(n in 1usize..600, w in 1usize..10, seed in any::<u16>()) {
        let relays = names(&format!("r{seed}"), n);
        let old_workers = names(&format!("w{seed}"), w);
        let before = assign(&relays, &old_workers, &BTreeMap::new(), DEFAULT_EPSILON);
        let mut new_workers = old_workers.clone();
        new_workers.push(format!("w{seed}-new"));
        let after = assign(&relays, &new_workers, &before.desired, DEFAULT_EPSILON);
        let big_n = new_workers.len();
        let cap_new = capacity(n, big_n, DEFAULT_EPSILON);
        // What the lower cap evicts from the old workers: the cap's slack.
        let evicted: usize = loads(&before, &old_workers)
            .iter()
            .map(|l| l.saturating_sub(cap_new))
            .sum();
        let bound = n.div_ceil(big_n) + evicted;
        prop_assert!(after.moves.len() <= bound, "{} moves > {}", after.moves.len(), bound);
        for m in &after.moves {
            prop_assert!(m.from.is_some());
        }
    }

    #[test]
    fn removing_a_worker_moves_only_its_relays(
        n in 1usize..600, w in 2usize..10, victim in any::<prop::sample::Index>(), seed in any::<u16>()
    ) {
        let relays = names(&format!("r{seed}"), n);
        let workers = names(&format!("w{seed}"), w);
        let before = assign(&relays, &workers, &BTreeMap::new(), DEFAULT_EPSILON);
        let gone = workers[victim.index(w)].clone();
        let rest: Vec<String> = workers.iter().filter(|x| **x != gone).cloned().collect();
        let after = assign(&relays, &rest, &before.desired, DEFAULT_EPSILON);
        for m in &after.moves {
            prop_assert_eq!(m.from.as_deref(), Some(gone.as_str()), "{} moved", m.relay);
        }
        let held = before.desired.values().filter(|x| **x == gone).count();
        prop_assert_eq!(after.moves.len(), held);
    }

    #[test]
    fn settled_assignments_move_nothing_and_order_does_not_matter(
        n in 0usize..300, w in 1usize..8, seed in any::<u16>(), rotate in any::<prop::sample::Index>()
    ) {
        let relays = names(&format!("r{seed}"), n);
        let workers = names(&format!("w{seed}"), w);
        let plan = assign(&relays, &workers, &BTreeMap::new(), DEFAULT_EPSILON);
        let again = assign(&relays, &workers, &plan.desired, DEFAULT_EPSILON);
        prop_assert!(again.moves.is_empty());
        prop_assert_eq!(&again.desired, &plan.desired);
        let mut shuffled_relays = relays.clone();
        shuffled_relays.reverse();
        let mut shuffled_workers = workers.clone();
        shuffled_workers.rotate_left(rotate.index(w));
        let same = assign(&shuffled_relays, &shuffled_workers, &BTreeMap::new(), DEFAULT_EPSILON);
        prop_assert_eq!(same, plan);
    }
}

/// A model cluster: SyncRelay objects (label, annotation, the worker-written `Connected`
/// condition), worker liveness, and which workers really hold a session per relay.
#[derive(Debug, Default)]
struct Model {
    label: BTreeMap<String, String>,
    drain: BTreeMap<String, String>,
    connected: BTreeMap<String, Condition>,
    holders: BTreeMap<String, BTreeSet<String>>,
    live: BTreeSet<String>,
    tracker: DrainTracker,
    clock: u64,
}

#[derive(Debug, Clone)]
enum Op {
    /// The controller runs a pass.
    Controller,
    /// Worker `i` reacts to what its relays show.
    Worker(usize),
    /// Worker `i` dies (its Lease expires; by protocol it has closed its sessions).
    Kill(usize),
    /// Worker `i` starts (again).
    Start(usize),
}

const WORKERS: [&str; 4] = ["w-0", "w-1", "w-2", "w-3"];
const RELAYS: [&str; 6] = ["ns/a", "ns/b", "ns/c", "ns/d", "ns/e", "ns/f"];

impl Model {
    fn now(&self) -> Millis {
        Millis(1_000_000 + self.clock)
    }

    fn controller(&mut self) {
        let live: Vec<&str> = self.live.iter().map(String::as_str).collect();
        let plan = assign(RELAYS, &live, &self.label, DEFAULT_EPSILON);
        for relay in RELAYS {
            let label = self.label.get(relay).cloned();
            let drain = self.drain.get(relay).cloned();
            let connected = self.connected.get(relay);
            if let (Some(cur), Some(_)) = (&label, &drain) {
                self.tracker.note(relay, cur, connected, false, self.now());
            }
            let view = HolderView {
                label_live: label.as_ref().is_some_and(|l| self.live.contains(l)),
                acked: label
                    .as_ref()
                    .is_some_and(|l| self.tracker.acked(relay, l, connected)),
                drain_started: self.tracker.get(relay).map(|t| t.started),
                label: label.clone(),
                drain,
            };
            if live.is_empty() {
                continue;
            }
            // No timeout in this model: a timeout is "treat a slow worker as dead", which
            // only the Lease makes true.
            let desired = plan.desired.get(relay).map(String::as_str);
            match next_step(&view, desired, self.now(), Duration::MAX) {
                Step::Keep => {}
                Step::Assign { to, .. } => {
                    self.label.insert(relay.into(), to);
                    self.drain.remove(relay);
                    self.tracker.forget(relay);
                }
                Step::RequestDrain { target } => {
                    if let Some(cur) = &label {
                        let c = self.connected.get(relay).cloned();
                        self.tracker.note(relay, cur, c.as_ref(), true, self.now());
                    }
                    self.drain.insert(relay.into(), target);
                }
                Step::Complete { to, .. } => {
                    match to {
                        Some(w) => self.label.insert(relay.into(), w),
                        None => self.label.remove(relay),
                    };
                    self.drain.remove(relay);
                    self.tracker.forget(relay);
                }
                Step::Cancel => {
                    self.drain.remove(relay);
                    self.tracker.forget(relay);
                }
            }
        }
    }

    /// The worker protocol: hold a relay while labelled to it and no drain is asked; on a
    /// drain, close and acknowledge; close anything no longer labelled to it.
    fn worker(&mut self, w: &str) {
        if !self.live.contains(w) {
            return;
        }
        let stamp = format!("t{}", self.clock);
        for relay in RELAYS {
            let mine = self.label.get(relay).is_some_and(|l| l == w);
            let holders = self.holders.entry(relay.into()).or_default();
            if !mine {
                holders.remove(w);
                continue;
            }
            if self.drain.contains_key(relay) {
                holders.remove(w);
                self.connected
                    .insert(relay.into(), drained_condition(w, &stamp, None));
            } else if !holders.contains(w) {
                holders.insert(w.into());
                self.connected.insert(
                    relay.into(),
                    Condition {
                        type_: "Connected".into(),
                        status: true.into(),
                        reason: "Connected".into(),
                        message: String::new(),
                        last_transition_time: stamp.clone(),
                        observed_generation: None,
                    },
                );
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        self.clock += 1_000;
        match op {
            Op::Controller => self.controller(),
            Op::Worker(i) => self.worker(WORKERS[*i]),
            Op::Kill(i) => {
                let w = WORKERS[*i];
                self.live.remove(w);
                for h in self.holders.values_mut() {
                    h.remove(w);
                }
            }
            Op::Start(i) => {
                self.live.insert(WORKERS[*i].into());
            }
        }
    }

    fn live_holders(&self, relay: &str) -> usize {
        self.holders
            .get(relay)
            .map_or(0, |h| h.iter().filter(|w| self.live.contains(*w)).count())
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Controller),
        6 => (0..WORKERS.len()).prop_map(Op::Worker),
        1 => (0..WORKERS.len()).prop_map(Op::Kill),
        2 => (0..WORKERS.len()).prop_map(Op::Start),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_drain_handshake_never_lets_two_workers_hold_a_relay(
        ops in prop::collection::vec(op(), 1..200)
    ) {
        let mut m = Model::default();
        m.live.insert(WORKERS[0].into());
        for op in &ops {
            m.apply(op);
            for relay in RELAYS {
                prop_assert!(m.live_holders(relay) <= 1, "{} held twice after {:?}: {:?}", relay, op, m.holders.get(relay));
            }
        }
        // Quiesce: with workers fixed, the handshakes complete and every relay is held.
        if !m.live.is_empty() {
            for _ in 0..4 {
                m.apply(&Op::Controller);
                for i in 0..WORKERS.len() {
                    m.apply(&Op::Worker(i));
                }
            }
            for relay in RELAYS {
                prop_assert_eq!(m.live_holders(relay), 1, "{} not held at the end", relay);
                prop_assert!(!m.drain.contains_key(relay));
            }
        }
    }
}
