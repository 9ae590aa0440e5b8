//! End-to-end tests of `agentctl` against the real Docker engine and a real local registry.
//!
//! Every test labels what it creates with its run id and removes it by label when it ends, failed or not.

mod build;
mod cli;
mod contract;
mod deliver;
#[cfg(feature = "testing")]
mod engine_record;
// The kill and hold switches exist only in a build with the `testing` feature (`--all-features`).
#[cfg(feature = "testing")]
mod crash;
#[cfg(feature = "testing")]
mod faults;
mod fidelity;
mod fleet;
mod health;
mod hooks;
mod judge;
mod security;
#[cfg(feature = "testing")]
mod shared_state;
mod support;
mod swarm;
mod tls;
mod traffic;
mod update;
mod web;
