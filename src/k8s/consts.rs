//! Names shared by the controller and the workers: labels, annotations, the finalizer, field
//! managers, Lease names and timings, and the `Drained` acknowledgement of the drain
//! handshake (the protocol is described in `crate::k8s::controller::drain`). One place, so
//! that both sides spell them the same.

use crate::api::conditions::{self, reason, Condition, ConditionStatus};
use std::time::Duration;

/// API group of the custom resources.
pub const GROUP: &str = "sync.grasp.dev";

/// Label on a SyncRelay naming the worker that holds it (written by the controller only).
/// Workers watch `sync.grasp.dev/worker=<their name>`.
pub const WORKER_LABEL: &str = "sync.grasp.dev/worker";

pub use crate::api::types::DISCOVERED_LABEL;

/// Label on a worker's Lease: `sync.grasp.dev/role=worker`. The controller lists live workers
/// with this selector.
pub const ROLE_LABEL: &str = "sync.grasp.dev/role";

/// Value of [`ROLE_LABEL`] on worker Leases.
pub const ROLE_WORKER: &str = "worker";

/// Annotation the controller sets on a SyncRelay to ask its current worker to let go: the
/// value is the successor worker's name, or [`DRAIN_NO_SUCCESSOR`] when the object is being
/// deleted (or no longer accepted). The worker closes the session, flushes its status and
/// acknowledges with [`drained_condition`].
pub const DRAIN_ANNOTATION: &str = "sync.grasp.dev/drain";

/// [`DRAIN_ANNOTATION`] value meaning "close, nobody takes over".
pub const DRAIN_NO_SUCCESSOR: &str = "-";

/// Annotation (`"true"`/`"false"`) on a discovered SyncRelay: the admitting allowlist's
/// `allowPrivateNetworks`. The worker's SSRF guard lets a relay resolve to private addresses
/// only when this says `"true"`, or when the SyncRelay is not discovered (explicit objects
/// are operator intent, as in standalone mode).
pub const ALLOW_PRIVATE_ANNOTATION: &str = "sync.grasp.dev/allow-private-networks";

/// Finalizer the controller adds to every SyncRelay, so that a deleted relay's connection is
/// closed (drain with [`DRAIN_NO_SUCCESSOR`]) before the object goes.
pub const FINALIZER: &str = "sync.grasp.dev/close-connection";

/// Server-side-apply field manager of the controller (conditions `Accepted`, `Assigned`,
/// `Ready`, `status.assignment`, `status.observedGeneration`; allowlist status).
pub const CONTROLLER_MANAGER: &str = "grasp-sync-controller";

/// Server-side-apply field manager of the workers (conditions `Connected`, `Synced`,
/// `status.connection`, `status.sync`, `status.health`). A worker must apply only those
/// fields: applying the controller's conditions or `assignment` would take them over.
pub const WORKER_MANAGER: &str = "grasp-sync-worker";

/// Condition types the controller owns (and applies with [`CONTROLLER_MANAGER`]).
pub const CONTROLLER_CONDITIONS: [&str; 3] = [
    conditions::ACCEPTED,
    conditions::ASSIGNED,
    conditions::READY,
];

/// Condition types the workers own (and apply with [`WORKER_MANAGER`]). A worker's status
/// apply must carry only these conditions, and never `status.assignment`.
pub const WORKER_CONDITIONS: [&str; 2] = [conditions::CONNECTED, conditions::SYNCED];

/// Name of the controller's leader-election Lease (in the lease namespace).
pub const CONTROLLER_LEASE: &str = "grasp-sync-controller";

/// How long a Lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How often a holder renews its Lease (a third of [`LEASE_DURATION`]).
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// How long the controller waits for a `Drained` acknowledgement before it treats the old
/// worker as dead and moves the relay anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `message` of a worker's `Drained` acknowledgement: it names the worker, so that an
/// acknowledgement left over from an earlier holder is never taken for a fresh one.
pub fn drained_message(worker: &str) -> String {
    format!("drained by {worker}")
}

/// The condition a worker applies (field manager [`WORKER_MANAGER`]) once it has closed the
/// relay's session after seeing [`DRAIN_ANNOTATION`]: `Connected` = False, reason `Drained`,
/// message [`drained_message`].
pub fn drained_condition(worker: &str, now_rfc3339: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: conditions::CONNECTED.into(),
        status: ConditionStatus::False,
        reason: reason::DRAINED.into(),
        message: drained_message(worker),
        last_transition_time: now_rfc3339.into(),
        observed_generation: generation,
    }
}

/// Whether `condition` is `worker`'s `Drained` acknowledgement.
pub fn is_drained_by(condition: &Condition, worker: &str) -> bool {
    condition.type_ == conditions::CONNECTED
        && condition.status == ConditionStatus::False
        && condition.reason == reason::DRAINED
        && condition.message == drained_message(worker)
}

/// Reasons of the controller-owned conditions (CamelCase, stable).
pub mod controller_reason {
    /// `Accepted`: the spec is valid.
    pub const VALID: &str = "Valid";
    /// `Accepted` = False: the URL is not a ws:// or wss:// relay URL.
    pub const INVALID_URL: &str = "InvalidUrl";
    /// `Assigned`: a live worker holds the relay.
    pub const ASSIGNED: &str = "Assigned";
    /// `Assigned` (still True): moving to another worker, waiting for the old one to drain.
    pub const DRAINING: &str = "Draining";
    /// `Assigned` = False: no live worker.
    pub const NO_LIVE_WORKER: &str = "NoLiveWorker";
    /// `Assigned` = False: not assigned because the spec was not accepted.
    pub const NOT_ACCEPTED: &str = "NotAccepted";
    /// `Assigned` = False: being deleted.
    pub const DELETING: &str = "Deleting";
    /// `Ready`: accepted, assigned, connected and synced.
    pub const READY: &str = "Ready";
    /// `Ready` = False: the first condition that does not hold is named in the message.
    pub const NOT_READY: &str = "NotReady";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_ack_names_its_worker() {
        let c = drained_condition("worker-1", "2026-01-01T00:00:00Z", Some(2));
        assert!(is_drained_by(&c, "worker-1"));
        assert!(!is_drained_by(&c, "worker-2"));
        let mut other = c.clone();
        other.reason = reason::BACKING_OFF.into();
        assert!(!is_drained_by(&other, "worker-1"));
        assert!(LEASE_RENEW_INTERVAL * 3 <= LEASE_DURATION);
    }
}
