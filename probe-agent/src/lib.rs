//! Sonde's node agent.
//!
//! It loads the eBPF object ([`loader`]), attaches probes as resources ask,
//! drains and decodes the ring buffer ([`ring`]), and reports what it
//! captured and lost. [`cluster`] runs it from its node's `ProbeNode`;
//! [`standalone`] runs it from manifest files, without a cluster.

pub mod capture;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod elf;
pub mod engine;
pub mod error;
pub mod export;
pub mod flight;
pub mod identity;
pub mod loader;
pub mod metrics;
pub mod plan;
pub mod preflight;
pub mod ring;
pub mod standalone;
pub mod store;
pub mod table;
pub mod tracefs;
pub mod user_metrics;

pub use error::{Error, Result};
