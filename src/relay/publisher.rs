//! Publishing to our relay over raw websockets, many EVENTs in flight on each, answers matched
//! by the `OK`'s event id.
//!
//! Why not nostr-sdk's `send_event`: it waits for each `OK` by scanning a broadcast of every
//! relay message (each waiter sees every message), copies each event into the client's memory
//! database, and uses one connection. Relays (nostr-relay-builder's among them) handle one
//! connection's messages strictly in order — verify, policy, store, reply — so one connection
//! serialises our relay's signature checks on one core and, on LMDB, makes every event its own
//! write transaction (one fsync each). Spread over several connections the relay verifies in
//! parallel, and nostr-lmdb's ingester commits the saves that are waiting together in one
//! transaction.
//!
//! Connections are added while every open one is busy (up to a limit), so a trickle of events
//! uses one connection and a bulk sync as many as our relay needs; a connection idle for a
//! while is closed. A job that cannot be sent, whose connection breaks, or that stays
//! unanswered past the timeout comes back as [`PublishOutcome::Failed`], which the forwarder
//! retries.

use super::forward::OkRejection;
use super::own::PublishOutcome;
use super::wire::{open_own, RelaySocket};
use crate::core::url::RelayUrl;
use futures_util::{SinkExt, StreamExt};
use nostr::{ClientMessage, Event, EventId, JsonUtil, RelayMessage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Publisher tuning.
#[derive(Debug, Clone, Copy)]
pub struct PublisherConfig {
    /// Most websocket connections to our relay.
    pub connections: usize,
    /// EVENTs queued or awaiting their `OK` on one connection.
    pub per_connection: usize,
    /// A new connection is opened when every open one has at least this many in flight.
    pub spread_at: usize,
    /// An EVENT unanswered this long counts as failed (and is retried by the forwarder).
    pub ok_timeout: Duration,
    /// Bound on opening a connection.
    pub connect_timeout: Duration,
    /// A connection with nothing in flight for this long is closed.
    pub idle_close: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            // Enough for a relay to verify on every core; each more costs syscalls (fewer
            // EVENTs share a write) without adding throughput.
            connections: 8,
            per_connection: 16,
            spread_at: 4,
            ok_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            idle_close: Duration::from_secs(60),
        }
    }
}

struct Job {
    id: EventId,
    /// The EVENT message, serialised by the caller (on its task, not the connection's).
    text: String,
    reply: oneshot::Sender<PublishOutcome>,
}

/// The publisher's side of one connection task.
struct Handle {
    tx: mpsc::Sender<Job>,
    /// Jobs handed to the connection and not yet answered.
    load: Arc<AtomicUsize>,
}

struct Shared {
    url: RelayUrl,
    config: PublisherConfig,
    conns: Mutex<Vec<Handle>>,
    stop: watch::Sender<bool>,
}

/// Sends events to our relay. Cheap to clone; the connections end on [`Publisher::shutdown`]
/// or when every clone is dropped.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("url", &self.shared.url)
            .finish()
    }
}

/// Gives one unit of a connection's load back when the job is answered (or dropped).
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Publisher {
    /// A publisher for our relay at `url`; connections open on demand (needs a tokio runtime
    /// at the first publish).
    pub fn new(url: RelayUrl, config: PublisherConfig) -> Publisher {
        let (stop, _) = watch::channel(false);
        Publisher {
            shared: Arc::new(Shared {
                url,
                config,
                conns: Mutex::new(Vec::new()),
                stop,
            }),
        }
    }

    /// Picks the least loaded connection, opening another when all are busy.
    fn pick(&self) -> (mpsc::Sender<Job>, Arc<AtomicUsize>) {
        let s = &self.shared;
        let mut conns = s.conns.lock().unwrap_or_else(|p| p.into_inner());
        let least = conns
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.load.load(Ordering::Relaxed)))
            .min_by_key(|(_, load)| *load);
        let grow = conns.len() < s.config.connections.max(1)
            && least.is_none_or(|(_, load)| load >= s.config.spread_at);
        let index = match least {
            Some((i, _)) if !grow => i,
            _ => {
                let (tx, rx) = mpsc::channel(s.config.per_connection.max(1));
                let conn = Connection {
                    url: s.url.clone(),
                    config: s.config,
                    rx,
                    stop: s.stop.subscribe(),
                    pending: HashMap::new(),
                };
                tokio::spawn(conn.run());
                conns.push(Handle {
                    tx,
                    load: Arc::new(AtomicUsize::new(0)),
                });
                conns.len() - 1
            }
        };
        let h = &conns[index];
        (h.tx.clone(), h.load.clone())
    }

    /// Publishes one event and waits for our relay's verdict.
    pub async fn publish(&self, event: &Event) -> PublishOutcome {
        if *self.shared.stop.borrow() {
            return PublishOutcome::Failed("publisher stopped".into());
        }
        let (tx, load) = self.pick();
        load.fetch_add(1, Ordering::Relaxed);
        let _guard = LoadGuard(load);
        let (reply, rx) = oneshot::channel();
        let job = Job {
            id: event.id,
            text: ClientMessage::Event(std::borrow::Cow::Borrowed(event)).as_json(),
            reply,
        };
        if tx.send(job).await.is_err() {
            return PublishOutcome::Failed("publisher stopped".into());
        }
        rx.await
            .unwrap_or_else(|_| PublishOutcome::Failed("publisher stopped".into()))
    }

    /// Closes the connections; jobs in flight come back as failed.
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
    }
}

/// The verdict of an `OK` message.
fn outcome(status: bool, message: &str) -> PublishOutcome {
    if status {
        return PublishOutcome::Stored;
    }
    match OkRejection::classify(message) {
        OkRejection::Duplicate => PublishOutcome::Stored,
        class => PublishOutcome::Rejected(class, message.to_string()),
    }
}

/// Waiting for the `OK`s of one event id (the same event may be in flight twice).
struct Waiting {
    replies: Vec<oneshot::Sender<PublishOutcome>>,
    deadline: Instant,
}

struct Connection {
    url: RelayUrl,
    config: PublisherConfig,
    rx: mpsc::Receiver<Job>,
    stop: watch::Receiver<bool>,
    pending: HashMap<EventId, Waiting>,
}

/// Why the connected loop ended.
enum End {
    Stop,
    Idle,
    Lost(String),
}

/// Resolves once shutdown is asked (or the publisher is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

impl Connection {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            // Idle: dial only when there is something to send.
            let job = tokio::select! {
                job = self.rx.recv() => job,
                _ = stopped(&mut self.stop) => None,
            };
            let Some(job) = job else { return };
            let mut ws = match open_own(&self.url, self.config.connect_timeout).await {
                Ok(ws) => ws,
                Err(e) => {
                    // Everything queued behind it would meet the same refusal after the
                    // backoff: fail it now and let the forwarder's retries pace the redial.
                    let why = e.to_string();
                    let _ = job.reply.send(PublishOutcome::Failed(why.clone()));
                    while let Ok(job) = self.rx.try_recv() {
                        let _ = job.reply.send(PublishOutcome::Failed(why.clone()));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut self.stop) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let end = match self.send(&mut ws, job).await {
                Ok(()) => self.connected(&mut ws).await,
                Err(why) => End::Lost(why),
            };
            self.fail_all(match &end {
                End::Stop => "publisher stopped",
                End::Idle => "idle",
                End::Lost(why) => why,
            });
            let _ = ws.close(None).await;
            match end {
                End::Stop => return,
                End::Idle => {}
                End::Lost(why) => {
                    tracing::debug!(url = %self.url, %why, "publish connection to our relay lost")
                }
            }
        }
    }

    /// Queues an EVENT in the write buffer (flushed by the caller).
    async fn feed(&mut self, ws: &mut RelaySocket, job: Job) -> Result<(), String> {
        let deadline = Instant::now() + self.config.ok_timeout;
        self.pending
            .entry(job.id)
            .or_insert_with(|| Waiting {
                replies: Vec::new(),
                deadline,
            })
            .replies
            .push(job.reply);
        ws.feed(Message::text(job.text))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a job and every job already queued behind it in one write.
    async fn send(&mut self, ws: &mut RelaySocket, job: Job) -> Result<(), String> {
        self.feed(ws, job).await?;
        while let Ok(job) = self.rx.try_recv() {
            self.feed(ws, job).await?;
        }
        ws.flush().await.map_err(|e| e.to_string())
    }

    async fn connected(&mut self, ws: &mut RelaySocket) -> End {
        let mut stop = self.stop.clone();
        let mut last_busy = Instant::now();
        loop {
            let deadline = self.pending.values().map(|w| w.deadline).min();
            let wake = match deadline {
                Some(at) => at,
                None => last_busy + self.config.idle_close,
            };
            let result = tokio::select! {
                job = self.rx.recv() => match job {
                    Some(job) => self.send(ws, job).await,
                    None => return End::Stop,
                },
                frame = ws.next() => match frame {
                    None => Err("closed by our relay".to_string()),
                    Some(Err(e)) => Err(e.to_string()),
                    Some(Ok(Message::Text(text))) => {
                        self.on_text(text.as_str());
                        Ok(())
                    }
                    Some(Ok(Message::Close(_))) => Err("closed by our relay".to_string()),
                    Some(Ok(_)) => Ok(()),
                },
                _ = tokio::time::sleep_until(wake) => {
                    if self.pending.is_empty() {
                        return End::Idle;
                    }
                    self.expire();
                    Ok(())
                }
                _ = stopped(&mut stop) => return End::Stop,
            };
            if let Err(why) = result {
                return End::Lost(why);
            }
            if !self.pending.is_empty() {
                last_busy = Instant::now();
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        let Ok(msg) = RelayMessage::from_json(text) else {
            return;
        };
        // NOTICE, AUTH and CLOSED carry no verdict on an event: unanswered events time out.
        if let RelayMessage::Ok {
            event_id,
            status,
            message,
        } = msg
        {
            if let Some(waiting) = self.pending.remove(&event_id) {
                let verdict = outcome(status, &message);
                for reply in waiting.replies {
                    let _ = reply.send(verdict.clone());
                }
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<EventId> = self
            .pending
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(waiting) = self.pending.remove(&id) {
                for reply in waiting.replies {
                    let _ = reply.send(PublishOutcome::Failed("no OK from our relay".into()));
                }
            }
        }
    }

    fn fail_all(&mut self, why: &str) {
        for (_, waiting) in self.pending.drain() {
            for reply in waiting.replies {
                let _ = reply.send(PublishOutcome::Failed(why.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventBuilder, Keys};
    use nostr_relay_builder::builder::RelayBuilder;
    use nostr_relay_builder::LocalRelay;

    async fn relay() -> (LocalRelay, RelayUrl) {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let relay = LocalRelay::new(RelayBuilder::default().addr(addr.ip()).port(addr.port()));
        relay.run().await.expect("relay");
        (
            relay,
            RelayUrl::parse(&format!("ws://{addr}")).expect("url"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_many_in_flight_and_classifies_answers() {
        let (relay, url) = relay().await;
        let publisher = Publisher::new(url, PublisherConfig::default());
        let keys = Keys::generate();
        let events: Vec<Event> = (0..200)
            .map(|i| {
                EventBuilder::text_note(format!("n{i}"))
                    .sign_with_keys(&keys)
                    .expect("sign")
            })
            .collect();
        let outcomes =
            futures_util::future::join_all(events.iter().map(|e| publisher.publish(e))).await;
        assert!(outcomes.iter().all(|o| *o == PublishOutcome::Stored));
        // Again: `duplicate:` counts as stored.
        assert_eq!(publisher.publish(&events[0]).await, PublishOutcome::Stored);
        // A forged event gets the relay's verdict, not a transport failure.
        let mut json: serde_json::Value = serde_json::from_str(&events[1].as_json()).expect("json");
        json["content"] = serde_json::Value::String("tampered".into());
        let forged = Event::from_json(json.to_string()).expect("parses");
        assert!(matches!(
            publisher.publish(&forged).await,
            PublishOutcome::Rejected(OkRejection::Invalid, _)
        ));
        // Our relay unreachable: failures to retry, not verdicts. (A closed port rather than
        // `LocalRelay::shutdown`, which may leave a busy connection open for a while.)
        let gone = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let unreachable = Publisher::new(
            RelayUrl::parse(&format!("ws://{gone}")).expect("url"),
            PublisherConfig::default(),
        );
        assert!(matches!(
            unreachable.publish(&events[2]).await,
            PublishOutcome::Failed(_)
        ));
        relay.shutdown();
        publisher.shutdown();
        assert!(matches!(
            publisher.publish(&events[2]).await,
            PublishOutcome::Failed(_)
        ));
    }

    #[test]
    fn ok_messages_are_classified() {
        assert_eq!(outcome(true, ""), PublishOutcome::Stored);
        assert_eq!(
            outcome(false, "duplicate: already have this event"),
            PublishOutcome::Stored
        );
        assert_eq!(
            outcome(false, "blocked: no"),
            PublishOutcome::Rejected(OkRejection::Blocked, "blocked: no".into())
        );
        assert_eq!(
            outcome(false, "rate-limited: slow down"),
            PublishOutcome::Rejected(OkRejection::RateLimited, "rate-limited: slow down".into())
        );
    }
}
