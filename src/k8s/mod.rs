//! The Kubernetes driver: CRD-backed controller (discovery, assignment, leases, finalizers)
//! and workers (watch → engine → status reporter with server-side apply).
