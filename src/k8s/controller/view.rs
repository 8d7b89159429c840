//! Read-only accessors over a SyncRelay as the API returns it (labels, annotations,
//! finalizers, the worker's conditions), and the watch predicate: the hash of exactly what
//! should wake the controller, so the workers' frequent count updates do not.

use crate::api::conditions::{self, reason, Condition};
use crate::api::types::SyncRelay;
use crate::core::Millis;
use crate::k8s::consts::{DISCOVERED_LABEL, DRAIN_ANNOTATION, FINALIZER, WORKER_LABEL};
use kube::ResourceExt;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// `namespace/name`: the relay's key in assignment and bookkeeping.
pub fn key(relay: &SyncRelay) -> String {
    format!(
        "{}/{}",
        relay.namespace().unwrap_or_default(),
        relay.name_any()
    )
}

/// The worker label.
pub fn worker_label(relay: &SyncRelay) -> Option<&str> {
    relay.labels().get(WORKER_LABEL).map(String::as_str)
}

/// The drain annotation.
pub fn drain_annotation(relay: &SyncRelay) -> Option<&str> {
    relay
        .annotations()
        .get(DRAIN_ANNOTATION)
        .map(String::as_str)
}

/// Whether discovery created it (only these are ever reaped).
pub fn is_discovered(relay: &SyncRelay) -> bool {
    relay
        .labels()
        .get(DISCOVERED_LABEL)
        .is_some_and(|v| v == "true")
}

/// Whether it carries our finalizer.
pub fn has_finalizer(relay: &SyncRelay) -> bool {
    relay.finalizers().iter().any(|f| f == FINALIZER)
}

/// Whether it is being deleted.
pub fn is_deleting(relay: &SyncRelay) -> bool {
    relay.metadata.deletion_timestamp.is_some()
}

/// The condition of type `t` in its status.
pub fn condition<'a>(relay: &'a SyncRelay, t: &str) -> Option<&'a Condition> {
    relay.status.as_ref()?.condition(t)
}

/// The worker's `Connected` condition.
pub fn connected(relay: &SyncRelay) -> Option<&Condition> {
    condition(relay, conditions::CONNECTED)
}

/// Creation time (the epoch if unknown, which sorts first).
pub fn created(relay: &SyncRelay) -> Millis {
    relay
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| Millis(u64::try_from(t.0.as_millisecond()).unwrap_or(0)))
        .unwrap_or(Millis::ZERO)
}

/// What should trigger a reconcile: generation, labels, annotations, finalizers, deletion,
/// and the *status values and reasons* of the worker's `Connected` and `Synced` conditions
/// (a drain acknowledgement is a reason change) — not the counts the workers update every
/// few seconds. Equal hashes mean nothing the controller reads has changed.
pub fn trigger_hash(relay: &SyncRelay) -> u64 {
    // In-process only, never persisted: std's fixed-key SipHash is stable enough here.
    let mut h = DefaultHasher::new();
    relay.metadata.generation.hash(&mut h);
    relay.labels().hash(&mut h);
    relay.annotations().hash(&mut h);
    relay.finalizers().hash(&mut h);
    relay.metadata.deletion_timestamp.is_some().hash(&mut h);
    for t in [conditions::CONNECTED, conditions::SYNCED] {
        match condition(relay, t) {
            Some(c) => {
                format!("{:?}", c.status).hash(&mut h);
                c.reason.hash(&mut h);
                // Messages carry counts and error text; only a drain acknowledgement's
                // (which names the worker) matters.
                if c.reason == reason::DRAINED {
                    c.message.hash(&mut h);
                }
            }
            None => 0u8.hash(&mut h),
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::ConditionStatus;
    use crate::api::status::SyncRelayStatus;
    use crate::api::types::SyncRelaySpec;

    fn relay() -> SyncRelay {
        let mut r = SyncRelay::new(
            "r",
            SyncRelaySpec {
                url: "wss://relay.example.org".into(),
                bootstrap: false,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
        );
        r.metadata.namespace = Some("ns".into());
        r.metadata.generation = Some(1);
        r.status = Some(SyncRelayStatus::default());
        r
    }

    fn cond(t: &str, status: ConditionStatus, reason: &str) -> Condition {
        Condition {
            type_: t.into(),
            status,
            reason: reason.into(),
            message: String::new(),
            last_transition_time: "t".into(),
            observed_generation: None,
        }
    }

    #[test]
    fn counts_do_not_trigger_but_condition_flips_do() {
        let base = relay();
        let h0 = trigger_hash(&base);
        let mut counts = base.clone();
        if let Some(s) = counts.status.as_mut() {
            s.sync.events_forwarded = 1_000;
            s.sync.confirmed_repos = 7;
        }
        assert_eq!(trigger_hash(&counts), h0);
        let mut synced = base.clone();
        if let Some(s) = synced.status.as_mut() {
            s.conditions
                .push(cond(conditions::SYNCED, ConditionStatus::False, "Syncing"));
        }
        let hs = trigger_hash(&synced);
        if let Some(s) = synced.status.as_mut() {
            s.conditions[0].message = "5/10 repos".into();
        }
        assert_eq!(
            trigger_hash(&synced),
            hs,
            "progress messages do not trigger"
        );
        let mut flipped = base.clone();
        if let Some(s) = flipped.status.as_mut() {
            s.conditions.push(cond(
                conditions::CONNECTED,
                ConditionStatus::True,
                "Connected",
            ));
        }
        let h1 = trigger_hash(&flipped);
        assert_ne!(h1, h0);
        let mut drained = flipped.clone();
        if let Some(s) = drained.status.as_mut() {
            s.conditions[0] = cond(conditions::CONNECTED, ConditionStatus::False, "Drained");
        }
        assert_ne!(trigger_hash(&drained), h1);
        let mut labelled = base.clone();
        labelled
            .labels_mut()
            .insert(WORKER_LABEL.into(), "w".into());
        assert_ne!(trigger_hash(&labelled), h0);
        let mut spec = base.clone();
        spec.metadata.generation = Some(2);
        assert_ne!(trigger_hash(&spec), h0);
        assert_eq!(key(&base), "ns/r");
    }
}
