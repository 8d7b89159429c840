//! The functional core: the whole GRASP-02 sync algorithm as pure, deterministic code.
//!
//! Nothing here performs I/O or reads a clock. Time comes in as [`time::Millis`], randomness as
//! a seed, and every decision goes out as a [`command::Command`] for the relay sessions and the
//! Kubernetes layer to execute. The seed's names are kept (`RepoSyncIndex`, `compute_actions`,
//! `fresh_start`, …) so the seed document can be read beside the code.

pub mod duration;
pub mod nip34;
pub mod rng;
pub mod settings;
pub mod time;
pub mod url;
