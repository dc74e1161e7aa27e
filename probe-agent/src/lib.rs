//! Sonde's node agent.
//!
//! It loads the eBPF object ([`loader`]), attaches probes as resources ask,
//! drains and decodes the ring buffer ([`ring`]), and reports what it
//! captured and lost. [`standalone`] runs it from manifest files, without a
//! cluster.

pub mod clock;
pub mod error;
pub mod loader;
pub mod preflight;
pub mod ring;
pub mod tracefs;

pub use error::{Error, Result};
