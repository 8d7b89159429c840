//! Resource shapes shared by every mode: the `spec` of SyncRelay and RelayAllowlist
//! (DESIGN.md section 5). Standalone reads them from YAML; the Kubernetes driver wraps the same
//! structs in custom resources, so one file works in both.

use crate::core::settings::RelayLimits;
use serde::{Deserialize, Serialize};

/// One remote relay to sync from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncRelaySpec {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Synced even when no repo lists it (layer 1 pulls its announcements); never reaped.
    #[serde(default)]
    pub bootstrap: bool,
    /// Disconnect and leave alone.
    #[serde(default)]
    pub suspend: bool,
    /// Overrides of the relay's subscription budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RelayLimits>,
    /// A Secret holding a NIP-42 key, never inlined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretRef>,
}

/// A reference to a Secret key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// Whether discovery may create relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Discovery {
    /// Relays found in announcements are created when admitted.
    #[default]
    Enabled,
    /// Only explicit SyncRelays sync.
    Disabled,
}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostRule {
    /// Glob on the normalised host (`*` matches any run of characters); an IP literal is a
    /// host (IPv6 in brackets).
    pub host: String,
    /// Schemes; allow rules default to `[wss]`, deny rules to any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schemes: Option<Vec<String>>,
    /// Ports; default any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
}

fn default_max_relays() -> u32 {
    500
}

/// Which discovered relays may be created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayAllowlistSpec {
    /// Enabled or Disabled.
    #[serde(default)]
    pub discovery: Discovery,
    /// Admit loopback, private and link-local targets (default false).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Most relays this allowlist admits.
    #[serde(default = "default_max_relays")]
    pub max_relays: u32,
    /// Admitted = matches some allow rule and no deny rule.
    #[serde(default)]
    pub allow: Vec<HostRule>,
    /// Deny wins.
    #[serde(default)]
    pub deny: Vec<HostRule>,
}
