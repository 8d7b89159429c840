//! `compute_actions`: the single decision point for new work, as desired minus observed.
//!
//! `new = target − pending − confirmed` becomes `AddFilters`; items held (pending or
//! confirmed) that left the target become `RemoveFilters`. Relays that are not connected are
//! skipped: they get a full diff when they reconnect.

use super::ids::{RelayId, RepoId, RootId};
use super::pending::{PendingSyncIndex, RelayPending};
use super::relay_index::{RelayState, RelaySyncIndex};
use super::repo_index::{RelayNeeds, RelayTargets, TargetDelta};

/// New items to subscribe on one relay (live, then historic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddFilters {
    /// The relay.
    pub relay: RelayId,
    /// New repos, sorted.
    pub repos: Vec<RepoId>,
    /// New root events, sorted.
    pub root_events: Vec<RootId>,
}

/// Items to stop syncing on one relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveFilters {
    /// The relay.
    pub relay: RelayId,
    /// Repos that left the target, sorted.
    pub repos: Vec<RepoId>,
    /// Root events that left the target, sorted.
    pub root_events: Vec<RootId>,
}

/// One decision of `compute_actions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Subscribe new items.
    Add(AddFilters),
    /// Unsubscribe items that left the target.
    Remove(RemoveFilters),
}

fn held_repo(p: Option<&RelayPending>, c: &RelayState, r: &RepoId) -> bool {
    c.repos.contains(r) || p.is_some_and(|p| p.has_repo(*r))
}

fn held_root(p: Option<&RelayPending>, c: &RelayState, r: &RootId) -> bool {
    c.root_events.contains(r) || p.is_some_and(|p| p.has_root(*r))
}

fn finish(
    relay: RelayId,
    mut add: AddFilters,
    mut remove: RemoveFilters,
) -> (Option<AddFilters>, Option<RemoveFilters>) {
    add.relay = relay;
    remove.relay = relay;
    for v in [&mut add.repos, &mut remove.repos] {
        v.sort_unstable();
        v.dedup();
    }
    for v in [&mut add.root_events, &mut remove.root_events] {
        v.sort_unstable();
        v.dedup();
    }
    let add = (!add.repos.is_empty() || !add.root_events.is_empty()).then_some(add);
    let remove = (!remove.repos.is_empty() || !remove.root_events.is_empty()).then_some(remove);
    (add, remove)
}

/// Full diff for one relay.
pub fn compute_relay_actions(
    relay: RelayId,
    target: Option<&RelayNeeds>,
    pending: Option<&RelayPending>,
    confirmed: &RelayState,
) -> (Option<AddFilters>, Option<RemoveFilters>) {
    let mut add = AddFilters::default();
    let mut remove = RemoveFilters::default();
    if let Some(t) = target {
        add.repos = t
            .repos
            .iter()
            .filter(|r| !held_repo(pending, confirmed, r))
            .copied()
            .collect();
        add.root_events = t
            .roots
            .keys()
            .filter(|r| !held_root(pending, confirmed, r))
            .copied()
            .collect();
    }
    let in_repo = |r: &RepoId| target.is_some_and(|t| t.repos.contains(r));
    let in_root = |r: &RootId| target.is_some_and(|t| t.roots.contains_key(r));
    remove.repos = confirmed
        .repos
        .iter()
        .filter(|r| !in_repo(r))
        .copied()
        .collect();
    remove.root_events = confirmed
        .root_events
        .iter()
        .filter(|r| !in_root(r))
        .copied()
        .collect();
    if let Some(p) = pending {
        remove.repos.extend(p.repos.keys().filter(|r| !in_repo(r)));
        remove
            .root_events
            .extend(p.roots.keys().filter(|r| !in_root(r)));
    }
    finish(relay, add, remove)
}

/// Incremental diff for one relay: looks only at the items in `delta`, so its cost is the size
/// of the change, not of the relay's target. Gives the same answer as the full diff whenever
/// the full diff was empty before the change.
pub fn compute_relay_delta_actions(
    relay: RelayId,
    delta: &TargetDelta,
    target: Option<&RelayNeeds>,
    pending: Option<&RelayPending>,
    confirmed: &RelayState,
) -> (Option<AddFilters>, Option<RemoveFilters>) {
    let in_repo = |r: &RepoId| target.is_some_and(|t| t.repos.contains(r));
    let in_root = |r: &RootId| target.is_some_and(|t| t.roots.contains_key(r));
    let touched_repos = delta.added_repos.iter().chain(&delta.removed_repos);
    let touched_roots = delta.added_roots.iter().chain(&delta.removed_roots);
    let mut add = AddFilters::default();
    let mut remove = RemoveFilters::default();
    for r in touched_repos {
        match (in_repo(r), held_repo(pending, confirmed, r)) {
            (true, false) => add.repos.push(*r),
            (false, true) => remove.repos.push(*r),
            _ => {}
        }
    }
    for r in touched_roots {
        match (in_root(r), held_root(pending, confirmed, r)) {
            (true, false) => add.root_events.push(*r),
            (false, true) => remove.root_events.push(*r),
            _ => {}
        }
    }
    finish(relay, add, remove)
}

/// The three-way diff over every connected relay, in relay-id order.
pub fn compute_actions(
    targets: &RelayTargets,
    pending: &PendingSyncIndex,
    confirmed: &RelaySyncIndex,
) -> Vec<Action> {
    let mut relays: Vec<&RelayId> = confirmed.keys().collect();
    relays.sort_unstable();
    let mut out = Vec::new();
    for relay in relays {
        let Some(state) = confirmed.get(relay).filter(|s| s.is_connected()) else {
            continue;
        };
        let (add, remove) =
            compute_relay_actions(*relay, targets.get(*relay), pending.get(relay), state);
        out.extend(remove.map(Action::Remove));
        out.extend(add.map(Action::Add));
    }
    out
}
