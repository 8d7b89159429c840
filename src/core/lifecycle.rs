//! The seed's lifecycle entry points: `fresh_start`, `quick_reconnect`, `long_reconnect`,
//! `daily_sync`, `consolidate`, `handle_new_sync_filters` and `sync_computed_filters`.
//!
//! Each appends the commands it decides to `out`, in execution order: pending state is always
//! cleared first, and live subscriptions are always opened before historic ones, so the two
//! overlap and leave no gap.

use super::actions::{compute_relay_actions, AddFilters, RemoveFilters};
use super::command::{Command, MetricEvent, SubPurpose};
use super::engine::SyncCore;
use super::filters;
use super::ids::{RelayId, RepoId, RootId};
use super::live::{filter_count, fitting_chunk, plan_live, PlannedReq};
use super::pending::{BatchKind, PendingItems};
use super::settings::RelayLimits;
use super::time::{duration_ms, Millis};
use super::url::RelayUrl;
use nostr::{Filter, Timestamp};
use std::collections::HashSet;

/// How a relay's subscription budget is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Subscriptions in all.
    pub max_subscriptions: usize,
    /// Filters per REQ.
    pub max_filters: usize,
    /// Subscriptions kept for live REQs.
    pub live: usize,
    /// Subscriptions kept for historic parts (at least one).
    pub historic: usize,
}

impl Budget {
    /// Splits `limits`: a quarter (at least one) for historic parts, the rest for live.
    pub fn of(limits: RelayLimits) -> Self {
        let max = limits.max_subscriptions.max(2) as usize;
        let historic = (max / 4).max(1);
        Budget {
            max_subscriptions: max,
            max_filters: limits.max_filters.max(1) as usize,
            live: max - historic,
            historic,
        }
    }
}

/// Where new live REQs may go: the subscriptions free for them, and (when they replace closed
/// ones) the `since` that bridges the gap.
#[derive(Debug, Clone, Copy)]
struct LiveRoom {
    free_subs: usize,
    since: Option<Timestamp>,
}

impl SyncCore {
    /// `fresh_start` for a relay by URL (initial connect, long reconnect, daily sync).
    pub fn fresh_start(&mut self, now: Millis, relay: &RelayUrl) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(id) = self.relay_id(relay) {
            self.fresh_start_id(now, id, &mut out);
        }
        out
    }

    /// `consolidate` for a relay by URL.
    pub fn consolidate(&mut self, now: Millis, relay: &RelayUrl) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(id) = self.relay_id(relay) {
            self.consolidate_id(now, id, &mut out);
        }
        out
    }

    /// `daily_sync` for a relay by URL.
    pub fn daily_sync(&mut self, now: Millis, relay: &RelayUrl) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(id) = self.relay_id(relay) {
            self.daily_sync_id(now, id, &mut out);
        }
        out
    }

    /// Clear pending, then confirmed; L1 live, L1 historic (no `since`); compute_actions.
    pub(crate) fn fresh_start_id(&mut self, now: Millis, id: RelayId, out: &mut Vec<Command>) {
        self.clear_pending(id, out);
        out.push(Command::ClearConfirmed {
            relay: self.url(id),
        });
        if let Some(s) = self.relays.get_mut(&id) {
            s.clear_sync_state();
        }
        self.unsubscribe_all_if_open(id, out);
        self.open_live(id, true, &[], &[], out);
        self.start_layer1(now, id, None, out);
        self.schedule_daily(now, id);
        self.compute_and_sync(now, id, out);
    }

    /// Clear pending; L1 live, L1 historic since; L2+L3 from confirmed, live then historic
    /// since; compute_actions for anything new.
    pub(crate) fn quick_reconnect_id(
        &mut self,
        now: Millis,
        id: RelayId,
        since: Timestamp,
        out: &mut Vec<Command>,
    ) {
        self.metric(id, MetricEvent::QuickReconnect, out);
        self.clear_pending(id, out);
        self.unsubscribe_all_if_open(id, out);
        // L1 and the confirmed items are packed together, as a consolidation would: opened
        // apart, the items may not fit beside the L1 REQ.
        let (repos, roots) = self.confirmed_items(id);
        self.open_live(id, true, &repos, &roots, out);
        // An L1 history that never confirmed is redone whole, not just since the disconnect.
        let l1_since = self
            .relays
            .get(&id)
            .is_some_and(|s| s.layer1_confirmed)
            .then_some(since);
        // Like the L2/L3 catch-up, layer 1 is not confirmed until its catch-up confirms: a
        // catch-up cut short (consolidation, timeout, disconnect) is then redone whole.
        if let Some(s) = self.relays.get_mut(&id) {
            s.layer1_confirmed = false;
        }
        self.start_layer1(now, id, l1_since, out);
        let items = PendingItems {
            repos,
            root_events: roots,
        };
        self.start_batch(now, id, BatchKind::CatchUp, items, Some(since), out);
        if self.relays.get(&id).is_some_and(|s| s.next_daily.is_none()) {
            self.schedule_daily(now, id);
        }
        self.compute_and_sync(now, id, out);
    }

    /// Records the reconnect, then `fresh_start`: state that old is not trusted.
    pub(crate) fn long_reconnect_id(&mut self, now: Millis, id: RelayId, out: &mut Vec<Command>) {
        self.metric(id, MetricEvent::LongReconnect, out);
        self.fresh_start_id(now, id, out);
    }

    /// The daily timer: `fresh_start` without a reconnect metric.
    pub(crate) fn daily_sync_id(&mut self, now: Millis, id: RelayId, out: &mut Vec<Command>) {
        self.metric(id, MetricEvent::DailySync, out);
        self.fresh_start_id(now, id, out);
    }

    /// Clear pending; unsubscribe all; live only, rebuilt from confirmed (with the new items
    /// packed into the same REQs); then historic for the new items only.
    pub(crate) fn consolidate_id(&mut self, now: Millis, id: RelayId, out: &mut Vec<Command>) {
        self.metric(id, MetricEvent::Consolidation, out);
        self.clear_pending(id, out);
        out.push(Command::UnsubscribeAll {
            relay: self.url(id),
        });
        if let Some(l) = self.live.get_mut(&id) {
            l.clear();
        }
        let Some(state) = self.relays.get(&id) else {
            return;
        };
        let (add, remove) = compute_relay_actions(id, self.targets.get(id), None, state);
        self.deltas.remove(&id);
        if let Some(rm) = remove {
            self.drop_confirmed(id, &rm.repos, &rm.root_events);
        }
        let (mut repos, mut roots) = self.confirmed_items(id);
        let add = add.unwrap_or(AddFilters {
            relay: id,
            ..AddFilters::default()
        });
        repos.extend(&add.repos);
        roots.extend(&add.root_events);
        repos.sort_unstable();
        roots.sort_unstable();
        // The old live REQs are closed before the new ones open: see `bridge_since`.
        let since = self.bridge_since(now);
        self.open_live_from(id, true, &repos, &roots, Some(since), out);
        let items = PendingItems {
            repos: add.repos,
            root_events: add.root_events,
        };
        self.start_batch(now, id, BatchKind::NewItems, items, None, out);
        if self.relays.get(&id).is_some_and(|s| !s.layer1_confirmed) {
            self.start_layer1(now, id, None, out);
        }
    }

    /// Where live REQs that replace closed ones start. Between the CLOSE of the old REQs and
    /// the new REQ the relay may take an event that goes to neither (the soak found such
    /// losses after consolidations). So a replacing live REQ asks for stored events too, since
    /// now minus the quick-reconnect window (the margin a quick reconnect trusts), instead of
    /// `limit: 0`. It costs no subscription and no historic slot; the duplicates are dropped
    /// by the forwarder's dedup.
    fn bridge_since(&self, now: Millis) -> Timestamp {
        (now - self.settings.quick_reconnect_window).to_timestamp()
    }

    /// `handle_new_sync_filters`: ensure the connection, consolidate if the budget would be
    /// exceeded, then `sync_computed_filters`.
    pub(crate) fn handle_new_sync_filters(
        &mut self,
        now: Millis,
        add: AddFilters,
        out: &mut Vec<Command>,
    ) {
        let id = add.relay;
        let connected = self.relays.get(&id).is_some_and(|s| s.is_connected());
        if !connected {
            self.maybe_connect(now, id, out);
            return;
        }
        if !self.ready(now, id) {
            // Cooling down or backing off: keep the work for later.
            let d = self.deltas.entry(id).or_default();
            d.added_repos.extend(add.repos);
            d.added_roots.extend(add.root_events);
            return;
        }
        self.sync_computed_filters(now, add, None, out);
    }

    /// `sync_computed_filters`: live for items not yet live, then historic.
    pub(crate) fn sync_computed_filters(
        &mut self,
        now: Millis,
        add: AddFilters,
        since: Option<Timestamp>,
        out: &mut Vec<Command>,
    ) {
        let id = add.relay;
        let mut add = add;
        // A consolidation earlier in the same pass (by `remove_filters`) may have started
        // these already: never request an item twice.
        if let Some(p) = self.pending.get(&id) {
            add.repos.retain(|r| !p.has_repo(*r));
            add.root_events.retain(|r| !p.has_root(*r));
        }
        if add.repos.is_empty() && add.root_events.is_empty() {
            return;
        }
        let live = self.live.entry(id).or_default();
        let new_repos: Vec<RepoId> = add
            .repos
            .iter()
            .filter(|r| !live.repos.contains(r))
            .copied()
            .collect();
        let new_roots: Vec<RootId> = add
            .root_events
            .iter()
            .filter(|r| !live.roots.contains(r))
            .copied()
            .collect();
        let open_live = live.subs.len();
        // Any open live REQ can be repacked, the layer-1 one included: with only that one
        // open, new items that do not fit beside it must still get a consolidation.
        let mergeable = !live.subs.is_empty();
        if !new_repos.is_empty() || !new_roots.is_empty() {
            let budget = Budget::of(self.effective_limits(id));
            // Historic parts may hold more than their share after the budget was lowered.
            let active = self.pending.get(&id).map_or(0, |p| p.active.len());
            let free = budget
                .live
                .saturating_sub(open_live)
                .min(budget.max_subscriptions.saturating_sub(open_live + active));
            let need = filter_count(
                false,
                new_repos.len(),
                new_roots.len(),
                self.settings.chunk_size,
            )
            .div_ceil(budget.max_filters);
            if need > free && mergeable {
                self.consolidate_id(now, id, out);
                return;
            }
            let room = LiveRoom {
                free_subs: free,
                since: None,
            };
            if !self.open_live_within(id, false, &new_repos, &new_roots, room, out) {
                return;
            }
        }
        let items = PendingItems {
            repos: add.repos,
            root_events: add.root_events,
        };
        self.start_batch(now, id, BatchKind::NewItems, items, since, out);
    }

    /// Applies `RemoveFilters`: forget the items, and re-open the live REQs that covered them
    /// without them (subscribe-before-unsubscribe when the budget allows, so no gap).
    pub(crate) fn remove_filters(
        &mut self,
        now: Millis,
        rm: RemoveFilters,
        out: &mut Vec<Command>,
    ) {
        let id = rm.relay;
        self.drop_confirmed(id, &rm.repos, &rm.root_events);
        if let Some(p) = self.pending.get_mut(&id) {
            for r in &rm.repos {
                p.forget_repo(*r);
            }
            for r in &rm.root_events {
                p.forget_root(*r);
            }
        }
        let gone_repos: HashSet<RepoId> = rm.repos.iter().copied().collect();
        let gone_roots: HashSet<RootId> = rm.root_events.iter().copied().collect();
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        let affected: Vec<_> = live
            .subs
            .iter()
            .filter(|(_, s)| {
                s.repos.iter().any(|r| gone_repos.contains(r))
                    || s.roots.iter().any(|r| gone_roots.contains(r))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if affected.is_empty() {
            return;
        }
        let mut layer1 = false;
        let mut keep_repos: Vec<RepoId> = Vec::new();
        let mut keep_roots: Vec<RootId> = Vec::new();
        for sub in &affected {
            if let Some(s) = live.subs.remove(sub) {
                layer1 |= s.layer1;
                keep_repos.extend(s.repos.iter().filter(|r| !gone_repos.contains(r)));
                keep_roots.extend(s.roots.iter().filter(|r| !gone_roots.contains(r)));
            }
        }
        for r in &gone_repos {
            live.repos.remove(r);
        }
        for r in &gone_roots {
            live.roots.remove(r);
        }
        keep_repos.sort_unstable();
        keep_repos.dedup();
        keep_roots.sort_unstable();
        keep_roots.dedup();
        let open_now = live.subs.len() + self.pending.get(&id).map_or(0, |p| p.active.len());
        let budget = Budget::of(self.effective_limits(id));
        let url = self.url(id);
        let unsubscribe: Vec<Command> = affected
            .into_iter()
            .map(|sub| Command::Unsubscribe {
                relay: url.clone(),
                sub,
            })
            .collect();
        let plan = self.plan_live_fitting(id, layer1, &keep_repos, &keep_roots, unsubscribe.len());
        let live_open = self.live.get(&id).map_or(0, |l| l.subs.len());
        let free = budget
            .live
            .saturating_sub(live_open)
            .min(budget.max_subscriptions.saturating_sub(open_now));
        if plan.len() > free {
            // The rebuilt REQs do not fit beside what stays open: repack everything instead
            // (the UnsubscribeAll closes the affected REQs).
            self.consolidate_id(now, id, out);
            return;
        }
        let overlap_fits = open_now + unsubscribe.len() + plan.len() <= budget.max_subscriptions;
        if !overlap_fits {
            out.extend(unsubscribe.iter().cloned());
        }
        let bridge = (!overlap_fits).then(|| self.bridge_since(now));
        self.subscribe_planned(id, plan, bridge, out);
        if overlap_fits {
            out.extend(unsubscribe);
        }
    }

    /// L1 + L2 + L3 filters rebuilt from confirmed state only (never pending).
    pub fn reconstruct_filters(&self, relay: &RelayUrl) -> Vec<Filter> {
        let Some(id) = self.relay_id(relay) else {
            return Vec::new();
        };
        let (repos, roots) = self.confirmed_items(id);
        let refs: Vec<&str> = repos
            .iter()
            .filter_map(|r| self.symbols.repo_ref(*r))
            .map(|r| r.as_str())
            .collect();
        let ids: Vec<String> = roots
            .iter()
            .filter_map(|r| self.symbols.root_event(*r))
            .map(|e| e.to_hex())
            .collect();
        let mut out = vec![filters::build_announcement_filter(None)];
        out.extend(filters::build_layer2_and_layer3_filters(
            &refs,
            &ids,
            self.settings.chunk_size,
            None,
        ));
        out
    }

    /// Confirmed repos and root events of a relay, sorted.
    pub(crate) fn confirmed_items(&self, id: RelayId) -> (Vec<RepoId>, Vec<RootId>) {
        let Some(s) = self.relays.get(&id) else {
            return (Vec::new(), Vec::new());
        };
        let mut repos: Vec<RepoId> = s.repos.iter().copied().collect();
        let mut roots: Vec<RootId> = s.root_events.iter().copied().collect();
        repos.sort_unstable();
        roots.sort_unstable();
        (repos, roots)
    }

    fn drop_confirmed(&mut self, id: RelayId, repos: &[RepoId], roots: &[RootId]) {
        if let Some(s) = self.relays.get_mut(&id) {
            for r in repos {
                s.repos.remove(r);
            }
            for r in roots {
                s.root_events.remove(r);
            }
        }
    }

    /// Clears a relay's pending state first thing. Items of an interrupted catch-up are
    /// demoted from confirmed, so the next diff fetches their whole history again: a
    /// catch-up cut short must not leave a hole.
    pub(crate) fn clear_pending(&mut self, id: RelayId, out: &mut Vec<Command>) {
        let p = self.pending.remove(&id).unwrap_or_default();
        let mut closed: Vec<_> = p.active.keys().cloned().collect();
        closed.sort();
        for b in p.batches.values().filter(|b| b.kind == BatchKind::CatchUp) {
            let (repos, roots) = (b.items.repos.clone(), b.items.root_events.clone());
            self.drop_confirmed(id, &repos, &roots);
        }
        out.push(Command::ClearPending {
            relay: self.url(id),
            closed,
        });
    }

    fn unsubscribe_all_if_open(&mut self, id: RelayId, out: &mut Vec<Command>) {
        if let Some(l) = self.live.get_mut(&id) {
            if !l.subs.is_empty() {
                l.clear();
                out.push(Command::UnsubscribeAll {
                    relay: self.url(id),
                });
            }
        }
    }

    /// Opens live REQs for the items within the live budget left, growing the chunk size
    /// when needed. Returns false when even that cannot fit.
    fn open_live(
        &mut self,
        id: RelayId,
        layer1: bool,
        repos: &[RepoId],
        roots: &[RootId],
        out: &mut Vec<Command>,
    ) -> bool {
        self.open_live_from(id, layer1, repos, roots, None, out)
    }

    /// [`open_live`](Self::open_live) whose REQs also ask for stored events since `since`
    /// (replacing closed REQs; see `bridge_since`).
    fn open_live_from(
        &mut self,
        id: RelayId,
        layer1: bool,
        repos: &[RepoId],
        roots: &[RootId],
        since: Option<Timestamp>,
        out: &mut Vec<Command>,
    ) -> bool {
        let budget = Budget::of(self.effective_limits(id));
        let open = self.live.get(&id).map_or(0, |l| l.subs.len());
        self.open_live_within(
            id,
            layer1,
            repos,
            roots,
            LiveRoom {
                free_subs: budget.live.saturating_sub(open),
                since,
            },
            out,
        )
    }

    fn open_live_within(
        &mut self,
        id: RelayId,
        layer1: bool,
        repos: &[RepoId],
        roots: &[RootId],
        room: LiveRoom,
        out: &mut Vec<Command>,
    ) -> bool {
        let LiveRoom { free_subs, since } = room;
        if !layer1 && repos.is_empty() && roots.is_empty() {
            return true;
        }
        let budget = Budget::of(self.effective_limits(id));
        let capacity = free_subs * budget.max_filters;
        let Some(chunk) = fitting_chunk(
            layer1,
            repos.len(),
            roots.len(),
            self.settings.chunk_size,
            capacity,
        ) else {
            self.metric(id, MetricEvent::BudgetTooSmall, out);
            return false;
        };
        let plan = plan_live(
            &self.symbols,
            layer1,
            repos,
            roots,
            chunk,
            budget.max_filters,
        );
        self.subscribe_planned(id, plan, since, out);
        true
    }

    fn plan_live_fitting(
        &self,
        id: RelayId,
        layer1: bool,
        repos: &[RepoId],
        roots: &[RootId],
        subs: usize,
    ) -> Vec<PlannedReq> {
        let budget = Budget::of(self.effective_limits(id));
        let chunk = fitting_chunk(
            layer1,
            repos.len(),
            roots.len(),
            self.settings.chunk_size,
            subs.max(1) * budget.max_filters,
        )
        .unwrap_or(repos.len().max(roots.len()).max(1));
        plan_live(
            &self.symbols,
            layer1,
            repos,
            roots,
            chunk,
            budget.max_filters,
        )
    }

    /// Opens planned live REQs; with `since`, each also asks for stored events since then.
    fn subscribe_planned(
        &mut self,
        id: RelayId,
        plan: Vec<PlannedReq>,
        since: Option<Timestamp>,
        out: &mut Vec<Command>,
    ) {
        let url = self.url(id);
        for mut req in plan {
            if req.filters.is_empty() {
                continue;
            }
            if let Some(since) = since {
                for f in &mut req.filters {
                    f.limit = None;
                    f.since = Some(since);
                }
            }
            let sub = self.new_sub_id("l");
            let live = self.live.entry(id).or_default();
            live.repos.extend(&req.sub.repos);
            live.roots.extend(&req.sub.roots);
            live.subs.insert(sub.clone(), req.sub);
            out.push(Command::Subscribe {
                relay: url.clone(),
                sub,
                filters: req.filters,
                purpose: SubPurpose::Live,
            });
        }
    }

    /// Layer-1 history (announcements and repo state), optionally since a time.
    fn start_layer1(
        &mut self,
        now: Millis,
        id: RelayId,
        since: Option<Timestamp>,
        out: &mut Vec<Command>,
    ) {
        self.start_batch(
            now,
            id,
            BatchKind::Layer1,
            PendingItems::default(),
            since,
            out,
        );
    }

    fn schedule_daily(&mut self, now: Millis, id: RelayId) {
        let d = self.settings.daily_sync;
        let period = self
            .rng
            .uniform_inclusive(duration_ms(d.min), duration_ms(d.max));
        if let Some(s) = self.relays.get_mut(&id) {
            s.next_daily = Some(Millis(now.0.saturating_add(period)));
        }
    }
}
