//! The Kubernetes driver: CRD-backed controller (discovery, assignment, leases, finalizers)
//! and workers (watch → engine → status reporter with server-side apply).
//!
//! - [`consts`]: names both sides share (labels, annotations, finalizer, field managers,
//!   Lease names, the `Drained` acknowledgement);
//! - [`assign`]: rendezvous hashing with bounded loads (pure);
//! - [`lease`]: leader election, worker Leases, live workers;
//! - [`controller`]: the leader-elected controller;
//! - [`worker`]: the worker pods that hold the relay sessions;
//! - [`process`]: plumbing both roles share (signals, settings file, self-subscriber).

pub mod assign;
pub mod consts;
pub mod controller;
pub mod lease;
pub mod process;
pub mod worker;
