//! Process plumbing both Kubernetes roles share: the shutdown signal, the `--config` settings
//! file, and the self-subscriber task that feeds a sync core from our relay.

use crate::config;
use crate::config::ConfigError;
use crate::core::SyncSettings;
use crate::engine::EngineHandle;
use crate::relay::own::OwnRelayClient;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

/// The `--config` file could not be used.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// It could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// It is invalid.
    #[error("in {path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// Cause.
        source: ConfigError,
    },
}

/// The settings of a `--config` file (defaults without one).
pub fn load_settings(path: Option<&Path>) -> Result<SyncSettings, SettingsError> {
    let Some(path) = path else {
        return Ok(SyncSettings::default());
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: shown.clone(),
        source,
    })?;
    config::settings_from_yaml(&text).map_err(|source| SettingsError::Invalid {
        path: shown,
        source,
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Subscribes to our relay (retrying until it answers) and feeds the core. On reconnect the
/// subscription resumes `margin` before the last event seen.
pub fn spawn_self_subscriber(
    own: OwnRelayClient,
    engine: EngineHandle,
    margin: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let events: mpsc::Receiver<nostr::Event> = loop {
            match own.self_subscribe(None, margin, 4096).await {
                Ok(rx) => break rx,
                Err(e) => {
                    tracing::warn!(error = %e, "self-subscription to our relay failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        };
        let invalid = engine.feed_own_events(events).await.unwrap_or(0);
        if invalid > 0 {
            tracing::warn!(
                invalid,
                "self-subscriber dropped events that did not verify"
            );
        }
    })
}
