//! The forwarder: publishes checked events to our relay. It deduplicates across all relay
//! sessions (our own bounded set, not nostr-sdk's per-client one), keeps a bounded number of
//! publishes in flight, retries rate limits and transport failures with backoff (so nothing is
//! lost while our relay is down: the queue fills and the sessions stop reading, which pushes
//! back on the remote relays), counts every `OK false` by category, and answers `flush`
//! barriers so a session confirms a batch only after its events are stored.

use super::dedup::RecentIds;
use super::forward::OkRejection;
use super::own::{OwnRelayClient, PublishOutcome};
use crate::observe::metrics::{Metrics, ReasonLabel};
use nostr::Event;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Forwarder tuning.
#[derive(Debug, Clone, Copy)]
pub struct ForwarderConfig {
    /// Publishes in flight.
    pub concurrency: usize,
    /// Queued events before senders wait.
    pub queue: usize,
    /// Recent ids remembered for deduplication.
    pub dedup_capacity: usize,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Attempts for `error:` replies (transport failures and rate limits retry until stored).
    pub error_attempts: u32,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            // The embedded store commits the saves waiting at once in one transaction (one
            // fsync): every commit takes all that are in flight, so the fsync latency divided by
            // this bounds the rate (128 capped batches at 128 and ingest near 12k events/s on a
            // 10 ms fsync). An event in flight costs a small task; an external relay just sees
            // its connections' queues grow.
            concurrency: 512,
            queue: 4096,
            dedup_capacity: 200_000,
            retry_base: Duration::from_millis(250),
            retry_max: Duration::from_secs(15),
            error_attempts: 5,
        }
    }
}

/// Totals, returned when the forwarder stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Stored (or already stored) on our relay.
    pub stored: u64,
    /// Refused by our relay for good.
    pub rejected: u64,
    /// Skipped as recent duplicates.
    pub deduplicated: u64,
    /// Publish attempts that were retried.
    pub retries: u64,
}

enum Msg {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
}

/// The forwarder has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the forwarder has stopped")]
pub struct ForwarderStopped;

/// Sends events to the forwarder. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwarderMsg")
    }
}

impl Forwarder {
    /// Starts the forwarder task. It ends when every `Forwarder` is dropped and the queue has
    /// drained.
    pub fn spawn(
        own: OwnRelayClient,
        metrics: Metrics,
        config: ForwarderConfig,
    ) -> (Forwarder, JoinHandle<ForwarderStats>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let task = tokio::spawn(run(own, metrics, config, rx));
        (Forwarder { tx }, task)
    }

    /// Queues a checked event; waits while the queue is full.
    pub async fn forward(&self, event: Event) -> Result<(), ForwarderStopped> {
        self.tx
            .send(Msg::Event(Box::new(event)))
            .await
            .map_err(|_| ForwarderStopped)
    }

    /// Resolves once every event queued before this call has been stored or refused for good.
    pub async fn flush(&self) -> Result<(), ForwarderStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| ForwarderStopped)?;
        rx.await.map_err(|_| ForwarderStopped)
    }
}

/// The end of one publish.
enum Done {
    Stored,
    Rejected(OkRejection),
}

async fn publish(
    own: &OwnRelayClient,
    event: Box<Event>,
    config: ForwarderConfig,
    retries: &std::sync::atomic::AtomicU64,
) -> Done {
    let mut delay = config.retry_base;
    let mut errors = 0u32;
    loop {
        // Only checked events are queued (`forward`'s contract): no second verification.
        match own.publish_checked(&event).await {
            PublishOutcome::Stored => return Done::Stored,
            PublishOutcome::Rejected(class, message) => {
                if class == OkRejection::Error {
                    errors += 1;
                }
                if !class.is_retryable() || errors >= config.error_attempts {
                    tracing::warn!(id = %event.id, reason = class.label(), %message, "our relay refused an event");
                    return Done::Rejected(class);
                }
            }
            PublishOutcome::Failed(message) => {
                tracing::debug!(id = %event.id, %message, "publish to our relay failed; retrying");
            }
        }
        retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(config.retry_max);
    }
}

async fn run(
    own: OwnRelayClient,
    metrics: Metrics,
    config: ForwarderConfig,
    mut rx: mpsc::Receiver<Msg>,
) -> ForwarderStats {
    let retries = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Shared by the publish tasks: cloning the client itself per event costs more.
    let own = std::sync::Arc::new(own);
    let mut stats = ForwarderStats::default();
    let mut recent = RecentIds::new(config.dedup_capacity);
    let mut inflight: JoinSet<(u64, nostr::EventId, Done)> = JoinSet::new();
    let mut open: BTreeSet<u64> = BTreeSet::new();
    let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut next_seq = 0u64;
    let mut closed = false;
    loop {
        if closed && inflight.is_empty() {
            break;
        }
        let room = inflight.len() < config.concurrency.max(1);
        tokio::select! {
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok((seq, id, done)) = joined else { continue };
                open.remove(&seq);
                match done {
                    Done::Stored => {
                        stats.stored += 1;
                        metrics.events_forwarded.inc();
                    }
                    Done::Rejected(class) => {
                        stats.rejected += 1;
                        metrics.own_relay_rejections.get_or_create(&ReasonLabel { reason: class.label() }).inc();
                        // A retryable class that gave up may be offered again later.
                        if class.is_retryable() {
                            recent.forget(&id);
                        }
                    }
                }
            }
            msg = rx.recv(), if room && !closed => match msg {
                None => closed = true,
                Some(Msg::Flush(reply)) => flushes.push((next_seq, reply)),
                Some(Msg::Event(event)) => {
                    if !recent.insert(event.id) {
                        stats.deduplicated += 1;
                        metrics.events_deduplicated.inc();
                        continue;
                    }
                    let seq = next_seq;
                    next_seq += 1;
                    open.insert(seq);
                    let own = own.clone();
                    let retries = retries.clone();
                    inflight.spawn(async move {
                        let id = event.id;
                        let done = publish(&own, event, config, &retries).await;
                        (seq, id, done)
                    });
                }
            },
        }
        let low = open.first().copied().unwrap_or(next_seq);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut flushes)
            .into_iter()
            .partition(|(seq, _)| *seq <= low);
        flushes = waiting;
        for (_, reply) in ready {
            let _ = reply.send(());
        }
    }
    for (_, reply) in flushes {
        let _ = reply.send(());
    }
    stats.retries = retries.load(std::sync::atomic::Ordering::Relaxed);
    stats
}
