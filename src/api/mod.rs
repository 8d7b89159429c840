//! Resource types shared by every mode: specs, the status document, conditions, and allowlist
//! matching.

pub mod allowlist;
pub mod conditions;
pub mod crd;
pub mod status;
pub mod types;

pub use allowlist::{admit, Admission};
pub use status::{build_status, SessionCounters, SyncRelayStatus};
pub use types::{Discovery, HostRule, RelayAllowlistSpec, SecretRef, SyncRelaySpec};
