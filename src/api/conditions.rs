//! Condition types and reasons (constants, so every writer spells them the same), and the
//! merge rule: `lastTransitionTime` moves only when a condition's status flips.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The controller accepted the object (valid spec, admitted).
pub const ACCEPTED: &str = "Accepted";
/// A worker holds the relay.
pub const ASSIGNED: &str = "Assigned";
/// The relay's connection is up.
pub const CONNECTED: &str = "Connected";
/// Confirmed equals desired and nothing is pending.
pub const SYNCED: &str = "Synced";
/// Everything above holds.
pub const READY: &str = "Ready";

/// Reasons (CamelCase, stable: tools match on them).
pub mod reason {
    /// Connected to the relay.
    pub const CONNECTED: &str = "Connected";
    /// A connection attempt is in progress.
    pub const CONNECTING: &str = "Connecting";
    /// Disconnected, retrying under backoff.
    pub const BACKING_OFF: &str = "BackingOff";
    /// Failing for over a day; retried daily.
    pub const DEAD: &str = "Dead";
    /// Disconnected on purpose: nothing to sync.
    pub const IDLE: &str = "EmptyTarget";
    /// Suspended by the operator.
    pub const SUSPENDED: &str = "Suspended";
    /// Confirmed equals desired, nothing pending.
    pub const IN_SYNC: &str = "InSync";
    /// Historic batches in flight.
    pub const SYNCING: &str = "Syncing";
    /// Not connected, so not syncing.
    pub const NOT_CONNECTED: &str = "NotConnected";
    /// The worker closed the relay's session on the controller's drain request (the drain
    /// handshake's acknowledgement; see `crate::k8s::controller::drain`).
    pub const DRAINED: &str = "Drained";
    /// The worker holding the relay stopped (SIGTERM) and closed its session; the controller
    /// moves the relay once the worker's Lease is released.
    pub const WORKER_STOPPED: &str = "WorkerStopped";
}

/// `"True"`, `"False"` or `"Unknown"`, as Kubernetes writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// Holds.
    True,
    /// Does not hold.
    False,
    /// Not known.
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// One condition, in the shape of `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type, e.g. `Connected`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// True / False / Unknown.
    pub status: ConditionStatus,
    /// CamelCase reason.
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// Human text (bounded: never ids or lists).
    #[schemars(length(max = 32768))]
    pub message: String,
    /// RFC 3339 time of the last status flip.
    pub last_transition_time: String,
    /// Generation observed when written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Merges freshly computed conditions into the previous list: a condition whose status did
/// not change keeps its `lastTransitionTime`; conditions of other types are kept as they are
/// (another writer owns them). The result is sorted by type, so equal inputs give equal output
/// and a status writer can skip no-op writes by comparison.
pub fn merge_conditions(previous: &[Condition], fresh: Vec<Condition>) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|p| !fresh.iter().any(|f| f.type_ == p.type_))
        .cloned()
        .collect();
    for mut f in fresh {
        if let Some(p) = previous.iter().find(|p| p.type_ == f.type_) {
            if p.status == f.status {
                f.last_transition_time = p.last_transition_time.clone();
            }
        }
        out.push(f);
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// RFC 3339 (UTC, seconds) for a Unix time in seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(t: &str, status: bool, at: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            last_transition_time: at.into(),
            observed_generation: None,
        }
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let prev = vec![cond(CONNECTED, true, "t1"), cond(ACCEPTED, true, "t0")];
        let same = merge_conditions(&prev, vec![cond(CONNECTED, true, "t2")]);
        let connected = same.iter().find(|c| c.type_ == CONNECTED).expect("kept");
        assert_eq!(connected.last_transition_time, "t1");
        // Another writer's condition survives untouched.
        assert!(same
            .iter()
            .any(|c| c.type_ == ACCEPTED && c.last_transition_time == "t0"));
        let flipped = merge_conditions(&prev, vec![cond(CONNECTED, false, "t3")]);
        let connected = flipped.iter().find(|c| c.type_ == CONNECTED).expect("kept");
        assert_eq!(
            (connected.status, connected.last_transition_time.as_str()),
            (ConditionStatus::False, "t3")
        );
        // Deterministic order.
        assert_eq!(
            same,
            merge_conditions(&prev, vec![cond(CONNECTED, true, "t9")])
        );
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_958_400), "2026-11-29T13:20:00Z");
        assert_eq!(rfc3339(1_790_000_000), "2026-09-21T14:13:20Z");
    }
}
