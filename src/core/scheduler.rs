//! Historic batches: splitting them into parts, running parts within the relay's historic
//! slots, pagination at EOSE, negentropy fallback, refusals, rate limits and timeouts.

use super::command::{Command, MetricEvent, NegentropyOutcome, SubPurpose};
use super::engine::SyncCore;
use super::filters::{self, TagVariant, TAG_VARIANTS};
use super::health::{classify_relay_message, RelayMessageClass};
use super::ids::RelayId;
use super::lifecycle::Budget;
use super::pagination::{PageCursor, PageReport, PageStep};
use super::pending::{
    ActivePart, BatchId, BatchKind, PartItems, PendingBatch, PendingItems, QueuedPart, SyncMethod,
};
use super::relay_index::Nip77Support;
use super::time::Millis;
use super::url::RelayUrl;
use nostr::{Filter, SubscriptionId, Timestamp};

impl SyncCore {
    /// Registers a historic batch, queues its parts and starts what the budget allows.
    pub(crate) fn start_batch(
        &mut self,
        now: Millis,
        id: RelayId,
        kind: BatchKind,
        items: PendingItems,
        since: Option<Timestamp>,
        out: &mut Vec<Command>,
    ) {
        if kind != BatchKind::Layer1 && items.is_empty() {
            return;
        }
        let nip77 = self
            .relays
            .get(&id)
            .map_or(Nip77Support::Unknown, |s| s.nip77);
        // Negentropy for full history; REQ with `since` for catch-up (and when NIP-77 is absent).
        let method = if since.is_none() && nip77 != Nip77Support::Unsupported {
            SyncMethod::Negentropy
        } else {
            SyncMethod::ReqEose
        };
        let batch = self.new_batch_id();
        let max_filters = Budget::of(self.effective_limits(id)).max_filters;
        let chunk = self.settings.chunk_size;
        let mut parts: Vec<QueuedPart> = Vec::new();
        if kind == BatchKind::Layer1 {
            parts.push(QueuedPart {
                batch,
                items: PartItems::Layer1,
                variants: Vec::new(),
                method,
                neg_failures: 0,
                escalated: false,
            });
        }
        let repo_chunks: Vec<Vec<_>> = items.repos.chunks(chunk).map(<[_]>::to_vec).collect();
        let root_chunks: Vec<Vec<_>> = items.root_events.chunks(chunk).map(<[_]>::to_vec).collect();
        parts.extend(split_parts(
            batch,
            method,
            max_filters,
            repo_chunks,
            PartItems::Repos,
        ));
        parts.extend(split_parts(
            batch,
            method,
            max_filters,
            root_chunks,
            PartItems::Roots,
        ));
        let p = self.pending.entry(id).or_default();
        p.add_batch(PendingBatch {
            batch_id: batch,
            items,
            kind,
            sync_method: method,
            since,
            parts_left: u32::try_from(parts.len()).unwrap_or(u32::MAX),
            started_at: now,
        });
        p.queue.extend(parts);
        self.metric(id, MetricEvent::BatchStarted(method), out);
        self.pump(now, id, out);
    }

    /// Starts queued parts while historic slots are free.
    pub(crate) fn pump(&mut self, now: Millis, id: RelayId, out: &mut Vec<Command>) {
        let Some(state) = self.relays.get(&id) else {
            return;
        };
        // A due consolidation clears pending and re-plans within the current limits: parts
        // queued under older limits must not start before it.
        if !state.is_connected()
            || state.health.in_cooldown(now)
            || self.needs_consolidate.contains(&id)
        {
            return;
        }
        let budget = Budget::of(state.limits);
        let live = self.live.get(&id).map_or(0, |l| l.subs.len());
        loop {
            let Some(p) = self.pending.get_mut(&id) else {
                return;
            };
            let used = live + p.active.len();
            if p.active.len() >= budget.historic || used >= budget.max_subscriptions {
                return;
            }
            let Some(part) = p.queue.pop_front() else {
                return;
            };
            self.start_part(now, id, part, out);
        }
    }

    fn start_part(&mut self, now: Millis, id: RelayId, part: QueuedPart, out: &mut Vec<Command>) {
        let since = self
            .pending
            .get(&id)
            .and_then(|p| p.batches.get(&part.batch))
            .and_then(|b| b.since);
        let filters = self.part_filters(&part, since);
        let url = self.url(id);
        let limits = self.effective_limits(id);
        let timeout = self.settings.eose_timeout;
        let (sub, cursors, deadline) = match part.method {
            SyncMethod::Negentropy => {
                let sub = self.new_sub_id("n");
                let filter = filters.into_iter().next().unwrap_or_default();
                out.push(Command::Negentropy {
                    relay: url,
                    sub: sub.clone(),
                    batch: part.batch,
                    filter,
                });
                // A reconciliation moves many events in one session: give it more time.
                (sub, Vec::new(), now + timeout * 4)
            }
            SyncMethod::ReqEose => {
                let sub = self.new_sub_id("h");
                let cursors: Vec<PageCursor> = filters
                    .into_iter()
                    .map(|f| PageCursor::new(f, limits.max_limit, self.settings.max_pages))
                    .collect();
                out.push(Command::Subscribe {
                    relay: url,
                    sub: sub.clone(),
                    filters: cursors.iter().map(PageCursor::current).collect(),
                    purpose: SubPurpose::Historic(part.batch),
                });
                (sub, cursors, now + timeout)
            }
        };
        if let Some(p) = self.pending.get_mut(&id) {
            p.active.insert(
                sub,
                ActivePart {
                    part,
                    cursors,
                    deadline,
                    truncated: false,
                },
            );
        }
    }

    fn part_filters(&self, part: &QueuedPart, since: Option<Timestamp>) -> Vec<Filter> {
        let variants: &[TagVariant] = if part.variants.is_empty() {
            &TAG_VARIANTS
        } else {
            &part.variants
        };
        match &part.items {
            PartItems::Layer1 => vec![filters::build_announcement_filter(since)],
            PartItems::Repos(chunks) => chunks
                .iter()
                .flat_map(|c| {
                    let refs: Vec<&str> = c
                        .iter()
                        .filter_map(|r| self.symbols.repo_ref(*r))
                        .map(|r| r.as_str())
                        .collect();
                    filters::repo_chunk_filters(&refs, variants, since)
                })
                .collect(),
            PartItems::Roots(chunks) => chunks
                .iter()
                .flat_map(|c| {
                    let ids: Vec<String> = c
                        .iter()
                        .filter_map(|r| self.symbols.root_event(*r))
                        .map(|e| e.to_hex())
                        .collect();
                    filters::root_chunk_filters(&ids, variants, since)
                })
                .collect(),
        }
    }

    pub(crate) fn on_eose(
        &mut self,
        now: Millis,
        url: &RelayUrl,
        sub: &SubscriptionId,
        pages: &[PageReport],
        out: &mut Vec<Command>,
    ) {
        let Some(id) = self.relay_id(url) else {
            return;
        };
        let active = self.pending.get_mut(&id).and_then(|p| p.active.remove(sub));
        let Some(mut part) = active else {
            let live = self.live.get(&id).is_some_and(|l| l.subs.contains_key(sub));
            if !live {
                self.stats.stale_replies += 1;
            }
            return;
        };
        out.push(Command::Unsubscribe {
            relay: url.clone(),
            sub: sub.clone(),
        });
        let mut remaining = Vec::new();
        for (i, mut cursor) in std::mem::take(&mut part.cursors).into_iter().enumerate() {
            let report = pages.get(i).copied().unwrap_or_default();
            match cursor.advance(report) {
                PageStep::Done => {
                    let runs = cursor.truncated_runs();
                    self.stats.truncated_runs += u64::from(runs);
                    part.truncated |= runs > 0;
                }
                PageStep::Next(_) => remaining.push(cursor),
            }
        }
        if remaining.is_empty() {
            if part.truncated {
                self.on_truncated_walk(now, id, part.part, out);
            } else {
                self.part_done(now, id, part.part.batch, out);
            }
            return;
        }
        if self.needs_consolidate.contains(&id) {
            // The due consolidation re-plans the batch within the current limits: no next
            // page under the old ones.
            self.requeue(id, part.part);
            return;
        }
        let next = self.new_sub_id("h");
        out.push(Command::Subscribe {
            relay: url.clone(),
            sub: next.clone(),
            filters: remaining.iter().map(PageCursor::current).collect(),
            purpose: SubPurpose::Historic(part.part.batch),
        });
        part.cursors = remaining;
        part.deadline = now + self.settings.eose_timeout;
        if let Some(p) = self.pending.get_mut(&id) {
            p.active.insert(next, part);
        }
    }

    fn part_done(&mut self, now: Millis, id: RelayId, batch: BatchId, out: &mut Vec<Command>) {
        let finished = self
            .pending
            .get_mut(&id)
            .and_then(|p| p.batches.get_mut(&batch))
            .map(|b| {
                b.parts_left = b.parts_left.saturating_sub(1);
                b.parts_left == 0
            })
            .unwrap_or(false);
        if finished {
            self.confirm_batch(id, batch, out);
        }
        self.pump(now, id, out);
    }

    /// Every part is done: the batch's items move to confirmed.
    fn confirm_batch(&mut self, id: RelayId, batch: BatchId, out: &mut Vec<Command>) {
        let Some((b, _)) = self
            .pending
            .get_mut(&id)
            .and_then(|p| p.remove_batch(batch))
        else {
            return;
        };
        if let Some(s) = self.relays.get_mut(&id) {
            if b.kind == BatchKind::Layer1 {
                s.layer1_confirmed = true;
            }
            s.repos.extend(&b.items.repos);
            s.root_events.extend(&b.items.root_events);
        }
        self.metric(id, MetricEvent::BatchConfirmed(b.sync_method), out);
    }

    /// A batch failed: close its parts, demote what it was catching up, back off, and keep
    /// its items wanted so they are retried after the backoff.
    fn fail_batch(&mut self, now: Millis, id: RelayId, batch: BatchId, out: &mut Vec<Command>) {
        let Some((b, subs)) = self
            .pending
            .get_mut(&id)
            .and_then(|p| p.remove_batch(batch))
        else {
            return;
        };
        let url = self.url(id);
        for sub in subs {
            out.push(Command::Unsubscribe {
                relay: url.clone(),
                sub,
            });
        }
        let backoff = self.settings.backoff;
        if let Some(s) = self.relays.get_mut(&id) {
            if b.kind == BatchKind::CatchUp {
                for r in &b.items.repos {
                    s.repos.remove(r);
                }
                for r in &b.items.root_events {
                    s.root_events.remove(r);
                }
            }
            s.health.record_failure(now, &backoff);
        }
        match b.kind {
            // Redo layer 1 through a consolidation, which re-issues an unconfirmed L1 history.
            BatchKind::Layer1 => {
                self.needs_consolidate.insert(id);
            }
            _ => {
                let d = self.deltas.entry(id).or_default();
                d.added_repos.extend(b.items.repos);
                d.added_roots.extend(b.items.root_events);
            }
        }
        self.metric(id, MetricEvent::BatchFailed(b.sync_method), out);
    }

    /// Fails the batches of parts whose deadline passed without EOSE.
    pub(crate) fn expire_parts(&mut self, now: Millis, out: &mut Vec<Command>) {
        let mut expired: Vec<(RelayId, BatchId)> = self
            .pending
            .iter()
            .flat_map(|(id, p)| {
                p.active
                    .values()
                    .filter(|a| a.deadline <= now)
                    .map(move |a| (*id, a.part.batch))
            })
            .collect();
        expired.sort_unstable();
        expired.dedup();
        for (id, batch) in expired {
            self.fail_batch(now, id, batch, out);
        }
    }

    pub(crate) fn on_negentropy_done(
        &mut self,
        now: Millis,
        url: &RelayUrl,
        sub: &SubscriptionId,
        outcome: NegentropyOutcome,
        out: &mut Vec<Command>,
    ) {
        let Some(id) = self.relay_id(url) else {
            return;
        };
        let Some(active) = self.pending.get_mut(&id).and_then(|p| p.active.remove(sub)) else {
            self.stats.stale_replies += 1;
            return;
        };
        match outcome {
            NegentropyOutcome::Done => {
                if let Some(s) = self.relays.get_mut(&id) {
                    s.nip77 = Nip77Support::Supported;
                }
                self.part_done(now, id, active.part.batch, out);
            }
            NegentropyOutcome::Unsupported => {
                self.mark_nip77_unsupported(id, out);
                self.requeue_as_req(id, active.part);
                self.pump(now, id, out);
            }
            NegentropyOutcome::Failed => {
                let mut part = active.part;
                part.neg_failures = part.neg_failures.saturating_add(1);
                if part.neg_failures < MAX_NEG_FAILURES {
                    // Most failures are an interrupted download (a CLOSED fetch, our relay
                    // slow to list its items): negentropy again, since REQ paging cannot
                    // reach a run of equal `created_at` longer than a page.
                    self.requeue(id, part);
                } else {
                    self.requeue_as_req(id, part);
                }
                self.pump(now, id, out);
            }
        }
    }

    /// A REQ walk of this part ended with a run of equal `created_at` longer than a page, so
    /// some of its events were never offered. Unless the relay is known to lack NIP-77 (or
    /// negentropy already failed or was tried for this part), redo the part by negentropy,
    /// which compares ids rather than timestamps. Otherwise that is all the relay can serve:
    /// the part is done and the truncation counted, rather than retried forever.
    fn on_truncated_walk(
        &mut self,
        now: Millis,
        id: RelayId,
        part: QueuedPart,
        out: &mut Vec<Command>,
    ) {
        let nip77 = self
            .relays
            .get(&id)
            .map_or(Nip77Support::Unsupported, |s| s.nip77);
        let retry = !part.escalated
            && part.neg_failures < MAX_NEG_FAILURES
            && nip77 != Nip77Support::Unsupported;
        self.metric(id, MetricEvent::HistoryTruncated { retried: retry }, out);
        if !retry {
            self.part_done(now, id, part.batch, out);
            return;
        }
        let batch = part.batch;
        let parts = negentropy_parts(part);
        if parts.is_empty() {
            self.part_done(now, id, batch, out);
            return;
        }
        let added = u32::try_from(parts.len() - 1).unwrap_or(u32::MAX);
        if let Some(p) = self.pending.get_mut(&id) {
            if let Some(b) = p.batches.get_mut(&batch) {
                b.parts_left = b.parts_left.saturating_add(added);
            }
            for q in parts.into_iter().rev() {
                p.queue.push_front(q);
            }
        }
        self.pump(now, id, out);
    }

    /// Remembers for this connection that NIP-77 is absent; queued negentropy parts switch to
    /// REQ. Warns once per relay.
    fn mark_nip77_unsupported(&mut self, id: RelayId, out: &mut Vec<Command>) {
        if let Some(s) = self.relays.get_mut(&id) {
            s.nip77 = Nip77Support::Unsupported;
        }
        if self.nip77_warned.insert(id) {
            self.metric(id, MetricEvent::Nip77Unsupported, out);
        }
        if let Some(p) = self.pending.get_mut(&id) {
            for part in p
                .queue
                .iter_mut()
                .filter(|q| q.method == SyncMethod::Negentropy)
            {
                part.method = SyncMethod::ReqEose;
            }
            for b in p.batches.values_mut() {
                b.sync_method = SyncMethod::ReqEose;
            }
        }
    }

    fn requeue_as_req(&mut self, id: RelayId, mut part: QueuedPart) {
        part.method = SyncMethod::ReqEose;
        if let Some(p) = self.pending.get_mut(&id) {
            if let Some(b) = p.batches.get_mut(&part.batch) {
                b.sync_method = SyncMethod::ReqEose;
            }
            p.queue.push_front(part);
        }
    }

    pub(crate) fn on_closed(
        &mut self,
        now: Millis,
        url: &RelayUrl,
        sub: &SubscriptionId,
        message: &str,
        out: &mut Vec<Command>,
    ) {
        let Some(id) = self.relay_id(url) else {
            return;
        };
        let class = classify_relay_message(message);
        if let Some(active) = self.pending.get_mut(&id).and_then(|p| p.active.remove(sub)) {
            match class {
                RelayMessageClass::RateLimited => {
                    self.start_cooldown(now, id, out);
                    self.requeue(id, active.part);
                }
                RelayMessageClass::TooManySubscriptions => {
                    self.lower_budget(id, out);
                    self.requeue(id, active.part);
                }
                RelayMessageClass::NegentropyUnsupported
                    if active.part.method == SyncMethod::Negentropy =>
                {
                    self.mark_nip77_unsupported(id, out);
                    self.requeue_as_req(id, active.part);
                }
                _ => self.fail_batch(now, id, active.part.batch, out),
            }
            self.pump(now, id, out);
            return;
        }
        let Some(live) = self.live.get_mut(&id) else {
            self.stats.stale_replies += 1;
            return;
        };
        if live.subs.remove(sub).is_none() {
            self.stats.stale_replies += 1;
            return;
        }
        // Live coverage was lost: rebuild it from confirmed once the relay is ready.
        live.repos = live
            .subs
            .values()
            .flat_map(|s| s.repos.iter().copied())
            .collect();
        live.roots = live
            .subs
            .values()
            .flat_map(|s| s.roots.iter().copied())
            .collect();
        match class {
            RelayMessageClass::RateLimited => self.start_cooldown(now, id, out),
            RelayMessageClass::TooManySubscriptions => self.lower_budget(id, out),
            _ => {
                let backoff = self.settings.backoff;
                if let Some(s) = self.relays.get_mut(&id) {
                    s.health.record_failure(now, &backoff);
                }
            }
        }
        self.needs_consolidate.insert(id);
    }

    pub(crate) fn on_notice(
        &mut self,
        now: Millis,
        url: &RelayUrl,
        message: &str,
        out: &mut Vec<Command>,
    ) {
        let Some(id) = self.relay_id(url) else {
            return;
        };
        match classify_relay_message(message) {
            RelayMessageClass::RateLimited => {
                // A NOTICE names no subscription, and a rate-limiting relay may have dropped
                // any REQ sent before it. A dropped historic part times out and is retried, but
                // a dropped live REQ has no deadline: its repos would stay uncovered until the
                // next fresh start. Rebuild everything once the cooldown ends; the replacement
                // live REQs ask from `bridge_since`, so events of the gap come back too.
                self.start_cooldown(now, id, out);
                self.needs_consolidate.insert(id);
            }
            RelayMessageClass::TooManySubscriptions => {
                // We cannot tell which REQ was refused: rebuild everything within a lower budget.
                self.lower_budget(id, out);
                self.needs_consolidate.insert(id);
            }
            RelayMessageClass::NegentropyUnsupported => {
                let mut neg: Vec<SubscriptionId> = self
                    .pending
                    .get(&id)
                    .map(|p| {
                        p.active
                            .iter()
                            .filter(|(_, a)| a.part.method == SyncMethod::Negentropy)
                            .map(|(s, _)| s.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                // HashMap order is random per instance: sort for deterministic output.
                neg.sort();
                for sub in neg {
                    self.on_negentropy_done(now, url, &sub, NegentropyOutcome::Unsupported, out);
                }
            }
            _ => {}
        }
    }

    fn start_cooldown(&mut self, now: Millis, id: RelayId, out: &mut Vec<Command>) {
        let cooldown = self.settings.rate_limit_cooldown;
        if let Some(s) = self.relays.get_mut(&id) {
            s.health.record_rate_limit(now, cooldown);
        }
        self.metric(id, MetricEvent::RateLimited, out);
    }

    fn requeue(&mut self, id: RelayId, part: QueuedPart) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.queue.push_front(part);
        }
    }

    /// The relay refused a subscription: its real budget is below what we had open.
    fn lower_budget(&mut self, id: RelayId, out: &mut Vec<Command>) {
        let open = self.live.get(&id).map_or(0, |l| l.subs.len())
            + self.pending.get(&id).map_or(0, |p| p.active.len());
        if let Some(s) = self.relays.get_mut(&id) {
            let lowered = u32::try_from(open)
                .unwrap_or(u32::MAX)
                .min(s.limits.max_subscriptions);
            s.limits.max_subscriptions = lowered.max(2);
        }
        self.metric(id, MetricEvent::BudgetLowered, out);
        let budget = Budget::of(self.effective_limits(id));
        if self
            .live
            .get(&id)
            .is_some_and(|l| l.subs.len() > budget.live)
        {
            self.needs_consolidate.insert(id);
        }
    }
}

/// Negentropy sessions of one part that may fail before it falls back to REQ.
const MAX_NEG_FAILURES: u8 = 2;

/// A REQ part reshaped for negentropy, which takes one filter per session: one part per
/// (chunk, variant), marked as escalated.
fn negentropy_parts(part: QueuedPart) -> Vec<QueuedPart> {
    let variants: Vec<TagVariant> = if part.variants.is_empty() {
        TAG_VARIANTS.to_vec()
    } else {
        part.variants.clone()
    };
    let reshape = |items: PartItems, variant: Option<TagVariant>| QueuedPart {
        batch: part.batch,
        items,
        variants: variant.into_iter().collect(),
        method: SyncMethod::Negentropy,
        neg_failures: part.neg_failures,
        escalated: true,
    };
    match &part.items {
        PartItems::Layer1 => vec![reshape(PartItems::Layer1, None)],
        PartItems::Repos(chunks) => chunks
            .iter()
            .flat_map(|c| {
                variants
                    .iter()
                    .map(|v| reshape(PartItems::Repos(vec![c.clone()]), Some(*v)))
            })
            .collect(),
        PartItems::Roots(chunks) => chunks
            .iter()
            .flat_map(|c| {
                variants
                    .iter()
                    .map(|v| reshape(PartItems::Roots(vec![c.clone()]), Some(*v)))
            })
            .collect(),
    }
}

/// Splits chunks into parts: one per (chunk, variant) for negentropy, which takes one filter
/// per session; for REQ, as many chunks per part as fit the relay's filters-per-REQ.
fn split_parts<T: Clone>(
    batch: BatchId,
    method: SyncMethod,
    max_filters: usize,
    chunks: Vec<Vec<T>>,
    wrap: fn(Vec<Vec<T>>) -> PartItems,
) -> Vec<QueuedPart> {
    let one_variant_each = method == SyncMethod::Negentropy || max_filters < TAG_VARIANTS.len();
    if one_variant_each {
        return chunks
            .into_iter()
            .flat_map(|c| {
                TAG_VARIANTS.iter().map(move |v| QueuedPart {
                    batch,
                    items: wrap(vec![c.clone()]),
                    variants: vec![*v],
                    method,
                    neg_failures: 0,
                    escalated: false,
                })
            })
            .collect();
    }
    let per_req = (max_filters / TAG_VARIANTS.len()).max(1);
    chunks
        .chunks(per_req)
        .map(|group| QueuedPart {
            batch,
            items: wrap(group.to_vec()),
            variants: Vec::new(),
            method,
            neg_failures: 0,
            escalated: false,
        })
        .collect()
}
