//! Sonde's node agent: the run modes around the capture path.
//!
//! The capture path (`probe-capture`) turns Tracepoint specs into eBPF
//! programs and ring-buffer records into Arrow rows; the store
//! (`probe-store`) keeps them under retention; `probe-serve` serves them
//! over Flight, Flight SQL, `/metrics` and OTLP. This crate runs them:
//! [`standalone`] from manifest files, [`cluster`] from the node's
//! `ProbeNode`, each on the one drive loop of `probe_capture::drive`, with
//! [`storage`] upkeep and everything that waits on the network on the async
//! runtime. [`baseline`] fills the built-in tables of schema `sonde` with
//! no resource at all. [`run`] wires it together for `main`.

pub mod baseline;
pub mod cluster;
pub mod config;
pub mod run;
pub mod standalone;
pub mod storage;
