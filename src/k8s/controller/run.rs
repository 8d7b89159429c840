//! The controller process (the imperative shell around [`super::plan::plan`]):
//! - serves `/metrics`, `/livez`, `/readyz` (ready once the caches are filled, leader or not);
//! - runs a sync core fed by the self-subscriber to our relay, with every SyncRelay managed
//!   and suspended, for discovery and target counts;
//! - watches SyncRelays, RelayAllowlists and worker Leases;
//! - takes part in leader election on the Lease `grasp-sync-controller`; only the leader
//!   writes. A standby keeps its caches and core warm, so it takes over at once;
//! - runs a reconcile pass on every relevant watch event (debounced), on leadership changes,
//!   when a timer runs out (drain timeout, reap grace, a worker Lease expiring) and every
//!   `resync` (30 s).

use super::apply::{apply_concurrently, APPLY_CONCURRENCY};
use super::feed::{CoreFeed, DiscoverySink};
use super::plan::{plan, ControllerState, Observed, PlanConfig, TargetState};
use super::watch::{spawn_watches, Overlay};
use crate::core::nip34::OwnRelay;
use crate::core::url::RelayUrl;
use crate::core::{Millis, SyncCore, SyncSettings};
use crate::engine::{spawn_engine, wall_clock, EngineHandle};
use crate::k8s::consts::{
    CONTROLLER_LEASE, CONTROLLER_MANAGER, LEASE_DURATION, LEASE_RENEW_INTERVAL,
};
use crate::k8s::lease::{live_workers_at, worker_expiries, LeaderElector, LeaderState};
use crate::k8s::process::{shutdown_signal, spawn_self_subscriber};
use crate::observe::http::{self, HttpState};
use crate::observe::metrics::{Metrics, ReasonLabel, ResultLabel};
use crate::relay::own::{OwnRelayClient, OwnRelayError};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{watch, Notify};

/// Why the controller could not start or run.
#[derive(Debug, Error)]
pub enum ControllerError {
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
}

/// Everything `grasp-sync controller` is configured with.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Our relay.
    pub own_relay: RelayUrl,
    /// Namespace to watch and write; all when `None`.
    pub namespace: Option<String>,
    /// Namespace of the Leases.
    pub lease_namespace: String,
    /// This replica's identity in leader election.
    pub identity: String,
    /// The core's settings (`reapGrace`, URL limits, …).
    pub settings: SyncSettings,
    /// Address of /metrics, /livez, /readyz.
    pub listen: SocketAddr,
    /// How long to wait for a drain acknowledgement.
    pub drain_timeout: Duration,
    /// Periodic reconcile.
    pub resync: Duration,
    /// Leader Lease duration.
    pub lease_duration: Duration,
    /// Leader Lease renewal period.
    pub renew_interval: Duration,
    /// Quiet time after a watch event before a pass (coalesces bursts).
    pub debounce: Duration,
    /// Assignment load slack.
    pub epsilon: f64,
}

impl ControllerOptions {
    /// Defaults for everything but our relay and the identity.
    pub fn new(own_relay: RelayUrl, identity: String) -> Self {
        ControllerOptions {
            own_relay,
            namespace: None,
            lease_namespace: "default".into(),
            identity,
            settings: SyncSettings::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            drain_timeout: crate::k8s::consts::DRAIN_TIMEOUT,
            resync: Duration::from_secs(30),
            lease_duration: LEASE_DURATION,
            renew_interval: LEASE_RENEW_INTERVAL,
            debounce: Duration::from_millis(200),
            epsilon: crate::k8s::assign::DEFAULT_EPSILON,
        }
    }

    fn plan_config(&self) -> PlanConfig {
        PlanConfig {
            drain_timeout: self.drain_timeout,
            reap_grace: self.settings.reap_grace,
            epsilon: self.epsilon,
            max_url_len: self.settings.max_relay_url_len,
        }
    }
}

/// An identity when none is given: `$HOSTNAME` (the pod name), else one from the process id.
pub fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("grasp-sync-controller-{}", std::process::id()))
}

/// `grasp-sync controller`: the in-cluster (or kubeconfig) client, until SIGTERM.
pub async fn run_in_cluster(opts: ControllerOptions) -> Result<(), ControllerError> {
    let client = Client::try_default().await?;
    run(client, opts, shutdown_signal()).await
}

/// Runs the controller until `shutdown` resolves; then releases leadership and stops.
pub async fn run(
    client: Client,
    opts: ControllerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let metrics = Metrics::default();
    let listener = http::bind(opts.listen)
        .await
        .map_err(|source| ControllerError::Listen {
            addr: opts.listen,
            source,
        })?;
    let http_state = HttpState::new(metrics.clone());
    let ready = http_state.ready.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(http::spawn_until(listener, http_state, stop_rx.clone()));

    // The core, fed by the self-subscriber; it never connects anywhere.
    let own = OwnRelayClient::connect(&opts.own_relay, Duration::from_secs(10)).await?;
    let (sink, mut discovered_rx) = DiscoverySink::new();
    let core = SyncCore::new(
        opts.settings.clone(),
        OwnRelay::new([opts.own_relay.clone()]),
        wall_clock().0,
    );
    let (engine, engine_task) = spawn_engine(core, sink, 4096);
    tasks.push(spawn_self_subscriber(
        own.clone(),
        engine.clone(),
        opts.settings.quick_reconnect_window,
        stop_rx.clone(),
    ));

    let trigger = Arc::new(Notify::new());
    let (stores, watch_tasks) = spawn_watches(
        &client,
        opts.namespace.as_deref(),
        &opts.lease_namespace,
        trigger.clone(),
    );
    tasks.extend(watch_tasks);

    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &opts.lease_namespace),
        CONTROLLER_LEASE,
        &opts.identity,
    )
    .with_duration(opts.lease_duration);
    let (leader_tx, mut leader_rx) = watch::channel::<Option<Millis>>(None);
    let leader_task = tokio::spawn(lead(
        elector,
        opts.renew_interval,
        leader_tx,
        metrics.clone(),
        stop_rx.clone(),
    ));

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_MANAGER.into(),
            instance: Some(opts.identity.clone()),
        },
    );

    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        ok = stores.ready() => {
            if !ok {
                tracing::error!("a watch cache stopped before it was filled");
            }
        }
        _ = &mut shutdown => {
            return stop(stop_tx, tasks, leader_task, &engine, engine_task, own).await;
        }
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!(identity = %opts.identity, "controller caches ready");

    let config = opts.plan_config();
    let mut state = ControllerState::default();
    let mut feed = CoreFeed::default();
    let mut overlay = Overlay::default();
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = trigger.notified() => {}
            Some(url) = discovered_rx.recv() => state.discovery.discovered(url, wall_clock()),
            _ = leader_rx.changed() => {}
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        // Coalesce a burst of events into one pass.
        tokio::time::sleep(opts.debounce).await;
        while let Ok(url) = discovered_rx.try_recv() {
            state.discovery.discovered(url, wall_clock());
        }
        let now = wall_clock();
        let relays = overlay.merge(stores.relays.state());
        for input in feed.sync(&relays, opts.settings.max_relay_url_len) {
            if engine.send(input).await.is_err() {
                tracing::error!("the controller's sync core stopped");
            }
        }
        let leading = leader_rx.borrow().is_some_and(|until| now < until);
        if !leading {
            next = Instant::now() + opts.renew_interval;
            continue;
        }
        let started = Instant::now();
        let allowlists: Vec<_> = stores
            .allowlists
            .state()
            .iter()
            .map(|a| (**a).clone())
            .collect();
        let leases: Vec<Lease> = stores
            .leases
            .state()
            .iter()
            .map(|l| (**l).clone())
            .collect();
        let workers = live_workers_at(&leases, now);
        let targets: BTreeMap<RelayUrl, TargetState> = engine
            .summaries()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let t = if s.desired_repos == 0 && s.desired_root_events == 0 {
                    TargetState::Empty
                } else {
                    TargetState::NonEmpty
                };
                (s.url, t)
            })
            .collect();
        let observed = Observed {
            relays: &relays,
            allowlists: &allowlists,
            workers: &workers,
            targets: &targets,
            now,
        };
        let planned = plan(&mut state, &observed, &config);
        for label in &planned.admissions {
            metrics
                .relays_discovered
                .get_or_create(&ReasonLabel { reason: label })
                .inc();
        }
        let report = apply_concurrently(
            &client,
            &planned.actions,
            Some(&recorder),
            APPLY_CONCURRENCY,
        )
        .await;
        count(&metrics, "skipped", planned.unchanged_statuses);
        count(&metrics, "applied", report.status_applied);
        count(&metrics, "conflict", report.conflicts);
        count(&metrics, "error", report.errors.len());
        for e in &report.errors {
            tracing::warn!(error = %e, "controller write failed");
        }
        if report.writes > 0 {
            tracing::debug!(
                writes = report.writes,
                relays = relays.len(),
                workers = workers.len(),
                "reconciled"
            );
        }
        overlay.record(report.updated);
        metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());

        // Next look: periodic, a timer, or a worker Lease running out.
        let mut wake = now + opts.resync;
        if let Some(t) = planned.next_wakeup {
            wake = wake.min(t);
        }
        if let Some(t) = worker_expiries(&leases, now).values().min() {
            wake = wake.min(*t + Duration::from_millis(100));
        }
        next = Instant::now() + wake.since(wall_clock());
        if report.conflicts > 0 || !report.errors.is_empty() {
            // Retry soon with fresh state rather than wait for the next event.
            next = next.min(Instant::now() + Duration::from_secs(2));
        }
    }
    ready.store(false, Ordering::Relaxed);
    stop(stop_tx, tasks, leader_task, &engine, engine_task, own).await
}

fn count(metrics: &Metrics, result: &'static str, n: usize) {
    if n > 0 {
        metrics
            .status_patches
            .get_or_create(&ResultLabel { result })
            .inc_by(n as u64);
    }
}

async fn stop(
    stop_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    leader_task: tokio::task::JoinHandle<()>,
    engine: &EngineHandle,
    engine_task: tokio::task::JoinHandle<SyncCore>,
    own: OwnRelayClient,
) -> Result<(), ControllerError> {
    let _ = stop_tx.send(true);
    // The leader task releases the Lease before it ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), leader_task).await;
    engine.stop().await;
    let _ = engine_task.await;
    for t in tasks {
        t.abort();
    }
    own.shutdown().await;
    Ok(())
}

/// Leader election rounds every `renew` until stopped; publishes `Some(until)` while leading.
async fn lead(
    elector: LeaderElector,
    renew: Duration,
    tx: watch::Sender<Option<Millis>>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let now = wall_clock();
        let state = match elector.try_acquire_or_renew(now).await {
            Ok(LeaderState::Leading { until }) => Some(until),
            Ok(LeaderState::Following { holder }) => {
                if tx.borrow().is_some() {
                    tracing::warn!(?holder, "lost leadership");
                }
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election round failed");
                // Keep leading only while the last successful renewal holds.
                (*tx.borrow()).filter(|until| now < *until)
            }
        };
        let was = tx.borrow().is_some();
        if state.is_some() && !was {
            tracing::info!(identity = elector.identity(), "leading");
        }
        metrics.leader.set(i64::from(state.is_some()));
        tx.send_replace(state);
        tokio::select! {
            _ = tokio::time::sleep(renew) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    metrics.leader.set(0);
    tx.send_replace(None);
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "releasing the leader Lease failed");
    }
}
