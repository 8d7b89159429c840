//! `RelaySyncIndex`: per relay, what is confirmed synced, plus connection and health state.

use super::health::RelayHealth;
use super::ids::{RelayId, RepoId, RootId};
use super::settings::RelayLimits;
use super::time::Millis;
use super::url::RelayUrl;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Connection status of a relay session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConnectionStatus {
    /// Not connected (and, if `reaped`, not trying to be).
    #[default]
    Disconnected,
    /// A connection attempt is in progress.
    Connecting,
    /// Connected and subscribed.
    Connected,
}

/// What we know about a relay's NIP-77 support, for the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Nip77Support {
    /// Not yet tried on this connection.
    #[default]
    Unknown,
    /// Negentropy worked.
    Supported,
    /// The relay refused or ignored NEG-OPEN; REQ pagination is used instead.
    Unsupported,
}

/// State of one relay: the seed's `RelayState`.
#[derive(Debug, Clone)]
pub struct RelayState {
    /// The relay's normalised URL.
    pub url: RelayUrl,
    /// Repos confirmed synced (historic done, live open).
    pub repos: HashSet<RepoId>,
    /// Root events confirmed synced.
    pub root_events: HashSet<RootId>,
    /// Whether the layer-1 historic sync of this connection has confirmed.
    pub layer1_confirmed: bool,
    /// Never reaped; synced even with an empty target.
    pub is_bootstrap: bool,
    /// Whether a driver has admitted this relay (a SyncRelay exists for it).
    pub managed: bool,
    /// Suspended by the operator: disconnected and left alone.
    pub suspended: bool,
    /// Disconnected on purpose because its target stayed empty.
    pub reaped: bool,
    /// Connection status.
    pub connection_status: ConnectionStatus,
    /// Last successful connect.
    pub last_connected: Option<Millis>,
    /// When the last connection was lost (the 15-minute rule is measured from here).
    pub disconnected_at: Option<Millis>,
    /// NIP-77 support on this connection.
    pub nip77: Nip77Support,
    /// Backoff, cooldown and dead state.
    pub health: RelayHealth,
    /// The budget in force.
    pub limits: RelayLimits,
    /// Per-relay overrides from the operator, which learned limits never exceed.
    pub limit_overrides: Option<RelayLimits>,
    /// When the daily resync is due.
    pub next_daily: Option<Millis>,
    /// Since when the target has been empty.
    pub target_empty_since: Option<Millis>,
    /// Reconnects, quick and long, for status.
    pub reconnects: u32,
}

impl RelayState {
    /// A new, disconnected relay.
    pub fn new(url: RelayUrl, limits: RelayLimits) -> Self {
        RelayState {
            url,
            repos: HashSet::new(),
            root_events: HashSet::new(),
            layer1_confirmed: false,
            is_bootstrap: false,
            managed: false,
            suspended: false,
            reaped: false,
            connection_status: ConnectionStatus::Disconnected,
            last_connected: None,
            disconnected_at: None,
            nip77: Nip77Support::Unknown,
            health: RelayHealth::default(),
            limits,
            limit_overrides: None,
            next_daily: None,
            target_empty_since: None,
            reconnects: 0,
        }
    }

    /// Forgets confirmed repos and root events.
    pub fn clear_sync_state(&mut self) {
        self.repos.clear();
        self.root_events.clear();
        self.layer1_confirmed = false;
    }

    /// True when connected.
    pub fn is_connected(&self) -> bool {
        self.connection_status == ConnectionStatus::Connected
    }
}

/// Relay → confirmed state.
pub type RelaySyncIndex = HashMap<RelayId, RelayState>;
