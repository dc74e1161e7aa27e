//! The operator's Prometheus endpoint: reconciles by controller and result,
//! their duration, and resources by phase (read from the caches at scrape
//! time). OpenMetrics to clients that ask for it, the Prometheus text format
//! to the others.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{
        HeaderMap, StatusCode,
        header::{ACCEPT, CONTENT_TYPE},
    },
    response::IntoResponse,
    routing::get,
};
use crds::v1alpha1::Phase;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::{
    context::Caches,
    state::{self, Liveness},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

/// Counters the reconcilers update.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl Metrics {
    /// Runs one reconcile of `controller`, counting it by result and timing
    /// it.
    pub async fn timed<T, E>(
        &self,
        controller: &'static str,
        reconcile: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = reconcile.await;
        self.reconciled(controller, &result, started.elapsed());
        result
    }

    /// Counts one reconcile of `controller` and its duration.
    fn reconciled<T, E>(&self, controller: &'static str, result: &Result<T, E>, took: Duration) {
        let result = if result.is_ok() { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.durations
            .get_or_create(&ControllerLabels { controller })
            .observe(took.as_secs_f64());
    }
}

/// Resources by phase and nodes by agent state, read from the caches.
#[derive(Debug)]
struct CacheCollector {
    caches: Caches,
    grace: Duration,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tracepoints = self.caches.tracepoints.state();
        let mut family = encoder.encode_descriptor(
            "tracepoints",
            "Tracepoints by phase",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for phase in [
            Phase::Pending,
            Phase::Running,
            Phase::Degraded,
            Phase::Failed,
            Phase::Terminated,
        ] {
            let count = tracepoints
                .iter()
                .filter(|tp| tp.status.as_ref().and_then(|s| s.phase) == Some(phase))
                .count();
            let name = format!("{phase:?}");
            ConstGauge::new(count as i64)
                .encode(family.encode_family(&[("phase", name.as_str())])?)?;
        }

        let now = k8s_openapi::jiff::Timestamp::now();
        let probe_nodes = self.caches.probe_nodes.state();
        let reporting = probe_nodes
            .iter()
            .filter(|pn| state::liveness(Some(pn), now, self.grace) == Liveness::Reporting)
            .count();
        let mut family = encoder.encode_descriptor(
            "nodes",
            "Nodes by whether their agent reports within the grace period",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(reporting as i64)
            .encode(family.encode_family(&[("agent", "reporting")])?)?;
        ConstGauge::new((probe_nodes.len() - reporting) as i64)
            .encode(family.encode_family(&[("agent", "silent")])?)?;

        for (name, help, count) in [
            (
                "retentions",
                "Retention resources",
                self.caches.retentions.state().len(),
            ),
            (
                "exports",
                "Export resources",
                self.caches.exports.state().len(),
            ),
        ] {
            let family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            ConstGauge::new(count as i64).encode(family)?;
        }
        Ok(())
    }
}

/// The registry the operator serves.
pub fn registry(metrics: &Arc<Metrics>, caches: Caches, grace: Duration) -> Registry {
    let mut registry = Registry::with_prefix("sonde_operator");
    registry.register(
        "reconciles",
        "Reconciles by controller and result",
        metrics.reconciles.clone(),
    );
    registry.register_with_unit(
        "reconcile_duration",
        "How long reconciles took",
        Unit::Seconds,
        metrics.durations.clone(),
    );
    registry.register_collector(Box::new(CacheCollector { caches, grace }));
    registry
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (
            text::encode(&mut body, &registry),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            prometheus_text::encode(&mut body, &registry),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    match encoded {
        Ok(()) => ([(CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
