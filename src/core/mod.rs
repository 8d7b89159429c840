//! The functional core: the whole GRASP-02 sync algorithm as pure, deterministic code.
//!
//! Nothing here performs I/O or reads a clock. Time comes in as [`time::Millis`], randomness as
//! a seed, and every decision goes out as a [`command::Command`] for the relay sessions and the
//! Kubernetes layer to execute. The seed's names are kept (`RepoSyncIndex`, `compute_actions`,
//! `fresh_start`, …) so the seed document can be read beside the code.

pub mod actions;
pub mod command;
pub mod duration;
pub mod engine;
pub mod filters;
pub mod health;
pub mod ids;
pub mod lifecycle;
pub mod live;
pub mod nip34;
pub mod pagination;
pub mod pending;
pub mod relay_index;
pub mod repo_index;
pub mod rng;
pub mod scheduler;
pub mod settings;
pub mod summary;
pub mod time;
pub mod url;

pub use actions::{compute_actions, Action, AddFilters, RemoveFilters};
pub use command::{Command, DisconnectReason, Input, MetricEvent, NegentropyOutcome, SubPurpose};
pub use engine::{CoreStats, SyncCore};
pub use repo_index::{derive_relay_targets, RelayTargets, RepoSyncIndex};
pub use settings::SyncSettings;
pub use time::Millis;
pub use url::RelayUrl;
