//! What goes in and out of the core: [`Input`]s from the shell, [`Command`]s back to it.

use super::pagination::PageReport;
use super::pending::{BatchId, SyncMethod};
use super::settings::RelayLimits;
use super::url::RelayUrl;
use nostr::{Event, Filter, SubscriptionId};

/// What a subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubPurpose {
    /// `limit: 0`, stays open.
    Live,
    /// A page of a historic batch; closed by the core after EOSE.
    Historic(BatchId),
}

/// Why the core asks to disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Nothing to sync for longer than the grace period.
    EmptyTarget,
    /// The relay is no longer managed (its SyncRelay was deleted).
    Removed,
    /// The operator suspended it.
    Suspended,
}

/// Lifecycle facts for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricEvent {
    /// Reconnected within the quick window.
    QuickReconnect,
    /// Reconnected after the quick window: a fresh start follows.
    LongReconnect,
    /// The daily timer fired.
    DailySync,
    /// Subscriptions were consolidated.
    Consolidation,
    /// A batch started.
    BatchStarted(SyncMethod),
    /// A batch confirmed.
    BatchConfirmed(SyncMethod),
    /// A batch failed (EOSE timeout or a refusal).
    BatchFailed(SyncMethod),
    /// The relay turned out not to speak NIP-77 (logged once per connection).
    Nip77Unsupported,
    /// A rate limit started a cooldown.
    RateLimited,
    /// The relay's subscription budget was learned lower.
    BudgetLowered,
    /// Even one filter per layer does not fit the relay's budget.
    BudgetTooSmall,
    /// A REQ walk could not page past a run of equal `created_at` longer than a page; when
    /// `retried`, the part is redone by negentropy, otherwise the rest of the run is out of
    /// reach.
    HistoryTruncated {
        /// Redone by negentropy.
        retried: bool,
    },
}

/// An instruction for the shell. The order of a returned list is the order to execute.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Open a connection (after the SSRF guard).
    Connect {
        /// Relay.
        relay: RelayUrl,
    },
    /// Close the connection.
    Disconnect {
        /// Relay.
        relay: RelayUrl,
        /// Why.
        reason: DisconnectReason,
    },
    /// Pending state was cleared; close these historic subscriptions if still open.
    ClearPending {
        /// Relay.
        relay: RelayUrl,
        /// Subscriptions of the dropped batches.
        closed: Vec<SubscriptionId>,
    },
    /// Confirmed state was cleared.
    ClearConfirmed {
        /// Relay.
        relay: RelayUrl,
    },
    /// Close every subscription on the relay.
    UnsubscribeAll {
        /// Relay.
        relay: RelayUrl,
    },
    /// Send a REQ.
    Subscribe {
        /// Relay.
        relay: RelayUrl,
        /// Subscription id.
        sub: SubscriptionId,
        /// Filters (at most the relay's `max_filters`).
        filters: Vec<Filter>,
        /// Live or historic.
        purpose: SubPurpose,
    },
    /// Send a CLOSE.
    Unsubscribe {
        /// Relay.
        relay: RelayUrl,
        /// Subscription id.
        sub: SubscriptionId,
    },
    /// Run a NIP-77 session for one filter against what our relay holds for it.
    Negentropy {
        /// Relay.
        relay: RelayUrl,
        /// Session id (counts against the subscription budget).
        sub: SubscriptionId,
        /// Batch.
        batch: BatchId,
        /// The filter.
        filter: Filter,
    },
    /// A relay entered the targets but is not managed: the driver may admit it.
    Discovered {
        /// Relay.
        relay: RelayUrl,
    },
    /// A fact for metrics.
    Metric {
        /// Relay.
        relay: RelayUrl,
        /// What happened.
        event: MetricEvent,
    },
}

impl Command {
    /// The relay the command is for.
    pub fn relay(&self) -> &RelayUrl {
        match self {
            Command::Connect { relay }
            | Command::Disconnect { relay, .. }
            | Command::ClearPending { relay, .. }
            | Command::ClearConfirmed { relay }
            | Command::UnsubscribeAll { relay }
            | Command::Subscribe { relay, .. }
            | Command::Unsubscribe { relay, .. }
            | Command::Negentropy { relay, .. }
            | Command::Discovered { relay }
            | Command::Metric { relay, .. } => relay,
        }
    }
}

/// How a negentropy session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegentropyOutcome {
    /// Reconciled and every missing event fetched.
    Done,
    /// The relay does not speak NIP-77.
    Unsupported,
    /// Any other failure: the part is retried by negentropy once, then falls back to REQ.
    Failed,
}

/// Something the shell observed.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An event from our own relay (self-subscriber), already verified.
    OwnEvent(Box<Event>),
    /// A driver admits a relay (a SyncRelay object exists).
    ManageRelay {
        /// Relay.
        url: RelayUrl,
        /// Synced even with an empty target; never reaped.
        bootstrap: bool,
        /// Disconnected and left alone.
        suspended: bool,
        /// Operator limits, which learned limits never exceed.
        limits: Option<RelayLimits>,
    },
    /// A driver withdraws a relay.
    UnmanageRelay {
        /// Relay.
        url: RelayUrl,
    },
    /// The connection came up.
    Connected {
        /// Relay.
        relay: RelayUrl,
        /// Limits from NIP-11, if served.
        limits: Option<RelayLimits>,
        /// NIP-77 in NIP-11 `supported_nips`, if served.
        nip77: Option<bool>,
    },
    /// A connection attempt failed (including an SSRF refusal).
    ConnectFailed {
        /// Relay.
        relay: RelayUrl,
    },
    /// The connection was lost.
    Disconnected {
        /// Relay.
        relay: RelayUrl,
    },
    /// EOSE on a subscription, with per-filter page counts for historic ones.
    Eose {
        /// Relay.
        relay: RelayUrl,
        /// Subscription.
        sub: SubscriptionId,
        /// One report per filter of the REQ, in order.
        pages: Vec<PageReport>,
    },
    /// The relay closed a subscription.
    Closed {
        /// Relay.
        relay: RelayUrl,
        /// Subscription.
        sub: SubscriptionId,
        /// Its message.
        message: String,
    },
    /// A NOTICE.
    Notice {
        /// Relay.
        relay: RelayUrl,
        /// Its text.
        message: String,
    },
    /// A negentropy session ended.
    NegentropyDone {
        /// Relay.
        relay: RelayUrl,
        /// Session id.
        sub: SubscriptionId,
        /// How.
        outcome: NegentropyOutcome,
    },
    /// Time passed: run timers.
    Tick,
}
