//! Phase "build status": the controller-owned part of a SyncRelay's status — the conditions
//! `Accepted`, `Assigned` and `Ready`, `status.assignment` and `status.observedGeneration` —
//! and the server-side-apply body that writes exactly those fields (field manager
//! `grasp-sync-controller`), never the workers' ones. Pure; the comparison with what the
//! object shows decides whether a write is needed at all.

use super::validate::Verdict;
use crate::api::conditions::{self, merge_conditions, rfc3339, Condition, ConditionStatus};
use crate::api::status::{Assignment, SyncRelayStatus};
use crate::core::Millis;
use crate::k8s::consts::controller_reason;
use serde_json::{json, Value};

/// The condition types the controller owns.
pub const OWNED_CONDITIONS: [&str; 3] = crate::k8s::consts::CONTROLLER_CONDITIONS;

/// Where a relay stands with respect to workers, after this pass's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Held by a live worker (possibly draining towards another).
    Held {
        /// The worker.
        worker: String,
        /// Since when (RFC 3339).
        since: String,
        /// A drain handshake is in progress.
        draining: bool,
    },
    /// Not held: no live worker.
    NoLiveWorker,
    /// Not held: the spec was refused.
    NotAccepted,
}

/// The controller-owned fields of the status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedStatus {
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `Accepted`, `Assigned` and `Ready`, sorted by type.
    pub conditions: Vec<Condition>,
    /// `status.assignment`.
    pub assignment: Option<Assignment>,
}

/// The controller-owned fields as the object shows them now.
pub fn current_owned(status: Option<&SyncRelayStatus>) -> OwnedStatus {
    let Some(s) = status else {
        return OwnedStatus::default();
    };
    let mut conditions: Vec<Condition> = s
        .conditions
        .iter()
        .filter(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    OwnedStatus {
        observed_generation: s.observed_generation,
        conditions,
        assignment: s.assignment.clone(),
    }
}

fn is_true(status: Option<&SyncRelayStatus>, t: &str) -> bool {
    status.is_some_and(|s| s.holds(t))
}

/// Builds the controller-owned status: fresh conditions merged with the previous ones (a
/// transition time moves only on a flip), `Ready` read from the worker's `Connected` and
/// `Synced`.
pub fn build_owned(
    previous: Option<&SyncRelayStatus>,
    verdict: &Verdict,
    holding: &Holding,
    generation: Option<i64>,
    now: Millis,
) -> OwnedStatus {
    let stamp = rfc3339(now.as_secs());
    let cond = |t: &str, ok: bool, reason: &str, message: String| Condition {
        type_: t.to_string(),
        status: ok.into(),
        reason: reason.to_string(),
        message,
        last_transition_time: stamp.clone(),
        observed_generation: generation,
    };
    let accepted = match verdict {
        Verdict::Accepted(url) => cond(
            conditions::ACCEPTED,
            true,
            controller_reason::VALID,
            format!("syncing {url}"),
        ),
        Verdict::Refused { reason, message } => {
            cond(conditions::ACCEPTED, false, reason, message.clone())
        }
    };
    let assigned = match holding {
        Holding::Held {
            worker, draining, ..
        } if *draining => cond(
            conditions::ASSIGNED,
            true,
            controller_reason::DRAINING,
            format!("held by {worker}, draining"),
        ),
        Holding::Held { worker, .. } => cond(
            conditions::ASSIGNED,
            true,
            controller_reason::ASSIGNED,
            format!("held by {worker}"),
        ),
        Holding::NoLiveWorker => cond(
            conditions::ASSIGNED,
            false,
            controller_reason::NO_LIVE_WORKER,
            "no live worker Lease".into(),
        ),
        Holding::NotAccepted => cond(
            conditions::ASSIGNED,
            false,
            controller_reason::NOT_ACCEPTED,
            "not assigned: the spec is not accepted".into(),
        ),
    };
    let checks = [
        (
            conditions::ACCEPTED,
            accepted.status == ConditionStatus::True,
        ),
        (
            conditions::ASSIGNED,
            assigned.status == ConditionStatus::True,
        ),
        (
            conditions::CONNECTED,
            is_true(previous, conditions::CONNECTED),
        ),
        (conditions::SYNCED, is_true(previous, conditions::SYNCED)),
    ];
    let ready = match checks.iter().find(|(_, ok)| !ok) {
        None => cond(
            conditions::READY,
            true,
            controller_reason::READY,
            "accepted, assigned, connected and synced".into(),
        ),
        Some((t, _)) => cond(
            conditions::READY,
            false,
            controller_reason::NOT_READY,
            format!("{t} is not True"),
        ),
    };
    let previous_owned = current_owned(previous);
    let conditions = merge_conditions(&previous_owned.conditions, vec![accepted, assigned, ready]);
    let assignment = match holding {
        Holding::Held {
            worker,
            since,
            draining,
        } => Some(Assignment {
            worker: worker.clone(),
            since: since.clone(),
            draining: *draining,
        }),
        _ => None,
    };
    OwnedStatus {
        observed_generation: generation,
        conditions,
        assignment,
    }
}

/// The server-side-apply body for the status subresource: only the controller's fields, so
/// the workers' fields (and their conditions, a list-map keyed by type) stay theirs. A field
/// left out (an assignment that ended) is removed, since this manager owned it.
pub fn apply_body(owned: &OwnedStatus) -> Value {
    let mut status = json!({ "conditions": owned.conditions });
    if let Some(g) = owned.observed_generation {
        status["observedGeneration"] = json!(g);
    }
    if let Some(a) = &owned.assignment {
        status["assignment"] = json!(a);
    }
    json!({
        "apiVersion": "sync.grasp.dev/v1alpha1",
        "kind": "SyncRelay",
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::reason;
    use crate::core::url::RelayUrl;

    const T0: Millis = Millis(1_790_000_000_000);

    fn accepted() -> Verdict {
        Verdict::Accepted(RelayUrl::parse("wss://relay.example.org").expect("valid"))
    }

    fn held(draining: bool) -> Holding {
        Holding::Held {
            worker: "w-1".into(),
            since: rfc3339(T0.as_secs()),
            draining,
        }
    }

    fn get<'a>(o: &'a OwnedStatus, t: &str) -> &'a Condition {
        o.conditions.iter().find(|c| c.type_ == t).expect("present")
    }

    fn worker_conditions(connected: bool, synced: bool) -> SyncRelayStatus {
        let c = |t: &str, ok: bool| Condition {
            type_: t.into(),
            status: ok.into(),
            reason: reason::CONNECTED.into(),
            message: String::new(),
            last_transition_time: "t".into(),
            observed_generation: None,
        };
        SyncRelayStatus {
            conditions: vec![
                c(conditions::CONNECTED, connected),
                c(conditions::SYNCED, synced),
            ],
            ..SyncRelayStatus::default()
        }
    }

    #[test]
    fn ready_needs_all_four() {
        let all = worker_conditions(true, true);
        let o = build_owned(Some(&all), &accepted(), &held(false), Some(2), T0);
        assert_eq!(get(&o, conditions::READY).status, ConditionStatus::True);
        assert_eq!(o.observed_generation, Some(2));
        assert_eq!(
            o.assignment.as_ref().map(|a| a.worker.as_str()),
            Some("w-1")
        );
        let unsynced = worker_conditions(true, false);
        let o = build_owned(Some(&unsynced), &accepted(), &held(false), Some(2), T0);
        let ready = get(&o, conditions::READY);
        assert_eq!(ready.status, ConditionStatus::False);
        assert!(ready.message.contains("Synced"));
        let o = build_owned(Some(&all), &accepted(), &Holding::NoLiveWorker, Some(2), T0);
        assert_eq!(get(&o, conditions::ASSIGNED).status, ConditionStatus::False);
        assert_eq!(get(&o, conditions::READY).status, ConditionStatus::False);
        assert_eq!(o.assignment, None);
    }

    #[test]
    fn the_whole_status_stays_small_with_both_writers_conditions() {
        // The worker's part at scale (10k repos, 100k root events, a truncated error) plus
        // the controller's conditions and assignment: still far under 8 KiB.
        let mut full = worker_conditions(true, true);
        full.sync.desired_repos = 10_000;
        full.sync.confirmed_repos = 10_000;
        full.sync.desired_root_events = 100_000;
        full.sync.confirmed_root_events = 100_000;
        full.sync.events_forwarded = 123_456_789;
        full.connection.last_error = Some("x".repeat(crate::api::status::MAX_ERROR_LEN));
        for c in &mut full.conditions {
            c.message = "y".repeat(crate::api::status::MAX_ERROR_LEN);
        }
        let owned = build_owned(Some(&full), &accepted(), &held(true), Some(7), T0);
        full.conditions.extend(owned.conditions);
        full.assignment = owned.assignment;
        let json = serde_json::to_string(&full).expect("json");
        assert_eq!(full.conditions.len(), 5);
        assert!(json.len() < 8 * 1024, "status is {} bytes", json.len());
    }

    #[test]
    fn refused_specs_say_why() {
        let v = Verdict::Refused {
            reason: controller_reason::INVALID_URL,
            message: "bad".into(),
        };
        let o = build_owned(None, &v, &Holding::NotAccepted, Some(1), T0);
        let a = get(&o, conditions::ACCEPTED);
        assert_eq!(
            (a.status, a.reason.as_str()),
            (ConditionStatus::False, "InvalidUrl")
        );
        assert_eq!(
            get(&o, conditions::ASSIGNED).reason,
            controller_reason::NOT_ACCEPTED
        );
    }

    #[test]
    fn rebuilding_an_unchanged_status_is_a_no_op() {
        let mut stored = worker_conditions(true, false);
        let first = build_owned(Some(&stored), &accepted(), &held(true), Some(1), T0);
        stored.conditions.extend(first.conditions.clone());
        stored.assignment = first.assignment.clone();
        stored.observed_generation = first.observed_generation;
        let later = T0 + std::time::Duration::from_secs(600);
        let again = build_owned(Some(&stored), &accepted(), &held(true), Some(1), later);
        assert_eq!(again, current_owned(Some(&stored)));
        // The apply body carries only the controller's fields.
        let body = apply_body(&again);
        let conds = body["status"]["conditions"].as_array().expect("array");
        assert_eq!(conds.len(), 3);
        assert!(body["status"].get("connection").is_none());
        assert!(body["status"].get("sync").is_none());
        assert_eq!(body["status"]["assignment"]["draining"], true);
        assert_eq!(
            get(&again, conditions::ASSIGNED).reason,
            controller_reason::DRAINING
        );
    }
}
