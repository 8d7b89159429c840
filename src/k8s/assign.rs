//! Which worker holds which relay: rendezvous (highest-random-weight) hashing with bounded
//! loads. Pure and deterministic: the same relays, workers and current assignment always give
//! the same answer, whatever order they come in.
//!
//! Every (relay, worker) pair gets a stable score (SHA-256 of both names, never std's seeded
//! hasher, so every controller replica agrees). With `n` relays, `w` live workers and slack
//! `ε`, each worker holds between `floor = ⌊n / (w·(1+ε))⌋` and `cap = ⌈n·(1+ε) / w⌉`
//! relays. The assignment is computed in three phases:
//! 1. **keep**: a relay stays on its current worker when that worker is live and under `cap`
//!    (a worker over `cap` keeps its best-scoring relays), so nothing moves without cause;
//! 2. **place**: every other relay goes to its highest-scoring worker that is under `cap`;
//! 3. **fill**: a worker under `floor` pulls relays from workers above `floor`, first relays
//!    that are moving anyway, then (only for a worker far below, i.e. a new one) relays that
//!    could have stayed, those that score it highest first.
//!
//! So adding a worker moves about `n/w` relays (plus what a lower `cap` evicts), removing one
//! moves only its relays, and an unchanged input moves nothing. A move between two live
//! workers is carried out by the drain handshake (`crate::k8s::controller::drain`); this
//! module only says where each relay should end up.

use nostr::hashes::{sha256, Hash};
use std::collections::{BTreeMap, BTreeSet};

/// Default load slack ε: loads stay within `[n/(w·1.15), n·1.15/w]`.
pub const DEFAULT_EPSILON: f64 = 0.15;

/// One relay changing hands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Relay key.
    pub relay: String,
    /// The current worker (live or not), if any.
    pub from: Option<String>,
    /// The new worker.
    pub to: String,
}

/// The desired assignment and how to get there from the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssignmentPlan {
    /// Relay key → worker, for every relay (empty when there is no live worker).
    pub desired: BTreeMap<String, String>,
    /// Relays whose worker changes, by relay key.
    pub moves: Vec<Move>,
}

impl AssignmentPlan {
    /// Relays per worker (workers holding none are absent).
    pub fn loads(&self) -> BTreeMap<&str, usize> {
        let mut loads = BTreeMap::new();
        for w in self.desired.values() {
            *loads.entry(w.as_str()).or_insert(0) += 1;
        }
        loads
    }
}

/// The most relays one worker holds: `⌈n·(1+ε)/w⌉` (at least 1).
pub fn capacity(relays: usize, workers: usize, epsilon: f64) -> usize {
    if workers == 0 {
        return 0;
    }
    let cap = (relays as f64 * (1.0 + epsilon) / workers as f64).ceil() as usize;
    cap.max(1)
}

/// The fewest relays one worker holds once filled: `⌊n/(w·(1+ε))⌋`.
pub fn floor_load(relays: usize, workers: usize, epsilon: f64) -> usize {
    if workers == 0 {
        return 0;
    }
    (relays as f64 / (workers as f64 * (1.0 + epsilon))).floor() as usize
}

/// The rendezvous score of a (relay, worker) pair: the first 8 bytes of
/// `SHA-256(relay ‖ 0x00 ‖ worker)`. Stable across processes, versions and platforms.
pub fn score(relay: &str, worker: &str) -> u64 {
    let mut bytes = Vec::with_capacity(relay.len() + worker.len() + 1);
    bytes.extend_from_slice(relay.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(worker.as_bytes());
    let digest = sha256::Hash::hash(&bytes).to_byte_array();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Assigns every relay to a live worker. `current` is relay key → worker as it stands (workers
/// that are not live, and relays not in `relays`, are ignored). With no live worker the plan
/// is empty.
pub fn assign<R, W>(
    relays: R,
    workers: W,
    current: &BTreeMap<String, String>,
    epsilon: f64,
) -> AssignmentPlan
where
    R: IntoIterator,
    R::Item: AsRef<str>,
    W: IntoIterator,
    W::Item: AsRef<str>,
{
    let relays: Vec<String> = relays
        .into_iter()
        .map(|r| r.as_ref().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let workers: Vec<String> = workers
        .into_iter()
        .map(|w| w.as_ref().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if workers.is_empty() || relays.is_empty() {
        return AssignmentPlan::default();
    }
    let (n, w) = (relays.len(), workers.len());
    let cap = capacity(n, w, epsilon);
    let floor = floor_load(n, w, epsilon).min(cap);
    let scores: Vec<Vec<u64>> = relays
        .iter()
        .map(|r| workers.iter().map(|wk| score(r, wk)).collect())
        .collect();
    let worker_index: BTreeMap<&str, usize> = workers
        .iter()
        .enumerate()
        .map(|(i, wk)| (wk.as_str(), i))
        .collect();

    // Phase 1, keep: relays on a live worker stay, best scores first, up to `cap`.
    let mut placed: Vec<Option<usize>> = vec![None; n];
    let mut kept = vec![false; n];
    let mut on_worker: Vec<Vec<usize>> = vec![Vec::new(); w];
    for (ri, relay) in relays.iter().enumerate() {
        if let Some(&wi) = current
            .get(relay)
            .and_then(|c| worker_index.get(c.as_str()))
        {
            on_worker[wi].push(ri);
        }
    }
    let mut load = vec![0usize; w];
    for (wi, list) in on_worker.iter_mut().enumerate() {
        list.sort_by(|&a, &b| scores[b][wi].cmp(&scores[a][wi]).then(a.cmp(&b)));
        for &ri in list.iter().take(cap) {
            placed[ri] = Some(wi);
            kept[ri] = true;
            load[wi] += 1;
        }
    }

    // Phase 2, place: the rest go to their best-scoring worker with room.
    for ri in 0..n {
        if placed[ri].is_some() {
            continue;
        }
        let mut ranked: Vec<usize> = (0..w).collect();
        ranked.sort_by(|&a, &b| scores[ri][b].cmp(&scores[ri][a]).then(a.cmp(&b)));
        // cap·w ≥ n, so some worker always has room.
        if let Some(&wi) = ranked.iter().find(|&&wi| load[wi] < cap) {
            placed[ri] = Some(wi);
            load[wi] += 1;
        }
    }

    // Phase 3, fill: workers under `floor` pull from workers above it, preferring relays
    // that move anyway, then the ones that score the puller highest. Relays that could stay
    // are pulled only into a worker below the floor of one worker more (a new worker, in
    // practice): losing a worker raises the floor to exactly that level, so a removal never
    // moves anything but the lost worker's relays.
    let kept_floor = floor_load(n, w + 1, epsilon);
    let mut deficit: Vec<usize> = (0..w).filter(|&wi| load[wi] < floor).collect();
    deficit.sort_by(|&a, &b| load[a].cmp(&load[b]).then(a.cmp(&b)));
    for wi in deficit {
        let pull_kept = load[wi] < kept_floor;
        let mut candidates: Vec<usize> = (0..n)
            .filter(|&ri| placed[ri] != Some(wi) && (pull_kept || !kept[ri]))
            .collect();
        candidates.sort_by(|&a, &b| {
            kept[a]
                .cmp(&kept[b])
                .then(scores[b][wi].cmp(&scores[a][wi]))
                .then(a.cmp(&b))
        });
        for ri in candidates {
            if load[wi] >= floor {
                break;
            }
            let Some(donor) = placed[ri] else { continue };
            if load[donor] <= floor {
                continue;
            }
            load[donor] -= 1;
            load[wi] += 1;
            placed[ri] = Some(wi);
            kept[ri] = false;
        }
    }

    let mut plan = AssignmentPlan::default();
    for (ri, relay) in relays.iter().enumerate() {
        let Some(wi) = placed[ri] else { continue };
        let to = workers[wi].clone();
        let from = current.get(relay).cloned();
        if from.as_deref() != Some(to.as_str()) {
            plan.moves.push(Move {
                relay: relay.clone(),
                from,
                to: to.clone(),
            });
        }
        plan.desired.insert(relay.clone(), to);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    }

    #[test]
    fn scores_are_stable_across_runs() {
        // A fixed value: a change of hash would reshuffle every cluster on upgrade.
        assert_eq!(score("ns/relay", "worker-0"), score("ns/relay", "worker-0"));
        assert_ne!(score("ns/relay", "worker-0"), score("ns/relay", "worker-1"));
        assert_ne!(score("a", "bc"), score("ab", "c"));
    }

    #[test]
    fn bounds_hold_for_small_and_uneven_sets() {
        for n in [1usize, 2, 3, 7, 10, 33] {
            for w in 1usize..5 {
                let plan = assign(names("r", n), names("w", w), &BTreeMap::new(), 0.15);
                assert_eq!(plan.desired.len(), n);
                let cap = capacity(n, w, 0.15);
                let floor = floor_load(n, w, 0.15);
                for wk in names("w", w) {
                    let l = plan.loads().get(wk.as_str()).copied().unwrap_or(0);
                    assert!(l <= cap && l >= floor, "n={n} w={w} {wk}={l}");
                }
            }
        }
    }

    #[test]
    fn no_workers_or_no_relays_give_an_empty_plan() {
        let empty: Vec<String> = Vec::new();
        assert_eq!(
            assign(names("r", 3), &empty, &BTreeMap::new(), 0.15),
            AssignmentPlan::default()
        );
        assert_eq!(
            assign(&empty, names("w", 3), &BTreeMap::new(), 0.15),
            AssignmentPlan::default()
        );
    }

    #[test]
    fn a_settled_assignment_moves_nothing() {
        let first = assign(names("r", 100), names("w", 4), &BTreeMap::new(), 0.15);
        let again = assign(names("r", 100), names("w", 4), &first.desired, 0.15);
        assert!(again.moves.is_empty());
        assert_eq!(again.desired, first.desired);
    }
}
