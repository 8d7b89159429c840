//! Observability: Prometheus metrics, the HTTP endpoints (/metrics, /livez, /readyz, /status)
//! and the `kubectl get syncrelays`-style table.

pub mod metrics;
