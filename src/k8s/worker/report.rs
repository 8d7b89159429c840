//! The worker's status writes, decided (pure): which part of a SyncRelay's status a worker
//! owns ([`WorkerStatus`], applied under field manager `grasp-sync-worker`), and when an
//! update is written ([`ReportBook`]).
//!
//! The rules, per object:
//! - only the latest update is kept; an update equal to what was last written is a no-op;
//! - *urgent* changes are written at once: `Connected` flips, and a drain acknowledgement or
//!   the shutdown report (the controller waits on those);
//! - every other change (counts, `lastEose`, `Synced` flips) is written at once after 10 s
//!   of quiet, and otherwise when 10 s have passed since the last write. Under constant EOSE
//!   churn that is one write per object per 10 s; idle, none.
//!
//! Transition times come from [`crate::api::conditions::merge_conditions`], so a rebuilt but
//! unchanged status compares equal and is skipped.

use crate::api::conditions::{
    merge_conditions, reason, rfc3339, Condition, ConditionStatus, CONNECTED, SYNCED,
};
use crate::api::status::{ConnectionInfo, HealthInfo, SyncInfo, SyncRelayStatus};
use crate::core::Millis;
use crate::k8s::consts::WORKER_CONDITIONS;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The least time between two non-urgent writes of one object.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// The fields of a SyncRelay's status that workers own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerStatus {
    /// `Connected` and `Synced` only, sorted by type.
    pub conditions: Vec<Condition>,
    /// `status.connection`.
    pub connection: ConnectionInfo,
    /// `status.sync`.
    pub sync: SyncInfo,
    /// `status.health`.
    pub health: HealthInfo,
}

impl WorkerStatus {
    /// The worker's part of a whole status.
    pub fn of(status: &SyncRelayStatus) -> Self {
        let mut conditions: Vec<Condition> = status
            .conditions
            .iter()
            .filter(|c| WORKER_CONDITIONS.contains(&c.type_.as_str()))
            .cloned()
            .collect();
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        WorkerStatus {
            conditions,
            connection: status.connection.clone(),
            sync: status.sync.clone(),
            health: status.health.clone(),
        }
    }

    /// The condition of type `t`.
    pub fn condition(&self, t: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == t)
    }

    /// The server-side-apply body for the status subresource: only these fields, so the
    /// controller's conditions, `assignment` and `observedGeneration` stay the controller's.
    pub fn apply_body(&self) -> Value {
        json!({
            "apiVersion": "sync.grasp.dev/v1alpha1",
            "kind": "SyncRelay",
            "status": {
                "conditions": self.conditions,
                "connection": self.connection,
                "sync": self.sync,
                "health": self.health,
            },
        })
    }

    /// Whether going from `self` (written) to `next` must be written at once.
    fn urgent_change_to(&self, next: &WorkerStatus) -> bool {
        let key = |s: &WorkerStatus| s.condition(CONNECTED).map(|c| (c.status, c.reason.clone()));
        let (a, b) = (key(self), key(next));
        // A flip, or a reason the controller acts on (Drained, and WorkerStopped at exit).
        a.as_ref().map(|x| x.0) != b.as_ref().map(|x| x.0)
            || (a != b && b.as_ref().is_some_and(|x| is_handover_reason(&x.1)))
    }
}

/// The status of a relay whose session this worker has closed (drained, or the worker is
/// stopping): the last counts, disconnected, with `connected` (a `Drained` acknowledgement or
/// `WorkerStopped`) and `Synced` = False.
pub fn closed_status(
    last: Option<&SyncRelayStatus>,
    connected: Condition,
    now: Millis,
) -> SyncRelayStatus {
    let mut s = last.cloned().unwrap_or_default();
    let stamp = rfc3339(now.as_secs());
    if s.connection.state != "Disconnected" {
        s.connection.disconnected_at = Some(stamp.clone());
    }
    s.connection.state = "Disconnected".into();
    s.sync.subscriptions = 0;
    s.sync.pending_batches = 0;
    let synced = Condition {
        type_: SYNCED.into(),
        status: ConditionStatus::False,
        reason: reason::NOT_CONNECTED.into(),
        message: String::new(),
        last_transition_time: stamp,
        observed_generation: connected.observed_generation,
    };
    s.conditions = merge_conditions(&s.conditions, vec![connected, synced]);
    s
}

fn is_handover_reason(reason: &str) -> bool {
    reason == reason::DRAINED || reason == reason::WORKER_STOPPED
}

#[derive(Debug, Clone, Default)]
struct Slot {
    written: Option<WorkerStatus>,
    written_at: Option<Millis>,
    latest: Option<WorkerStatus>,
    urgent: bool,
    in_flight: bool,
}

/// Per-object bookkeeping of the reporter.
#[derive(Debug, Clone, Default)]
pub struct ReportBook {
    slots: BTreeMap<String, Slot>,
    interval: Duration,
}

/// One write to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `namespace/name`.
    pub key: String,
    /// What to apply.
    pub status: WorkerStatus,
}

impl ReportBook {
    /// A book with the given least interval between non-urgent writes of one object.
    pub fn new(interval: Duration) -> Self {
        ReportBook {
            slots: BTreeMap::new(),
            interval,
        }
    }

    /// Records what the API already shows for `key` (when the worker picks a relay up), so
    /// that an update equal to it is not written again. Leaves a known object alone.
    pub fn observed(&mut self, key: &str, status: Option<WorkerStatus>) {
        let slot = self.slots.entry(key.to_string()).or_default();
        if slot.written.is_none() && slot.written_at.is_none() {
            slot.written = status;
        }
    }

    /// Keeps `status` as the latest update of `key`. `force` makes it urgent (drain
    /// acknowledgement, shutdown).
    pub fn offer(&mut self, key: &str, status: WorkerStatus, force: bool) {
        let slot = self.slots.entry(key.to_string()).or_default();
        if slot.written.as_ref() == Some(&status) && slot.latest.is_none() {
            return;
        }
        let urgent = force
            || match &slot.written {
                Some(w) => w.urgent_change_to(&status),
                None => true,
            };
        slot.urgent |= urgent;
        slot.latest = Some(status);
    }

    /// Stops tracking `key` (the relay left this worker).
    pub fn forget(&mut self, key: &str) {
        self.slots.remove(key);
    }

    /// The writes due at `now`, marked in flight (each must be answered with
    /// [`ReportBook::done`] or [`ReportBook::failed`]).
    pub fn due(&mut self, now: Millis) -> Vec<Write> {
        let mut out = Vec::new();
        for (key, slot) in self.slots.iter_mut() {
            if slot.in_flight {
                continue;
            }
            let Some(latest) = slot.latest.take() else {
                continue;
            };
            if slot.written.as_ref() == Some(&latest) {
                slot.urgent = false;
                continue;
            }
            let quiet = slot
                .written_at
                .is_none_or(|t| now.since(t) >= self.interval);
            if slot.urgent || quiet {
                slot.in_flight = true;
                slot.urgent = false;
                out.push(Write {
                    key: key.clone(),
                    status: latest,
                });
            } else {
                slot.latest = Some(latest);
            }
        }
        out
    }

    /// Every pending update, urgent or not (shutdown), marked in flight.
    pub fn drain_all(&mut self) -> Vec<Write> {
        for slot in self.slots.values_mut() {
            if slot.latest.is_some() {
                slot.urgent = true;
                slot.written_at = None;
            }
        }
        self.due(Millis(u64::MAX))
    }

    /// A write succeeded.
    pub fn done(&mut self, write: Write, now: Millis) {
        if let Some(slot) = self.slots.get_mut(&write.key) {
            slot.in_flight = false;
            slot.written = Some(write.status);
            slot.written_at = Some(now);
        }
    }

    /// A write failed: keep it as the latest unless a newer update arrived meanwhile.
    pub fn failed(&mut self, write: Write) {
        if let Some(slot) = self.slots.get_mut(&write.key) {
            slot.in_flight = false;
            if slot.latest.is_none() {
                slot.latest = Some(write.status);
                slot.urgent = true;
            }
        }
    }

    /// When the next write falls due if nothing else arrives.
    pub fn next_due(&self) -> Option<Millis> {
        self.slots
            .values()
            .filter(|s| s.latest.is_some() && !s.in_flight)
            .map(|s| match (s.urgent, s.written_at) {
                (false, Some(t)) => t + self.interval,
                _ => Millis::ZERO,
            })
            .min()
    }

    /// Objects tracked.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether an update for `key` is waiting or in flight.
    pub fn pending(&self, key: &str) -> bool {
        self.slots
            .get(key)
            .is_some_and(|s| s.latest.is_some() || s.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::consts::{drained_condition, is_drained_by};

    const T0: Millis = Millis(1_790_000_000_000);

    fn status(connected: bool, synced: bool, eose: u64) -> WorkerStatus {
        let c = |t: &str, ok: bool, r: &str| Condition {
            type_: t.into(),
            status: ok.into(),
            reason: r.into(),
            message: String::new(),
            last_transition_time: "t".into(),
            observed_generation: None,
        };
        WorkerStatus {
            conditions: vec![
                c(CONNECTED, connected, reason::CONNECTED),
                c(SYNCED, synced, reason::IN_SYNC),
            ],
            sync: SyncInfo {
                events_forwarded: eose,
                ..SyncInfo::default()
            },
            ..WorkerStatus::default()
        }
    }

    fn secs(s: u64) -> Millis {
        T0 + Duration::from_secs(s)
    }

    fn write_all(book: &mut ReportBook, now: Millis) -> usize {
        let due = book.due(now);
        let n = due.len();
        for w in due {
            book.done(w, now);
        }
        n
    }

    #[test]
    fn first_report_is_written_and_repeats_are_skipped() {
        let mut b = ReportBook::new(MIN_WRITE_INTERVAL);
        b.offer("ns/a", status(true, true, 1), false);
        assert_eq!(write_all(&mut b, T0), 1);
        for s in 1..100 {
            b.offer("ns/a", status(true, true, 1), false);
            assert_eq!(write_all(&mut b, secs(s)), 0, "idle means no writes");
        }
    }

    #[test]
    fn what_the_api_shows_already_is_not_rewritten() {
        let mut b = ReportBook::new(MIN_WRITE_INTERVAL);
        b.observed("ns/a", Some(status(true, true, 1)));
        b.offer("ns/a", status(true, true, 1), false);
        assert_eq!(write_all(&mut b, T0), 0);
    }

    #[test]
    fn churn_is_written_at_most_every_interval() {
        let mut b = ReportBook::new(MIN_WRITE_INTERVAL);
        let mut writes = Vec::new();
        // An EOSE every 500 ms for 60 s, with Synced flipping as batches come and go.
        for step in 0..120u64 {
            let now = T0 + Duration::from_millis(step * 500);
            b.offer("ns/a", status(true, step % 3 != 0, step), false);
            for w in b.due(now) {
                writes.push(now);
                b.done(w, now);
            }
        }
        assert!(writes.len() <= 7, "{} writes in 60 s", writes.len());
        for pair in writes.windows(2) {
            assert!(pair[1].since(pair[0]) >= MIN_WRITE_INTERVAL);
        }
        // The last update is not lost: it falls due at the next interval.
        let last = *writes.last().expect("some writes");
        assert_eq!(b.next_due(), Some(last + MIN_WRITE_INTERVAL));
    }

    #[test]
    fn connection_flips_and_acknowledgements_are_written_at_once() {
        let mut b = ReportBook::new(MIN_WRITE_INTERVAL);
        b.offer("ns/a", status(true, true, 1), false);
        assert_eq!(write_all(&mut b, T0), 1);
        b.offer("ns/a", status(false, false, 1), false);
        assert_eq!(write_all(&mut b, secs(1)), 1, "disconnect is an edge");
        b.offer("ns/a", status(false, false, 2), false);
        assert_eq!(write_all(&mut b, secs(2)), 0, "counts wait");
        let mut drained = status(false, false, 2);
        drained.conditions[0].reason = reason::DRAINED.into();
        b.offer("ns/a", drained, false);
        assert_eq!(write_all(&mut b, secs(3)), 1, "acknowledgement is urgent");
        assert_eq!(
            b.due(secs(3)).len(),
            0,
            "and nothing else is left behind it"
        );
        assert_eq!(
            status(true, true, 0).conditions[0].status,
            ConditionStatus::True
        );
    }

    #[test]
    fn failed_writes_are_retried_unless_superseded() {
        let mut b = ReportBook::new(MIN_WRITE_INTERVAL);
        b.offer("ns/a", status(true, true, 1), false);
        let w = b.due(T0).pop().expect("due");
        assert!(b.due(T0).is_empty(), "in flight is not written twice");
        b.failed(w);
        assert!(b.pending("ns/a"));
        let w = b.due(secs(1)).pop().expect("retried");
        assert_eq!(w.status, status(true, true, 1));
        b.offer("ns/a", status(true, true, 5), false);
        b.failed(w);
        b.done(
            Write {
                key: "ns/a".into(),
                status: status(true, true, 5),
            },
            secs(2),
        );
        b.forget("ns/a");
        assert!(b.is_empty());
    }

    #[test]
    fn shutdown_drains_everything_pending() {
        let mut b = ReportBook::new(MIN_WRITE_INTERVAL);
        b.offer("ns/a", status(true, true, 1), false);
        b.offer("ns/b", status(true, true, 1), false);
        assert_eq!(write_all(&mut b, T0), 2);
        b.offer("ns/a", status(true, true, 2), false);
        assert!(b.due(secs(1)).is_empty());
        assert_eq!(b.drain_all().len(), 1);
    }

    #[test]
    fn a_closed_relay_reports_the_acknowledgement_and_not_synced() {
        let mut last = SyncRelayStatus {
            conditions: status(true, true, 1).conditions,
            ..SyncRelayStatus::default()
        };
        last.connection.state = "Connected".into();
        last.sync.subscriptions = 4;
        last.sync.confirmed_repos = 7;
        let ack = drained_condition("w1", &rfc3339(T0.as_secs()), Some(2));
        let closed = closed_status(Some(&last), ack, T0);
        let ws = WorkerStatus::of(&closed);
        assert!(ws
            .condition(CONNECTED)
            .is_some_and(|c| is_drained_by(c, "w1")));
        assert!(ws
            .condition(SYNCED)
            .is_some_and(|c| c.status == ConditionStatus::False));
        assert_eq!(ws.sync.subscriptions, 0);
        assert_eq!(ws.sync.confirmed_repos, 7, "counts are kept");
        assert_eq!(ws.connection.state, "Disconnected");
        let mut b = ReportBook::new(MIN_WRITE_INTERVAL);
        b.observed("ns/a", Some(WorkerStatus::of(&last)));
        b.offer("ns/a", ws, false);
        assert_eq!(b.due(T0).len(), 1, "an acknowledgement is urgent");
    }

    #[test]
    fn the_apply_body_carries_only_worker_fields() {
        let mut full = SyncRelayStatus {
            conditions: status(true, true, 1).conditions,
            ..SyncRelayStatus::default()
        };
        full.conditions.push(Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "Ready".into(),
            message: String::new(),
            last_transition_time: "t".into(),
            observed_generation: None,
        });
        full.observed_generation = Some(3);
        let body = WorkerStatus::of(&full).apply_body();
        let conds = body["status"]["conditions"].as_array().expect("array");
        assert_eq!(conds.len(), 2);
        assert!(body["status"].get("assignment").is_none());
        assert!(body["status"].get("observedGeneration").is_none());
    }
}
