//! The per-relay session actor: one tokio task per remote relay owns its websocket and the
//! wire-level state of its subscriptions (filters, page counts, negentropy sessions). It
//! executes the core's commands for that relay and reports what the relay said back to the
//! engine as `Input`s. Events are checked here (size, filter match, id, signature) and handed
//! to the shared forwarder; a historic EOSE is reported only after the forwarder stored every
//! event before it, so "confirmed" means "on our relay".

use super::forward::{check_crypto_with, check_shape, KeyCache, Reject};
use super::forwarder::Forwarder;
use super::negentropy::{Fetch, FetchStep, NegStep, Reconciler};
use super::own::LocalSet;
use super::wire::{open, DialError, DialOptions, RelaySocket};
use crate::api::status::SessionCounters;
use crate::core::health::{classify_relay_message, RelayMessageClass};
use crate::core::pagination::PageReport;
use crate::core::pending::{BatchId, SyncMethod};
use crate::core::settings::RelayLimits;
use crate::core::url::RelayUrl;
use crate::core::{Input, NegentropyOutcome, SubPurpose};
use crate::engine::{wall_clock, EngineHandle};
use crate::observe::metrics::{method, ConnState, Metrics, ReasonLabel, StateLabel};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use nostr::filter::MatchEventOptions;
use nostr::{ClientMessage, Event, Filter, JsonUtil, RelayMessage, SubscriptionId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Session tuning (shared by every session of a process).
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Dial bound and message cap (`allow_private` is set per relay).
    pub dial: DialOptions,
    /// Bound on the NIP-11 request.
    pub info_timeout: Duration,
    /// Largest event forwarded (bytes of its wire message).
    pub max_event_size: usize,
    /// A NEG-OPEN with no reply this long means the relay lacks NIP-77.
    pub neg_initial_timeout: Duration,
    /// Bound on reading our relay's item set.
    pub local_items_timeout: Duration,
    /// Ping period; twice this with no frame at all means the connection is dead.
    pub keepalive: Duration,
    /// Ids per filter when downloading what negentropy found missing (at most the relay's
    /// `max_limit`, and at most 500).
    pub chunk_size: usize,
    /// Ids per download REQ: its filters (at most the relay's `max_filters`) share one
    /// subscription, so a larger REQ saves round trips without using the subscription budget.
    /// 1,000 ids keep the REQ near 67 KB, under common 128 KB message limits.
    pub fetch_req_ids: usize,
    /// Limits assumed for absent NIP-11 fields.
    pub default_limits: RelayLimits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            dial: DialOptions::default(),
            info_timeout: Duration::from_secs(2),
            max_event_size: 256 * 1024,
            neg_initial_timeout: Duration::from_secs(5),
            local_items_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(30),
            chunk_size: 500,
            fetch_req_ids: 1_000,
            default_limits: RelayLimits::default(),
        }
    }
}

/// What the pool asks of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCmd {
    /// Open the connection (no-op when open).
    Connect,
    /// Close the connection and stay idle.
    Disconnect,
    /// Send a REQ.
    Subscribe {
        /// Subscription id.
        sub: SubscriptionId,
        /// Filters.
        filters: Vec<Filter>,
        /// Live or historic.
        purpose: SubPurpose,
    },
    /// Send a CLOSE (or NEG-CLOSE for a negentropy session).
    Unsubscribe {
        /// Subscription id.
        sub: SubscriptionId,
    },
    /// Close every subscription.
    UnsubscribeAll,
    /// Pending state was dropped: close these if open.
    ClearPending {
        /// Subscriptions.
        closed: Vec<SubscriptionId>,
    },
    /// Run a negentropy session.
    Negentropy {
        /// Session id.
        sub: SubscriptionId,
        /// Batch.
        batch: BatchId,
        /// Filter.
        filter: Filter,
    },
    /// Close subscriptions and the connection, then end the task.
    Shutdown,
}

/// Per-relay counters shared with status reporting.
pub type SharedCounters = Arc<Mutex<SessionCounters>>;

/// What a session needs from the rest of the process.
#[derive(Debug, Clone)]
pub struct SessionDeps {
    /// Where observations go.
    pub engine: EngineHandle,
    /// Where checked events go.
    pub forwarder: Forwarder,
    /// Our relay's item sets for negentropy.
    pub local: LocalSet,
    /// Metrics.
    pub metrics: Metrics,
}

struct SubState {
    filters: Vec<Filter>,
    purpose: SubPurpose,
    pages: Vec<PageReport>,
}

enum NegPhase {
    Reconciling(Reconciler),
    Fetching { fetch: Fetch, req: SubscriptionId },
}

struct NegSession {
    phase: NegPhase,
    opened: Instant,
}

/// Why the connected loop ended.
enum Exit {
    /// Shutdown asked (or the pool went away).
    Shutdown,
    /// Disconnect asked.
    Closed,
    /// The connection broke.
    Lost(String),
}

struct Session {
    url: RelayUrl,
    config: SessionConfig,
    allow_private: bool,
    deps: SessionDeps,
    counters: SharedCounters,
    subs: HashMap<SubscriptionId, SubState>,
    negs: HashMap<SubscriptionId, NegSession>,
    /// Fetch REQ id → negentropy session id.
    fetch_subs: HashMap<SubscriptionId, SubscriptionId>,
    nip77_unsupported: bool,
    /// This relay has answered a NEG-OPEN (on any connection of this session) or says NIP-77
    /// in NIP-11. A NEG-OPEN it then leaves unanswered is a failure, not a sign that NIP-77
    /// is missing: a relay busy streaming a large download answers late, and taking that for
    /// "no NIP-77" sent history down the REQ path, which cannot page through long runs of
    /// equal `created_at` (the loss seen in the fault matrix).
    nip77_seen: bool,
    /// Numbers download REQs: an id is never reused on a connection, because relays answer a
    /// CLOSE with CLOSED, which must not hit a later REQ of the same name.
    fetch_seq: u64,
    /// The relay's limits (NIP-11, or the defaults), for sizing download REQs.
    limits: RelayLimits,
    /// Authors' parsed keys, for signature checks.
    keys: KeyCache,
    /// Signature checks running on the runtime's threads, in arrival order. One relay's events
    /// would otherwise be verified one at a time on this task (the ingest bottleneck: a
    /// Schnorr check costs more than everything else an event takes here). Results are
    /// delivered in order, and all of them before any other frame is handled, so an EOSE
    /// still confirms only what was forwarded.
    verifying: FuturesOrdered<JoinHandle<(Event, Result<(), Reject>)>>,
}

/// Signature checks in flight per session; beyond it the session waits for the oldest (which
/// also bounds the events held in memory).
const MAX_VERIFYING: usize = 256;

/// Starts a session task for `url`. It ends on `Shutdown` or when the sender is dropped.
pub fn spawn_session(
    url: RelayUrl,
    config: SessionConfig,
    allow_private: bool,
    deps: SessionDeps,
    counters: SharedCounters,
) -> (mpsc::UnboundedSender<SessionCmd>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let session = Session {
        url,
        config,
        allow_private,
        deps,
        counters,
        subs: HashMap::new(),
        negs: HashMap::new(),
        fetch_subs: HashMap::new(),
        nip77_unsupported: false,
        nip77_seen: false,
        fetch_seq: 0,
        limits: config.default_limits,
        keys: KeyCache::default(),
        verifying: FuturesOrdered::new(),
    };
    let span = tracing::info_span!("relay", url = %session.url);
    let task = tokio::spawn(tracing::Instrument::instrument(session.run(rx), span));
    (tx, task)
}

fn send_text(msg: &ClientMessage<'_>) -> Message {
    Message::text(msg.as_json())
}

impl Session {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<SessionCmd>) {
        loop {
            let Some(cmd) = rx.recv().await else { return };
            match cmd {
                SessionCmd::Shutdown => return,
                SessionCmd::Connect => {}
                // Nothing is open: the core already treats this relay as disconnected.
                _ => continue,
            }
            let Some(mut ws) = self.connect().await else {
                continue;
            };
            self.gauge(ConnState::connected, 1);
            let exit = self.connected(&mut ws, &mut rx).await;
            // Events checked before the connection ended are still forwarded.
            self.drain_verifying().await;
            self.gauge(ConnState::connected, -1);
            self.reset();
            match exit {
                Exit::Shutdown => {
                    let _ = ws.close(None).await;
                    return;
                }
                Exit::Closed => {
                    let _ = ws.close(None).await;
                }
                Exit::Lost(why) => {
                    tracing::info!(%why, "connection lost");
                    self.set_error(&why);
                    self.report(Input::Disconnected {
                        relay: self.url.clone(),
                    })
                    .await;
                }
            }
        }
    }

    fn gauge(&self, state: ConnState, delta: i64) {
        self.deps
            .metrics
            .connections
            .get_or_create(&StateLabel { state })
            .inc_by(delta);
        if self.deps.metrics.per_relay() {
            let relay = crate::observe::metrics::RelayLabel {
                relay: self.url.to_string(),
            };
            self.deps
                .metrics
                .relay_connected
                .get_or_create(&relay)
                .set(i64::from(delta > 0));
        }
    }

    fn reset(&mut self) {
        self.subs.clear();
        self.negs.clear();
        self.fetch_subs.clear();
        self.nip77_unsupported = false;
    }

    fn set_error(&self, text: &str) {
        if let Ok(mut c) = self.counters.lock() {
            c.last_error = Some(text.to_string());
        }
    }

    async fn report(&self, input: Input) {
        // The engine stopping means the process is shutting down; nothing to do.
        let _ = self.deps.engine.send(input).await;
    }

    fn reject(&self, reason: &'static str) {
        self.deps
            .metrics
            .events_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    async fn connect(&mut self) -> Option<RelaySocket> {
        let mut dial = self.config.dial;
        dial.allow_private = self.allow_private;
        match open(
            &self.url,
            dial,
            self.config.info_timeout,
            self.config.default_limits,
        )
        .await
        {
            Ok((ws, info)) => {
                let info = info.unwrap_or_default();
                self.limits = info
                    .limits
                    .unwrap_or(self.config.default_limits)
                    .sanitized();
                tracing::info!(nip77 = ?info.nip77, limits = ?info.limits, "connected");
                self.nip77_seen |= info.nip77 == Some(true);
                self.report(Input::Connected {
                    relay: self.url.clone(),
                    limits: info.limits,
                    nip77: info.nip77,
                })
                .await;
                Some(ws)
            }
            Err(e) => {
                if let DialError::Refused(refusal) = &e {
                    self.deps
                        .metrics
                        .ssrf_refusals
                        .get_or_create(&ReasonLabel {
                            reason: refusal.class_label(),
                        })
                        .inc();
                }
                tracing::info!(error = %e, "connect failed");
                self.set_error(&e.to_string());
                self.report(Input::ConnectFailed {
                    relay: self.url.clone(),
                })
                .await;
                None
            }
        }
    }

    async fn connected(
        &mut self,
        ws: &mut RelaySocket,
        rx: &mut mpsc::UnboundedReceiver<SessionCmd>,
    ) -> Exit {
        let keepalive = self.config.keepalive.max(Duration::from_millis(50));
        let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        let mut last_frame = Instant::now();
        loop {
            let neg_deadline = self
                .negs
                .values()
                .filter(|n| matches!(&n.phase, NegPhase::Reconciling(r) if !r.replied))
                .map(|n| n.opened + self.config.neg_initial_timeout)
                .min();
            let neg_sleep = async {
                match neg_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                cmd = rx.recv() => match cmd {
                    None | Some(SessionCmd::Shutdown) => {
                        self.close_all(ws).await;
                        return Exit::Shutdown;
                    }
                    Some(SessionCmd::Disconnect) => {
                        self.close_all(ws).await;
                        return Exit::Closed;
                    }
                    Some(cmd) => self.command(ws, cmd).await,
                },
                frame = ws.next() => {
                    last_frame = Instant::now();
                    match frame {
                        None => Err("closed by the relay".to_string()),
                        Some(Err(e)) => Err(e.to_string()),
                        Some(Ok(Message::Text(text))) => self.frame(ws, text.as_str()).await,
                        Some(Ok(Message::Close(_))) => Err("closed by the relay".to_string()),
                        Some(Ok(Message::Binary(_))) => {
                            self.reject("malformed");
                            Ok(())
                        }
                        Some(Ok(_)) => Ok(()),
                    }
                }
                _ = ping.tick() => {
                    if last_frame.elapsed() > keepalive * 2 {
                        Err("no frames (stalled)".to_string())
                    } else {
                        ws.send(Message::Ping(Default::default())).await.map_err(|e| e.to_string())
                    }
                }
                _ = neg_sleep => {
                    self.neg_timeouts(ws).await
                }
                Some(done) = self.verifying.next(), if !self.verifying.is_empty() => {
                    self.deliver(done).await;
                    Ok(())
                }
            };
            if let Err(why) = result {
                return Exit::Lost(why);
            }
        }
    }

    async fn close_all(&mut self, ws: &mut RelaySocket) {
        let subs: Vec<SubscriptionId> = self.subs.keys().chain(self.negs.keys()).cloned().collect();
        for sub in subs {
            let _ = self.unsubscribe(ws, &sub).await;
        }
    }

    async fn send(&self, ws: &mut RelaySocket, msg: &ClientMessage<'_>) -> Result<(), String> {
        ws.send(send_text(msg)).await.map_err(|e| e.to_string())
    }

    async fn command(&mut self, ws: &mut RelaySocket, cmd: SessionCmd) -> Result<(), String> {
        match cmd {
            SessionCmd::Connect | SessionCmd::Disconnect | SessionCmd::Shutdown => Ok(()),
            SessionCmd::Subscribe {
                sub,
                filters,
                purpose,
            } => {
                let msg = ClientMessage::req(sub.clone(), filters.clone());
                let pages = vec![PageReport::default(); filters.len()];
                self.subs.insert(
                    sub,
                    SubState {
                        filters,
                        purpose,
                        pages,
                    },
                );
                self.send(ws, &msg).await
            }
            SessionCmd::Unsubscribe { sub } => self.unsubscribe(ws, &sub).await,
            SessionCmd::UnsubscribeAll => {
                self.close_all(ws).await;
                Ok(())
            }
            SessionCmd::ClearPending { closed } => {
                for sub in closed {
                    self.unsubscribe(ws, &sub).await?;
                }
                Ok(())
            }
            SessionCmd::Negentropy { sub, batch, filter } => {
                self.neg_open(ws, sub, batch, filter).await
            }
        }
    }

    async fn unsubscribe(
        &mut self,
        ws: &mut RelaySocket,
        sub: &SubscriptionId,
    ) -> Result<(), String> {
        if self.subs.remove(sub).is_some() {
            return self.send(ws, &ClientMessage::close(sub.clone())).await;
        }
        if let Some(neg) = self.negs.remove(sub) {
            return match neg.phase {
                NegPhase::Reconciling(_) => self.neg_close(ws, sub).await,
                NegPhase::Fetching { req, .. } => {
                    self.fetch_subs.remove(&req);
                    self.send(ws, &ClientMessage::close(req)).await
                }
            };
        }
        Ok(())
    }

    async fn neg_close(&self, ws: &mut RelaySocket, sub: &SubscriptionId) -> Result<(), String> {
        let msg = ClientMessage::NegClose {
            subscription_id: std::borrow::Cow::Borrowed(sub),
        };
        self.send(ws, &msg).await
    }

    /// Records that history was confirmed now (for `status.sync.lastEose`).
    fn mark_eose(&self) {
        if let Ok(mut c) = self.counters.lock() {
            c.last_eose = Some(wall_clock());
        }
    }

    async fn neg_done(&mut self, sub: &SubscriptionId, outcome: NegentropyOutcome) {
        if let Some(neg) = self.negs.remove(sub) {
            if let NegPhase::Fetching { req, .. } = neg.phase {
                self.fetch_subs.remove(&req);
            }
        }
        self.report(Input::NegentropyDone {
            relay: self.url.clone(),
            sub: sub.clone(),
            outcome,
        })
        .await;
    }

    async fn neg_open(
        &mut self,
        ws: &mut RelaySocket,
        sub: SubscriptionId,
        _batch: BatchId,
        filter: Filter,
    ) -> Result<(), String> {
        if self.nip77_unsupported {
            self.neg_done(&sub, NegentropyOutcome::Unsupported).await;
            return Ok(());
        }
        let local = match self
            .deps
            .local
            .items(filter.clone(), self.config.local_items_timeout)
            .await
        {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read our relay's item set; falling back to REQ");
                self.neg_done(&sub, NegentropyOutcome::Failed).await;
                return Ok(());
            }
        };
        let (reconciler, init) = match Reconciler::start(local) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "negentropy setup failed");
                self.neg_done(&sub, NegentropyOutcome::Failed).await;
                return Ok(());
            }
        };
        let msg = ClientMessage::NegOpen {
            subscription_id: std::borrow::Cow::Owned(sub.clone()),
            filter: std::borrow::Cow::Owned(filter),
            id_size: None,
            initial_message: std::borrow::Cow::Owned(init),
        };
        self.negs.insert(
            sub,
            NegSession {
                phase: NegPhase::Reconciling(reconciler),
                opened: Instant::now(),
            },
        );
        self.send(ws, &msg).await
    }

    /// NEG-OPENs nobody answered: the relay lacks NIP-77 (remembered for this connection).
    async fn neg_timeouts(&mut self, ws: &mut RelaySocket) -> Result<(), String> {
        let now = Instant::now();
        let expired: Vec<SubscriptionId> = self
            .negs
            .iter()
            .filter(|(_, n)| {
                matches!(&n.phase, NegPhase::Reconciling(r) if !r.replied)
                    && n.opened + self.config.neg_initial_timeout <= now
            })
            .map(|(s, _)| s.clone())
            .collect();
        let outcome = if self.nip77_seen {
            NegentropyOutcome::Failed
        } else {
            NegentropyOutcome::Unsupported
        };
        if !expired.is_empty() && outcome == NegentropyOutcome::Unsupported {
            self.nip77_unsupported = true;
        }
        for sub in expired {
            tracing::debug!(%sub, ?outcome, "NEG-OPEN unanswered");
            self.neg_close(ws, &sub).await?;
            self.neg_done(&sub, outcome).await;
        }
        Ok(())
    }

    async fn frame(&mut self, ws: &mut RelaySocket, text: &str) -> Result<(), String> {
        let Ok(msg) = RelayMessage::from_json(text) else {
            self.reject("malformed");
            return Ok(());
        };
        if !matches!(msg, RelayMessage::Event { .. }) {
            // EOSE, CLOSED and the rest come after the events before them.
            self.drain_verifying().await;
        }
        match msg {
            RelayMessage::Event {
                subscription_id,
                event,
            } => {
                self.on_event(&subscription_id, event.into_owned(), text.len())
                    .await;
                Ok(())
            }
            RelayMessage::EndOfStoredEvents(sub) => self.on_eose(ws, &sub).await,
            RelayMessage::Closed {
                subscription_id,
                message,
            } => {
                self.on_closed(&subscription_id, &message).await;
                Ok(())
            }
            RelayMessage::Notice(message) => {
                self.on_notice(&message).await;
                Ok(())
            }
            RelayMessage::NegMsg {
                subscription_id,
                message,
            } => self.on_neg_msg(ws, &subscription_id, &message).await,
            RelayMessage::NegErr {
                subscription_id,
                message,
            } => {
                let outcome = neg_outcome(&message);
                if self.negs.contains_key(&*subscription_id) {
                    self.neg_done(&subscription_id, outcome).await;
                }
                Ok(())
            }
            // NIP-42 AUTH, OK and COUNT are not used by sync.
            _ => Ok(()),
        }
    }

    async fn on_event(&mut self, sub: &SubscriptionId, event: Event, raw_len: usize) {
        self.deps.metrics.events_received.inc();
        let max = self.config.max_event_size;
        let shape = if let Some(state) = self.subs.get_mut(sub) {
            if let SubPurpose::Historic(_) = state.purpose {
                count_bytes(&self.deps.metrics, SyncMethod::ReqEose, raw_len);
                for (f, page) in state.filters.iter().zip(state.pages.iter_mut()) {
                    if f.match_event(&event, MatchEventOptions::new()) {
                        page.received += 1;
                        page.oldest = Some(
                            page.oldest
                                .map_or(event.created_at, |t| t.min(event.created_at)),
                        );
                    }
                }
            }
            check_shape(&event, raw_len, &state.filters, max)
        } else if let Some(neg_sub) = self.fetch_subs.get(sub) {
            count_bytes(&self.deps.metrics, SyncMethod::Negentropy, raw_len);
            match self.negs.get_mut(neg_sub).map(|n| &mut n.phase) {
                Some(NegPhase::Fetching { fetch, .. }) => {
                    let shape = check_shape(&event, raw_len, fetch.current_filters(), max);
                    // Arrived even if refused (too large, forged): asking again would bring
                    // the same event. Only requested ids are awaited, so others change nothing.
                    fetch.arrived(&event.id);
                    shape
                }
                _ => Err(Reject::Unrequested),
            }
        } else {
            Err(Reject::Unrequested)
        };
        if let Err(reason) = shape {
            tracing::debug!(id = %event.id, %sub, reason = reason.label(), "event refused");
            self.reject(reason.label());
            return;
        }
        let key = self.keys.xonly(&event.pubkey);
        self.verifying.push_back(tokio::spawn(async move {
            let verdict = check_crypto_with(&event, key);
            (event, verdict)
        }));
        if self.verifying.len() >= MAX_VERIFYING {
            if let Some(done) = self.verifying.next().await {
                self.deliver(done).await;
            }
        }
    }

    /// Forwards a checked event, or counts why it was refused.
    async fn deliver(&mut self, done: Result<(Event, Result<(), Reject>), tokio::task::JoinError>) {
        let (event, verdict) = match done {
            Ok(done) => done,
            Err(e) => {
                // Only a panic in the check (or a runtime shutting down) gets here.
                tracing::warn!(error = %e, "signature check did not finish");
                self.reject("malformed");
                return;
            }
        };
        match verdict {
            Ok(()) => {
                if let Ok(mut c) = self.counters.lock() {
                    c.events_forwarded += 1;
                }
                // Waiting here pushes back on the relay while our relay catches up.
                let _ = self.deps.forwarder.forward(event).await;
            }
            Err(reason) => {
                tracing::debug!(id = %event.id, reason = reason.label(), "event refused");
                self.reject(reason.label());
            }
        }
    }

    /// Delivers every check in flight, in order.
    async fn drain_verifying(&mut self) {
        while let Some(done) = self.verifying.next().await {
            self.deliver(done).await;
        }
    }

    async fn on_eose(&mut self, ws: &mut RelaySocket, sub: &SubscriptionId) -> Result<(), String> {
        if let Some(state) = self.subs.get_mut(sub) {
            let pages = match state.purpose {
                SubPurpose::Live => Vec::new(),
                SubPurpose::Historic(_) => {
                    let n = state.pages.len();
                    std::mem::replace(&mut state.pages, vec![PageReport::default(); n])
                }
            };
            if matches!(state.purpose, SubPurpose::Historic(_)) {
                // Confirm only what is stored.
                let _ = self.deps.forwarder.flush().await;
                self.mark_eose();
            }
            self.report(Input::Eose {
                relay: self.url.clone(),
                sub: sub.clone(),
                pages,
            })
            .await;
            return Ok(());
        }
        let Some(neg_sub) = self.fetch_subs.remove(sub) else {
            return Ok(());
        };
        let step = match self.negs.get_mut(&neg_sub).map(|n| &mut n.phase) {
            Some(NegPhase::Fetching { fetch, .. }) => fetch.on_eose(),
            _ => return Ok(()),
        };
        self.send(ws, &ClientMessage::close(sub.clone())).await?;
        self.fetch_step(ws, &neg_sub, step).await
    }

    async fn fetch_step(
        &mut self,
        ws: &mut RelaySocket,
        neg_sub: &SubscriptionId,
        step: FetchStep,
    ) -> Result<(), String> {
        match step {
            FetchStep::Request(filters) => {
                self.fetch_seq += 1;
                let req = fetch_id(neg_sub, self.fetch_seq);
                let ids: usize = filters
                    .iter()
                    .map(|f| f.ids.as_ref().map_or(0, |i| i.len()))
                    .sum();
                tracing::debug!(%req, ids, filters = filters.len(), "negentropy fetch");
                if let Some(NegSession {
                    phase: NegPhase::Fetching { req: current, .. },
                    ..
                }) = self.negs.get_mut(neg_sub)
                {
                    *current = req.clone();
                }
                self.fetch_subs.insert(req.clone(), neg_sub.clone());
                self.send(ws, &ClientMessage::req(req, filters)).await
            }
            FetchStep::Done => {
                let _ = self.deps.forwarder.flush().await;
                self.mark_eose();
                self.neg_done(neg_sub, NegentropyOutcome::Done).await;
                Ok(())
            }
            FetchStep::Missing(n) => {
                tracing::warn!(
                    missing = n,
                    "relay did not serve ids it reconciled; falling back to REQ"
                );
                self.neg_done(neg_sub, NegentropyOutcome::Failed).await;
                Ok(())
            }
        }
    }

    async fn on_neg_msg(
        &mut self,
        ws: &mut RelaySocket,
        sub: &SubscriptionId,
        message: &str,
    ) -> Result<(), String> {
        let step = match self.negs.get_mut(sub).map(|n| &mut n.phase) {
            Some(NegPhase::Reconciling(r)) => r.on_message(message),
            _ => return Ok(()),
        };
        self.nip77_seen = true;
        count_bytes(&self.deps.metrics, SyncMethod::Negentropy, message.len());
        match step {
            Ok(NegStep::Send(next)) => {
                self.send(
                    ws,
                    &ClientMessage::NegMsg {
                        subscription_id: std::borrow::Cow::Owned(sub.clone()),
                        message: std::borrow::Cow::Owned(next),
                    },
                )
                .await
            }
            Ok(NegStep::Finished) => {
                self.neg_close(ws, sub).await?;
                let Some(neg) = self.negs.remove(sub) else {
                    return Ok(());
                };
                let NegPhase::Reconciling(r) = neg.phase else {
                    return Ok(());
                };
                let (per_filter, per_req) = fetch_shape(&self.config, self.limits);
                let mut fetch = r.into_fetch(per_filter, per_req);
                tracing::debug!(missing = fetch.total, "negentropy reconciled");
                let step = fetch.begin();
                self.negs.insert(
                    sub.clone(),
                    NegSession {
                        phase: NegPhase::Fetching {
                            fetch,
                            req: sub.clone(),
                        },
                        opened: neg.opened,
                    },
                );
                self.fetch_step(ws, sub, step).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "negentropy failed; falling back to REQ");
                self.neg_close(ws, sub).await?;
                self.neg_done(sub, NegentropyOutcome::Failed).await;
                Ok(())
            }
        }
    }

    async fn on_closed(&mut self, sub: &SubscriptionId, message: &str) {
        self.set_error(message);
        if let Some(neg_sub) = self.fetch_subs.remove(sub) {
            self.neg_done(&neg_sub, NegentropyOutcome::Failed).await;
            return;
        }
        self.subs.remove(sub);
        if self.negs.contains_key(sub) {
            if neg_outcome(message) == NegentropyOutcome::Unsupported {
                self.neg_done(sub, NegentropyOutcome::Unsupported).await;
                return;
            }
            // A refusal (rate limit, too many subscriptions) is a CLOSED for the core.
            self.negs.remove(sub);
        }
        self.report(Input::Closed {
            relay: self.url.clone(),
            sub: sub.clone(),
            message: message.to_string(),
        })
        .await;
    }

    async fn on_notice(&mut self, message: &str) {
        tracing::debug!(%message, "notice");
        if classify_relay_message(message) == RelayMessageClass::NegentropyUnsupported {
            // The core handles the fallback from the NOTICE; drop our unanswered sessions so
            // they do not time out a second time.
            self.nip77_unsupported = true;
            self.negs
                .retain(|_, n| !matches!(&n.phase, NegPhase::Reconciling(r) if !r.replied));
        }
        self.report(Input::Notice {
            relay: self.url.clone(),
            message: message.to_string(),
        })
        .await;
    }
}

/// Download REQ shape: ids per filter, filters per REQ, within the relay's limits.
fn fetch_shape(config: &SessionConfig, limits: RelayLimits) -> (usize, usize) {
    let per_filter = config
        .chunk_size
        .min(limits.max_limit as usize)
        .clamp(1, super::negentropy::MAX_FILTER_IDS);
    let per_req = config
        .fetch_req_ids
        .div_ceil(per_filter)
        .clamp(1, (limits.max_filters as usize).max(1));
    (per_filter, per_req)
}

/// The REQ id of a negentropy download chunk: derived from the session id, numbered, and
/// within the 64-character limit many relays apply.
fn fetch_id(neg_sub: &SubscriptionId, seq: u64) -> SubscriptionId {
    let base: String = neg_sub.as_str().chars().take(40).collect();
    SubscriptionId::new(format!("{base}.f{seq}"))
}

/// Counts bytes received while syncing, by method.
fn count_bytes(metrics: &Metrics, m: SyncMethod, n: usize) {
    metrics
        .sync_bytes
        .get_or_create(&method(m))
        .inc_by(n as u64);
}

/// How a NEG-ERR or a CLOSED on a negentropy session ends it: unsupported when the text says
/// the relay does not speak NIP-77, failed otherwise.
fn neg_outcome(message: &str) -> NegentropyOutcome {
    match classify_relay_message(message) {
        RelayMessageClass::NegentropyUnsupported => NegentropyOutcome::Unsupported,
        _ => NegentropyOutcome::Failed,
    }
}
