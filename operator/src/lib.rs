//! Sonde's operator. It turns `Tracepoint`, `Retention` and `Export`
//! resources into per-node state and the agents' reports back into status:
//!
//! - [`cache`]: one watch per kind, the caches and indexes they fill, and
//!   which reconciles each change calls for ([`queue`]).
//! - [`nodes`]: one `ProbeNode` per `Node`, its spec listing everything the
//!   node's agent must run (server-side apply, one writer, only on change).
//! - [`tracepoints`]: finalizer, ttl, status and Events of Tracepoints.
//! - [`resources`]: status of Retentions and Exports.
//! - [`state`]: the decisions, as pure functions of the caches.
//! - [`run`]: client, caches, controllers, leader election and `/metrics`
//!   together.

pub mod cache;
pub mod client;
pub mod context;
mod error;
pub mod metrics;
pub mod nodes;
pub mod queue;
pub mod resources;
pub mod run;
pub mod state;
pub mod tracepoints;

pub use error::Error;
