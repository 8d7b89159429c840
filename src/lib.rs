//! grasp-sync: GRASP-02 proactive sync for NIP-34 git relays.
//!
//! - [`core`]: the pure sync algorithm (indexes, compute_actions, lifecycle, health).
//! - [`config`]: configuration files.
//! - [`relay`]: the relay shell (SSRF guard, forwarding checks).

pub mod config;
pub mod core;
pub mod relay;
