//! Test support shared by the relay-level integration tests.

pub mod fault_proxy;
