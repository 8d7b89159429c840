//! The leader-elected controller (`grasp-sync controller`).
//!
//! It never syncs a relay itself. It decides, for every SyncRelay, whether it is valid
//! (`Accepted`), which worker holds it (`Assigned`, the worker label and
//! `status.assignment`), and whether it is `Ready`; it creates discovered relays that an
//! allowlist admits and deletes discovered ones that are denied or unwanted; and it moves
//! relays between workers without ever letting two hold one (the drain handshake, see
//! [`drain`]).
//!
//! Functional core, imperative shell: a reconcile pass is [`plan::plan`], a pure function of
//! the observed objects, the live workers and the core's targets, made of named phases
//! ([`validate`], [`crate::k8s::assign`], [`drain`], [`status`], [`discovery`]) that return
//! [`actions::Action`]s; [`apply::apply`] performs them. [`run`] is the process around it:
//! watches, leader election, the sync core and the HTTP endpoints.

pub mod actions;
pub mod apply;
pub mod discovery;
pub mod drain;
pub mod feed;
pub mod plan;
pub mod run;
pub mod status;
pub mod validate;
pub mod view;
pub mod watch;

pub use run::{default_identity, run, run_in_cluster, ControllerError, ControllerOptions};
