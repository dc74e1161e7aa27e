//! The operator's Prometheus endpoint: reconciles by controller and result,
//! their duration, writes, and, read from the cache at scrape time, queue
//! depths, cache sizes and resources by phase. OpenMetrics to clients that
//! ask for it, the Prometheus text format to the others.

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
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use sonde_daemon::MetricsFormat;

use crate::{
    cache::Cache,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Counters the reconcilers update.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    waits: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<ControllerLabels, Gauge>,
    probe_node_writes: Counter,
    status_writes: Family<KindLabels, Counter>,
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
            waits: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            probe_node_writes: Counter::default(),
            status_writes: Family::default(),
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
        let in_flight = self
            .in_flight
            .get_or_create(&ControllerLabels { controller })
            .clone();
        in_flight.inc();
        let started = std::time::Instant::now();
        let result = reconcile.await;
        self.reconciled(controller, &result, started.elapsed());
        in_flight.dec();
        result
    }

    /// How long an object queued for `controller` waited for its
    /// reconcile to start: the debounce, then a free slot.
    pub fn waited(&self, controller: &'static str, waited: Duration) {
        self.waits
            .get_or_create(&ControllerLabels { controller })
            .observe(waited.as_secs_f64());
    }

    /// Counts a write of a `ProbeNode`'s spec.
    pub fn probe_node_written(&self) {
        self.probe_node_writes.inc();
    }

    /// Counts a write of the status of a resource of `kind`.
    pub fn status_written(&self, kind: &'static str) {
        self.status_writes.get_or_create(&KindLabels { kind }).inc();
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

/// Resources by phase, nodes by agent state, cache sizes and queue
/// depths, read from the cache.
struct CacheCollector {
    cache: Cache,
    grace: Duration,
}

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCollector").finish_non_exhaustive()
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tracepoints = self.cache.tracepoints.state();
        let mut family = encoder.encode_descriptor(
            "tracepoints",
            "Tracepoints by phase",
            None,
            MetricType::Gauge,
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
        let probe_nodes = self.cache.probe_nodes();
        let reporting = probe_nodes
            .iter()
            .filter(|pn| state::liveness(Some(pn), now, self.grace) == Liveness::Reporting)
            .count();
        let mut family = encoder.encode_descriptor(
            "nodes",
            "Nodes by whether their agent reports within the grace period",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(reporting as i64)
            .encode(family.encode_family(&[("agent", "reporting")])?)?;
        ConstGauge::new((probe_nodes.len() - reporting) as i64)
            .encode(family.encode_family(&[("agent", "silent")])?)?;

        for (name, help, count) in [
            (
                "retentions",
                "Retention resources",
                self.cache.retentions.len(),
            ),
            ("exports", "Export resources", self.cache.exports.len()),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(count as i64).encode(family)?;
        }

        let mut family = encoder.encode_descriptor(
            "cache_objects",
            "Objects in the operator's cache, by kind",
            None,
            MetricType::Gauge,
        )?;
        for (kind, count) in self.cache.sizes() {
            ConstGauge::new(count as i64).encode(family.encode_family(&[("kind", kind)])?)?;
        }
        let queues = &self.cache.queues;
        let mut family = encoder.encode_descriptor(
            "queue_depth",
            "Objects queued for a reconcile that has not started yet, by controller",
            None,
            MetricType::Gauge,
        )?;
        for (controller, depth) in [
            ("node", queues.nodes.depth()),
            ("tracepoint", queues.tracepoints.depth()),
            ("retention", queues.retentions.depth()),
            ("export", queues.exports.depth()),
        ] {
            ConstGauge::new(depth as i64)
                .encode(family.encode_family(&[("controller", controller)])?)?;
        }
        Ok(())
    }
}

/// The registry the operator serves.
pub fn registry(metrics: &Arc<Metrics>, cache: Cache, grace: Duration) -> Registry {
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
    registry.register_with_unit(
        "queue_wait",
        "How long a queued object waited for its reconcile to start",
        Unit::Seconds,
        metrics.waits.clone(),
    );
    registry.register(
        "reconciles_in_flight",
        "Reconciles running now, by controller",
        metrics.in_flight.clone(),
    );
    registry.register(
        "probe_node_writes",
        "Writes of a ProbeNode's spec (each one a change of what a node runs)",
        metrics.probe_node_writes.clone(),
    );
    registry.register(
        "status_writes",
        "Writes of a resource's status, by kind",
        metrics.status_writes.clone(),
    );
    let watches = cache.watch_stats();
    registry.register(
        "watch_events",
        "Events the operator's watches delivered, listed objects included, by kind",
        watches.events.clone(),
    );
    registry.register(
        "relists",
        "Full lists after a watch lost its place (the first list of each kind not counted), by kind",
        watches.relists.clone(),
    );
    registry.register_with_unit(
        "report_delay",
        "From an agent writing its ProbeNode status (its heartbeatTime, whole seconds) to the operator seeing it",
        Unit::Seconds,
        watches.report_delay.clone(),
    );
    registry.register_collector(Box::new(CacheCollector { cache, grace }));
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
    let format = MetricsFormat::negotiate(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    match format.encode(&registry) {
        Ok(body) => ([(CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
