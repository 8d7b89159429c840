//! The SyncRelay status document (DESIGN.md section 5), built from the core's per-relay summary
//! plus the session's counters. Counts only, never ids, so it stays a few hundred bytes at any
//! scale. Standalone `/status` and the CRD status share this shape.

use super::conditions::{self, merge_conditions, reason, rfc3339, Condition, ConditionStatus};
use crate::core::health::HealthState;
use crate::core::relay_index::{ConnectionStatus, Nip77Support};
use crate::core::summary::RelaySummary;
use crate::core::time::Millis;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest `lastError` kept: a relay's text is untrusted and unbounded.
pub const MAX_ERROR_LEN: usize = 256;

/// Which worker holds the relay (written by the controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Worker name.
    #[schemars(length(max = 253))]
    pub worker: String,
    /// RFC 3339 time of assignment.
    pub since: String,
    /// A drain handshake is in progress.
    #[serde(default)]
    pub draining: bool,
}

/// Connection facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    /// Disconnected / Connecting / Connected.
    pub state: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected: Option<String>,
    /// RFC 3339, while disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<String>,
    /// Quick and long reconnects.
    pub reconnects: u32,
    /// Unknown / Supported / Unsupported.
    pub nip77: String,
    /// The last error, truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub last_error: Option<String>,
}

/// Sync progress, as counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncInfo {
    /// Repos in the target.
    pub desired_repos: u64,
    /// Root events in the target.
    pub desired_root_events: u64,
    /// Repos confirmed.
    pub confirmed_repos: u64,
    /// Root events confirmed.
    pub confirmed_root_events: u64,
    /// Historic batches in flight.
    pub pending_batches: u64,
    /// RFC 3339 time of the last EOSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_eose: Option<String>,
    /// Events forwarded to our relay.
    pub events_forwarded: u64,
    /// Open subscriptions.
    pub subscriptions: u64,
}

/// Backoff state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthInfo {
    /// Consecutive failures.
    pub failures: u32,
    /// RFC 3339 time of the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
    /// Healthy / Degraded / Dead.
    pub state: String,
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncRelayStatus {
    /// Generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, one per type. A list-map keyed by `type`, so that the controller's and the
    /// workers' server-side-apply field managers each own their own entries.
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Assignment (controller-owned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    /// Connection.
    #[serde(default)]
    pub connection: ConnectionInfo,
    /// Sync counts.
    #[serde(default)]
    pub sync: SyncInfo,
    /// Health.
    #[serde(default)]
    pub health: HealthInfo,
}

impl SyncRelayStatus {
    /// The condition of type `t`, if present.
    pub fn condition(&self, t: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == t)
    }

    /// Whether the condition of type `t` is present and True.
    pub fn holds(&self, t: &str) -> bool {
        self.condition(t)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }
}

/// What the relay session counts beyond the core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Events forwarded to our relay.
    pub events_forwarded: u64,
    /// Last EOSE seen.
    pub last_eose: Option<Millis>,
    /// Last error text.
    pub last_error: Option<String>,
}

fn time(t: Option<Millis>) -> Option<String> {
    t.map(|m| rfc3339(m.as_secs()))
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(MAX_ERROR_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Builds the worker-owned part of the status (connection, sync, health, and the `Connected`
/// and `Synced` conditions), keeping transition times from `previous` where nothing flipped.
pub fn build_status(
    s: &RelaySummary,
    counters: &SessionCounters,
    previous: Option<&SyncRelayStatus>,
    generation: Option<i64>,
    now: Millis,
) -> SyncRelayStatus {
    let stamp = rfc3339(now.as_secs());
    let (connected, connected_reason) = match (s.connection, s.health.state) {
        (ConnectionStatus::Connected, _) => (true, reason::CONNECTED),
        (ConnectionStatus::Connecting, _) => (false, reason::CONNECTING),
        (ConnectionStatus::Disconnected, HealthState::Dead) => (false, reason::DEAD),
        (ConnectionStatus::Disconnected, _) if s.reaped => (false, reason::IDLE),
        (ConnectionStatus::Disconnected, _) => (false, reason::BACKING_OFF),
    };
    let synced_reason = if s.synced {
        reason::IN_SYNC
    } else if connected {
        reason::SYNCING
    } else {
        reason::NOT_CONNECTED
    };
    let synced_message = format!(
        "{}/{} repos, {}/{} root events confirmed, {} batches pending",
        s.confirmed_repos,
        s.desired_repos,
        s.confirmed_root_events,
        s.desired_root_events,
        s.pending_batches
    );
    let fresh = vec![
        Condition {
            type_: conditions::CONNECTED.into(),
            status: connected.into(),
            reason: connected_reason.into(),
            message: counters
                .last_error
                .as_deref()
                .map(truncate)
                .unwrap_or_default(),
            last_transition_time: stamp.clone(),
            observed_generation: generation,
        },
        Condition {
            type_: conditions::SYNCED.into(),
            status: if connected {
                s.synced.into()
            } else {
                ConditionStatus::False
            },
            reason: synced_reason.into(),
            message: synced_message,
            last_transition_time: stamp,
            observed_generation: generation,
        },
    ];
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    SyncRelayStatus {
        observed_generation: generation,
        conditions: merge_conditions(previous_conditions, fresh),
        assignment: previous.and_then(|p| p.assignment.clone()),
        connection: ConnectionInfo {
            state: format!("{:?}", s.connection),
            last_connected: time(s.last_connected),
            disconnected_at: time(s.disconnected_at),
            reconnects: s.reconnects,
            nip77: match s.nip77 {
                Nip77Support::Unknown => "Unknown",
                Nip77Support::Supported => "Supported",
                Nip77Support::Unsupported => "Unsupported",
            }
            .into(),
            last_error: counters.last_error.as_deref().map(truncate),
        },
        sync: SyncInfo {
            desired_repos: s.desired_repos as u64,
            desired_root_events: s.desired_root_events as u64,
            confirmed_repos: s.confirmed_repos as u64,
            confirmed_root_events: s.confirmed_root_events as u64,
            pending_batches: s.pending_batches as u64,
            last_eose: time(counters.last_eose),
            events_forwarded: counters.events_forwarded,
            subscriptions: s.subscriptions as u64,
        },
        health: HealthInfo {
            failures: s.health.failures,
            next_retry: time(s.health.next_retry),
            state: format!("{:?}", s.health.state),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::health::RelayHealth;
    use crate::core::url::RelayUrl;

    fn summary(connection: ConnectionStatus, synced: bool) -> RelaySummary {
        RelaySummary {
            url: RelayUrl::parse("wss://relay.example.org").expect("valid"),
            managed: true,
            bootstrap: false,
            reaped: false,
            connection,
            last_connected: Some(Millis::from_secs(1_790_000_000)),
            disconnected_at: None,
            reconnects: 2,
            nip77: Nip77Support::Supported,
            health: RelayHealth::default(),
            desired_repos: 10_000,
            desired_root_events: 100_000,
            confirmed_repos: 10_000,
            confirmed_root_events: if synced { 100_000 } else { 99_999 },
            pending_batches: usize::from(!synced),
            subscriptions: 12,
            max_subscriptions: 20,
            synced,
        }
    }

    fn condition<'a>(s: &'a SyncRelayStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn status_stays_small_at_scale_and_reports_counts() {
        let counters = SessionCounters {
            events_forwarded: 1_234_567,
            last_eose: Some(Millis::from_secs(1_790_000_100)),
            last_error: Some("x".repeat(10_000)),
        };
        let s = build_status(
            &summary(ConnectionStatus::Connected, true),
            &counters,
            None,
            Some(3),
            Millis::from_secs(1_790_000_200),
        );
        let json = serde_json::to_string(&s).expect("json");
        assert!(json.len() < 8 * 1024, "status is {} bytes", json.len());
        assert_eq!(s.sync.desired_root_events, 100_000);
        assert_eq!(
            s.connection.last_error.as_deref().map(str::len),
            Some(MAX_ERROR_LEN)
        );
        assert_eq!(
            condition(&s, conditions::SYNCED).status,
            ConditionStatus::True
        );
        assert_eq!(
            condition(&s, conditions::CONNECTED).reason,
            reason::CONNECTED
        );
        assert!(
            json.contains("\"lastEose\":\"2026-09-21T14:15:00Z\""),
            "{json}"
        );
    }

    #[test]
    fn transition_times_hold_until_a_flip() {
        let c = SessionCounters::default();
        let t1 = Millis::from_secs(1_790_000_000);
        let t2 = Millis::from_secs(1_790_000_600);
        let first = build_status(
            &summary(ConnectionStatus::Connected, false),
            &c,
            None,
            None,
            t1,
        );
        let again = build_status(
            &summary(ConnectionStatus::Connected, false),
            &c,
            Some(&first),
            None,
            t2,
        );
        assert_eq!(
            first, again,
            "nothing changed: the status is byte-identical (no-op write)"
        );
        let synced = build_status(
            &summary(ConnectionStatus::Connected, true),
            &c,
            Some(&again),
            None,
            t2,
        );
        assert_eq!(
            condition(&synced, conditions::SYNCED).last_transition_time,
            rfc3339(t2.as_secs())
        );
        assert_eq!(
            condition(&synced, conditions::CONNECTED).last_transition_time,
            rfc3339(t1.as_secs())
        );
        let down = build_status(
            &summary(ConnectionStatus::Disconnected, true),
            &c,
            Some(&synced),
            None,
            t2,
        );
        assert_eq!(
            condition(&down, conditions::CONNECTED).reason,
            reason::BACKING_OFF
        );
        assert_eq!(
            condition(&down, conditions::SYNCED).status,
            ConditionStatus::False
        );
    }
}
