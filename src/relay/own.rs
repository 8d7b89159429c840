//! The client of our own relay: publishing forwarded events (with `OK false` classified),
//! the item set our relay holds for a filter (what negentropy reconciles against), and the
//! self-subscriber that feeds the core's RepoSyncIndex. Publishing goes through our own
//! [`Publisher`] (several raw websockets, many EVENTs in flight); reading and the
//! self-subscriber use nostr-sdk.

use super::embedded::{direct_writer, DirectWriter};
use super::forward::OkRejection;
use super::item_sets::SharedItemSets;
use super::negentropy::LocalItems;
use super::publisher::{Publisher, PublisherConfig};
use crate::core::nip34::SELF_SUBSCRIBER_KINDS;
use crate::core::url::RelayUrl;
use nostr::{Event, Filter, Kind, RelayMessage, SubscriptionId, Timestamp};
use nostr_sdk::{Client, RelayPoolNotification};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// Why talking to our relay failed.
#[derive(Debug, Error)]
pub enum OwnRelayError {
    /// The URL was refused by the client.
    #[error("cannot use {url} as our relay: {message}")]
    Url {
        /// The URL.
        url: RelayUrl,
        /// Why.
        message: String,
    },
    /// The embedded store failed.
    #[error("our relay's store: {0}")]
    Store(String),
    /// A request failed (not connected, timed out, …).
    #[error("our relay {url}: {message}")]
    Request {
        /// The URL.
        url: RelayUrl,
        /// Why.
        message: String,
    },
}

/// What became of one published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// `OK true`, or `OK false` with `duplicate:` (already stored).
    Stored,
    /// `OK false` for another reason.
    Rejected(OkRejection, String),
    /// No answer (disconnected, timeout): the event must be offered again.
    Failed(String),
}

/// Where the local side of a negentropy reconciliation is read from.
#[derive(Clone)]
pub enum LocalSet {
    /// The embedded relay's store: exact, no round trip.
    Store(std::sync::Arc<dyn nostr_sdk::prelude::NostrDatabase>),
    /// Our relay over the wire (a REQ with a high `limit`; a relay that caps it makes
    /// negentropy download a few events twice, never miss one).
    Relay(Box<OwnRelayClient>),
}

impl std::fmt::Debug for LocalSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalSet::Store(_) => f.write_str("LocalSet::Store"),
            LocalSet::Relay(c) => write!(f, "LocalSet::Relay({})", c.url()),
        }
    }
}

/// `limit` asked of our relay for a local item set.
const LOCAL_ITEMS_LIMIT: usize = 5_000_000;

impl LocalSet {
    /// `(id, created_at)` of every event our relay holds for `filter`, sealed for negentropy.
    pub async fn items(
        &self,
        filter: Filter,
        timeout: Duration,
    ) -> Result<LocalItems, OwnRelayError> {
        match self {
            LocalSet::Store(db) => {
                let items = db
                    .negentropy_items(filter)
                    .await
                    .map_err(|e| OwnRelayError::Store(e.to_string()))?;
                LocalItems::build(items).map_err(|e| OwnRelayError::Store(e.to_string()))
            }
            LocalSet::Relay(client) => {
                let filter = if filter.limit.is_none() {
                    filter.limit(LOCAL_ITEMS_LIMIT)
                } else {
                    filter
                };
                client.local_items(filter, timeout).await
            }
        }
    }
}

/// A connection to our relay.
#[derive(Debug, Clone)]
pub struct OwnRelayClient {
    client: Client,
    url: RelayUrl,
    /// Opens its connections on the first publish: a process that only reads (the
    /// controller) opens none.
    publisher: Publisher,
    /// When our relay is the embedded one in this process: its store, written directly.
    direct: Option<DirectWriter>,
    /// Item sets shared by every session of the process (see `item_sets`).
    item_sets: SharedItemSets<LocalItems>,
}

/// How long a fetched item set serves other sessions.
const ITEM_SET_FRESH_FOR: Duration = Duration::from_secs(5);

impl OwnRelayClient {
    /// Connects (and keeps reconnecting) to our relay.
    pub async fn connect(url: &RelayUrl, wait: Duration) -> Result<Self, OwnRelayError> {
        let client = Client::default();
        client
            .add_relay(url.as_str())
            .await
            .map_err(|e| OwnRelayError::Url {
                url: url.clone(),
                message: e.to_string(),
            })?;
        client.connect().await;
        client.wait_for_connection(wait).await;
        Ok(OwnRelayClient {
            client,
            url: url.clone(),
            publisher: Publisher::new(url.clone(), PublisherConfig::default()),
            direct: direct_writer(url),
            item_sets: SharedItemSets::default(),
        })
    }

    /// Our relay's URL.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// Publishes one event and classifies the answer. Many calls may run at once; they share a
    /// few connections with many EVENTs in flight on each (or, for the embedded relay of this
    /// process, concurrent writes into its store).
    pub async fn publish(&self, event: &Event) -> PublishOutcome {
        if self.direct.is_some() && event.verify().is_err() {
            // What the relay would answer; the direct path trusts `publish_checked` callers.
            return PublishOutcome::Rejected(
                OkRejection::Invalid,
                "invalid: event id or signature does not verify".into(),
            );
        }
        self.publish_checked(event).await
    }

    /// [`publish`](Self::publish) for an event whose id and signature the caller verified
    /// (the forwarder's): the embedded relay's store takes it without verifying again.
    pub async fn publish_checked(&self, event: &Event) -> PublishOutcome {
        match &self.direct {
            Some(writer) => writer.publish_checked(event).await,
            None => self.publisher.publish(event).await,
        }
    }

    /// `(id, created_at)` of every event our relay holds for `filter`: the local side of a
    /// negentropy reconciliation.
    pub async fn local_items(
        &self,
        filter: Filter,
        timeout: Duration,
    ) -> Result<LocalItems, OwnRelayError> {
        let key = nostr::JsonUtil::as_json(&filter);
        self.item_sets
            .get_or_fetch(key, ITEM_SET_FRESH_FOR, || async {
                let request = |message: String| OwnRelayError::Request {
                    url: self.url.clone(),
                    message,
                };
                let events = self
                    .client
                    .fetch_events(filter, timeout)
                    .await
                    .map_err(|e| request(e.to_string()))?;
                LocalItems::build(events.iter().map(|e| (e.id, e.created_at)))
                    .map_err(|e| request(e.to_string()))
            })
            .await
    }

    /// Starts the self-subscriber: kinds 30617, 1617, 1618 and 1621 since `since`, every
    /// matching event (re-deliveries included) sent to the returned channel. nostr-sdk re-sends
    /// the REQ on reconnect (from the original `since`, so nothing is missed); once traffic
    /// resumes after a reconnect the REQ is narrowed to `last seen − margin`.
    pub async fn self_subscribe(
        &self,
        since: Option<Timestamp>,
        margin: Duration,
        buffer: usize,
    ) -> Result<mpsc::Receiver<Event>, OwnRelayError> {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let client = self.client.clone();
        let url = self.url.clone();
        let mut notifications = client.notifications();
        let sub = SubscriptionId::new("grasp-sync-self");
        subscribe_self(&client, &sub, since)
            .await
            .map_err(|message| OwnRelayError::Request { url, message })?;
        tokio::spawn(async move {
            let mut last_seen = since;
            let mut was_connected = true;
            loop {
                let note = match notifications.recv().await {
                    Ok(n) => n,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                match note {
                    RelayPoolNotification::Message {
                        message:
                            RelayMessage::Event {
                                subscription_id,
                                event,
                            },
                        ..
                    } if *subscription_id == sub => {
                        let event = event.into_owned();
                        last_seen =
                            Some(last_seen.map_or(event.created_at, |t| t.max(event.created_at)));
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    RelayPoolNotification::Shutdown => return,
                    _ => {}
                }
                let connected = client.relays().await.values().any(|r| r.is_connected());
                if connected && !was_connected {
                    let resume = last_seen.map(|t| {
                        Timestamp::from_secs(t.as_secs().saturating_sub(margin.as_secs()))
                    });
                    let _ = subscribe_self(&client, &sub, resume).await;
                }
                was_connected = connected;
            }
        });
        Ok(rx)
    }

    /// Closes the connection.
    pub async fn shutdown(&self) {
        self.publisher.shutdown();
        self.client.shutdown().await;
    }
}

async fn subscribe_self(
    client: &Client,
    sub: &SubscriptionId,
    since: Option<Timestamp>,
) -> Result<(), String> {
    let mut filter = Filter::new().kinds(SELF_SUBSCRIBER_KINDS.iter().map(|k| Kind::Custom(*k)));
    if let Some(s) = since {
        filter = filter.since(s);
    }
    client
        .subscribe_with_id(sub.clone(), filter, None)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
