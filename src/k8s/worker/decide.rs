//! Phase "decide" of a worker's reconcile (pure): from a SyncRelay as the API shows it, what
//! this worker must do with the relay's session. The shell ([`super::run`]) turns the
//! decision into engine inputs (`ManageRelay` / `UnmanageRelay`) and, for a drain, into the
//! `Drained` acknowledgement of the handshake in [`crate::k8s::controller::drain`].

use crate::api::types::SyncRelay;
use crate::core::settings::RelayLimits;
use crate::core::url::RelayUrl;
use crate::k8s::consts::ALLOW_PRIVATE_ANNOTATION;
use crate::k8s::controller::validate::validate_url;
use crate::k8s::controller::view::{drain_annotation, is_discovered, worker_label};
use kube::ResourceExt;

/// What the relay's session should be, as far as this worker is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Hold the relay: managed by the engine with these settings.
    Hold(HoldSpec),
    /// Let go and acknowledge: the controller asked for a drain (the annotation; it also
    /// asks when the object is being deleted).
    Drain {
        /// The relay's URL, when it parses (there is nothing to close otherwise).
        url: Option<RelayUrl>,
    },
    /// Not ours, or not a relay we can sync (the controller reports why in `Accepted`):
    /// close any session quietly, without an acknowledgement.
    Release,
}

/// How to hold a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSpec {
    /// The relay.
    pub url: RelayUrl,
    /// Synced with an empty target.
    pub bootstrap: bool,
    /// Disconnected and left alone.
    pub suspended: bool,
    /// Operator limits.
    pub limits: Option<RelayLimits>,
    /// May resolve to private addresses (explicit objects, or an allowlist said so).
    pub allow_private: bool,
}

/// The decision for `relay` on worker `me`. `max_url_len` is the core's URL limit.
pub fn decide(relay: &SyncRelay, me: &str, max_url_len: usize) -> Decision {
    if worker_label(relay) != Some(me) {
        return Decision::Release;
    }
    let url = validate_url(&relay.spec.url, max_url_len).url().cloned();
    // Only the annotation counts, not a deletion timestamp alone: the controller records
    // what the status shows when it asks, and an acknowledgement written before it asked
    // would be taken for a stale one (and the drain would wait for its timeout).
    if drain_annotation(relay).is_some() {
        return Decision::Drain { url };
    }
    let Some(url) = url else {
        return Decision::Release;
    };
    // Explicit SyncRelays are operator intent; discovered URLs are untrusted and reach
    // private networks only when the admitting allowlist said so.
    let allow_private = !is_discovered(relay)
        || relay
            .annotations()
            .get(ALLOW_PRIVATE_ANNOTATION)
            .is_some_and(|v| v == "true");
    Decision::Hold(HoldSpec {
        url,
        bootstrap: relay.spec.bootstrap,
        suspended: relay.spec.suspend,
        limits: relay.spec.limits,
        allow_private,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::SyncRelaySpec;
    use crate::k8s::consts::{DISCOVERED_LABEL, DRAIN_ANNOTATION, WORKER_LABEL};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn relay(url: &str, worker: Option<&str>) -> SyncRelay {
        let mut r = SyncRelay::new(
            "r",
            SyncRelaySpec {
                url: url.into(),
                bootstrap: true,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
        );
        if let Some(w) = worker {
            r.labels_mut().insert(WORKER_LABEL.into(), w.into());
        }
        r
    }

    #[test]
    fn holds_its_own_relays_with_their_spec() {
        let d = decide(&relay("wss://relay.example.org", Some("w1")), "w1", 512);
        let Decision::Hold(h) = d else {
            panic!("expected Hold, got {d:?}");
        };
        assert_eq!(h.url.as_str(), "wss://relay.example.org");
        assert!(h.bootstrap);
        assert!(h.allow_private, "explicit objects are operator intent");
    }

    #[test]
    fn releases_relays_labelled_to_another_worker_or_invalid() {
        let r = relay("wss://relay.example.org", Some("w2"));
        assert_eq!(decide(&r, "w1", 512), Decision::Release);
        assert_eq!(
            decide(&relay("wss://relay.example.org", None), "w1", 512),
            Decision::Release
        );
        assert_eq!(
            decide(&relay("https://relay.example.org", Some("w1")), "w1", 512),
            Decision::Release
        );
    }

    #[test]
    fn drains_on_annotation_or_deletion() {
        let mut r = relay("wss://relay.example.org", Some("w1"));
        r.annotations_mut()
            .insert(DRAIN_ANNOTATION.into(), "w2".into());
        assert!(matches!(
            decide(&r, "w1", 512),
            Decision::Drain { url: Some(_) }
        ));
        // Deleted but not yet asked: keep holding until the controller asks.
        let mut r = relay("wss://relay.example.org", Some("w1"));
        r.metadata.deletion_timestamp = Some(
            serde_json::from_value::<Time>(serde_json::json!("2026-01-01T00:00:00Z"))
                .expect("time"),
        );
        assert!(matches!(decide(&r, "w1", 512), Decision::Hold(_)));
        r.annotations_mut()
            .insert(DRAIN_ANNOTATION.into(), "-".into());
        assert!(matches!(decide(&r, "w1", 512), Decision::Drain { .. }));
    }

    #[test]
    fn discovered_relays_reach_private_networks_only_when_allowed() {
        let mut r = relay("ws://10.0.0.1:7000", Some("w1"));
        r.labels_mut()
            .insert(DISCOVERED_LABEL.into(), "true".into());
        let private = |r: &SyncRelay| match decide(r, "w1", 512) {
            Decision::Hold(h) => h.allow_private,
            other => panic!("expected Hold, got {other:?}"),
        };
        assert!(!private(&r));
        r.annotations_mut()
            .insert(ALLOW_PRIVATE_ANNOTATION.into(), "true".into());
        assert!(private(&r));
    }
}
