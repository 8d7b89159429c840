//! Observability: Prometheus metrics, the HTTP endpoints (/metrics, /livez, /readyz, /status)
//! and the `kubectl get syncrelays`-style table.

pub mod http;
pub mod metrics;
pub mod table;
