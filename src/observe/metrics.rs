//! Prometheus metrics (`grasp_sync_` prefix). Labels are bounded enums, never free text; the
//! per-relay gauge is the only relay-labelled series and can be switched off.

use crate::core::command::MetricEvent;
use crate::core::pending::SyncMethod;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Every metric name as exported (after the prefix and the `_total` suffix of counters).
/// The dashboard test checks its queries against this list.
pub const METRIC_NAMES: &[&str] = &[
    "grasp_sync_connections",
    "grasp_sync_relays_managed",
    "grasp_sync_reconnects_total",
    "grasp_sync_lifecycle_total",
    "grasp_sync_batches_started_total",
    "grasp_sync_batches_confirmed_total",
    "grasp_sync_batches_failed_total",
    "grasp_sync_events_received_total",
    "grasp_sync_events_forwarded_total",
    "grasp_sync_events_rejected_total",
    "grasp_sync_events_deduplicated_total",
    "grasp_sync_own_relay_rejections_total",
    "grasp_sync_sync_bytes_total",
    "grasp_sync_ssrf_refusals_total",
    "grasp_sync_relays_discovered_total",
    "grasp_sync_status_patches_total",
    "grasp_sync_status_queue_overflows_total",
    "grasp_sync_reconcile_duration_seconds",
    "grasp_sync_leader",
    "grasp_sync_relay_connected",
];

/// A connection state label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConnState {
    /// Open.
    connected,
    /// Dialling.
    connecting,
    /// Waiting for a retry.
    backoff,
    /// Closed on purpose.
    idle,
}

/// `{state}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabel {
    /// Connection state.
    pub state: ConnState,
}

/// `{kind}`: quick or long reconnects; lifecycle kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    /// Kind.
    pub kind: &'static str,
}

/// `{method}`: `negentropy` or `req_eose`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MethodLabel {
    /// Method.
    pub method: &'static str,
}

/// `{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reason label (a fixed set per metric).
    pub reason: &'static str,
}

/// `{result}` of a status write.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    /// `applied`, `skipped`, `conflict`, `throttled` or `error`.
    pub result: &'static str,
}

/// `{relay}` for the optional per-relay gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RelayLabel {
    /// Normalised relay URL.
    pub relay: String,
}

/// The process's metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Connections by state.
    pub connections: Family<StateLabel, Gauge>,
    /// Relays managed by this process.
    pub relays_managed: Gauge,
    /// Reconnects by kind (`quick`, `long`).
    pub reconnects: Family<KindLabel, Counter>,
    /// Daily syncs, consolidations, rate limits, budget changes, NIP-77 detections.
    pub lifecycle: Family<KindLabel, Counter>,
    /// Batches started by method.
    pub batches_started: Family<MethodLabel, Counter>,
    /// Batches confirmed by method.
    pub batches_confirmed: Family<MethodLabel, Counter>,
    /// Batches failed by method.
    pub batches_failed: Family<MethodLabel, Counter>,
    /// Events received from remote relays (before checks).
    pub events_received: Counter,
    /// Events our relay accepted (or already had).
    pub events_forwarded: Counter,
    /// Events refused before forwarding, by reason.
    pub events_rejected: Family<ReasonLabel, Counter>,
    /// Events not forwarded again because they were forwarded recently.
    pub events_deduplicated: Counter,
    /// Our relay's `OK false` replies by category.
    pub own_relay_rejections: Family<ReasonLabel, Counter>,
    /// Bytes received while syncing, by method.
    pub sync_bytes: Family<MethodLabel, Counter>,
    /// Connections refused by the SSRF guard, by address class.
    pub ssrf_refusals: Family<ReasonLabel, Counter>,
    /// Relays that entered the targets unmanaged, by admission outcome.
    pub relays_discovered: Family<ReasonLabel, Counter>,
    /// Status writes by result.
    pub status_patches: Family<ResultLabel, Counter>,
    /// Status updates dropped because the reporter's queue was full.
    pub status_queue_overflows: Counter,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// 1 while this controller replica leads.
    pub leader: Gauge,
    /// Per-relay connected gauge (only when enabled).
    pub relay_connected: Family<RelayLabel, Gauge>,
    per_relay: bool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// A registry with every metric; `per_relay` turns on the relay-labelled gauge.
    pub fn new(per_relay: bool) -> Self {
        let mut registry = Registry::with_prefix("grasp_sync");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            connections: Family::default(),
            relays_managed: Gauge::default(),
            reconnects: Family::default(),
            lifecycle: Family::default(),
            batches_started: Family::default(),
            batches_confirmed: Family::default(),
            batches_failed: Family::default(),
            events_received: Counter::default(),
            events_forwarded: Counter::default(),
            events_rejected: Family::default(),
            events_deduplicated: Counter::default(),
            own_relay_rejections: Family::default(),
            sync_bytes: Family::default(),
            ssrf_refusals: Family::default(),
            relays_discovered: Family::default(),
            status_patches: Family::default(),
            status_queue_overflows: Counter::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            leader: Gauge::default(),
            relay_connected: Family::default(),
            per_relay,
        };
        let r = &mut registry;
        r.register(
            "connections",
            "Relay connections by state",
            m.connections.clone(),
        );
        r.register(
            "relays_managed",
            "Relays managed by this process",
            m.relays_managed.clone(),
        );
        r.register(
            "reconnects",
            "Reconnects by kind (quick, long)",
            m.reconnects.clone(),
        );
        r.register("lifecycle", "Lifecycle events by kind", m.lifecycle.clone());
        r.register(
            "batches_started",
            "Historic batches started",
            m.batches_started.clone(),
        );
        r.register(
            "batches_confirmed",
            "Historic batches confirmed",
            m.batches_confirmed.clone(),
        );
        r.register(
            "batches_failed",
            "Historic batches failed",
            m.batches_failed.clone(),
        );
        r.register(
            "events_received",
            "Events received from remote relays",
            m.events_received.clone(),
        );
        r.register(
            "events_forwarded",
            "Events stored on our relay",
            m.events_forwarded.clone(),
        );
        r.register(
            "events_rejected",
            "Events refused before forwarding",
            m.events_rejected.clone(),
        );
        r.register(
            "events_deduplicated",
            "Events skipped as recent duplicates",
            m.events_deduplicated.clone(),
        );
        r.register(
            "own_relay_rejections",
            "OK-false replies of our relay by category",
            m.own_relay_rejections.clone(),
        );
        r.register(
            "sync_bytes",
            "Bytes received while syncing, by method",
            m.sync_bytes.clone(),
        );
        r.register(
            "ssrf_refusals",
            "Connections refused by the SSRF guard",
            m.ssrf_refusals.clone(),
        );
        r.register(
            "relays_discovered",
            "Relays discovered, by admission outcome",
            m.relays_discovered.clone(),
        );
        r.register(
            "status_patches",
            "Status writes by result",
            m.status_patches.clone(),
        );
        r.register(
            "status_queue_overflows",
            "Status updates dropped on a full queue",
            m.status_queue_overflows.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            m.reconcile_duration.clone(),
        );
        r.register("leader", "1 while this replica leads", m.leader.clone());
        if per_relay {
            r.register(
                "relay_connected",
                "1 while the relay is connected",
                m.relay_connected.clone(),
            );
        }
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Whether the per-relay gauge is exported.
    pub fn per_relay(&self) -> bool {
        self.per_relay
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a lifecycle fact from the core.
    pub fn record(&self, event: MetricEvent) {
        let lifecycle = |kind| {
            self.lifecycle.get_or_create(&KindLabel { kind }).inc();
        };
        match event {
            MetricEvent::QuickReconnect => {
                self.reconnects
                    .get_or_create(&KindLabel { kind: "quick" })
                    .inc();
            }
            MetricEvent::LongReconnect => {
                self.reconnects
                    .get_or_create(&KindLabel { kind: "long" })
                    .inc();
            }
            MetricEvent::DailySync => lifecycle("daily_sync"),
            MetricEvent::Consolidation => lifecycle("consolidation"),
            MetricEvent::Nip77Unsupported => lifecycle("nip77_unsupported"),
            MetricEvent::RateLimited => lifecycle("rate_limited"),
            MetricEvent::BudgetLowered => lifecycle("budget_lowered"),
            MetricEvent::BudgetTooSmall => lifecycle("budget_too_small"),
            MetricEvent::HistoryTruncated { retried: true } => {
                lifecycle("history_truncated_retried")
            }
            MetricEvent::HistoryTruncated { retried: false } => lifecycle("history_truncated"),
            MetricEvent::BatchStarted(m) => {
                self.batches_started.get_or_create(&method(m)).inc();
            }
            MetricEvent::BatchConfirmed(m) => {
                self.batches_confirmed.get_or_create(&method(m)).inc();
            }
            MetricEvent::BatchFailed(m) => {
                self.batches_failed.get_or_create(&method(m)).inc();
            }
        }
    }
}

/// The `{method}` label of a sync method.
pub fn method(m: SyncMethod) -> MethodLabel {
    MethodLabel { method: m.label() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_exported_once_touched() {
        let m = Metrics::new(true);
        m.record(MetricEvent::QuickReconnect);
        m.record(MetricEvent::DailySync);
        m.record(MetricEvent::BatchStarted(SyncMethod::ReqEose));
        m.record(MetricEvent::BatchConfirmed(SyncMethod::ReqEose));
        m.record(MetricEvent::BatchFailed(SyncMethod::ReqEose));
        m.connections
            .get_or_create(&StateLabel {
                state: ConnState::connected,
            })
            .set(1);
        let reason = ReasonLabel { reason: "x" };
        m.events_rejected.get_or_create(&reason).inc();
        m.own_relay_rejections.get_or_create(&reason).inc();
        m.ssrf_refusals.get_or_create(&reason).inc();
        m.relays_discovered.get_or_create(&reason).inc();
        m.sync_bytes
            .get_or_create(&method(SyncMethod::Negentropy))
            .inc();
        m.status_patches
            .get_or_create(&ResultLabel { result: "applied" })
            .inc();
        m.relay_connected
            .get_or_create(&RelayLabel {
                relay: "wss://a/".into(),
            })
            .set(1);
        let text = m.encode();
        for name in METRIC_NAMES {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(name) && !l.starts_with('#')),
                "{name} missing from\n{text}"
            );
        }
    }

    #[test]
    fn relay_gauge_is_off_by_default() {
        let m = Metrics::default();
        m.relay_connected
            .get_or_create(&RelayLabel {
                relay: "wss://a/".into(),
            })
            .set(1);
        assert!(!m.encode().contains("relay_connected"));
    }
}
