//! grasp-sync: GRASP-02 proactive sync for NIP-34 git relays.
//!
//! - [`core`]: the pure sync algorithm (indexes, compute_actions, lifecycle, health).
//! - [`api`]: resource shapes (SyncRelay, RelayAllowlist) and allowlist matching.
//! - [`config`]: configuration files.
//! - [`relay`]: the relay shell (SSRF guard, forwarding checks, embedded relay, own-relay client).
//! - [`engine`]: the mode-neutral engine task that drives the core.

pub mod api;
pub mod config;
pub mod core;
pub mod engine;
pub mod k8s;
pub mod observe;
pub mod relay;
pub mod standalone;
