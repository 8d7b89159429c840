//! grasp-sync: GRASP-02 proactive sync for NIP-34 git relays.
//!
//! - [`core`]: the pure sync algorithm (indexes, compute_actions, lifecycle, health).
//! - [`api`]: resource shapes (SyncRelay, RelayAllowlist) and allowlist matching.
//! - [`config`]: configuration files.
//! - [`relay`]: the relay shell (SSRF guard, forwarding checks).

pub mod api;
pub mod config;
pub mod core;
pub mod relay;
