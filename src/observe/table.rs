//! The `kubectl get syncrelays` table: the same columns as the CRD's printer columns, rendered
//! from the `/status` objects of standalone mode (and printed by `grasp-sync status`).

use crate::api::conditions::{ConditionStatus, CONNECTED, SYNCED};
use crate::api::status::SyncRelayStatus;
use crate::api::types::SyncRelaySpec;
use serde::{Deserialize, Serialize};

/// `metadata` of a status object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    pub name: String,
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Labels (e.g. `sync.grasp.dev/discovered`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// One `/status` entry: a SyncRelay as Kubernetes would show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusObject {
    /// `apiVersion`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: SyncRelaySpec,
    /// `status`.
    pub status: SyncRelayStatus,
}

fn condition(status: &SyncRelayStatus, kind: &str) -> String {
    status
        .condition(kind)
        .map(|c| match c.status {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
        .unwrap_or("")
        .to_string()
}

/// Seconds since an RFC 3339 time, as kubectl prints ages (`45s`, `12m`, `3h`, `2d`).
pub fn age(since: Option<&str>, now_secs: u64) -> String {
    let Some(then) = since.and_then(parse_rfc3339) else {
        return "<unknown>".into();
    };
    let d = now_secs.saturating_sub(then);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        7200..=172_799 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    }
}

/// Unix seconds of an RFC 3339 UTC time as written by `rfc3339` (`YYYY-MM-DDTHH:MM:SSZ`,
/// fractional seconds ignored).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm), the inverse of `rfc3339`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Renders the table (header plus one row per object, sorted by name).
pub fn render(objects: &[StatusObject], now_secs: u64) -> String {
    let mut rows = vec![[
        "NAME",
        "URL",
        "WORKER",
        "CONNECTED",
        "SYNCED",
        "REPOS",
        "EVENTS",
        "NIP77",
        "LAST-EOSE",
        "AGE",
    ]
    .map(String::from)];
    let mut sorted: Vec<&StatusObject> = objects.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for o in sorted {
        let s = &o.status;
        rows.push([
            o.metadata.name.clone(),
            o.spec.url.clone(),
            s.assignment
                .as_ref()
                .map(|a| a.worker.clone())
                .unwrap_or_default(),
            condition(s, CONNECTED),
            condition(s, SYNCED),
            format!("{}/{}", s.sync.confirmed_repos, s.sync.desired_repos),
            s.sync.events_forwarded.to_string(),
            s.connection.nip77.clone(),
            s.sync.last_eose.clone().unwrap_or_default(),
            age(o.metadata.creation_timestamp.as_deref(), now_secs),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::rfc3339;

    #[test]
    fn rfc3339_round_trips() {
        for t in [0u64, 1_700_000_000, 1_798_000_123, 951_782_400] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn table_has_the_printer_columns_and_values() {
        let mut status = SyncRelayStatus::default();
        status.sync.confirmed_repos = 3;
        status.sync.desired_repos = 4;
        status.sync.events_forwarded = 17;
        status.connection.nip77 = "Supported".into();
        let o = StatusObject {
            api_version: crate::config::API_VERSION.into(),
            kind: "SyncRelay".into(),
            metadata: ObjectMeta {
                name: "relay-a".into(),
                creation_timestamp: Some(rfc3339(1_000)),
                ..ObjectMeta::default()
            },
            spec: SyncRelaySpec {
                url: "wss://a.example".into(),
                bootstrap: false,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
            status,
        };
        let text = render(&[o], 1_000 + 3 * 3600);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "URL",
                "WORKER",
                "CONNECTED",
                "SYNCED",
                "REPOS",
                "EVENTS",
                "NIP77",
                "LAST-EOSE",
                "AGE"
            ]
        );
        let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
        assert_eq!(
            row,
            ["relay-a", "wss://a.example", "3/4", "17", "Supported", "3h"]
        );
    }
}
