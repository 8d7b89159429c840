//! Observability: Prometheus metrics, the HTTP endpoints (/metrics, /livez, /readyz, /status),
//! the `kubectl get syncrelays`-style table, and keeping RSS near the live heap (`memory`).

pub mod http;
pub mod memory;
pub mod metrics;
pub mod table;
