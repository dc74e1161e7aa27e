//! Sonde's capture path, from the kernel to Arrow rows.
//!
//! In data-flow order: [`preflight`] and [`tracefs`] check what the node
//! offers; [`elf`] reads binaries for uprobes and USDT notes; [`plan`]
//! compiles a Tracepoint spec into the configuration the generic eBPF
//! programs read from maps; [`loader`] loads and attaches them; [`ring`]
//! drains and decodes the ring buffer; [`capture`] routes each record to
//! its probe's [`rows`] (Arrow builders, sealed into batches for a
//! [`sink`]), labelled through [`identity`] and timed by [`clock`], with
//! [`derived_metrics`] counted on the way. [`engine`] joins them, and
//! [`drive`] runs the engine on a thread of its own.
//!
//! This crate knows no async runtime, Kubernetes client or query engine:
//! nothing that serves or stores rows can stall the drain. [`net`] reads
//! the per-cgroup traffic counters of the `network_stats` baseline table.

pub mod capture;
pub mod clock;
pub mod derived_metrics;
pub mod drive;
pub mod elf;
pub mod engine;
pub mod error;
pub mod identity;
pub mod loader;
pub mod net;
pub mod plan;
pub mod preflight;
pub mod ring;
pub mod rows;
pub mod sink;
pub mod sockets;
pub mod tracefs;
pub mod uprobe_events;

pub use error::{Error, Result};
