//! The relay shell: what talks to remote relays and to our relay.
//!
//! So far: the SSRF guard, the bounded dedup set, the forwarding checks, and the embedded
//! relay (our relay when none is configured).
//! The per-relay session actors (nostr-sdk) arrive with the relay-session issue.

pub mod dedup;
pub mod embedded;
pub mod forward;
pub mod own;
pub mod ssrf;
