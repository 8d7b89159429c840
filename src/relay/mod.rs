//! The relay shell: what talks to remote relays and to our relay.
//!
//! Remote relays are spoken to over a raw websocket (`wire`, `session`): nostr-sdk's pool
//! drops invalid or unrequested events before we could count them, takes one filter per REQ,
//! and re-resolves DNS after our SSRF check. Our own relay (and the embedded one) is read
//! through nostr-sdk (`own`, `embedded`) and written through raw websockets (`publisher`).

pub mod dedup;
pub mod embedded;
pub mod forward;
pub mod forwarder;
pub mod item_sets;
pub mod negentropy;
pub mod own;
pub mod pool;
pub mod publisher;
pub mod session;
pub mod ssrf;
pub mod wire;
