//! `PendingSyncIndex`: per relay, historic batches in flight, and the parts each still awaits.
//!
//! A batch confirms only when every part is done: every REQ page up to the last, or every
//! negentropy session. Parts queue here until the relay's subscription budget has a free slot.

use super::filters::TagVariant;
use super::ids::{RelayId, RepoId, RootId};
use super::pagination::PageCursor;
use super::time::Millis;
use nostr::{SubscriptionId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Identifies a batch within a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BatchId(pub u64);

/// How a batch fetches history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SyncMethod {
    /// NIP-77 set reconciliation against what our relay holds.
    Negentropy,
    /// REQ, paged until an empty page, confirmed at EOSE.
    ReqEose,
}

impl SyncMethod {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            SyncMethod::Negentropy => "negentropy",
            SyncMethod::ReqEose => "req_eose",
        }
    }
}

/// Why a batch exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchKind {
    /// Layer-1 history (announcements, repo state).
    Layer1,
    /// New items from `compute_actions`.
    NewItems,
    /// Catch-up of already-confirmed items after a quick reconnect.
    CatchUp,
}

/// The items a batch syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingItems {
    /// Repos (layer 2).
    pub repos: Vec<RepoId>,
    /// Root events (layer 3).
    pub root_events: Vec<RootId>,
}

impl PendingItems {
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty() && self.root_events.is_empty()
    }
}

/// What one part fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartItems {
    /// The layer-1 filter.
    Layer1,
    /// Layer-2 chunks (each chunk yields one filter per variant).
    Repos(Vec<Vec<RepoId>>),
    /// Layer-3 chunks.
    Roots(Vec<Vec<RootId>>),
}

/// A part waiting for a subscription slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedPart {
    /// Its batch.
    pub batch: BatchId,
    /// What it fetches.
    pub items: PartItems,
    /// Tag variants it covers (negentropy parts cover one).
    pub variants: Vec<TagVariant>,
    /// Negentropy or REQ.
    pub method: SyncMethod,
    /// Negentropy sessions of this part that failed (the first failure is retried by
    /// negentropy: an interrupted download is usually transient, and REQ cannot reach every
    /// event).
    pub neg_failures: u8,
    /// The part was moved to negentropy because its REQ walk hit a run of equal `created_at`
    /// longer than a page; a second truncated walk is then confirmed as the relay's limit.
    pub escalated: bool,
}

/// A part in flight on one subscription id.
#[derive(Debug, Clone)]
pub struct ActivePart {
    /// The queued form, kept to retry it (negentropy fallback, rate limit).
    pub part: QueuedPart,
    /// REQ pagination, one cursor per filter still walking (empty for negentropy).
    pub cursors: Vec<PageCursor>,
    /// Fails the batch if no EOSE or result arrives by then.
    pub deadline: Millis,
    /// A finished cursor of this part left events of a long equal-`created_at` run behind.
    pub truncated: bool,
}

/// One in-flight batch.
#[derive(Debug, Clone)]
pub struct PendingBatch {
    /// Its id.
    pub batch_id: BatchId,
    /// Its items.
    pub items: PendingItems,
    /// Its purpose.
    pub kind: BatchKind,
    /// The method it started with; becomes `ReqEose` if any part fell back.
    pub sync_method: SyncMethod,
    /// Historic lower bound, if any.
    pub since: Option<Timestamp>,
    /// Parts queued or active.
    pub parts_left: u32,
    /// When it started.
    pub started_at: Millis,
}

/// The pending state of one relay.
#[derive(Debug, Clone, Default)]
pub struct RelayPending {
    /// Batches by id.
    pub batches: BTreeMap<BatchId, PendingBatch>,
    /// Parts waiting for a slot, oldest first.
    pub queue: VecDeque<QueuedPart>,
    /// Parts in flight, by subscription id.
    pub active: HashMap<SubscriptionId, ActivePart>,
    /// Pending repos with the number of batches holding them.
    pub repos: HashMap<RepoId, u32>,
    /// Pending root events with the number of batches holding them.
    pub roots: HashMap<RootId, u32>,
}

impl RelayPending {
    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Whether a repo is pending.
    pub fn has_repo(&self, r: RepoId) -> bool {
        self.repos.contains_key(&r)
    }

    /// Whether a root event is pending.
    pub fn has_root(&self, r: RootId) -> bool {
        self.roots.contains_key(&r)
    }

    /// Registers a batch's items.
    pub fn add_batch(&mut self, batch: PendingBatch) {
        for r in &batch.items.repos {
            *self.repos.entry(*r).or_insert(0) += 1;
        }
        for r in &batch.items.root_events {
            *self.roots.entry(*r).or_insert(0) += 1;
        }
        self.batches.insert(batch.batch_id, batch);
    }

    /// Removes a batch, its queued parts and its item counts; returns it and the subscription
    /// ids of its active parts (for the shell to close).
    pub fn remove_batch(&mut self, id: BatchId) -> Option<(PendingBatch, Vec<SubscriptionId>)> {
        let batch = self.batches.remove(&id)?;
        for r in &batch.items.repos {
            dec(&mut self.repos, r);
        }
        for r in &batch.items.root_events {
            dec(&mut self.roots, r);
        }
        self.queue.retain(|p| p.batch != id);
        let mut subs: Vec<SubscriptionId> = self
            .active
            .iter()
            .filter(|(_, a)| a.part.batch == id)
            .map(|(s, _)| s.clone())
            .collect();
        // `active` is a HashMap: sort so the returned order (and the core's output) is
        // deterministic.
        subs.sort();
        for s in &subs {
            self.active.remove(s);
        }
        Some((batch, subs))
    }

    /// Drops a repo from every batch that holds it (its target shrank).
    pub fn forget_repo(&mut self, r: RepoId) {
        if self.repos.remove(&r).is_some() {
            for b in self.batches.values_mut() {
                b.items.repos.retain(|x| *x != r);
            }
        }
    }

    /// Drops a root event from every batch that holds it.
    pub fn forget_root(&mut self, r: RootId) {
        if self.roots.remove(&r).is_some() {
            for b in self.batches.values_mut() {
                b.items.root_events.retain(|x| *x != r);
            }
        }
    }
}

fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            map.remove(k);
        }
    }
}

/// Relay → pending state.
pub type PendingSyncIndex = HashMap<RelayId, RelayPending>;
