//! Test support shared by the relay-level integration tests. Each test crate uses a subset.
#![allow(dead_code)]

pub mod bed;
pub mod fault_proxy;
pub mod py_relays;
