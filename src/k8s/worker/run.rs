//! The worker process (the imperative shell around [`super::decide`] and the engine):
//! - serves `/metrics`, `/livez`, `/readyz` (ready once its Lease is held and its watch cache
//!   is filled; never dependent on remote relays);
//! - renews its Lease; if it cannot renew before the Lease runs out it closes every session
//!   (the controller moves its relays then) and picks them up again once it holds it anew;
//! - runs the engine (self-subscriber → core → session pool → forwarder → our relay);
//! - runs a kube-runtime `Controller` over its SyncRelays, triggered only by what it reads
//!   (generation, drain and private-network annotations, deletion), not by status writes;
//! - every `status_interval` builds each held relay's status and offers it to the reporter,
//!   and releases relays whose label moved to another worker (they leave the watch);
//! - on shutdown: closes every session, flushes forwarding, writes each relay's last status
//!   (`Connected` = False, `WorkerStopped`) and releases its Lease.

use super::decide::{decide, Decision, HoldSpec};
use super::report::{closed_status, WorkerStatus};
use super::reporter::{Reporter, ReporterConfig};
use crate::api::conditions::{reason, rfc3339, Condition, ConditionStatus, CONNECTED};
use crate::api::status::{build_status, SyncRelayStatus};
use crate::api::types::SyncRelay;
use crate::core::nip34::OwnRelay;
use crate::core::url::RelayUrl;
use crate::core::{Input, Millis, SyncCore, SyncSettings};
use crate::engine::{engine_channel, run_engine, wall_clock, EngineHandle};
use crate::k8s::consts::{
    drained_condition, is_drained_by, ALLOW_PRIVATE_ANNOTATION, DRAIN_ANNOTATION, LEASE_DURATION,
    LEASE_RENEW_INTERVAL, WORKER_LABEL,
};
use crate::k8s::controller::view::key;
use crate::k8s::lease::WorkerLease;
use crate::k8s::process::{shutdown_signal, spawn_self_subscriber};
use crate::observe::http::{self, HttpState};
use crate::observe::metrics::Metrics;
use crate::relay::forwarder::{Forwarder, ForwarderConfig};
use crate::relay::own::{LocalSet, OwnRelayClient, OwnRelayError};
use crate::relay::pool::{SessionPool, SessionRegistry};
use crate::relay::session::{SessionConfig, SessionDeps};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, Controller, PredicateConfig, WatchStreamExt};
use kube::{Client, ResourceExt};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

/// Why the worker could not start or run.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// The HTTP port could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Our relay could not be reached.
    #[error(transparent)]
    OwnRelay(#[from] OwnRelayError),
    /// No Kubernetes client could be built.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// A name is not usable as a worker name (label value and Lease name).
    #[error("worker name {0:?} must be 1..63 characters of [a-z0-9.-], starting and ending alphanumeric")]
    Name(String),
}

/// Everything `grasp-sync worker` is configured with.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Our relay.
    pub own_relay: RelayUrl,
    /// This worker's name: its Lease and the value of its relays' worker label.
    pub name: String,
    /// Namespace to watch and write; all when `None`.
    pub namespace: Option<String>,
    /// Namespace of the Leases.
    pub lease_namespace: String,
    /// The core's settings.
    pub settings: SyncSettings,
    /// Address of /metrics, /livez, /readyz.
    pub listen: SocketAddr,
    /// Relay session tuning.
    pub session: SessionConfig,
    /// Forwarder tuning.
    pub forwarder: ForwarderConfig,
    /// Status writer tuning.
    pub reporter: ReporterConfig,
    /// How often statuses are built and offered to the reporter.
    pub status_interval: Duration,
    /// Lease duration.
    pub lease_duration: Duration,
    /// Lease renewal period.
    pub renew_interval: Duration,
    /// How long a drain or shutdown waits for a session to close and forwarding to flush.
    pub close_wait: Duration,
}

impl WorkerOptions {
    /// Defaults for everything but our relay and the name.
    pub fn new(own_relay: RelayUrl, name: String) -> Self {
        WorkerOptions {
            own_relay,
            name,
            namespace: None,
            lease_namespace: "default".into(),
            settings: SyncSettings::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            session: SessionConfig::default(),
            forwarder: ForwarderConfig::default(),
            reporter: ReporterConfig::default(),
            status_interval: Duration::from_secs(1),
            lease_duration: LEASE_DURATION,
            renew_interval: LEASE_RENEW_INTERVAL,
            close_wait: Duration::from_secs(10),
        }
    }
}

/// A worker name must be a label value and a Lease (DNS subdomain) name.
fn valid_name(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(ok_char)
        && alnum(name.chars().next())
        && alnum(name.chars().last())
}

/// What the worker knows of a relay it holds (or has drained and not yet handed over).
#[derive(Debug, Clone)]
struct Held {
    spec: HoldSpec,
    generation: Option<i64>,
    /// The status last built (transition times carry over from it).
    last: Option<SyncRelayStatus>,
    /// The session is closed and the acknowledgement sent.
    drained: bool,
}

/// State shared by the reconciles, the status loop and shutdown.
struct Ctx {
    name: String,
    max_url_len: usize,
    engine: EngineHandle,
    registry: SessionRegistry,
    forwarder: Forwarder,
    reporter: Reporter,
    held: Mutex<BTreeMap<String, Held>>,
    lease_held: AtomicBool,
    close_wait: Duration,
    renew_interval: Duration,
}

/// A reconcile failed (only the engine stopping does that).
#[derive(Debug, Error)]
#[error("the worker's sync engine has stopped")]
pub struct EngineGone;

impl Ctx {
    fn held(&self) -> MutexGuard<'_, BTreeMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send(&self, input: Input) -> Result<(), EngineGone> {
        self.engine.send(input).await.map_err(|_| EngineGone)
    }

    /// Manages the relay (idempotent: only a changed spec reaches the engine).
    async fn hold(
        &self,
        key: &str,
        spec: HoldSpec,
        generation: Option<i64>,
        api_status: Option<&SyncRelayStatus>,
    ) -> Result<(), EngineGone> {
        let (old_url, first, changed) = {
            let mut held = self.held();
            match held.get_mut(key) {
                Some(h) => {
                    let old = (h.spec.url != spec.url).then(|| h.spec.url.clone());
                    let changed = h.spec != spec || h.drained;
                    h.spec = spec.clone();
                    h.generation = generation;
                    h.drained = false;
                    (old, false, changed)
                }
                None => {
                    held.insert(
                        key.to_string(),
                        Held {
                            spec: spec.clone(),
                            generation,
                            last: api_status.cloned(),
                            drained: false,
                        },
                    );
                    (None, true, true)
                }
            }
        };
        if first {
            self.reporter
                .observed(key, api_status.map(WorkerStatus::of))
                .await;
        }
        if let Some(url) = old_url {
            self.send(Input::UnmanageRelay { url }).await?;
        }
        if changed {
            tracing::info!(relay = %spec.url, key, "holding relay");
            self.registry
                .set_allow_private(&spec.url, spec.allow_private);
            self.send(Input::ManageRelay {
                url: spec.url,
                bootstrap: spec.bootstrap,
                suspended: spec.suspended,
                limits: spec.limits,
            })
            .await?;
        }
        Ok(())
    }

    /// Closes the relay's session and waits until it is closed and its events are stored.
    async fn close(&self, url: &RelayUrl) -> Result<(), EngineGone> {
        self.send(Input::UnmanageRelay { url: url.clone() }).await?;
        // The engine handles messages in order: once this answers, the pool has told the
        // session to shut down.
        self.engine.stats().await.map_err(|_| EngineGone)?;
        if !self.registry.wait_closed(url, self.close_wait).await {
            tracing::warn!(relay = %url, "session did not close in time");
        }
        if tokio::time::timeout(self.close_wait, self.forwarder.flush())
            .await
            .is_err()
        {
            tracing::warn!(relay = %url, "forwarding did not flush in time");
        }
        Ok(())
    }

    /// The drain handshake's "ack": close, flush, then report `Drained` (urgently).
    async fn drain(
        &self,
        key: &str,
        generation: Option<i64>,
        api_status: Option<&SyncRelayStatus>,
    ) -> Result<(), EngineGone> {
        let already = api_status
            .and_then(|s| s.condition(CONNECTED))
            .is_some_and(|c| is_drained_by(c, &self.name));
        let (to_close, last, first) = {
            let mut held = self.held();
            match held.get_mut(key) {
                Some(h) if h.drained => return Ok(()),
                Some(h) => {
                    h.drained = true;
                    (Some(h.spec.url.clone()), h.last.clone(), false)
                }
                None => (None, api_status.cloned(), true),
            }
        };
        if let Some(url) = &to_close {
            tracing::info!(relay = %url, key, "draining relay");
            self.close(url).await?;
        }
        if already && to_close.is_none() {
            return Ok(());
        }
        let now = wall_clock();
        let ack = drained_condition(&self.name, &rfc3339(now.as_secs()), generation);
        let status = closed_status(last.as_ref(), ack, now);
        if first {
            self.reporter
                .observed(key, api_status.map(WorkerStatus::of))
                .await;
        }
        self.reporter.urgent(key, WorkerStatus::of(&status)).await;
        if let Some(h) = self.held().get_mut(key) {
            h.last = Some(status);
        }
        Ok(())
    }

    /// Lets go of a relay without acknowledging (it left this worker, or cannot be synced).
    async fn release(&self, key: &str) -> Result<(), EngineGone> {
        let gone = self.held().remove(key);
        if let Some(h) = gone {
            if !h.drained {
                tracing::info!(relay = %h.spec.url, key, "releasing relay");
                self.send(Input::UnmanageRelay { url: h.spec.url }).await?;
            }
        }
        self.reporter.forget(key).await;
        Ok(())
    }

    /// Builds each held relay's status and offers it to the reporter.
    async fn report(&self) -> Result<(), EngineGone> {
        let summaries = self.engine.summaries().await.map_err(|_| EngineGone)?;
        let by_url: HashMap<&RelayUrl, _> = summaries.iter().map(|s| (&s.url, s)).collect();
        let now = wall_clock();
        let mut offers = Vec::new();
        for (key, h) in self.held().iter_mut() {
            if h.drained {
                continue;
            }
            let Some(s) = by_url.get(&h.spec.url) else {
                continue;
            };
            let counters = self.registry.counters(&h.spec.url);
            let status = build_status(s, &counters, h.last.as_ref(), h.generation, now);
            offers.push((key.clone(), WorkerStatus::of(&status)));
            h.last = Some(status);
        }
        for (key, status) in offers {
            self.reporter.offer(&key, status);
        }
        Ok(())
    }
}

/// What wakes a reconcile: what [`decide`] reads. Status writes (the workers' own and the
/// controller's) change none of it.
fn trigger_hash(relay: &SyncRelay) -> Option<u64> {
    let mut h = DefaultHasher::new();
    relay.metadata.generation.hash(&mut h);
    relay.labels().get(WORKER_LABEL).hash(&mut h);
    relay.annotations().get(DRAIN_ANNOTATION).hash(&mut h);
    relay
        .annotations()
        .get(ALLOW_PRIVATE_ANNOTATION)
        .hash(&mut h);
    relay.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

async fn reconcile(relay: Arc<SyncRelay>, ctx: Arc<Ctx>) -> Result<Action, EngineGone> {
    if !ctx.lease_held.load(Ordering::Acquire) {
        // Without a live Lease the controller may already have moved the relay.
        return Ok(Action::requeue(ctx.renew_interval));
    }
    let k = key(&relay);
    let status = relay.status.as_ref();
    match decide(&relay, &ctx.name, ctx.max_url_len) {
        Decision::Hold(spec) => {
            ctx.hold(&k, spec, relay.metadata.generation, status)
                .await?
        }
        Decision::Drain { .. } => ctx.drain(&k, relay.metadata.generation, status).await?,
        Decision::Release => ctx.release(&k).await?,
    }
    Ok(Action::await_change())
}

fn error_policy(_relay: Arc<SyncRelay>, error: &EngineGone, _ctx: Arc<Ctx>) -> Action {
    tracing::error!(%error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// `grasp-sync worker`: the in-cluster (or kubeconfig) client, until SIGTERM.
pub async fn run_in_cluster(opts: WorkerOptions) -> Result<(), WorkerError> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let client = Client::try_from(config.clone())?;
    // The status reporter paces its own writes (token bucket, latest status per object) and
    // must see each 429: with kube-client's default retry policy a refused PATCH was retried
    // inside the client up to 15 times while the reporter's one write loop waited, and
    // throttling was never counted.
    let mut status_config = config;
    status_config.default_retry = false;
    let status_client = Client::try_from(status_config)?;
    run_with_status_client(client, status_client, opts, shutdown_signal()).await
}

/// Runs the worker until `shutdown` resolves; then closes, flushes, reports and releases.
/// Status is written with `client` too.
pub async fn run(
    client: Client,
    opts: WorkerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    run_with_status_client(client.clone(), client, opts, shutdown).await
}

/// [`run`], writing status with `status_client` (see [`run_in_cluster`]).
pub async fn run_with_status_client(
    client: Client,
    status_client: Client,
    opts: WorkerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    if !valid_name(&opts.name) {
        return Err(WorkerError::Name(opts.name));
    }
    let metrics = Metrics::default();
    let listener = http::bind(opts.listen)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: opts.listen,
            source,
        })?;
    let http_state = HttpState::new(metrics.clone());
    let ready = http_state.ready.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(http::spawn_until(listener, http_state, stop_rx.clone()));

    // The engine, as in standalone mode; the controller decides discovery, so the core's
    // `Discovered` findings are dropped here.
    let own = OwnRelayClient::connect(&opts.own_relay, Duration::from_secs(10)).await?;
    let (forwarder, forwarder_task) =
        Forwarder::spawn(own.clone(), metrics.clone(), opts.forwarder);
    let (engine, inbox) = engine_channel(4096);
    let registry = SessionRegistry::default();
    let (discovered_tx, mut discovered_rx) = mpsc::unbounded_channel();
    tasks.push(tokio::spawn(async move {
        while discovered_rx.recv().await.is_some() {}
    }));
    let deps = SessionDeps {
        engine: engine.clone(),
        forwarder: forwarder.clone(),
        local: LocalSet::Relay(Box::new(own.clone())),
        metrics: metrics.clone(),
    };
    let pool = SessionPool::new(registry.clone(), opts.session, deps, discovered_tx);
    let core = SyncCore::new(
        opts.settings.clone(),
        OwnRelay::new([opts.own_relay.clone()]),
        wall_clock().0,
    );
    let engine_task = run_engine(core, pool, inbox);
    tasks.push(spawn_self_subscriber(
        own.clone(),
        engine.clone(),
        opts.settings.quick_reconnect_window,
        stop_rx.clone(),
    ));

    let (reporter, reporter_task) = Reporter::spawn(status_client, opts.reporter, metrics.clone());
    let ctx = Arc::new(Ctx {
        name: opts.name.clone(),
        max_url_len: opts.settings.max_relay_url_len,
        engine: engine.clone(),
        registry: registry.clone(),
        forwarder: forwarder.clone(),
        reporter: reporter.clone(),
        held: Mutex::new(BTreeMap::new()),
        lease_held: AtomicBool::new(false),
        close_wait: opts.close_wait,
        renew_interval: opts.renew_interval,
    });

    // The Lease first: relays are taken up only while it holds.
    let lease = WorkerLease::new(
        Api::<Lease>::namespaced(client.clone(), &opts.lease_namespace),
        &opts.name,
    )
    .with_duration(opts.lease_duration);
    let (lease_tx, mut lease_rx) = watch::channel::<Option<Millis>>(None);
    let lease_task = tokio::spawn(renew_lease(
        lease.clone(),
        opts.renew_interval,
        lease_tx,
        stop_rx.clone(),
    ));

    let api: Api<SyncRelay> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let selector = format!("{WORKER_LABEL}={}", opts.name);
    let (reader, writer) = reflector::store();
    let trigger = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trigger_hash, PredicateConfig::default());
    let (regained_tx, regained_rx) = mpsc::channel::<()>(1);
    let regained = futures_util::stream::unfold(regained_rx, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });
    let mut controller_stop = stop_rx.clone();
    let controller = Controller::for_stream(trigger, reader.clone())
        .reconcile_all_on(regained)
        .graceful_shutdown_on(async move {
            let _ = controller_stop.wait_for(|s| *s).await;
        })
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| std::future::ready(()));
    let controller_task = tokio::spawn(controller);

    tracing::info!(worker = %opts.name, own_relay = %opts.own_relay, "worker starting");
    let mut shutdown = std::pin::pin!(shutdown);
    let mut cache_ready = false;
    let mut interval = tokio::time::interval(opts.status_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {}
            _ = lease_rx.changed() => {}
            ok = reader.wait_until_ready(), if !cache_ready => {
                cache_ready = ok.is_ok();
            }
        }
        let now = wall_clock();
        let holding = lease_rx.borrow().is_some_and(|until| now < until);
        let was = ctx.lease_held.swap(holding, Ordering::AcqRel);
        if was && !holding {
            tracing::warn!("worker Lease lost: closing every session");
            let keys: Vec<String> = ctx.held().keys().cloned().collect();
            for k in keys {
                if ctx.release(&k).await.is_err() {
                    break;
                }
            }
        } else if holding && !was {
            tracing::info!(worker = %opts.name, "worker Lease held");
            let _ = regained_tx.try_send(());
        }
        ready.store(holding && cache_ready, Ordering::Relaxed);
        if !holding || !cache_ready {
            continue;
        }
        sweep(&ctx, &reader).await;
        if ctx.report().await.is_err() {
            tracing::error!("the worker's sync engine stopped");
            break;
        }
    }

    ready.store(false, Ordering::Relaxed);
    tracing::info!(worker = %opts.name, "worker stopping: closing sessions");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(opts.close_wait, controller_task).await;
    stop_all(&ctx, &registry, opts.close_wait).await;
    reporter.flush(opts.close_wait).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    if let Err(e) = lease.release().await {
        tracing::warn!(error = %e, "releasing the worker Lease failed");
    }
    engine.stop().await;
    let _ = engine_task.await;
    drop(ctx);
    drop(forwarder);
    drop(reporter);
    let _ = tokio::time::timeout(opts.close_wait, forwarder_task).await;
    let _ = tokio::time::timeout(opts.close_wait, reporter_task).await;
    for t in tasks {
        t.abort();
    }
    own.shutdown().await;
    tracing::info!(worker = %opts.name, "worker stopped");
    Ok(())
}

/// Releases the relays whose label no longer names this worker (they left the watch).
async fn sweep(ctx: &Ctx, reader: &Store<SyncRelay>) {
    let present: BTreeSet<String> = reader.state().iter().map(|r| key(r)).collect();
    let gone: Vec<String> = ctx
        .held()
        .keys()
        .filter(|k| !present.contains(*k))
        .cloned()
        .collect();
    for k in gone {
        if ctx.release(&k).await.is_err() {
            return;
        }
    }
}

/// Shutdown: close every session, flush forwarding, and report each held relay as stopped.
async fn stop_all(ctx: &Ctx, registry: &SessionRegistry, wait: Duration) {
    let held: Vec<(String, Held)> = ctx
        .held()
        .iter()
        .map(|(k, h)| (k.clone(), h.clone()))
        .collect();
    for (_, h) in held.iter().filter(|(_, h)| !h.drained) {
        let _ = ctx
            .send(Input::UnmanageRelay {
                url: h.spec.url.clone(),
            })
            .await;
    }
    let _ = ctx.engine.stats().await;
    registry.shutdown(wait).await;
    let _ = tokio::time::timeout(wait, ctx.forwarder.flush()).await;
    let now = wall_clock();
    for (k, h) in held.into_iter().filter(|(_, h)| !h.drained) {
        let stopped = Condition {
            type_: CONNECTED.into(),
            status: ConditionStatus::False,
            reason: reason::WORKER_STOPPED.into(),
            message: format!("worker {} stopped", ctx.name),
            last_transition_time: rfc3339(now.as_secs()),
            observed_generation: h.generation,
        };
        let status = closed_status(h.last.as_ref(), stopped, now);
        ctx.reporter.urgent(&k, WorkerStatus::of(&status)).await;
    }
}

/// Renews the Lease every `renew` until stopped; publishes when the hold runs out.
async fn renew_lease(
    lease: WorkerLease,
    renew: Duration,
    tx: watch::Sender<Option<Millis>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match lease.renew(wall_clock()).await {
            Ok(until) => {
                tx.send_replace(Some(until));
            }
            Err(e) => tracing::warn!(error = %e, "renewing the worker Lease failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(renew) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_are_label_values() {
        assert!(valid_name("grasp-sync-worker-0"));
        assert!(!valid_name(""));
        assert!(!valid_name("Worker"));
        assert!(!valid_name("-w"));
        assert!(!valid_name(&"w".repeat(64)));
    }

    #[test]
    fn status_writes_do_not_trigger_reconciles() {
        let mut r = SyncRelay::new(
            "r",
            crate::api::types::SyncRelaySpec {
                url: "wss://relay.example.org".into(),
                bootstrap: false,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
        );
        let before = trigger_hash(&r);
        r.status = Some(SyncRelayStatus::default());
        assert_eq!(before, trigger_hash(&r));
        r.annotations_mut()
            .insert(DRAIN_ANNOTATION.into(), "w2".into());
        assert_ne!(before, trigger_hash(&r));
    }
}
