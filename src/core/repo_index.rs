//! `RepoSyncIndex` (what we want, per repo) and `RelayTargets` (the same, inverted per relay).
//!
//! The index is fed by the self-subscriber. Every update also maintains the relay targets
//! incrementally and records a per-relay [`TargetDelta`], so one new root event costs
//! O(relays of its repos) and `compute_actions` can look only at what changed.

use super::ids::{Interner, RelayId, RepoId, RootId};
use super::nip34::{Announcement, RepoRef, RootEvent};
use super::settings::Scope;
use super::url::RelayUrl;
use nostr::{EventId, Timestamp};
use std::collections::{HashMap, HashSet};

/// The interners shared by every index of one core.
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    /// Relay URLs.
    pub relays: Interner<RelayUrl>,
    /// Repo refs.
    pub repos: Interner<RepoRef>,
    /// Root event ids.
    pub roots: Interner<EventId>,
}

impl Symbols {
    /// Interns a relay URL.
    pub fn relay(&mut self, url: &RelayUrl) -> RelayId {
        RelayId(self.relays.intern(url))
    }

    /// The URL of a relay id.
    pub fn relay_url(&self, id: RelayId) -> Option<&RelayUrl> {
        self.relays.resolve(id.0)
    }

    /// The ref of a repo id.
    pub fn repo_ref(&self, id: RepoId) -> Option<&RepoRef> {
        self.repos.resolve(id.0)
    }

    /// The event id of a root id.
    pub fn root_event(&self, id: RootId) -> Option<&EventId> {
        self.roots.resolve(id.0)
    }
}

/// What one repository needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoNeeds {
    /// Relays from the newest announcement (empty until one arrives, or when it is not ours).
    pub relays: Vec<RelayId>,
    /// Root events that reference this repo; kept even before the announcement arrives.
    pub root_events: HashSet<RootId>,
    /// `(created_at, id)` of the newest announcement applied.
    pub version: Option<(Timestamp, EventId)>,
}

/// Repo → needs, the source of truth for what to sync.
#[derive(Debug, Clone, Default)]
pub struct RepoSyncIndex {
    repos: Vec<RepoNeeds>,
}

/// What changed in one relay's target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetDelta {
    /// Repos that entered the target.
    pub added_repos: Vec<RepoId>,
    /// Root events that entered the target.
    pub added_roots: Vec<RootId>,
    /// Repos that left the target.
    pub removed_repos: Vec<RepoId>,
    /// Root events that left the target.
    pub removed_roots: Vec<RootId>,
}

impl TargetDelta {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added_repos.is_empty()
            && self.added_roots.is_empty()
            && self.removed_repos.is_empty()
            && self.removed_roots.is_empty()
    }

    /// Number of recorded changes.
    pub fn len(&self) -> usize {
        self.added_repos.len()
            + self.added_roots.len()
            + self.removed_repos.len()
            + self.removed_roots.len()
    }

    /// Appends another delta.
    pub fn extend(&mut self, other: TargetDelta) {
        self.added_repos.extend(other.added_repos);
        self.added_roots.extend(other.added_roots);
        self.removed_repos.extend(other.removed_repos);
        self.removed_roots.extend(other.removed_roots);
    }
}

/// Per-relay deltas produced by one batch of index updates.
pub type TargetChanges = HashMap<RelayId, TargetDelta>;

/// What one relay should sync: the repos that list it and their root events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayNeeds {
    /// Repos whose newest announcement lists this relay.
    pub repos: HashSet<RepoId>,
    /// Root events of those repos, counted by how many of the repos hold them.
    pub roots: HashMap<RootId, u32>,
}

impl RelayNeeds {
    /// True when the relay has nothing to sync.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty() && self.roots.is_empty()
    }
}

/// Relay → needs: `derive_relay_targets` of the index, kept up to date incrementally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayTargets {
    /// Only relays with a non-empty target have an entry.
    pub by_relay: HashMap<RelayId, RelayNeeds>,
}

impl RelayTargets {
    /// The target of one relay, if it has any.
    pub fn get(&self, relay: RelayId) -> Option<&RelayNeeds> {
        self.by_relay.get(&relay)
    }

    fn add_repo(
        &mut self,
        relay: RelayId,
        repo: RepoId,
        needs: &RepoNeeds,
        delta: &mut TargetDelta,
    ) {
        let t = self.by_relay.entry(relay).or_default();
        if t.repos.insert(repo) {
            delta.added_repos.push(repo);
        }
        for root in &needs.root_events {
            let n = t.roots.entry(*root).or_insert(0);
            *n += 1;
            if *n == 1 {
                delta.added_roots.push(*root);
            }
        }
    }

    fn remove_repo(
        &mut self,
        relay: RelayId,
        repo: RepoId,
        needs: &RepoNeeds,
        delta: &mut TargetDelta,
    ) {
        let Some(t) = self.by_relay.get_mut(&relay) else {
            return;
        };
        if t.repos.remove(&repo) {
            delta.removed_repos.push(repo);
        }
        for root in &needs.root_events {
            if let Some(n) = t.roots.get_mut(root) {
                *n -= 1;
                if *n == 0 {
                    t.roots.remove(root);
                    delta.removed_roots.push(*root);
                }
            }
        }
        if t.is_empty() {
            self.by_relay.remove(&relay);
        }
    }

    fn add_root(&mut self, relay: RelayId, root: RootId, delta: &mut TargetDelta) {
        let n = self
            .by_relay
            .entry(relay)
            .or_default()
            .roots
            .entry(root)
            .or_insert(0);
        *n += 1;
        if *n == 1 {
            delta.added_roots.push(root);
        }
    }
}

/// Inverts the whole index: relay → { repos, root events }. The core keeps the result up to
/// date incrementally; this full form is the reference and the benchmark baseline.
pub fn derive_relay_targets(index: &RepoSyncIndex) -> RelayTargets {
    let mut targets = RelayTargets::default();
    let mut sink = TargetDelta::default();
    for (i, needs) in index.repos.iter().enumerate() {
        let repo = RepoId(i as u32);
        for relay in &needs.relays {
            targets.add_repo(*relay, repo, needs, &mut sink);
            sink = TargetDelta::default();
        }
    }
    targets
}

impl RepoSyncIndex {
    /// Number of repos known (with or without an announcement).
    pub fn len(&self) -> usize {
        self.repos.len()
    }

    /// True when no repo is known.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty()
    }

    /// The needs of one repo.
    pub fn repo(&self, id: RepoId) -> Option<&RepoNeeds> {
        self.repos.get(id.0 as usize)
    }

    /// Every repo with its id.
    pub fn iter(&self) -> impl Iterator<Item = (RepoId, &RepoNeeds)> {
        self.repos
            .iter()
            .enumerate()
            .map(|(i, n)| (RepoId(i as u32), n))
    }

    fn slot(&mut self, id: RepoId) -> &mut RepoNeeds {
        let i = id.0 as usize;
        if self.repos.len() <= i {
            self.repos.resize_with(i + 1, RepoNeeds::default);
        }
        &mut self.repos[i]
    }

    /// Applies an announcement if it is the newest for its repo (by `created_at`, then id).
    /// Its relay set replaces the old one; under `Scope::ListingUs` an announcement that does
    /// not list our relay leaves the repo with no relays. Returns whether it was applied.
    pub fn apply_announcement(
        &mut self,
        symbols: &mut Symbols,
        ann: &Announcement,
        scope: Scope,
        targets: &mut RelayTargets,
        changes: &mut TargetChanges,
    ) -> bool {
        let repo = RepoId(symbols.repos.intern(&ann.repo));
        if self.slot(repo).version.is_some_and(|v| v >= ann.version()) {
            return false;
        }
        let ours = ann.lists_own_relay || scope == Scope::All;
        let mut new_relays: Vec<RelayId> = if ours {
            ann.relays.iter().map(|u| symbols.relay(u)).collect()
        } else {
            Vec::new()
        };
        new_relays.sort_unstable();
        new_relays.dedup();
        let needs = std::mem::take(self.slot(repo));
        for r in needs
            .relays
            .iter()
            .filter(|r| new_relays.binary_search(r).is_err())
        {
            targets.remove_repo(*r, repo, &needs, changes.entry(*r).or_default());
        }
        for r in new_relays.iter().filter(|r| !needs.relays.contains(r)) {
            targets.add_repo(*r, repo, &needs, changes.entry(*r).or_default());
        }
        let slot = self.slot(repo);
        *slot = RepoNeeds {
            relays: new_relays,
            root_events: needs.root_events,
            version: Some(ann.version()),
        };
        true
    }

    /// Attaches a root event to every repo it names; a repo without an announcement yet
    /// keeps it until one lands. Returns whether anything was new.
    pub fn apply_root(
        &mut self,
        symbols: &mut Symbols,
        root: &RootEvent,
        targets: &mut RelayTargets,
        changes: &mut TargetChanges,
    ) -> bool {
        let root_id = RootId(symbols.roots.intern(&root.id));
        let mut any = false;
        for r in &root.repos {
            let repo = RepoId(symbols.repos.intern(r));
            let slot = self.slot(repo);
            if !slot.root_events.insert(root_id) {
                continue;
            }
            any = true;
            for relay in &slot.relays {
                targets.add_root(*relay, root_id, changes.entry(*relay).or_default());
            }
        }
        any
    }
}
