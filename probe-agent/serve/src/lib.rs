//! What Sonde's agent serves from its table store: Arrow Flight and Flight
//! SQL ([`flight`]), Prometheus `/metrics` ([`metrics`]) and OTLP exports
//! ([`export`]). Each reads the store and the counters the drive loop
//! reports; none of them runs on the drive thread.

pub mod anomaly_metrics;
pub mod export;
pub mod flight;
pub mod metrics;

/// The distributed query worker and scans, beside the Flight service they
/// are served with.
pub use flight::cluster;
