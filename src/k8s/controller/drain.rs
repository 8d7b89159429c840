//! The drain handshake: how a relay changes hands without ever being held by two workers.
//!
//! ## Protocol
//! A worker holds a relay's session while the SyncRelay carries its name in the label
//! `sync.grasp.dev/worker` and no drain is asked of it. To move a relay from live worker `A`
//! to worker `B` (scale-up, rebalancing), or to close it for good (object deleted, or no
//! longer accepted):
//! 1. **ask**: the controller sets the annotation `sync.grasp.dev/drain=<B>` (`-` when nobody
//!    takes over) and `status.assignment.draining=true`. The label still says `A`.
//! 2. **ack**: `A` closes the session (if it has one), flushes its last status, and applies
//!    the condition `Connected` = False, reason `Drained`, message `drained by A`
//!    ([`crate::k8s::consts::drained_condition`]). It does not reconnect while the
//!    annotation is there, and keeps reporting that condition (rather than, say,
//!    `BackingOff`) until the label moves or the annotation goes.
//! 3. **hand over**: on seeing that acknowledgement the controller sets the label to `B`,
//!    removes the annotation and sets `draining=false` (for a deletion it removes the finalizer
//!    instead). `B` sees the relay appear under its label and connects.
//!
//! If the plan changes back to `A` before the ack, the controller removes the annotation and
//! `A` resumes. If `A`'s Lease expires, or no ack arrives within the drain timeout (30 s by
//! default), `A` is treated as dead and the relay moves at once; a worker must therefore
//! close its sessions when it cannot renew its Lease, and close a relay whose label no longer
//! names it. A relay whose worker is already dead (or that has none) is relabelled at once,
//! with no handshake.
//!
//! An acknowledgement names its worker, and one that was already there when this controller
//! asked for the drain is ignored (it is left over from an earlier move), so a stale
//! `Drained` condition is never taken for a fresh one.
//!
//! ## This module
//! [`next_step`] is the whole decision, pure: from what the object shows and where the relay
//! should be, the one step to take now. [`DrainTracker`] remembers, per relay, when this
//! controller asked for a drain and which acknowledgement was already there.

use crate::api::conditions::Condition;
use crate::core::Millis;
use crate::k8s::consts::{is_drained_by, DRAIN_NO_SUCCESSOR};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the object shows about who holds the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderView {
    /// The worker label, if any.
    pub label: Option<String>,
    /// The drain annotation, if any.
    pub drain: Option<String>,
    /// Whether the labelled worker's Lease is live.
    pub label_live: bool,
    /// Whether the labelled worker has acknowledged a drain (freshly; see [`DrainTracker`]).
    pub acked: bool,
    /// When the current drain was first asked (or first seen), if one is in progress.
    pub drain_started: Option<Millis>,
}

/// The one step to take for a relay now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change.
    Keep,
    /// Set the worker label (no holder, or a dead one): effective at once.
    Assign {
        /// New worker.
        to: String,
        /// The dead or absent previous holder.
        from: Option<String>,
    },
    /// Ask the labelled worker to drain: set the annotation to `target` (a worker name or
    /// `-`).
    RequestDrain {
        /// Annotation value.
        target: String,
    },
    /// The old holder let go (acknowledged, timed out or died): hand over to `to`, or to
    /// nobody (remove the label; for a deleted object, remove the finalizer).
    Complete {
        /// New worker, or none.
        to: Option<String>,
        /// Why the old holder counts as gone.
        cause: CompleteCause,
    },
    /// The plan went back to the current holder: remove the annotation.
    Cancel,
}

/// Why a drain completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteCause {
    /// The worker acknowledged.
    Acked,
    /// No acknowledgement within the timeout.
    TimedOut,
    /// The worker's Lease expired, or there was no holder.
    HolderGone,
}

/// Decides the next step, given where the relay should be (`desired`: a live worker, or none
/// when it must not be held: deleted, not accepted, or no live worker at all).
pub fn next_step(view: &HolderView, desired: Option<&str>, now: Millis, timeout: Duration) -> Step {
    let Some(current) = view.label.as_deref() else {
        return match desired {
            Some(to) => Step::Assign {
                to: to.to_string(),
                from: None,
            },
            None if view.drain.is_some() => Step::Cancel,
            None => Step::Keep,
        };
    };
    if !view.label_live {
        return match desired {
            Some(to) => Step::Assign {
                to: to.to_string(),
                from: Some(current.to_string()),
            },
            None => Step::Complete {
                to: None,
                cause: CompleteCause::HolderGone,
            },
        };
    }
    if desired == Some(current) {
        return if view.drain.is_some() {
            Step::Cancel
        } else {
            Step::Keep
        };
    }
    let to = desired.map(str::to_string);
    if view.acked && view.drain.is_some() {
        return Step::Complete {
            to,
            cause: CompleteCause::Acked,
        };
    }
    let target = desired.unwrap_or(DRAIN_NO_SUCCESSOR);
    if view.drain.as_deref() != Some(target) {
        return Step::RequestDrain {
            target: target.to_string(),
        };
    }
    match view.drain_started {
        Some(started) if now.since(started) >= timeout => Step::Complete {
            to,
            cause: CompleteCause::TimedOut,
        },
        _ => Step::Keep,
    }
}

/// One drain this controller is waiting on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainTrack {
    /// The worker asked to drain.
    pub worker: String,
    /// When it was asked (or, after a controller restart, first seen).
    pub started: Millis,
    /// A `Drained` acknowledgement by `worker` that was already there when we asked: stale.
    pub stale_ack: Option<Condition>,
}

/// Per-relay drain bookkeeping (in memory; a new leader starts the timeout afresh).
#[derive(Debug, Clone, Default)]
pub struct DrainTracker {
    tracks: BTreeMap<String, DrainTrack>,
}

impl DrainTracker {
    /// The track of a relay, if a drain is in progress.
    pub fn get(&self, relay: &str) -> Option<&DrainTrack> {
        self.tracks.get(relay)
    }

    /// Notes that a drain of `worker` is in progress for `relay`: `asked_now` when this
    /// controller is setting the annotation now (so an acknowledgement already present is
    /// stale), false when it found the annotation already set (a restart: trust it).
    pub fn note(
        &mut self,
        relay: &str,
        worker: &str,
        connected: Option<&Condition>,
        asked_now: bool,
        now: Millis,
    ) {
        let fresh_track = || DrainTrack {
            worker: worker.to_string(),
            started: now,
            stale_ack: connected
                .filter(|c| asked_now && is_drained_by(c, worker))
                .cloned(),
        };
        match self.tracks.get(relay) {
            Some(t) if t.worker == worker => {}
            _ => {
                self.tracks.insert(relay.to_string(), fresh_track());
            }
        }
    }

    /// Whether `worker` has freshly acknowledged the drain of `relay`.
    pub fn acked(&self, relay: &str, worker: &str, connected: Option<&Condition>) -> bool {
        let Some(c) = connected.filter(|c| is_drained_by(c, worker)) else {
            return false;
        };
        match self.tracks.get(relay) {
            Some(t) if t.worker == worker => t.stale_ack.as_ref() != Some(c),
            // Not tracked: the annotation predates this controller; trust the ack.
            _ => true,
        }
    }

    /// Forgets a relay's drain (completed, cancelled, or the object is gone).
    pub fn forget(&mut self, relay: &str) {
        self.tracks.remove(relay);
    }

    /// Keeps only the relays in `live_keys`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.tracks.retain(|k, _| keep(k));
    }

    /// Relays with a drain in progress.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// No drain in progress.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::consts::drained_condition;

    const T0: Millis = Millis(1_000_000);
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn view(label: Option<&str>, drain: Option<&str>, live: bool, acked: bool) -> HolderView {
        HolderView {
            label: label.map(str::to_string),
            drain: drain.map(str::to_string),
            label_live: live,
            acked,
            drain_started: drain.map(|_| T0),
        }
    }

    #[test]
    fn unassigned_and_dead_holders_move_at_once() {
        assert_eq!(
            next_step(&view(None, None, false, false), Some("b"), T0, TIMEOUT),
            Step::Assign {
                to: "b".into(),
                from: None
            }
        );
        assert_eq!(
            next_step(&view(Some("a"), None, false, false), Some("b"), T0, TIMEOUT),
            Step::Assign {
                to: "b".into(),
                from: Some("a".into())
            }
        );
        assert_eq!(
            next_step(&view(Some("a"), Some("-"), false, false), None, T0, TIMEOUT),
            Step::Complete {
                to: None,
                cause: CompleteCause::HolderGone
            }
        );
        assert_eq!(
            next_step(&view(None, None, false, false), None, T0, TIMEOUT),
            Step::Keep
        );
    }

    #[test]
    fn a_live_holder_is_drained_before_the_hand_over() {
        let asking = next_step(&view(Some("a"), None, true, false), Some("b"), T0, TIMEOUT);
        assert_eq!(asking, Step::RequestDrain { target: "b".into() });
        let waiting = view(Some("a"), Some("b"), true, false);
        assert_eq!(next_step(&waiting, Some("b"), T0, TIMEOUT), Step::Keep);
        assert_eq!(
            next_step(&waiting, Some("b"), T0 + TIMEOUT, TIMEOUT),
            Step::Complete {
                to: Some("b".into()),
                cause: CompleteCause::TimedOut
            }
        );
        assert_eq!(
            next_step(
                &view(Some("a"), Some("b"), true, true),
                Some("b"),
                T0,
                TIMEOUT
            ),
            Step::Complete {
                to: Some("b".into()),
                cause: CompleteCause::Acked
            }
        );
        // The plan changed target mid-drain: the ack still counts (A has let go).
        assert_eq!(
            next_step(
                &view(Some("a"), Some("b"), true, true),
                Some("c"),
                T0,
                TIMEOUT
            ),
            Step::Complete {
                to: Some("c".into()),
                cause: CompleteCause::Acked
            }
        );
        // ...but without an ack the annotation follows the plan.
        assert_eq!(
            next_step(
                &view(Some("a"), Some("b"), true, false),
                Some("c"),
                T0,
                TIMEOUT
            ),
            Step::RequestDrain { target: "c".into() }
        );
        // Back to A: cancel.
        assert_eq!(
            next_step(
                &view(Some("a"), Some("b"), true, false),
                Some("a"),
                T0,
                TIMEOUT
            ),
            Step::Cancel
        );
        // Deletion: drain to nobody.
        assert_eq!(
            next_step(&view(Some("a"), None, true, false), None, T0, TIMEOUT),
            Step::RequestDrain { target: "-".into() }
        );
    }

    #[test]
    fn a_stale_ack_is_not_taken_for_a_fresh_one() {
        let ack_a = drained_condition("a", "t1", None);
        let mut tracker = DrainTracker::default();
        // The relay shows A's old ack when we ask A to drain: stale.
        tracker.note("r", "a", Some(&ack_a), true, T0);
        assert!(!tracker.acked("r", "a", Some(&ack_a)));
        // A acks afresh (a new transition time): counts.
        let fresh = drained_condition("a", "t2", None);
        assert!(tracker.acked("r", "a", Some(&fresh)));
        // An ack by another worker never counts for A.
        assert!(!tracker.acked("r", "a", Some(&drained_condition("b", "t3", None))));
        // After a restart (annotation found, not asked by us) the ack is trusted.
        let mut restarted = DrainTracker::default();
        restarted.note("r", "a", Some(&ack_a), false, T0);
        assert!(restarted.acked("r", "a", Some(&ack_a)));
        tracker.forget("r");
        assert!(tracker.is_empty());
    }
}
