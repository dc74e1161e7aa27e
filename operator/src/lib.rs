//! Sonde's operator. It turns `Tracepoint`, `Retention` and `Export`
//! resources into per-node state and the agents' reports back into status:
//!
//! - [`nodes`]: one `ProbeNode` per `Node`, its spec listing everything the
//!   node's agent must run (server-side apply, one writer).
//! - [`tracepoints`]: finalizer, ttl, status and Events of Tracepoints.
//! - [`resources`]: status of Retentions and Exports.
//! - [`state`]: the decisions, as pure functions of the caches.
//! - [`run`]: caches, controllers, leader election and `/metrics` together.

pub mod context;
pub mod metrics;
pub mod nodes;
pub mod resources;
pub mod run;
pub mod state;
pub mod tracepoints;

/// Why a reconcile failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed")]
    Kube(#[from] kube::Error),
    #[error("{kind} has no {field}")]
    MissingMetadata {
        kind: &'static str,
        field: &'static str,
    },
}
