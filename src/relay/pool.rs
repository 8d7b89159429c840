//! The session pool: the engine's [`CommandSink`] in every mode. It routes each command to
//! its relay's session actor (starting one on the first `Connect`), turns `Discovered` into a
//! message for the driver (which decides admission), and counts `Metric` facts. The routing
//! table is shared with the driver for status and shutdown; it is locked only to look up a
//! sender, never across I/O.

use super::session::{spawn_session, SessionCmd, SessionConfig, SessionDeps, SharedCounters};
use crate::api::status::SessionCounters;
use crate::core::url::RelayUrl;
use crate::core::{Command, DisconnectReason};
use crate::engine::CommandSink;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

struct Entry {
    tx: mpsc::UnboundedSender<SessionCmd>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<RelayUrl, Entry>,
    counters: HashMap<RelayUrl, SharedCounters>,
    allow_private: HashMap<RelayUrl, bool>,
    /// Sessions told to shut down and not yet awaited (see [`SessionRegistry::wait_closed`]).
    closing: HashMap<RelayUrl, JoinHandle<()>>,
}

/// The routing table, shared by the pool (inside the engine) and the driver.
#[derive(Clone, Default)]
pub struct SessionRegistry {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for SessionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionRegistry")
    }
}

impl SessionRegistry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain maps behind; keep using them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `url` may resolve to private addresses (an allowlist said so). Set before the
    /// relay is managed; applies from its next connection.
    pub fn set_allow_private(&self, url: &RelayUrl, allow: bool) {
        self.lock().allow_private.insert(url.clone(), allow);
    }

    /// The session counters of a relay (zero when it never connected).
    pub fn counters(&self, url: &RelayUrl) -> SessionCounters {
        self.lock()
            .counters
            .get(url)
            .and_then(|c| c.lock().ok().map(|c| c.clone()))
            .unwrap_or_default()
    }

    /// Relays with a running session.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits (at most `wait`) until the session the engine last stopped for `url` has sent its
    /// CLOSEs and closed the socket. True when it has, or when none was closing. A worker
    /// acknowledges a drain only after this, so that two workers never hold one relay.
    pub async fn wait_closed(&self, url: &RelayUrl, wait: Duration) -> bool {
        let (running, closing) = {
            let mut inner = self.lock();
            (inner.sessions.contains_key(url), inner.closing.remove(url))
        };
        if running {
            return false;
        }
        match closing {
            None => true,
            Some(task) => tokio::time::timeout(wait, task).await.is_ok(),
        }
    }

    /// Closes every session (CLOSE for each subscription, then the socket) and waits for them,
    /// at most `wait`.
    pub async fn shutdown(&self, wait: Duration) {
        let (entries, closing): (Vec<Entry>, Vec<JoinHandle<()>>) = {
            let mut inner = self.lock();
            let entries = inner.sessions.drain().map(|(_, e)| e).collect();
            (entries, inner.closing.drain().map(|(_, t)| t).collect())
        };
        for e in &entries {
            let _ = e.tx.send(SessionCmd::Shutdown);
        }
        let tasks = entries.into_iter().map(|e| e.task).chain(closing);
        let all = futures_util::future::join_all(tasks);
        let _ = tokio::time::timeout(wait, all).await;
    }
}

/// The engine's sink.
pub struct SessionPool {
    registry: SessionRegistry,
    config: SessionConfig,
    deps: SessionDeps,
    discovered: mpsc::UnboundedSender<RelayUrl>,
}

impl SessionPool {
    /// A pool; `discovered` receives the relays the core found unmanaged in its targets.
    pub fn new(
        registry: SessionRegistry,
        config: SessionConfig,
        deps: SessionDeps,
        discovered: mpsc::UnboundedSender<RelayUrl>,
    ) -> Self {
        SessionPool {
            registry,
            config,
            deps,
            discovered,
        }
    }

    fn route(&mut self, relay: &RelayUrl, cmd: SessionCmd) {
        let mut inner = self.registry.lock();
        if let Some(e) = inner.sessions.get(relay) {
            if e.tx.send(cmd.clone()).is_ok() {
                return;
            }
            inner.sessions.remove(relay);
        }
        // Only a Connect starts a session; anything else for a relay without one is moot
        // (the core treats it as disconnected).
        if cmd != SessionCmd::Connect {
            return;
        }
        let allow = inner.allow_private.get(relay).copied().unwrap_or(false);
        let counters = inner.counters.entry(relay.clone()).or_default().clone();
        let (tx, task) = spawn_session(
            relay.clone(),
            self.config,
            allow,
            self.deps.clone(),
            counters,
        );
        let _ = tx.send(SessionCmd::Connect);
        inner.sessions.insert(relay.clone(), Entry { tx, task });
        self.deps
            .metrics
            .relays_managed
            .set(inner.sessions.len() as i64);
    }

    fn stop(&mut self, relay: &RelayUrl) {
        let mut inner = self.registry.lock();
        // Finished closings nobody awaited are dropped here, so the map stays small.
        inner.closing.retain(|_, t| !t.is_finished());
        if let Some(e) = inner.sessions.remove(relay) {
            let _ = e.tx.send(SessionCmd::Shutdown);
            inner.closing.insert(relay.clone(), e.task);
        }
        inner.counters.remove(relay);
        self.deps
            .metrics
            .relays_managed
            .set(inner.sessions.len() as i64);
    }
}

impl CommandSink for SessionPool {
    fn execute(&mut self, command: Command) {
        match command {
            Command::Connect { relay } => self.route(&relay, SessionCmd::Connect),
            Command::Disconnect { relay, reason } => match reason {
                DisconnectReason::Removed => self.stop(&relay),
                DisconnectReason::EmptyTarget | DisconnectReason::Suspended => {
                    self.route(&relay, SessionCmd::Disconnect)
                }
            },
            Command::ClearPending { relay, closed } => {
                self.route(&relay, SessionCmd::ClearPending { closed })
            }
            Command::ClearConfirmed { .. } => {}
            Command::UnsubscribeAll { relay } => self.route(&relay, SessionCmd::UnsubscribeAll),
            Command::Subscribe {
                relay,
                sub,
                filters,
                purpose,
            } => self.route(
                &relay,
                SessionCmd::Subscribe {
                    sub,
                    filters,
                    purpose,
                },
            ),
            Command::Unsubscribe { relay, sub } => {
                self.route(&relay, SessionCmd::Unsubscribe { sub })
            }
            Command::Negentropy {
                relay,
                sub,
                batch,
                filter,
            } => self.route(&relay, SessionCmd::Negentropy { sub, batch, filter }),
            Command::Discovered { relay } => {
                let _ = self.discovered.send(relay);
            }
            Command::Metric { relay, event } => {
                tracing::debug!(%relay, ?event, "lifecycle");
                self.deps.metrics.record(event);
            }
        }
    }
}
