//! The worker's one status writer (the shell around [`super::report::ReportBook`]).
//!
//! Updates arrive through a bounded queue; when it is full an update is dropped and counted
//! (`grasp_sync_status_queue_overflows_total`): the status loop offers every relay's status
//! again a second later, so only intermediate states are lost, never the latest one. Urgent
//! updates (a drain acknowledgement, the shutdown report) wait for room instead. The writer
//! keeps the latest update per object, writes by the book's rules, and takes a token from a
//! global bucket before every write, so a worker holding many relays never floods the API
//! server. Writes are server-side applies of the status subresource under field manager
//! `grasp-sync-worker`, forced: the body holds only fields the workers own, and a relay
//! moving between workers changes hands within the same manager.

use super::report::{ReportBook, WorkerStatus, Write, MIN_WRITE_INTERVAL};
use crate::api::types::SyncRelay;
use crate::engine::wall_clock;
use crate::k8s::consts::WORKER_MANAGER;
use crate::observe::metrics::{Metrics, ResultLabel};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Reporter tuning.
#[derive(Debug, Clone, Copy)]
pub struct ReporterConfig {
    /// Least time between two non-urgent writes of one object.
    pub interval: Duration,
    /// Capacity of the update queue.
    pub queue: usize,
    /// Writes per second across all objects (the bucket's refill rate).
    pub rate: f64,
    /// Writes allowed in a burst.
    pub burst: f64,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            interval: MIN_WRITE_INTERVAL,
            queue: 1024,
            rate: 20.0,
            burst: 40.0,
        }
    }
}

enum Msg {
    Observed(String, Option<WorkerStatus>),
    Offer(String, WorkerStatus, bool),
    Forget(String),
    Flush(oneshot::Sender<()>),
}

/// Sends updates to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Msg>,
    metrics: Metrics,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

impl Reporter {
    /// Starts the writer.
    pub fn spawn(
        client: Client,
        config: ReporterConfig,
        metrics: Metrics,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let task = tokio::spawn(write_loop(client, config, metrics.clone(), rx));
        (Reporter { tx, metrics }, task)
    }

    /// What the API shows for `key` when this worker picks it up (waits for room).
    pub async fn observed(&self, key: &str, status: Option<WorkerStatus>) {
        let _ = self.tx.send(Msg::Observed(key.to_string(), status)).await;
    }

    /// A routine update: dropped and counted when the queue is full (the next round offers
    /// it again). Returns whether it was queued.
    pub fn offer(&self, key: &str, status: WorkerStatus) -> bool {
        match self.tx.try_send(Msg::Offer(key.to_string(), status, false)) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.status_queue_overflows.inc();
                false
            }
        }
    }

    /// An update the controller waits on: queued even if that means waiting for room, and
    /// written at once.
    pub async fn urgent(&self, key: &str, status: WorkerStatus) {
        let _ = self
            .tx
            .send(Msg::Offer(key.to_string(), status, true))
            .await;
    }

    /// Stops reporting `key`.
    pub async fn forget(&self, key: &str) {
        let _ = self.tx.send(Msg::Forget(key.to_string())).await;
    }

    /// Writes everything pending, at most `wait`.
    pub async fn flush(&self, wait: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(wait, rx).await;
        }
    }
}

/// A token bucket: `rate` per second, at most `burst` saved up.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Bucket {
            tokens: burst,
            rate: rate.max(0.01),
            burst,
            at: Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.at = Instant::now();
        }
        self.tokens -= 1.0;
    }

    /// The server said slow down: spend what is saved.
    fn drain(&mut self) {
        self.tokens = 0.0;
        self.at = Instant::now();
    }
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// How one write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Gone,
    /// 429, with the server's `retryAfterSeconds` (0 when it gave none).
    Throttled(Duration),
    Failed,
}

/// The least pause after a refused write, so that a server that keeps refusing is not spun on.
const MIN_PAUSE: Duration = Duration::from_millis(500);

async fn write_one(client: &Client, write: &Write) -> Outcome {
    let (ns, name) = split_key(&write.key);
    let api: Api<SyncRelay> = if ns.is_empty() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), ns)
    };
    let params = PatchParams::apply(WORKER_MANAGER).force();
    match api
        .patch_status(name, &params, &Patch::Apply(write.status.apply_body()))
        .await
    {
        Ok(_) => Outcome::Applied,
        Err(kube::Error::Api(s)) if s.code == 404 => Outcome::Gone,
        Err(kube::Error::Api(s)) if s.code == 429 => Outcome::Throttled(Duration::from_secs(
            s.details
                .as_ref()
                .map_or(0, |d| u64::from(d.retry_after_seconds)),
        )),
        Err(e) => {
            tracing::warn!(relay = %write.key, error = %e, "status write failed");
            Outcome::Failed
        }
    }
}

fn apply_msg(book: &mut ReportBook, msg: Msg, flushes: &mut Vec<oneshot::Sender<()>>) {
    match msg {
        Msg::Observed(key, status) => book.observed(&key, status),
        Msg::Offer(key, status, force) => book.offer(&key, status, force),
        Msg::Forget(key) => book.forget(&key),
        Msg::Flush(reply) => flushes.push(reply),
    }
}

async fn write_loop(
    client: Client,
    config: ReporterConfig,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Msg>,
) {
    let mut book = ReportBook::new(config.interval);
    let mut bucket = Bucket::new(config.rate, config.burst);
    let mut flushes = Vec::new();
    loop {
        let now = wall_clock();
        let sleep = book
            .next_due()
            .map(|t| t.since(now))
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => apply_msg(&mut book, m, &mut flushes),
                None => break,
            },
            _ = tokio::time::sleep(sleep) => {}
        }
        // Take everything queued before deciding, so only the latest per object is written.
        while let Ok(m) = rx.try_recv() {
            apply_msg(&mut book, m, &mut flushes);
        }
        let writes = if flushes.is_empty() {
            book.due(wall_clock())
        } else {
            book.drain_all()
        };
        // After a 429 the rest of this round waits for the server's `Retry-After`: kept in
        // the book (latest status per object), written in a later round.
        let mut pause = Duration::ZERO;
        for write in writes {
            if !pause.is_zero() {
                book.failed(write);
                continue;
            }
            bucket.take().await;
            let outcome = write_one(&client, &write).await;
            let result = match outcome {
                Outcome::Applied => {
                    book.done(write, wall_clock());
                    "applied"
                }
                Outcome::Gone => {
                    book.forget(&write.key);
                    "gone"
                }
                Outcome::Throttled(retry_after) => {
                    bucket.drain();
                    book.failed(write);
                    pause = retry_after.max(MIN_PAUSE);
                    "throttled"
                }
                Outcome::Failed => {
                    book.failed(write);
                    "error"
                }
            };
            metrics
                .status_patches
                .get_or_create(&ResultLabel { result })
                .inc();
        }
        for reply in flushes.drain(..) {
            let _ = reply.send(());
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        } else if book.next_due().is_some_and(|t| t <= wall_clock()) {
            // Failed writes are due at once; do not spin on a server that keeps refusing.
            tokio::time::sleep(MIN_PAUSE).await;
        }
    }
}
