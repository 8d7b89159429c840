//! The relay shell: what talks to remote relays and to our relay.
//!
//! So far the pure parts: the SSRF guard, the bounded dedup set and the forwarding checks.
//! The per-relay session actors (nostr-sdk) arrive with the relay-session issue.

pub mod dedup;
pub mod forward;
pub mod ssrf;
