//! `SyncCore`: the whole sync algorithm as one deterministic state machine.
//!
//! `handle(now, input)` returns the commands to execute, in order. The relay sessions own the
//! sockets and feed observations back; this struct owns every index and makes every decision.
//! Being a plain value with no locks, it is driven from one task by message passing, so no
//! lock is ever held across network I/O (an upstream defect).

use super::actions::{compute_relay_actions, compute_relay_delta_actions, RemoveFilters};
use super::command::{Command, DisconnectReason, Input, MetricEvent};
use super::ids::{RelayId, RepoId, RootId};
use super::live::LiveSet;
use super::nip34::{
    parse_announcement, parse_root_event, Announcement, OwnRelay, ParseLimits, RootEvent,
    KIND_REPO_ANNOUNCEMENT, ROOT_KINDS,
};
use super::pending::{BatchId, PendingSyncIndex};
use super::relay_index::{ConnectionStatus, Nip77Support, RelayState, RelaySyncIndex};
use super::repo_index::{RelayTargets, RepoSyncIndex, Symbols, TargetChanges, TargetDelta};
use super::rng::CoreRng;
use super::settings::{RelayLimits, SyncSettings};
use super::time::Millis;
use super::url::RelayUrl;
use nostr::{Event, Timestamp};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Counters the shell exports as metrics (pull-based, bounded labels).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Events received from our relay.
    pub own_events: u64,
    /// Own-relay events of kinds the index does not use.
    pub own_ignored: u64,
    /// Announcements that do not list our relay (ignored under `ListingUs`).
    pub not_listing_us: u64,
    /// Events or tag values skipped, by reason.
    pub rejects: BTreeMap<&'static str, u64>,
    /// EOSE or results for subscriptions no longer pending.
    pub stale_replies: u64,
    /// Equal-`created_at` runs longer than a page.
    pub truncated_runs: u64,
}

enum OwnItem {
    Announcement(Announcement),
    Root(RootEvent),
}

/// The sync core. See the module docs.
pub struct SyncCore {
    pub(crate) settings: SyncSettings,
    pub(crate) own: OwnRelay,
    pub(crate) rng: CoreRng,
    /// Interners.
    pub symbols: Symbols,
    /// What we want, per repo.
    pub index: RepoSyncIndex,
    /// What we want, per relay.
    pub targets: RelayTargets,
    /// Confirmed state per relay.
    pub relays: RelaySyncIndex,
    /// In-flight batches per relay.
    pub pending: PendingSyncIndex,
    pub(crate) live: HashMap<RelayId, LiveSet>,
    pub(crate) deltas: HashMap<RelayId, TargetDelta>,
    pub(crate) needs_consolidate: HashSet<RelayId>,
    pub(crate) nip77_warned: HashSet<RelayId>,
    own_queue: Vec<OwnItem>,
    own_deadline: Option<Millis>,
    own_last_seen: Option<Timestamp>,
    discovered: HashSet<RelayId>,
    next_reap: Option<Millis>,
    pub(crate) next_batch: u64,
    pub(crate) next_sub: u64,
    /// Counters.
    pub stats: CoreStats,
}

impl SyncCore {
    /// A core for our relay, with settings and an RNG seed (for the daily timer).
    pub fn new(settings: SyncSettings, own: OwnRelay, seed: u64) -> Self {
        SyncCore {
            settings,
            own,
            rng: CoreRng::new(seed),
            symbols: Symbols::default(),
            index: RepoSyncIndex::default(),
            targets: RelayTargets::default(),
            relays: RelaySyncIndex::new(),
            pending: PendingSyncIndex::new(),
            live: HashMap::new(),
            deltas: HashMap::new(),
            needs_consolidate: HashSet::new(),
            nip77_warned: HashSet::new(),
            own_queue: Vec::new(),
            own_deadline: None,
            own_last_seen: None,
            discovered: HashSet::new(),
            next_reap: None,
            next_batch: 0,
            next_sub: 0,
            stats: CoreStats::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &SyncSettings {
        &self.settings
    }

    /// Our relay's URLs.
    pub fn own_relay(&self) -> &OwnRelay {
        &self.own
    }

    /// Where the self-subscriber resumes after a reconnect: last seen minus the quick window.
    pub fn self_subscriber_since(&self) -> Option<Timestamp> {
        let margin = self.settings.quick_reconnect_window.as_secs();
        self.own_last_seen
            .map(|t| Timestamp::from_secs(t.as_secs().saturating_sub(margin)))
    }

    /// The id of a known relay.
    pub fn relay_id(&self, url: &RelayUrl) -> Option<RelayId> {
        self.symbols.relays.get(url).map(RelayId)
    }

    pub(crate) fn url(&self, id: RelayId) -> RelayUrl {
        self.relays
            .get(&id)
            .map(|s| s.url.clone())
            .or_else(|| self.symbols.relay_url(id).cloned())
            .unwrap_or_else(|| {
                RelayUrl::parse("ws://unknown.invalid").expect("static URL is valid")
            })
    }

    pub(crate) fn effective_limits(&self, id: RelayId) -> RelayLimits {
        self.relays
            .get(&id)
            .map_or(self.settings.default_limits, |s| s.limits)
    }

    /// Handles one input at time `now`; returns the commands to execute, in order.
    pub fn handle(&mut self, now: Millis, input: Input) -> Vec<Command> {
        let mut out = Vec::new();
        match input {
            Input::OwnEvent(event) => self.on_own_event(now, &event),
            Input::ManageRelay {
                url,
                bootstrap,
                suspended,
                limits,
            } => self.on_manage(now, url, bootstrap, suspended, limits, &mut out),
            Input::UnmanageRelay { url } => self.on_unmanage(&url, &mut out),
            Input::Connected {
                relay,
                limits,
                nip77,
            } => self.on_connected(now, &relay, limits, nip77, &mut out),
            Input::ConnectFailed { relay } => self.on_connect_failed(now, &relay),
            Input::Disconnected { relay } => self.on_disconnected(now, &relay, &mut out),
            Input::Eose { relay, sub, pages } => self.on_eose(now, &relay, &sub, &pages, &mut out),
            Input::Closed {
                relay,
                sub,
                message,
            } => self.on_closed(now, &relay, &sub, &message, &mut out),
            Input::Notice { relay, message } => self.on_notice(now, &relay, &message, &mut out),
            Input::NegentropyDone {
                relay,
                sub,
                outcome,
            } => self.on_negentropy_done(now, &relay, &sub, outcome, &mut out),
            Input::Tick => {}
        }
        self.tick(now, &mut out);
        out
    }

    fn on_own_event(&mut self, now: Millis, event: &Event) {
        self.stats.own_events += 1;
        self.own_last_seen = Some(
            self.own_last_seen
                .map_or(event.created_at, |t| t.max(event.created_at)),
        );
        let kind = event.kind.as_u16();
        let limits = ParseLimits {
            max_relays: self.settings.max_relays_per_announcement,
            max_url_len: self.settings.max_relay_url_len,
        };
        let item = if kind == KIND_REPO_ANNOUNCEMENT {
            parse_announcement(event, &self.own, limits).map(OwnItem::Announcement)
        } else if ROOT_KINDS.contains(&kind) {
            parse_root_event(event).map(OwnItem::Root)
        } else {
            self.stats.own_ignored += 1;
            return;
        };
        match item {
            Ok(item) => {
                let rejects = match &item {
                    OwnItem::Announcement(a) => &a.rejects,
                    OwnItem::Root(r) => &r.rejects,
                };
                for (reason, n) in rejects {
                    *self.stats.rejects.entry(reason).or_insert(0) += u64::from(*n);
                }
                self.own_queue.push(item);
                // The window opens with the first event and does not reset on later ones.
                self.own_deadline
                    .get_or_insert(now + self.settings.batch_window);
            }
            Err(e) => *self.stats.rejects.entry(e.reason()).or_insert(0) += 1,
        }
    }

    /// Applies the self-subscriber batch: update the index, then compute_actions for every
    /// relay whose target changed.
    fn process_own_batch(&mut self, now: Millis, out: &mut Vec<Command>) {
        self.own_deadline = None;
        let items = std::mem::take(&mut self.own_queue);
        let mut changes = TargetChanges::new();
        for item in &items {
            match item {
                OwnItem::Announcement(a) => {
                    if !a.lists_own_relay {
                        self.stats.not_listing_us += 1;
                    }
                    self.index.apply_announcement(
                        &mut self.symbols,
                        a,
                        self.settings.scope,
                        &mut self.targets,
                        &mut changes,
                    );
                }
                OwnItem::Root(r) => {
                    self.index
                        .apply_root(&mut self.symbols, r, &mut self.targets, &mut changes);
                }
            }
        }
        let mut relays: Vec<RelayId> = changes.keys().copied().collect();
        relays.sort_unstable();
        for relay in relays {
            let Some(delta) = changes.remove(&relay) else {
                continue;
            };
            if delta.is_empty() {
                continue;
            }
            self.note_target_change(now, relay, out);
            self.deltas.entry(relay).or_default().extend(delta);
            self.apply_delta(now, relay, out);
        }
    }

    /// Discovery and connection decisions after a relay's target changed.
    fn note_target_change(&mut self, now: Millis, relay: RelayId, out: &mut Vec<Command>) {
        let has_target = self.targets.get(relay).is_some();
        let managed = self.relays.get(&relay).is_some_and(|s| s.managed);
        if has_target && !managed && self.discovered.insert(relay) {
            out.push(Command::Discovered {
                relay: self.url(relay),
            });
        }
        if !has_target {
            self.discovered.remove(&relay);
        }
        if let Some(state) = self.relays.get_mut(&relay) {
            if has_target {
                state.target_empty_since = None;
                state.reaped = false;
            } else if state.target_empty_since.is_none() {
                state.target_empty_since = Some(now);
            }
        }
        if has_target {
            self.maybe_connect(now, relay, out);
        }
    }

    /// Whether new work may be sent to the relay now.
    pub(crate) fn ready(&self, now: Millis, relay: RelayId) -> bool {
        self.relays.get(&relay).is_some_and(|s| {
            s.is_connected() && !s.health.in_cooldown(now) && s.health.may_connect(now)
        })
    }

    /// Runs the incremental compute_actions for a relay's accumulated target delta.
    pub(crate) fn apply_delta(&mut self, now: Millis, relay: RelayId, out: &mut Vec<Command>) {
        let connected = self
            .relays
            .get(&relay)
            .is_some_and(RelayState::is_connected);
        if !connected {
            // A reconnect runs the full diff; the delta is not needed.
            self.deltas.remove(&relay);
            return;
        }
        if !self.ready(now, relay) {
            return;
        }
        let Some(delta) = self.deltas.remove(&relay) else {
            return;
        };
        let Some(state) = self.relays.get(&relay) else {
            return;
        };
        let (add, mut remove) = compute_relay_delta_actions(
            relay,
            &delta,
            self.targets.get(relay),
            self.pending.get(&relay),
            state,
        );
        // An item whose batch failed is neither pending nor confirmed but still covered live:
        // when it leaves the target, its live filters must go too.
        if let Some(live) = self.live.get(&relay) {
            let target = self.targets.get(relay);
            let repos = delta
                .removed_repos
                .iter()
                .filter(|r| live.repos.contains(r) && !target.is_some_and(|t| t.repos.contains(r)));
            let roots = delta.removed_roots.iter().filter(|r| {
                live.roots.contains(r) && !target.is_some_and(|t| t.roots.contains_key(r))
            });
            let (repos, roots): (Vec<RepoId>, Vec<RootId>) =
                (repos.copied().collect(), roots.copied().collect());
            if !repos.is_empty() || !roots.is_empty() {
                let rm = remove.get_or_insert_with(|| RemoveFilters {
                    relay,
                    ..RemoveFilters::default()
                });
                rm.repos.extend(repos);
                rm.root_events.extend(roots);
                rm.repos.sort_unstable();
                rm.repos.dedup();
                rm.root_events.sort_unstable();
                rm.root_events.dedup();
            }
        }
        if let Some(rm) = remove {
            self.remove_filters(now, rm, out);
        }
        if let Some(add) = add {
            self.handle_new_sync_filters(now, add, out);
        }
    }

    /// Full compute_actions for one relay, then execute.
    pub(crate) fn compute_and_sync(&mut self, now: Millis, relay: RelayId, out: &mut Vec<Command>) {
        self.deltas.remove(&relay);
        let Some(state) = self.relays.get(&relay).filter(|s| s.is_connected()) else {
            return;
        };
        let (add, remove) = compute_relay_actions(
            relay,
            self.targets.get(relay),
            self.pending.get(&relay),
            state,
        );
        if let Some(rm) = remove {
            self.remove_filters(now, rm, out);
        }
        if let Some(add) = add {
            self.handle_new_sync_filters(now, add, out);
        }
    }

    fn on_manage(
        &mut self,
        now: Millis,
        url: RelayUrl,
        bootstrap: bool,
        suspended: bool,
        limits: Option<RelayLimits>,
        out: &mut Vec<Command>,
    ) {
        let id = self.symbols.relay(&url);
        let defaults = self.settings.default_limits;
        let state = self
            .relays
            .entry(id)
            .or_insert_with(|| RelayState::new(url, defaults));
        state.managed = true;
        state.is_bootstrap = bootstrap;
        state.limit_overrides = limits.map(RelayLimits::sanitized);
        let old_limits = state.limits;
        if let Some(o) = state.limit_overrides {
            // On a live connection what was learned (NIP-11, refusals) still holds: the
            // overrides only cap it. The next connect re-learns under the new overrides.
            state.limits = if state.is_connected() {
                cap_limits(state.limits, Some(o))
            } else {
                o
            };
        }
        let limits_changed = state.limits != old_limits;
        let was_suspended = std::mem::replace(&mut state.suspended, suspended);
        if suspended && !was_suspended && state.connection_status != ConnectionStatus::Disconnected
        {
            self.drop_connection(id, DisconnectReason::Suspended, out);
        }
        // New limits may leave more open than the budget allows (queued parts would never
        // get a slot) or parts packed for more filters: re-plan within them.
        if limits_changed && self.relays.get(&id).is_some_and(RelayState::is_connected) {
            self.needs_consolidate.insert(id);
        }
        if self.targets.get(id).is_none() && state_target_empty_unset(self.relays.get(&id)) {
            if let Some(s) = self.relays.get_mut(&id) {
                s.target_empty_since = Some(now);
            }
        }
        self.maybe_connect(now, id, out);
    }

    fn on_unmanage(&mut self, url: &RelayUrl, out: &mut Vec<Command>) {
        let Some(id) = self.relay_id(url) else {
            return;
        };
        if self
            .relays
            .get(&id)
            .is_some_and(|s| s.connection_status != ConnectionStatus::Disconnected)
        {
            out.push(Command::Disconnect {
                relay: url.clone(),
                reason: DisconnectReason::Removed,
            });
        }
        self.relays.remove(&id);
        self.pending.remove(&id);
        self.live.remove(&id);
        self.deltas.remove(&id);
        self.needs_consolidate.remove(&id);
        self.discovered.remove(&id);
    }

    /// Disconnects on purpose and forgets the session state.
    fn drop_connection(&mut self, id: RelayId, reason: DisconnectReason, out: &mut Vec<Command>) {
        let url = self.url(id);
        out.push(Command::Disconnect { relay: url, reason });
        self.pending.remove(&id);
        self.live.remove(&id);
        self.deltas.remove(&id);
        self.needs_consolidate.remove(&id);
        if let Some(s) = self.relays.get_mut(&id) {
            s.connection_status = ConnectionStatus::Disconnected;
            s.clear_sync_state();
            s.disconnected_at = None;
            s.health.record_disconnected();
            s.nip77 = Nip77Support::Unknown;
        }
    }

    /// Emits `Connect` when the relay is managed, wanted, idle and out of backoff.
    pub(crate) fn maybe_connect(&mut self, now: Millis, id: RelayId, out: &mut Vec<Command>) {
        let has_target = self.targets.get(id).is_some();
        let Some(s) = self.relays.get_mut(&id) else {
            return;
        };
        let wanted = has_target || s.is_bootstrap;
        if s.managed
            && !s.suspended
            && !s.reaped
            && wanted
            && s.connection_status == ConnectionStatus::Disconnected
            && s.health.may_connect(now)
        {
            s.connection_status = ConnectionStatus::Connecting;
            out.push(Command::Connect {
                relay: s.url.clone(),
            });
        }
    }

    fn on_connected(
        &mut self,
        now: Millis,
        url: &RelayUrl,
        limits: Option<RelayLimits>,
        nip77: Option<bool>,
        out: &mut Vec<Command>,
    ) {
        let Some(id) = self.relay_id(url) else {
            return;
        };
        let window = self.settings.quick_reconnect_window;
        let Some(s) = self.relays.get_mut(&id) else {
            return;
        };
        s.connection_status = ConnectionStatus::Connected;
        s.last_connected = Some(now);
        s.health.record_connected(now);
        s.nip77 = match nip77 {
            Some(false) => Nip77Support::Unsupported,
            _ => Nip77Support::Unknown,
        };
        if let Some(learned) = limits.map(RelayLimits::sanitized) {
            s.limits = cap_limits(learned, s.limit_overrides);
        }
        // The 15-minute rule is measured from the disconnect, not from the last connect.
        let decision = match s.disconnected_at {
            None => Reconnect::Fresh,
            Some(at) if now.since(at) < window => Reconnect::Quick(at),
            Some(_) => Reconnect::Long,
        };
        if decision != Reconnect::Fresh {
            s.reconnects = s.reconnects.saturating_add(1);
        }
        match decision {
            Reconnect::Fresh => self.fresh_start_id(now, id, out),
            Reconnect::Quick(at) => {
                let since = (at - window).to_timestamp();
                self.quick_reconnect_id(now, id, since, out);
            }
            Reconnect::Long => self.long_reconnect_id(now, id, out),
        }
        if let Some(s) = self.relays.get_mut(&id) {
            s.disconnected_at = None;
        }
    }

    fn on_connect_failed(&mut self, now: Millis, url: &RelayUrl) {
        let Some(id) = self.relay_id(url) else {
            return;
        };
        let backoff = self.settings.backoff;
        if let Some(s) = self.relays.get_mut(&id) {
            s.connection_status = ConnectionStatus::Disconnected;
            s.health.record_failure(now, &backoff);
        }
    }

    fn on_disconnected(&mut self, now: Millis, url: &RelayUrl, out: &mut Vec<Command>) {
        let Some(id) = self.relay_id(url) else {
            return;
        };
        let backoff = self.settings.backoff;
        let Some(s) = self.relays.get_mut(&id) else {
            return;
        };
        let previous = s.connection_status;
        s.connection_status = ConnectionStatus::Disconnected;
        s.nip77 = Nip77Support::Unknown;
        s.health.record_disconnected();
        match previous {
            ConnectionStatus::Connected => {
                s.disconnected_at = Some(now);
                s.health.record_failure(now, &backoff);
            }
            // A connection that dropped while being set up is a failed attempt: back off,
            // and keep the original disconnect time for the 15-minute rule.
            ConnectionStatus::Connecting => s.health.record_failure(now, &backoff),
            ConnectionStatus::Disconnected => {}
        }
        // A dead connection confirms nothing: its subscriptions are gone.
        self.clear_pending(id, out);
        if let Some(l) = self.live.get_mut(&id) {
            l.clear();
        }
        self.deltas.remove(&id);
        self.needs_consolidate.remove(&id);
    }

    /// Runs timers: the self-subscriber window, part timeouts, health, connects, daily sync,
    /// deferred work and the reaper.
    fn tick(&mut self, now: Millis, out: &mut Vec<Command>) {
        if self.own_deadline.is_some_and(|d| d <= now) {
            self.process_own_batch(now, out);
        }
        self.expire_parts(now, out);
        let mut ids: Vec<RelayId> = self.relays.keys().copied().collect();
        ids.sort_unstable();
        let stability = self.settings.stability_period;
        for id in ids {
            if let Some(s) = self.relays.get_mut(&id) {
                s.health.tick(now, stability);
            }
            self.maybe_connect(now, id, out);
            let connected = self.relays.get(&id).is_some_and(RelayState::is_connected);
            if !connected {
                continue;
            }
            if self
                .relays
                .get(&id)
                .and_then(|s| s.next_daily)
                .is_some_and(|t| t <= now)
            {
                self.daily_sync_id(now, id, out);
                continue;
            }
            if self.ready(now, id) {
                if self.needs_consolidate.remove(&id) {
                    self.consolidate_id(now, id, out);
                } else if self.deltas.contains_key(&id) {
                    self.apply_delta(now, id, out);
                }
                self.pump(now, id, out);
            }
        }
        if self.next_reap.is_none_or(|t| t <= now) {
            self.next_reap = Some(now + self.settings.reap_interval);
            self.reap(now, out);
        }
    }

    /// Disconnects relays whose target stayed empty past the grace period. Never a bootstrap
    /// relay, and never one still syncing (pending work), whatever it has confirmed.
    fn reap(&mut self, now: Millis, out: &mut Vec<Command>) {
        let grace = self.settings.reap_grace;
        let mut victims: Vec<RelayId> = self
            .relays
            .iter()
            .filter(|(id, s)| {
                !s.is_bootstrap
                    && !s.reaped
                    && self.targets.get(**id).is_none()
                    && s.target_empty_since.is_some_and(|t| now.since(t) >= grace)
                    && self.pending.get(id).is_none_or(|p| p.is_empty())
            })
            .map(|(id, _)| *id)
            .collect();
        victims.sort_unstable();
        for id in victims {
            let connected = self
                .relays
                .get(&id)
                .is_some_and(|s| s.connection_status != ConnectionStatus::Disconnected);
            if connected {
                self.drop_connection(id, DisconnectReason::EmptyTarget, out);
            }
            if let Some(s) = self.relays.get_mut(&id) {
                s.reaped = true;
                s.clear_sync_state();
            }
        }
    }

    /// The next instant at which `Tick` would do something, for the driver's sleep.
    pub fn next_wakeup(&self, now: Millis) -> Option<Millis> {
        let stability = self.settings.stability_period;
        let mut times: Vec<Millis> = Vec::new();
        times.extend(self.own_deadline);
        times.extend(self.next_reap);
        for (id, s) in &self.relays {
            times.extend(s.health.next_wakeup(now, stability));
            if s.is_connected() {
                times.extend(s.next_daily);
            }
            if let Some(p) = self.pending.get(id) {
                times.extend(p.active.values().map(|a| a.deadline));
            }
        }
        times.into_iter().min().map(|t| t.max(now))
    }

    pub(crate) fn metric(&self, id: RelayId, event: MetricEvent, out: &mut Vec<Command>) {
        out.push(Command::Metric {
            relay: self.url(id),
            event,
        });
    }

    pub(crate) fn new_batch_id(&mut self) -> BatchId {
        self.next_batch += 1;
        BatchId(self.next_batch)
    }

    pub(crate) fn new_sub_id(&mut self, prefix: &str) -> nostr::SubscriptionId {
        self.next_sub += 1;
        nostr::SubscriptionId::new(format!("gs-{prefix}{}", self.next_sub))
    }
}

fn state_target_empty_unset(s: Option<&RelayState>) -> bool {
    s.is_some_and(|s| s.target_empty_since.is_none())
}

/// Learned limits never exceed the operator's overrides.
fn cap_limits(learned: RelayLimits, overrides: Option<RelayLimits>) -> RelayLimits {
    match overrides {
        None => learned,
        Some(o) => RelayLimits {
            max_subscriptions: learned.max_subscriptions.min(o.max_subscriptions),
            max_filters: learned.max_filters.min(o.max_filters),
            max_limit: learned.max_limit.min(o.max_limit),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reconnect {
    Fresh,
    Quick(Millis),
    Long,
}
