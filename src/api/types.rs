//! Resource shapes shared by every mode: the `spec` of SyncRelay and RelayAllowlist
//! (DESIGN.md section 5). Standalone reads them from YAML; the Kubernetes driver wraps the same
//! structs in custom resources, so one file works in both.
//!
//! The `CustomResource` derives below generate the `SyncRelay` and `RelayAllowlist` objects;
//! the schema attributes (CEL rules, bounds, printer columns) are what the API server enforces.
//! `crate::api::crd` renders the CRDs and explains the column choices.

use super::crd::RelayAllowlistStatus;
use super::status::SyncRelayStatus;
use crate::core::settings::RelayLimits;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One remote relay to sync from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "sync.grasp.dev",
    version = "v1alpha1",
    kind = "SyncRelay",
    namespaced,
    status = "SyncRelayStatus",
    shortname = "sr",
    category = "nostr",
    derive = "PartialEq",
    annotation("helm.sh/resource-policy", "keep"),
    printcolumn = r#"{"name": "URL", "type": "string", "jsonPath": ".spec.url"}"#,
    printcolumn = r#"{"name": "WORKER", "type": "string", "jsonPath": ".status.assignment.worker"}"#,
    printcolumn = r#"{"name": "CONNECTED", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Connected\")].status"}"#,
    printcolumn = r#"{"name": "SYNCED", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Synced\")].status"}"#,
    printcolumn = r#"{"name": "REPOS", "type": "integer", "description": "Repos confirmed (a JSONPath cannot print confirmed/desired)", "jsonPath": ".status.sync.confirmedRepos"}"#,
    printcolumn = r#"{"name": "DESIRED", "type": "integer", "description": "Repos in the target", "jsonPath": ".status.sync.desiredRepos"}"#,
    printcolumn = r#"{"name": "EVENTS", "type": "integer", "jsonPath": ".status.sync.eventsForwarded"}"#,
    printcolumn = r#"{"name": "NIP77", "type": "string", "jsonPath": ".status.connection.nip77"}"#,
    printcolumn = r#"{"name": "LAST-EOSE", "type": "date", "jsonPath": ".status.sync.lastEose"}"#,
    printcolumn = r#"{"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
pub struct SyncRelaySpec {
    /// `ws://` or `wss://` URL.
    #[schemars(length(min = 6, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.startsWith('ws://') || self.startsWith('wss://')",
            "message": "url must start with ws:// or wss:// (lower case)"
        },
        {
            "rule": "self.matches('^wss?://[^/?#@\\\\s]+([/?#].*)?$')",
            "message": "url must name a host and carry no credentials"
        }
    ]))]
    pub url: String,
    /// Synced even when no repo lists it (layer 1 pulls its announcements); never reaped.
    #[serde(default)]
    pub bootstrap: bool,
    /// Disconnect and leave alone.
    #[serde(default)]
    pub suspend: bool,
    /// Overrides of the relay's subscription budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.maxSubscriptions >= 2 && self.maxSubscriptions <= 1024",
            "message": "limits.maxSubscriptions must be within 2..1024"
        },
        {
            "rule": "self.maxFilters >= 1 && self.maxFilters <= 256",
            "message": "limits.maxFilters must be within 1..256"
        },
        {
            "rule": "self.maxLimit >= 10 && self.maxLimit <= 100000",
            "message": "limits.maxLimit must be within 10..100000"
        }
    ]))]
    pub limits: Option<RelayLimits>,
    /// A Secret holding a NIP-42 key, never inlined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretRef>,
}

/// A reference to a Secret key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Whether discovery may create relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Discovery {
    /// Relays found in announcements are created when admitted.
    #[default]
    Enabled,
    /// Only explicit SyncRelays sync.
    Disabled,
}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostRule {
    /// Glob on the normalised host (`*` matches any run of characters); an IP literal is a
    /// host (IPv6 in brackets).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Schemes; allow rules default to `[wss]`, deny rules to any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2), inner(length(min = 2, max = 3)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(s, s.lowerAscii() == 'ws' || s.lowerAscii() == 'wss')",
            "message": "schemes are ws or wss"
        }
    ]))]
    pub schemes: Option<Vec<String>>,
    /// Ports; default any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub ports: Option<Vec<u16>>,
}

fn default_max_relays() -> u32 {
    500
}

/// Which discovered relays may be created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "sync.grasp.dev",
    version = "v1alpha1",
    kind = "RelayAllowlist",
    namespaced,
    status = "RelayAllowlistStatus",
    shortname = "ral",
    category = "nostr",
    derive = "PartialEq",
    annotation("helm.sh/resource-policy", "keep"),
    printcolumn = r#"{"name": "DISCOVERY", "type": "string", "jsonPath": ".spec.discovery"}"#,
    printcolumn = r#"{"name": "MAX", "type": "integer", "jsonPath": ".spec.maxRelays"}"#,
    printcolumn = r#"{"name": "MATCHED", "type": "integer", "jsonPath": ".status.matched"}"#,
    printcolumn = r#"{"name": "REFUSED", "type": "integer", "jsonPath": ".status.refused"}"#,
    printcolumn = r#"{"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
pub struct RelayAllowlistSpec {
    /// Enabled or Disabled.
    #[serde(default)]
    pub discovery: Discovery,
    /// Admit loopback, private and link-local targets (default false).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Most relays this allowlist admits.
    #[serde(default = "default_max_relays")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self <= 100000", "message": "maxRelays must be within 0..100000"}
    ]))]
    pub max_relays: u32,
    /// Admitted = matches some allow rule and no deny rule.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow: Vec<HostRule>,
    /// Deny wins.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub deny: Vec<HostRule>,
}

/// Label (`"true"`) on SyncRelays created by discovery, in every mode. Only these are ever
/// deleted by a driver (reaped); objects without it are operator intent.
pub const DISCOVERED_LABEL: &str = "sync.grasp.dev/discovered";

/// The stable object name of a discovered URL, the same in every mode: `sr-` and 16 hex
/// digits of the SHA-256 of the normalised URL.
pub fn discovered_name(url: &crate::core::url::RelayUrl) -> String {
    use nostr::hashes::{sha256, Hash};
    let digest = sha256::Hash::hash(url.as_str().as_bytes());
    let hex: String = digest
        .to_byte_array()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sr-{hex}")
}
