//! Standalone mode (`grasp-sync run`): the controller and one worker in one process, over an
//! in-process object store read from YAML, with the embedded relay as our relay unless another
//! is given. It wires the same engine and relay sessions the worker pods run: our relay →
//! self-subscriber → engine → session pool → remote relays → forwarder → our relay.

pub mod progress;
pub mod store;

use crate::config::ConfigSet;
use crate::core::nip34::OwnRelay;
use crate::core::url::RelayUrl;
use crate::core::{Input, SyncCore};
use crate::engine::{engine_channel, run_engine, wall_clock, EngineHandle};
use crate::observe::http::{self, HttpState, StatusFn};
use crate::observe::metrics::{Metrics, ReasonLabel};
use crate::observe::table::StatusObject;
use crate::relay::embedded::{EmbeddedError, EmbeddedRelay, EmbeddedRelayConfig};
use crate::relay::forwarder::{Forwarder, ForwarderConfig, ForwarderStats};
use crate::relay::own::{LocalSet, OwnRelayClient, OwnRelayError};
use crate::relay::pool::{SessionPool, SessionRegistry};
use crate::relay::session::{SessionConfig, SessionDeps};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Discovered, ObjectStore};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Margin the self-subscriber re-reads after a reconnect.
pub const SELF_SUBSCRIBER_MARGIN: Duration = Duration::from_secs(15 * 60);

/// How to run.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// SyncRelays, allowlists and settings.
    pub config: ConfigSet,
    /// Our relay; `None` starts the embedded relay.
    pub own_relay: Option<RelayUrl>,
    /// Embedded relay storage.
    pub data: PathBuf,
    /// Embedded relay listen address.
    pub relay_listen: SocketAddr,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Relay session tuning.
    pub session: SessionConfig,
    /// Forwarder tuning.
    pub forwarder: ForwarderConfig,
    /// Seed of the core's jitter.
    pub seed: u64,
}

impl StandaloneOptions {
    /// Defaults around a config.
    pub fn new(config: ConfigSet) -> Self {
        StandaloneOptions {
            config,
            own_relay: None,
            data: PathBuf::from("./data"),
            relay_listen: SocketAddr::from(([127, 0, 0, 1], 7777)),
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            session: SessionConfig::default(),
            forwarder: ForwarderConfig::default(),
            seed: 0x6772_6173_7073_796e,
        }
    }
}

/// Why standalone mode could not start.
#[derive(Debug, Error)]
pub enum StandaloneError {
    /// The embedded relay failed.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// Our relay is unusable.
    #[error(transparent)]
    OwnRelay(#[from] OwnRelayError),
    /// The HTTP port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running standalone process.
pub struct Standalone {
    own_url: RelayUrl,
    http_addr: SocketAddr,
    engine: EngineHandle,
    engine_task: JoinHandle<SyncCore>,
    registry: SessionRegistry,
    store: Arc<Mutex<ObjectStore>>,
    metrics: Metrics,
    embedded: Option<EmbeddedRelay>,
    own: OwnRelayClient,
    forwarder: Option<Forwarder>,
    forwarder_task: JoinHandle<ForwarderStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Standalone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standalone")
            .field("own_url", &self.own_url)
            .field("http_addr", &self.http_addr)
            .finish()
    }
}

fn lock(store: &Mutex<ObjectStore>) -> std::sync::MutexGuard<'_, ObjectStore> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

impl Standalone {
    /// Starts everything and returns once our relay is connected and the HTTP port is bound.
    pub async fn start(opts: StandaloneOptions) -> Result<Standalone, StandaloneError> {
        let metrics = Metrics::default();
        let listener = http::bind(opts.listen)
            .await
            .map_err(|source| StandaloneError::Listen {
                addr: opts.listen,
                source,
            })?;
        let http_addr = listener.local_addr().unwrap_or(opts.listen);

        // Our relay: the embedded one, or the one given.
        let (embedded, own_identity, own_url) = match &opts.own_relay {
            Some(url) => (None, OwnRelay::new([url.clone()]), url.clone()),
            None => {
                let mut cfg = EmbeddedRelayConfig::new(opts.relay_listen, opts.data.clone());
                cfg.scope = opts.config.settings.scope;
                let identity = cfg.own_relay()?;
                let relay = EmbeddedRelay::start(cfg).await?;
                let url = relay.url().clone();
                tracing::info!(%url, data = %opts.data.display(), "embedded relay listening");
                (Some(relay), identity, url)
            }
        };
        let own = OwnRelayClient::connect(&own_url, Duration::from_secs(10)).await?;
        let local = match &embedded {
            Some(e) => LocalSet::Store(e.store()),
            None => LocalSet::Relay(Box::new(own.clone())),
        };

        let (forwarder, forwarder_task) =
            Forwarder::spawn(own.clone(), metrics.clone(), opts.forwarder);
        let (engine, inbox) = engine_channel(4096);
        let registry = SessionRegistry::default();
        let (discovered_tx, discovered_rx) = mpsc::unbounded_channel();
        let deps = SessionDeps {
            engine: engine.clone(),
            forwarder: forwarder.clone(),
            local,
            metrics: metrics.clone(),
        };
        let pool = SessionPool::new(registry.clone(), opts.session, deps, discovered_tx);
        let core = SyncCore::new(opts.config.settings.clone(), own_identity, opts.seed);
        let engine_task = run_engine(core, pool, inbox);

        let now = wall_clock().as_secs();
        let store = Arc::new(Mutex::new(ObjectStore::from_config(&opts.config, now)));
        let explicit: Vec<_> = lock(&store)
            .relays()
            .map(|(u, o)| (u.clone(), o.spec.clone(), o.allow_private))
            .collect();
        for (url, spec, allow_private) in explicit {
            registry.set_allow_private(&url, allow_private);
            let _ = engine
                .send(Input::ManageRelay {
                    url,
                    bootstrap: spec.bootstrap,
                    suspended: spec.suspend,
                    limits: spec.limits,
                })
                .await;
        }

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(discovery(
            discovered_rx,
            store.clone(),
            registry.clone(),
            engine.clone(),
            metrics.clone(),
        )));

        // The self-subscriber feeds the core's indexes from our relay.
        let events = own
            .self_subscribe(None, SELF_SUBSCRIBER_MARGIN, 4096)
            .await?;
        let feeder = engine.feed_own_events(events);
        tasks.push(tokio::spawn(async move {
            let invalid = feeder.await.unwrap_or(0);
            if invalid > 0 {
                tracing::warn!(
                    invalid,
                    "self-subscriber dropped events that did not verify"
                );
            }
        }));

        let mut state = HttpState::new(metrics.clone());
        state.status = Some(status_fn(engine.clone(), registry.clone(), store.clone()));
        state.ready.store(true, Ordering::Relaxed);
        tasks.push(http::spawn_until(listener, state, stop_rx.clone()));
        tracing::info!(%own_url, http = %http_addr, "grasp-sync running");

        Ok(Standalone {
            own_url,
            http_addr,
            engine,
            engine_task,
            registry,
            store,
            metrics,
            embedded,
            own,
            forwarder: Some(forwarder),
            forwarder_task,
            stop,
            tasks,
        })
    }

    /// Our relay's URL.
    pub fn own_url(&self) -> &RelayUrl {
        &self.own_url
    }

    /// Where `/metrics`, `/status`, … are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The engine (for tests and embedding).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The `/status` objects now.
    pub async fn status(&self) -> Vec<StatusObject> {
        status_objects(&self.engine, &self.registry, &self.store).await
    }

    /// Closes every subscription and connection, waits for the forwarder to store what it
    /// holds (at most `wait`), then stops the engine, the HTTP server and the embedded relay.
    pub async fn shutdown(mut self, wait: Duration) -> ForwarderStats {
        self.registry.shutdown(wait).await;
        self.engine.stop().await;
        let _ = self.engine_task.await;
        // The sessions and the engine held the other forwarder handles.
        self.forwarder.take();
        let stats = tokio::time::timeout(wait, &mut self.forwarder_task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.own.shutdown().await;
        if let Some(e) = self.embedded.take() {
            e.shutdown();
        }
        stats
    }
}

async fn status_objects(
    engine: &EngineHandle,
    registry: &SessionRegistry,
    store: &Mutex<ObjectStore>,
) -> Vec<StatusObject> {
    let summaries = engine.summaries().await.unwrap_or_default();
    lock(store).refresh(&summaries, |u| registry.counters(u), wall_clock())
}

fn status_fn(
    engine: EngineHandle,
    registry: SessionRegistry,
    store: Arc<Mutex<ObjectStore>>,
) -> StatusFn {
    Arc::new(move || {
        let (engine, registry, store) = (engine.clone(), registry.clone(), store.clone());
        Box::pin(async move {
            let objects = status_objects(&engine, &registry, &store).await;
            serde_json::to_value(objects).unwrap_or(serde_json::Value::Null)
        })
    })
}

/// Turns the core's `Discovered` relays into managed ones where an allowlist admits them.
async fn discovery(
    mut rx: mpsc::UnboundedReceiver<RelayUrl>,
    store: Arc<Mutex<ObjectStore>>,
    registry: SessionRegistry,
    engine: EngineHandle,
    metrics: Metrics,
) {
    while let Some(url) = rx.recv().await {
        let verdict = lock(&store).discover(&url, wall_clock().as_secs());
        match verdict {
            Discovered::Known => {}
            Discovered::Refused(reason) => {
                metrics
                    .relays_discovered
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                tracing::info!(%url, reason, "discovered relay refused");
            }
            Discovered::Created { allow_private } => {
                metrics
                    .relays_discovered
                    .get_or_create(&ReasonLabel { reason: "admitted" })
                    .inc();
                tracing::info!(%url, "discovered relay admitted");
                registry.set_allow_private(&url, allow_private);
                if engine
                    .send(Input::ManageRelay {
                        url,
                        bootstrap: false,
                        suspended: false,
                        limits: None,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}
