//! Resource types shared by every mode, and allowlist matching.

pub mod allowlist;
pub mod types;

pub use allowlist::{admit, Admission};
pub use types::{Discovery, HostRule, RelayAllowlistSpec, SecretRef, SyncRelaySpec};
