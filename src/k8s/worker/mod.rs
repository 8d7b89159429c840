//! The worker pods (`grasp-sync worker`): they hold the websocket connections.
//!
//! A worker renews its own Lease (that is what makes it live to the controller), runs its own
//! self-subscriber and sync core, and runs a kube-runtime `Controller` over the SyncRelays
//! labelled `sync.grasp.dev/worker=<its name>`. Each reconcile is the pure [`decide`] phase
//! (hold, drain, or release the relay) followed by engine inputs: the core then runs
//! `compute_actions` for that relay (desired = its targets from the self-subscriber's index,
//! observed = confirmed plus pending) and drives the relay's session actor. A status loop
//! turns the core's per-relay summary into the worker's part of the status, which one
//! [`reporter`] writes by the rules of [`report`].

pub mod decide;
pub mod report;
pub mod reporter;
pub mod run;

pub use run::{run, run_in_cluster, run_with_status_client, WorkerError, WorkerOptions};
