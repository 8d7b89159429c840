//! The mode-neutral engine: one tokio task owns the [`SyncCore`] and is driven by messages, so
//! no lock is held across I/O. It sleeps until the core's next wake-up, feeds it inputs from
//! the relay sessions and the self-subscriber, and hands every command, in order, to a
//! [`CommandSink`] (the relay sessions in production). Standalone mode and the worker pods
//! run this same engine.

use crate::core::summary::RelaySummary;
use crate::core::{Command, CoreStats, Input, Millis, SyncCore};
use nostr::Event;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Executes the core's commands. Must not block: sessions take work through their own queues.
pub trait CommandSink: Send + 'static {
    /// Executes (or queues) one command.
    fn execute(&mut self, command: Command);
}

enum EngineMsg {
    Input(Input),
    Stop,
    Summaries(oneshot::Sender<Vec<RelaySummary>>),
    Stats(oneshot::Sender<CoreStats>),
}

/// Sends inputs to, and queries, a running engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<EngineMsg>,
}

impl std::fmt::Debug for EngineMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineMsg")
    }
}

/// The engine has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sync engine has stopped")]
pub struct EngineStopped;

impl EngineHandle {
    /// Delivers an observation; waits if the engine's queue is full (backpressure).
    pub async fn send(&self, input: Input) -> Result<(), EngineStopped> {
        self.tx
            .send(EngineMsg::Input(input))
            .await
            .map_err(|_| EngineStopped)
    }

    /// Per-relay summaries for status.
    pub async fn summaries(&self) -> Result<Vec<RelaySummary>, EngineStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(EngineMsg::Summaries(tx))
            .await
            .map_err(|_| EngineStopped)?;
        rx.await.map_err(|_| EngineStopped)
    }

    /// Stops the engine (its sink may hold handles, so dropping them all is not enough).
    pub async fn stop(&self) {
        let _ = self.tx.send(EngineMsg::Stop).await;
    }

    /// The core's counters.
    pub async fn stats(&self) -> Result<CoreStats, EngineStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(EngineMsg::Stats(tx))
            .await
            .map_err(|_| EngineStopped)?;
        rx.await.map_err(|_| EngineStopped)
    }

    /// Forwards the self-subscriber's events as `OwnEvent` inputs, dropping any whose id or
    /// signature does not verify. Ends when either side closes.
    pub fn feed_own_events(&self, mut events: mpsc::Receiver<Event>) -> JoinHandle<u64> {
        let handle = self.clone();
        tokio::spawn(async move {
            let mut invalid = 0u64;
            while let Some(event) = events.recv().await {
                if event.verify().is_err() {
                    invalid += 1;
                    tracing::warn!(id = %event.id, "own relay served an event that does not verify");
                    continue;
                }
                if handle.send(Input::OwnEvent(Box::new(event))).await.is_err() {
                    break;
                }
            }
            invalid
        })
    }
}

/// Wall-clock time for the core.
pub fn wall_clock() -> Millis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(crate::core::time::duration_ms)
        .unwrap_or(0);
    Millis(ms)
}

/// The receiving end of an engine's queue, made before the engine so that its sink (the relay
/// sessions, which report back through the handle) can be built first.
#[derive(Debug)]
pub struct EngineInbox {
    rx: mpsc::Receiver<EngineMsg>,
}

/// A handle and the queue it feeds.
pub fn engine_channel(queue: usize) -> (EngineHandle, EngineInbox) {
    let (tx, rx) = mpsc::channel::<EngineMsg>(queue.max(1));
    (EngineHandle { tx }, EngineInbox { rx })
}

/// Starts the engine task. It stops when every handle is dropped, returning the core.
pub fn spawn_engine<S: CommandSink>(
    core: SyncCore,
    sink: S,
    queue: usize,
) -> (EngineHandle, JoinHandle<SyncCore>) {
    let (handle, inbox) = engine_channel(queue);
    (handle, run_engine(core, sink, inbox))
}

/// Starts the engine task on a queue made by [`engine_channel`].
pub fn run_engine<S: CommandSink>(
    mut core: SyncCore,
    mut sink: S,
    inbox: EngineInbox,
) -> JoinHandle<SyncCore> {
    let mut rx = inbox.rx;
    tokio::spawn(async move {
        // Start timers (reaper, connects for bootstrap relays) right away.
        for c in core.handle(wall_clock(), Input::Tick) {
            sink.execute(c);
        }
        loop {
            let now = wall_clock();
            let sleep = core
                .next_wakeup(now)
                .map(|t| Duration::from_millis(t.0.saturating_sub(now.0)))
                .unwrap_or(Duration::from_secs(60));
            let input = tokio::select! {
                msg = rx.recv() => match msg {
                    None | Some(EngineMsg::Stop) => break,
                    Some(EngineMsg::Input(input)) => input,
                    Some(EngineMsg::Summaries(reply)) => {
                        let _ = reply.send(core.relay_summaries());
                        continue;
                    }
                    Some(EngineMsg::Stats(reply)) => {
                        let _ = reply.send(core.stats.clone());
                        continue;
                    }
                },
                _ = tokio::time::sleep(sleep) => Input::Tick,
            };
            let span = tracing::debug_span!("engine_handle");
            let _enter = span.enter();
            for c in core.handle(wall_clock(), input) {
                sink.execute(c);
            }
        }
        core
    })
}
