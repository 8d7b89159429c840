//! A per-relay summary of the core's state: counts only, never ids, so that status stays
//! small at any scale. Drivers turn it into the SyncRelay status.

use super::engine::SyncCore;
use super::health::RelayHealth;
use super::relay_index::{ConnectionStatus, Nip77Support};
use super::time::Millis;
use super::url::RelayUrl;

/// What status reports for one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySummary {
    /// The relay.
    pub url: RelayUrl,
    /// Admitted by a driver.
    pub managed: bool,
    /// Never reaped.
    pub bootstrap: bool,
    /// Disconnected for an empty target.
    pub reaped: bool,
    /// Connection status.
    pub connection: ConnectionStatus,
    /// Last successful connect.
    pub last_connected: Option<Millis>,
    /// When the connection was lost (while disconnected).
    pub disconnected_at: Option<Millis>,
    /// Quick and long reconnects.
    pub reconnects: u32,
    /// NIP-77 support on this connection.
    pub nip77: Nip77Support,
    /// Backoff state.
    pub health: RelayHealth,
    /// Repos in the target.
    pub desired_repos: usize,
    /// Root events in the target.
    pub desired_root_events: usize,
    /// Repos confirmed.
    pub confirmed_repos: usize,
    /// Root events confirmed.
    pub confirmed_root_events: usize,
    /// Batches in flight.
    pub pending_batches: usize,
    /// Open subscriptions (live REQs plus historic parts).
    pub subscriptions: usize,
    /// Subscription budget in force.
    pub max_subscriptions: u32,
    /// Confirmed equals desired, layer 1 is done, and nothing is pending.
    pub synced: bool,
}

impl SyncCore {
    /// The summary of one relay, if known.
    pub fn relay_summary(&self, url: &RelayUrl) -> Option<RelaySummary> {
        let id = self.relay_id(url)?;
        let s = self.relays.get(&id)?;
        let target = self.targets.get(id);
        let desired_repos = target.map_or(0, |t| t.repos.len());
        let desired_root_events = target.map_or(0, |t| t.roots.len());
        let pending_batches = self.pending.get(&id).map_or(0, |p| p.batches.len());
        let active = self.pending.get(&id).map_or(0, |p| p.active.len());
        let live = self.live.get(&id).map_or(0, |l| l.subs.len());
        let synced = s.is_connected()
            && s.layer1_confirmed
            && pending_batches == 0
            && !self.deltas.contains_key(&id)
            && s.repos.len() == desired_repos
            && s.root_events.len() == desired_root_events;
        Some(RelaySummary {
            url: s.url.clone(),
            managed: s.managed,
            bootstrap: s.is_bootstrap,
            reaped: s.reaped,
            connection: s.connection_status,
            last_connected: s.last_connected,
            disconnected_at: s.disconnected_at,
            reconnects: s.reconnects,
            nip77: s.nip77,
            health: s.health.clone(),
            desired_repos,
            desired_root_events,
            confirmed_repos: s.repos.len(),
            confirmed_root_events: s.root_events.len(),
            pending_batches,
            subscriptions: live + active,
            max_subscriptions: s.limits.max_subscriptions,
            synced,
        })
    }

    /// Summaries of every known relay, by URL.
    pub fn relay_summaries(&self) -> Vec<RelaySummary> {
        let mut v: Vec<RelaySummary> = self
            .relays
            .values()
            .filter_map(|s| self.relay_summary(&s.url))
            .collect();
        v.sort_by(|a, b| a.url.cmp(&b.url));
        v
    }
}
