//! The API writes a reconcile pass decides on, as plain data: the pure phases produce them,
//! [`super::apply`] performs them, and tests compare them (or the HTTP requests they become)
//! without a server.

use crate::api::crd::RelayAllowlistStatus;
use crate::api::types::SyncRelay;
use k8s_openapi::api::core::v1::ObjectReference;
use std::collections::BTreeMap;

/// An object by namespace and name, with the `resourceVersion` the plan was made from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `resourceVersion` as observed (for the apply step's read-your-writes overlay).
    pub resource_version: Option<String>,
    /// `uid` as observed (a delete is preconditioned on it, so a re-created object with the
    /// same name is never deleted by mistake).
    pub uid: Option<String>,
}

impl Target {
    /// Of a SyncRelay as observed.
    pub fn of(relay: &SyncRelay) -> Self {
        Target {
            namespace: relay.metadata.namespace.clone().unwrap_or_default(),
            name: relay.metadata.name.clone().unwrap_or_default(),
            resource_version: relay.metadata.resource_version.clone(),
            uid: relay.metadata.uid.clone(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Routine transition.
    Normal,
    /// Something an operator may want to look at.
    Warning,
}

/// A Kubernetes Event to record (on transitions only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    /// Normal or Warning.
    pub kind: EventKind,
    /// CamelCase reason: `Assigned`, `Moved`, `Discovered`, `Reaped`, `Refused`.
    pub reason: &'static str,
    /// The action taken (CamelCase).
    pub action: &'static str,
    /// Human text.
    pub note: String,
}

/// Event reasons.
pub mod event_reason {
    /// A relay got its first worker.
    pub const ASSIGNED: &str = "Assigned";
    /// A relay moved to another worker.
    pub const MOVED: &str = "Moved";
    /// Discovery created a relay.
    pub const DISCOVERED: &str = "Discovered";
    /// A discovered relay was deleted.
    pub const REAPED: &str = "Reaped";
    /// A spec or a discovered URL was refused.
    pub const REFUSED: &str = "Refused";
}

/// One API write.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Add our finalizer (JSON patch guarded by a `test` of the current list).
    AddFinalizer {
        /// The relay.
        target: Target,
        /// Its finalizers as observed (`None`: the field is absent).
        current: Option<Vec<String>>,
    },
    /// Remove our finalizer at `index` (JSON patch guarded by a `test`).
    RemoveFinalizer {
        /// The relay.
        target: Target,
        /// Position of our finalizer.
        index: usize,
    },
    /// Merge-patch labels and annotations (`None` removes a key).
    PatchMeta {
        /// The relay.
        target: Target,
        /// Labels to set or remove.
        labels: BTreeMap<String, Option<String>>,
        /// Annotations to set or remove.
        annotations: BTreeMap<String, Option<String>>,
    },
    /// Server-side apply of the controller-owned status fields.
    ApplyStatus {
        /// The relay.
        target: Target,
        /// The apply body (`apiVersion`, `kind`, `status`).
        body: serde_json::Value,
    },
    /// Create a discovered SyncRelay.
    Create {
        /// The object.
        relay: Box<SyncRelay>,
    },
    /// Delete a discovered SyncRelay (its finalizer then drains it).
    Delete {
        /// The relay.
        target: Target,
    },
    /// Server-side apply of a RelayAllowlist's status.
    ApplyAllowlistStatus {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The counts.
        status: RelayAllowlistStatus,
    },
    /// Record an Event.
    Event {
        /// The object it is about.
        regarding: ObjectReference,
        /// The event.
        event: EventSpec,
    },
}

impl Action {
    /// The SyncRelay key it writes, if any (a failed write skips the rest for that key).
    pub fn relay_key(&self) -> Option<String> {
        match self {
            Action::AddFinalizer { target, .. }
            | Action::RemoveFinalizer { target, .. }
            | Action::PatchMeta { target, .. }
            | Action::ApplyStatus { target, .. }
            | Action::Delete { target } => Some(target.key()),
            // An event about a relay follows that relay's writes: skipped if they failed.
            Action::Event { regarding, .. } if regarding.kind.as_deref() == Some("SyncRelay") => {
                Some(format!(
                    "{}/{}",
                    regarding.namespace.as_deref().unwrap_or_default(),
                    regarding.name.as_deref().unwrap_or_default()
                ))
            }
            Action::Create { .. } | Action::ApplyAllowlistStatus { .. } | Action::Event { .. } => {
                None
            }
        }
    }
}
