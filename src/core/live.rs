//! Live subscriptions of one relay: which items each covers, and packing them into the
//! fewest REQs the relay's budget allows.

use super::filters::{self, TagVariant, TAG_VARIANTS};
use super::ids::{RepoId, RootId};
use super::repo_index::Symbols;
use nostr::{Filter, SubscriptionId};
use std::collections::{BTreeMap, HashSet};

/// One open live REQ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSub {
    /// Carries the layer-1 filter.
    pub layer1: bool,
    /// Repos it covers (fully or in part).
    pub repos: Vec<RepoId>,
    /// Root events it covers.
    pub roots: Vec<RootId>,
    /// Number of filters.
    pub filters: usize,
}

/// The live subscriptions of one relay.
#[derive(Debug, Clone, Default)]
pub struct LiveSet {
    /// Open live REQs by id.
    pub subs: BTreeMap<SubscriptionId, LiveSub>,
    /// Repos covered by live filters.
    pub repos: HashSet<RepoId>,
    /// Root events covered by live filters.
    pub roots: HashSet<RootId>,
}

impl LiveSet {
    /// Forgets everything (after UnsubscribeAll or a disconnect).
    pub fn clear(&mut self) {
        self.subs.clear();
        self.repos.clear();
        self.roots.clear();
    }

    /// Whether the layer-1 live filter is open.
    pub fn has_layer1(&self) -> bool {
        self.subs.values().any(|s| s.layer1)
    }
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    Layer1,
    Repos(usize, TagVariant),
    Roots(usize, TagVariant),
}

/// A planned live REQ: its filters (with `limit: 0`) and the items they cover.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedReq {
    /// The filters.
    pub filters: Vec<Filter>,
    /// What it covers.
    pub sub: LiveSub,
}

/// Filters needed for the given items at chunk size `chunk`.
pub fn filter_count(layer1: bool, repos: usize, roots: usize, chunk: usize) -> usize {
    let c = chunk.max(1);
    usize::from(layer1) + 3 * (repos.div_ceil(c) + roots.div_ceil(c))
}

/// The smallest chunk size, at least `base`, whose filters fit in `capacity` filters; `None`
/// when even one chunk per layer does not fit.
pub fn fitting_chunk(
    layer1: bool,
    repos: usize,
    roots: usize,
    base: usize,
    capacity: usize,
) -> Option<usize> {
    let mut chunk = base.max(1);
    let largest = repos.max(roots).max(1);
    loop {
        if filter_count(layer1, repos, roots, chunk) <= capacity {
            return Some(chunk);
        }
        if chunk >= largest {
            return None;
        }
        chunk = chunk.saturating_mul(2).min(largest);
    }
}

/// Packs live filters for the items into REQs of at most `max_filters`, chunking by `chunk`.
pub fn plan_live(
    symbols: &Symbols,
    layer1: bool,
    repos: &[RepoId],
    roots: &[RootId],
    chunk: usize,
    max_filters: usize,
) -> Vec<PlannedReq> {
    let chunk = chunk.max(1);
    let repo_chunks: Vec<&[RepoId]> = repos.chunks(chunk).collect();
    let root_chunks: Vec<&[RootId]> = roots.chunks(chunk).collect();
    let mut units: Vec<Unit> = Vec::new();
    if layer1 {
        units.push(Unit::Layer1);
    }
    for i in 0..repo_chunks.len() {
        units.extend(TAG_VARIANTS.iter().map(|v| Unit::Repos(i, *v)));
    }
    for i in 0..root_chunks.len() {
        units.extend(TAG_VARIANTS.iter().map(|v| Unit::Roots(i, *v)));
    }
    let repo_text: Vec<Vec<&str>> = repo_chunks
        .iter()
        .map(|c| {
            c.iter()
                .filter_map(|r| symbols.repo_ref(*r))
                .map(|r| r.as_str())
                .collect()
        })
        .collect();
    let root_text: Vec<Vec<String>> = root_chunks
        .iter()
        .map(|c| {
            c.iter()
                .filter_map(|r| symbols.root_event(*r))
                .map(|e| e.to_hex())
                .collect()
        })
        .collect();
    units
        .chunks(max_filters.max(1))
        .map(|group| {
            let mut sub = LiveSub::default();
            let mut out = Vec::with_capacity(group.len());
            let (mut last_repo, mut last_root) = (None, None);
            for unit in group {
                match *unit {
                    Unit::Layer1 => {
                        sub.layer1 = true;
                        out.push(filters::build_announcement_filter(None));
                    }
                    Unit::Repos(i, v) => {
                        out.extend(filters::repo_chunk_filters(&repo_text[i], &[v], None));
                        if last_repo != Some(i) {
                            sub.repos.extend_from_slice(repo_chunks[i]);
                            last_repo = Some(i);
                        }
                    }
                    Unit::Roots(i, v) => {
                        out.extend(filters::root_chunk_filters(&root_text[i], &[v], None));
                        if last_root != Some(i) {
                            sub.roots.extend_from_slice(root_chunks[i]);
                            last_root = Some(i);
                        }
                    }
                }
            }
            sub.filters = out.len();
            PlannedReq {
                filters: filters::as_live(out),
                sub,
            }
        })
        .collect()
}
