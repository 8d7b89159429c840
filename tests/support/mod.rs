//! Test support shared by the relay-level integration tests. Each test crate uses a subset.
#![allow(dead_code)]

pub mod api_proxy;
pub mod apiserver;
pub mod bed;
pub mod fault_proxy;
pub mod guarded;
pub mod hostile_relay;
pub mod k8s_bed;
pub mod py_relays;
pub mod sync_bed;
