//! The agent's Prometheus endpoint: `GET /metrics` in the OpenMetrics text
//! format to clients that ask for it (Prometheus does), in the Prometheus
//! text format 0.0.4 to the others (`curl`, `promtool check metrics`).
//!
//! Nothing here is updated per event. The counters live where they are
//! counted (the eBPF per-CPU maps, the decoder, the series of the
//! Tracepoints' own metrics, the table store) and are read when Prometheus
//! scrapes: [`AgentCollector`] asks the drive loop, which owns the engine,
//! for a [`ProbeReport`] over a channel the loop answers after a drain
//! (waiting at most the scrape timeout, then serving the last report and
//! counting the miss), and reads the table statistics from the store
//! itself. The endpoint runs on a thread and runtime of its own
//! ([`MetricsServer::spawn_dedicated`]), so busy query workers cannot delay
//! it.
//!
//! Sonde's own families are named `sonde_*`; the metrics Tracepoints derive
//! (`spec.metrics`) keep the names their users gave them, with the labels
//! `namespace` and `tracepoint` added (renamed `sonde_namespace` and
//! `sonde_tracepoint` when a label column has that name).

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{
        HeaderMap, StatusCode,
        header::{ACCEPT, CONTENT_TYPE},
    },
    response::{IntoResponse, Response},
    routing::get,
};
use crds::v1alpha1::MetricKind;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use sonde_daemon::{MetricsFormat, ShutdownSignal};
use tracing::warn;

use probe_capture::{
    capture::ProbeTotals, derived_metrics::MetricSample, drive::Waker, ring::RingUsage,
};
use probe_store::{Evicted, TableStats, TableStore};

/// Where metrics are served.
pub const METRICS_PATH: &str = "/metrics";

/// Every metric name starts with this (and `_`).
pub const PREFIX: &str = "sonde";

/// How a Tracepoint stands on this node, as the `state` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    /// Cluster mode: no selected pod runs on the node, so nothing is attached.
    Idle,
    Failed,
    Unsupported,
}

impl ProbeState {
    pub const ALL: [ProbeState; 4] = [Self::Attached, Self::Idle, Self::Failed, Self::Unsupported];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Idle => "idle",
            Self::Failed => "failed",
            Self::Unsupported => "unsupported",
        }
    }
}

/// One Tracepoint at the moment of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSample {
    pub namespace: String,
    pub tracepoint: String,
    pub table: String,
    pub state: ProbeState,
    /// `None` unless attached (or if its counters could not be read).
    pub totals: Option<ProbeTotals>,
    /// Its `spec.metrics` (`Engine::metrics`); empty unless attached.
    pub metrics: Vec<MetricSample>,
}

/// What the engine knows at the moment of a scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeReport {
    pub probes: Vec<ProbeSample>,
    /// Records the decoder could not attribute to any probe.
    pub unattributed: u64,
    /// The ring buffer's fill level (`Engine::ring_usage`).
    pub ring: Option<RingUsage>,
}

/// A request for a [`ProbeReport`], answered by the drive loop.
pub type ReportRequest = std::sync::mpsc::SyncSender<ProbeReport>;

/// Scrapes waiting at once for the drive loop; more are served the last
/// report.
const PENDING_REPORTS: usize = 8;

/// How long a scrape waits for the drive loop by default.
pub const DEFAULT_REPORT_TIMEOUT: Duration = Duration::from_millis(500);

/// The requesting end of the report channel, and the receiving end the
/// drive loop holds.
pub fn report_channel(waker: Waker, timeout: Duration) -> (ReportClient, ReportRequests) {
    let (tx, rx) = std::sync::mpsc::sync_channel(PENDING_REPORTS);
    (
        ReportClient {
            requests: tx,
            waker,
            timeout,
            last: Arc::new(Mutex::new(None)),
            misses: Arc::new(AtomicU64::new(0)),
        },
        ReportRequests(rx),
    )
}

/// Scrapes waiting for a report; the drive loop answers them after a drain.
#[derive(Debug)]
pub struct ReportRequests(std::sync::mpsc::Receiver<ReportRequest>);

impl ReportRequests {
    /// Answers every waiting scrape with `report()` (built once, if any waits).
    pub fn answer(&self, report: impl FnOnce() -> ProbeReport) {
        let waiting: Vec<ReportRequest> = self.0.try_iter().collect();
        if waiting.is_empty() {
            return;
        }
        let report = report();
        for request in waiting {
            // The scrape may have given up; nothing to do then.
            let _ = request.try_send(report.clone());
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReportClient {
    requests: std::sync::mpsc::SyncSender<ReportRequest>,
    waker: Waker,
    timeout: Duration,
    /// The last report answered, served when the drive loop is late.
    last: Arc<Mutex<Option<ProbeReport>>>,
    /// Scrapes the drive loop did not answer in time.
    misses: Arc<AtomicU64>,
}

impl ReportClient {
    /// Asks the drive loop and waits at most the timeout. Late (or with
    /// too many scrapes waiting already) it serves the last report (none
    /// before the first) and counts a miss; `None` once the loop has
    /// stopped. Blocks: call it off the async workers (the scrape handler
    /// encodes in a blocking task).
    fn blocking_report(&self) -> Option<ProbeReport> {
        use std::sync::mpsc::{RecvTimeoutError, TrySendError};
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        match self.requests.try_send(tx) {
            Ok(()) => {
                self.waker.wake();
                match rx.recv_timeout(self.timeout) {
                    Ok(report) => {
                        *self.last_report() = Some(report.clone());
                        return Some(report);
                    }
                    // The loop stopped while this scrape waited.
                    Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
            // The loop has stopped (or never answers scrapes): no probes.
            Err(TrySendError::Disconnected(_)) => return None,
            Err(TrySendError::Full(_)) => {}
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.last_report().clone()
    }

    fn last_report(&self) -> std::sync::MutexGuard<'_, Option<ProbeReport>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Scrapes served the last report because the drive loop was late.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// `None`: the drive loop has stopped or never answered; probe metrics
    /// are left out.
    pub probes: Option<ProbeReport>,
    /// Scrapes so far that the drive loop did not answer in time.
    pub report_misses: u64,
    pub tables: Vec<TableStats>,
}

/// Reads the agent's counters at scrape time.
#[derive(Debug)]
pub struct AgentCollector {
    reports: ReportClient,
    store: Option<TableStore>,
}

impl AgentCollector {
    pub fn new(reports: ReportClient, store: Option<TableStore>) -> Self {
        Self { reports, store }
    }

    pub fn register(self, registry: &mut Registry) {
        registry.register_collector(Box::new(self));
    }
}

impl Collector for AgentCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let probes = self.reports.blocking_report();
        let snapshot = Snapshot {
            report_misses: self.reports.misses(),
            probes,
            tables: self
                .store
                .as_ref()
                .map(TableStore::stats)
                .unwrap_or_default(),
        };
        snapshot.encode(encoder)
    }
}

/// The loss stages of a probe, as the `stage` label names them.
fn losses(totals: &ProbeTotals) -> [(&'static str, u64); 4] {
    [
        ("rate_limit", totals.rate_limited),
        ("ring_buffer_full", totals.ringbuf_full),
        ("missing_entry", totals.missing_entry),
        ("decode", totals.decode_errors),
    ]
}

fn evictions(stats: &TableStats) -> [(&'static str, Evicted); 3] {
    [
        ("max_bytes", stats.evicted.max_bytes),
        ("max_age", stats.evicted.max_age),
        ("budget", stats.evicted.budget),
    ]
}

const NO_LABELS: [(&str, &str); 0] = [];

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The labels of a series of a Tracepoint's metric: where it comes from,
/// then its label columns. A column named like one of Sonde's labels keeps
/// its name; Sonde's is then prefixed with `sonde_`. A histogram's column
/// named `le` is `column_le`, since `le` names its buckets.
fn event_metric_labels(
    probe: &ProbeSample,
    metric: &MetricSample,
    values: &[String],
) -> Vec<(String, String)> {
    let own = |name: &str| {
        if metric.label_names.iter().any(|l| l == name) {
            format!("{PREFIX}_{name}")
        } else {
            name.to_owned()
        }
    };
    let mut labels = Vec::with_capacity(2 + values.len());
    labels.push((own("namespace"), probe.namespace.clone()));
    labels.push((own("tracepoint"), probe.tracepoint.clone()));
    labels.extend(metric.label_names.iter().zip(values).map(|(name, value)| {
        // A histogram's buckets own `le`: a column of that name moves.
        let name = if metric.kind == MetricKind::Histogram && name == "le" {
            "column_le".to_owned()
        } else {
            name.clone()
        };
        (name, value.clone())
    }));
    labels
}

/// Reads one of a probe's totals.
type TotalsField = fn(&ProbeTotals) -> u64;

/// One `sonde_` metric family: its descriptor, then one sample per label set.
fn family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let name = format!("{PREFIX}_{name}");
    let mut metric = encoder.encode_descriptor(&name, help, unit, metric_type)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Snapshot {
    pub fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(report) = &self.probes {
            Self::encode_probes(report, &mut encoder)?;
        }
        family(
            &mut encoder,
            "scrape_report_misses",
            "Scrapes the drive loop did not answer in time; they were served its last report.",
            None,
            MetricType::Counter,
            [(NO_LABELS, ConstCounter::new(self.report_misses))],
        )?;
        self.encode_tables(&mut encoder)
    }

    fn encode_probes(
        report: &ProbeReport,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            "probes",
            "Tracepoints on this node by state.",
            None,
            MetricType::Gauge,
            ProbeState::ALL.map(|state| {
                let count = report.probes.iter().filter(|p| p.state == state).count();
                (
                    [("state", state.as_str())],
                    ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX)),
                )
            }),
        )?;
        let attached: Vec<_> = report
            .probes
            .iter()
            .filter_map(|p| {
                let labels = [
                    ("namespace", p.namespace.as_str()),
                    ("tracepoint", p.tracepoint.as_str()),
                    ("table", p.table.as_str()),
                ];
                Some((labels, p.totals?))
            })
            .collect();
        let counters: [(&str, &str, TotalsField); 5] = [
            (
                "events_matched",
                "Events the kernel matched to the Tracepoint's hook and targets.",
                |t| t.matched,
            ),
            (
                "events_captured",
                "Events stored as rows of the Tracepoint's table.",
                |t| t.captured,
            ),
            (
                "events_filtered",
                "Events the Tracepoint's filters rejected (by request, not a loss).",
                |t| t.filtered,
            ),
            (
                "events_sampled_out",
                "Events skipped by the Tracepoint's sampling (by request, not a loss).",
                |t| t.sampled_out,
            ),
            (
                "field_read_errors",
                "Fields left empty because they could not be read; their rows were kept.",
                |t| t.read_errors,
            ),
        ];
        for (name, help, value) in counters {
            family(
                encoder,
                name,
                help,
                None,
                MetricType::Counter,
                attached
                    .iter()
                    .map(|(labels, totals)| (*labels, ConstCounter::new(value(totals)))),
            )?;
        }
        family(
            encoder,
            "events_lost",
            "Events lost, by the stage that lost them.",
            None,
            MetricType::Counter,
            attached.iter().flat_map(|([ns, tp, table], totals)| {
                losses(totals).map(|(stage, lost)| {
                    (
                        [*ns, *tp, *table, ("stage", stage)],
                        ConstCounter::new(lost),
                    )
                })
            }),
        )?;
        family(
            encoder,
            "unattributed_records",
            "Ring buffer records that could not be attributed to any Tracepoint.",
            None,
            MetricType::Counter,
            [(NO_LABELS, ConstCounter::new(report.unattributed))],
        )?;
        if let Some(ring) = report.ring {
            family(
                encoder,
                "ring_buffer_used",
                "Bytes waiting in the ring buffer to be drained, at scrape time.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
                [(NO_LABELS, ConstGauge::new(gauge(ring.used_bytes)))],
            )?;
            family(
                encoder,
                "ring_buffer_size",
                "The ring buffer's size.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
                [(NO_LABELS, ConstGauge::new(gauge(ring.size_bytes)))],
            )?;
        }
        Self::encode_event_metrics(report, encoder)
    }

    /// The metrics Tracepoints derive, one family per name across
    /// Tracepoints, and Sonde's accounting of their series.
    fn encode_event_metrics(
        report: &ProbeReport,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut by_name: BTreeMap<&str, Vec<(&ProbeSample, &MetricSample)>> = BTreeMap::new();
        for probe in &report.probes {
            for metric in &probe.metrics {
                by_name
                    .entry(&metric.name)
                    .or_default()
                    .push((probe, metric));
            }
        }
        // A name two Tracepoints use with different kinds goes to the
        // first (by namespace and name); the others are reported as
        // conflicts instead of breaking the exposition.
        let mut conflicts = Vec::new();
        for (name, members) in &by_name {
            let kind = members[0].1.kind;
            let (metric_type, help) = match kind {
                MetricKind::Counter => (
                    MetricType::Counter,
                    "Counted from Tracepoint events (spec.metrics).",
                ),
                MetricKind::Histogram => (
                    MetricType::Histogram,
                    "Observed from Tracepoint events (spec.metrics).",
                ),
            };
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (probe, metric) in members {
                if metric.kind != kind {
                    conflicts.push((*probe, *metric));
                    continue;
                }
                for series in &metric.series {
                    let labels = event_metric_labels(probe, metric, &series.labels);
                    let encoder = family.encode_family(&labels)?;
                    match kind {
                        MetricKind::Counter => {
                            ConstCounter::new(series.counts.first().copied().unwrap_or(0))
                                .encode(encoder)?;
                        }
                        MetricKind::Histogram => {
                            let buckets: Vec<(f64, u64)> = metric
                                .buckets
                                .iter()
                                .copied()
                                .chain([f64::INFINITY])
                                .zip(series.counts.iter().copied())
                                .collect();
                            let mut encoder = encoder;
                            encoder.encode_histogram::<NoLabelSet>(
                                series.sum,
                                series.count(),
                                &buckets,
                                None,
                            )?;
                        }
                    }
                }
            }
        }
        let metrics: Vec<_> = by_name.values().flatten().collect();
        let labels = |probe: &ProbeSample, metric: &MetricSample| {
            [
                ("namespace", probe.namespace.clone()),
                ("tracepoint", probe.tracepoint.clone()),
                ("metric", metric.name.clone()),
            ]
        };
        family(
            encoder,
            "metric_series",
            "Series a Tracepoint's metric has on this node.",
            None,
            MetricType::Gauge,
            metrics.iter().map(|(probe, metric)| {
                (
                    labels(probe, metric),
                    ConstGauge::new(gauge(metric.series.len() as u64)),
                )
            }),
        )?;
        family(
            encoder,
            "metric_series_rejected",
            "Events of a Tracepoint's metric counted in no series: their label values \
             would have made more series than its maxSeries.",
            None,
            MetricType::Counter,
            metrics.iter().map(|(probe, metric)| {
                (
                    labels(probe, metric),
                    ConstCounter::new(metric.rejected_series),
                )
            }),
        )?;
        family(
            encoder,
            "metric_negative_values",
            "Events a Tracepoint's counter did not add: their value was negative.",
            None,
            MetricType::Counter,
            metrics
                .iter()
                .filter(|(_, metric)| metric.kind == MetricKind::Counter)
                .map(|(probe, metric)| {
                    (
                        labels(probe, metric),
                        ConstCounter::new(metric.negative_values),
                    )
                }),
        )?;
        family(
            encoder,
            "metric_conflicts",
            "Tracepoint metrics not served because another Tracepoint's metric of \
             the same name has another kind.",
            None,
            MetricType::Gauge,
            conflicts
                .iter()
                .map(|(probe, metric)| (labels(probe, metric), ConstGauge::new(1))),
        )
    }

    fn encode_tables(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = |s: &TableStats| {
            [
                ("namespace", s.name.schema.clone()),
                ("table", s.name.table.clone()),
            ]
        };
        family(
            encoder,
            "table_held_rows",
            "Rows a table holds now.",
            None,
            MetricType::Gauge,
            self.tables
                .iter()
                .map(|s| (labels(s), ConstGauge::new(s.rows))),
        )?;
        family(
            encoder,
            "table_held",
            "Memory a table holds now.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            self.tables
                .iter()
                .map(|s| (labels(s), ConstGauge::new(s.bytes))),
        )?;
        family(
            encoder,
            "table_held_uncompressed",
            "Memory the rows a table holds would take as appended, before compaction; held_uncompressed / held is its compression ratio.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            self.tables
                .iter()
                .map(|s| (labels(s), ConstGauge::new(s.plain_bytes))),
        )?;
        family(
            encoder,
            "table_appended_rows",
            "Rows appended to a table.",
            None,
            MetricType::Counter,
            self.tables
                .iter()
                .map(|s| (labels(s), ConstCounter::new(s.appended_rows))),
        )?;
        family(
            encoder,
            "table_appended",
            "Memory appended to a table.",
            Some(&Unit::Bytes),
            MetricType::Counter,
            self.tables
                .iter()
                .map(|s| (labels(s), ConstCounter::new(s.appended_bytes))),
        )?;
        for (name, help, unit, amount) in [
            (
                "table_evicted_rows",
                "Rows evicted from a table, by the limit that evicted them.",
                None,
                (|e: &Evicted| e.rows) as fn(&Evicted) -> u64,
            ),
            (
                "table_evicted",
                "Memory evicted from a table, by the limit that evicted it.",
                Some(&Unit::Bytes),
                |e: &Evicted| e.bytes,
            ),
        ] {
            family(
                encoder,
                name,
                help,
                unit,
                MetricType::Counter,
                self.tables.iter().flat_map(|s| {
                    let [namespace, table] = labels(s);
                    evictions(s).map(move |(reason, evicted)| {
                        (
                            [
                                namespace.clone(),
                                table.clone(),
                                ("reason", reason.to_owned()),
                            ],
                            ConstCounter::new(amount(&evicted)),
                        )
                    })
                }),
            )?;
        }
        family(
            encoder,
            "table_retention_window",
            "The retention window a table actually has: the age of its oldest row.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            self.tables.iter().filter_map(|s| {
                let window = s.window.map(|w: Duration| w.as_secs_f64())?;
                Some((labels(s), ConstGauge::new(window)))
            }),
        )
    }
}

/// The registry the agent serves: every metric is read at scrape time.
///
/// It has no prefix, because the metrics Tracepoints derive keep their
/// users' names; the collector names Sonde's own families `sonde_*`, and
/// metrics registered later belong under
/// `registry.sub_registry_with_prefix(PREFIX)`.
pub fn agent_registry(reports: ReportClient, store: Option<TableStore>) -> Registry {
    let mut registry = Registry::default();
    AgentCollector::new(reports, store).register(&mut registry);
    registry
}

/// The metrics endpoint, bound and not yet serving.
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
}

/// Binds `addr`; fails at once on a port in use.
pub async fn bind(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(MetricsServer { listener, registry })
}

impl MetricsServer {
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener has an address; fall back to the unspecified one.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves on a thread of its own (`sonde-metrics`, with a runtime of its
    /// own) until `shutdown`, so that a scrape is answered even while
    /// queries keep every worker of the main runtime busy.
    pub fn spawn_dedicated(
        self,
        shutdown: ShutdownSignal,
    ) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
        let listener = self.listener.into_std()?;
        let registry = self.registry;
        std::thread::Builder::new()
            .name("sonde-metrics".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let server = MetricsServer {
                        listener: tokio::net::TcpListener::from_std(listener)?,
                        registry,
                    };
                    server.run(shutdown.wait()).await
                })
            })
    }

    /// Serves until `shutdown` resolves, then lets open scrapes finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route(METRICS_PATH, get(scrape))
            .with_state(self.registry);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn scrape(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let format = MetricsFormat::negotiate(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    // Collectors wait for the engine's owner: keep that off the async workers.
    match tokio::task::spawn_blocking(move || format.encode(&registry)).await {
        Ok(Ok(body)) => ([(CONTENT_TYPE, format.content_type())], body).into_response(),
        Ok(Err(e)) => {
            warn!("cannot encode metrics: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(e) => {
            warn!("the metrics encoder failed: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use probe_store::{Evictions, RetentionPolicy, TableName};

    fn totals() -> ProbeTotals {
        ProbeTotals {
            matched: 5000,
            captured: 97,
            filtered: 11,
            sampled_out: 7,
            rate_limited: 4890,
            ringbuf_full: 2,
            missing_entry: 0,
            decode_errors: 1,
            read_errors: 3,
        }
    }

    fn report() -> ProbeReport {
        ProbeReport {
            probes: vec![
                ProbeSample {
                    namespace: "shop".to_owned(),
                    tracepoint: "parent-lookups".to_owned(),
                    table: "parent_lookups".to_owned(),
                    state: ProbeState::Attached,
                    totals: Some(totals()),
                    metrics: Vec::new(),
                },
                ProbeSample {
                    namespace: "shop".to_owned(),
                    tracepoint: "broken".to_owned(),
                    table: "broken".to_owned(),
                    state: ProbeState::Failed,
                    totals: None,
                    metrics: Vec::new(),
                },
            ],
            unattributed: 4,
            ring: Some(RingUsage {
                used_bytes: 4096,
                size_bytes: 1 << 20,
            }),
        }
    }

    fn table() -> TableStats {
        TableStats {
            name: TableName::new("shop", "parent_lookups"),
            policy: RetentionPolicy::default(),
            rows: 90,
            bytes: 4096,
            batches: 2,
            cold_batches: 1,
            plain_bytes: 20_000,
            compacted_bytes: 0,
            appended_rows: 97,
            appended_bytes: 5000,
            appended_batches: 3,
            evicted: Evictions {
                max_age: Evicted {
                    rows: 7,
                    bytes: 904,
                    batches: 1,
                },
                ..Evictions::default()
            },
            oldest_ns: Some(1),
            newest_ns: Some(2),
            window: Some(Duration::from_millis(2500)),
            limited_by: None,
        }
    }

    #[derive(Debug)]
    struct Fixed(Snapshot);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode(encoder)
        }
    }

    fn encoded(snapshot: Snapshot) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(snapshot)));
        MetricsFormat::OpenMetrics.encode(&registry).unwrap()
    }

    fn assert_lines(text: &str, expected: &[&str]) {
        let lines: Vec<&str> = text.lines().collect();
        for line in expected {
            assert!(lines.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    const PROBE: &str = r#"namespace="shop",tracepoint="parent-lookups",table="parent_lookups""#;
    const TABLE: &str = r#"namespace="shop",table="parent_lookups""#;

    #[test]
    fn probe_counters_are_openmetrics_counters_per_tracepoint() {
        let text = encoded(Snapshot {
            report_misses: 0,
            probes: Some(report()),
            tables: Vec::new(),
        });
        let mut expected = vec![
            "# TYPE sonde_events_captured counter".to_owned(),
            "# HELP sonde_events_captured Events stored as rows of the Tracepoint's table."
                .to_owned(),
            "# TYPE sonde_events_lost counter".to_owned(),
            "# TYPE sonde_probes gauge".to_owned(),
            r#"sonde_probes{state="attached"} 1"#.to_owned(),
            r#"sonde_probes{state="idle"} 0"#.to_owned(),
            r#"sonde_probes{state="failed"} 1"#.to_owned(),
            r#"sonde_probes{state="unsupported"} 0"#.to_owned(),
            "sonde_unattributed_records_total 4".to_owned(),
        ];
        for (name, value) in [
            ("events_matched", 5000),
            ("events_captured", 97),
            ("events_filtered", 11),
            ("events_sampled_out", 7),
            ("field_read_errors", 3),
        ] {
            expected.push(format!("sonde_{name}_total{{{PROBE}}} {value}"));
        }
        for (stage, value) in [
            ("rate_limit", 4890),
            ("ring_buffer_full", 2),
            ("missing_entry", 0),
            ("decode", 1),
        ] {
            expected.push(format!(
                r#"sonde_events_lost_total{{{PROBE},stage="{stage}"}} {value}"#
            ));
        }
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_lines(&text, &expected);
        // A Tracepoint that is not attached has a state, not counters.
        assert!(!text.contains(r#"tracepoint="broken""#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn table_sizes_are_gauges_with_units_and_evictions_counters_by_reason() {
        let text = encoded(Snapshot {
            report_misses: 0,
            probes: None,
            tables: vec![table()],
        });
        let expected = [
            "# TYPE sonde_table_held_rows gauge".to_owned(),
            format!("sonde_table_held_rows{{{TABLE}}} 90"),
            "# TYPE sonde_table_held_bytes gauge".to_owned(),
            "# UNIT sonde_table_held_bytes bytes".to_owned(),
            format!("sonde_table_held_bytes{{{TABLE}}} 4096"),
            format!("sonde_table_held_uncompressed_bytes{{{TABLE}}} 20000"),
            "# TYPE sonde_table_appended_rows counter".to_owned(),
            format!("sonde_table_appended_rows_total{{{TABLE}}} 97"),
            "# UNIT sonde_table_appended_bytes bytes".to_owned(),
            format!("sonde_table_appended_bytes_total{{{TABLE}}} 5000"),
            format!(r#"sonde_table_evicted_rows_total{{{TABLE},reason="max_age"}} 7"#),
            format!(r#"sonde_table_evicted_rows_total{{{TABLE},reason="max_bytes"}} 0"#),
            format!(r#"sonde_table_evicted_bytes_total{{{TABLE},reason="max_age"}} 904"#),
            format!(r#"sonde_table_evicted_bytes_total{{{TABLE},reason="budget"}} 0"#),
            "# TYPE sonde_table_retention_window_seconds gauge".to_owned(),
            "# UNIT sonde_table_retention_window_seconds seconds".to_owned(),
            format!("sonde_table_retention_window_seconds{{{TABLE}}} 2.5"),
        ];
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_lines(&text, &expected);
        // Without the engine's answer, probe metrics are left out, not zeroed.
        assert!(!text.contains("sonde_probes"), "{text}");
        assert!(!text.contains("sonde_events_"), "{text}");
    }

    fn event_metrics() -> Vec<MetricSample> {
        use probe_capture::derived_metrics::SeriesSample;
        vec![
            MetricSample {
                name: "lookup_latency".to_owned(),
                kind: MetricKind::Histogram,
                label_names: vec!["comm".to_owned(), "le".to_owned()],
                buckets: vec![10.0, 100.0],
                series: vec![SeriesSample {
                    labels: vec!["cat".to_owned(), "7".to_owned()],
                    counts: vec![2, 0, 1],
                    sum: 1013.0,
                }],
                rejected_series: 0,
                negative_values: 0,
            },
            MetricSample {
                name: "lookups".to_owned(),
                kind: MetricKind::Counter,
                label_names: vec!["namespace".to_owned(), "path".to_owned()],
                buckets: Vec::new(),
                series: vec![SeriesSample {
                    labels: vec![String::new(), "/a\"b".to_owned()],
                    counts: vec![5],
                    sum: 0.0,
                }],
                rejected_series: 3,
                negative_values: 1,
            },
        ]
    }

    #[test]
    fn tracepoint_metrics_keep_their_names_and_sonde_counts_their_series() {
        let mut report = report();
        report.probes[0].metrics = event_metrics();
        let text = encoded(Snapshot {
            report_misses: 0,
            probes: Some(report),
            tables: Vec::new(),
        });
        let source = r#"namespace="shop",tracepoint="parent-lookups""#;
        let of = |metric: &str| format!(r#"{{{source},metric="{metric}"}}"#);
        let expected = [
            "# TYPE lookup_latency histogram".to_owned(),
            format!(r#"lookup_latency_sum{{{source},comm="cat",column_le="7"}} 1013.0"#),
            format!(r#"lookup_latency_count{{{source},comm="cat",column_le="7"}} 3"#),
            format!(r#"lookup_latency_bucket{{le="10.0",{source},comm="cat",column_le="7"}} 2"#),
            format!(r#"lookup_latency_bucket{{le="100.0",{source},comm="cat",column_le="7"}} 2"#),
            format!(r#"lookup_latency_bucket{{le="+Inf",{source},comm="cat",column_le="7"}} 3"#),
            "# TYPE lookups counter".to_owned(),
            // A label column named `namespace` keeps its name; Sonde's moves.
            r#"lookups_total{sonde_namespace="shop",tracepoint="parent-lookups",namespace="",path="/a\"b"} 5"#.to_owned(),
            format!("sonde_metric_series{} 1", of("lookups")),
            format!("sonde_metric_series_rejected_total{} 3", of("lookups")),
            format!("sonde_metric_series_rejected_total{} 0", of("lookup_latency")),
            format!("sonde_metric_negative_values_total{} 1", of("lookups")),
            "# TYPE sonde_ring_buffer_used_bytes gauge".to_owned(),
            "sonde_ring_buffer_used_bytes 4096".to_owned(),
            "sonde_ring_buffer_size_bytes 1048576".to_owned(),
        ];
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_lines(&text, &expected);
        assert!(!text.contains("sonde_metric_conflicts{"), "{text}");
    }

    #[test]
    fn a_name_used_with_two_kinds_is_served_once_and_the_other_reported() {
        let mut report = report();
        report.probes[0].metrics = event_metrics();
        let mut other = report.probes[0].clone();
        other.tracepoint = "other".to_owned();
        other.state = ProbeState::Attached;
        other.metrics[1].name = "lookup_latency".to_owned();
        other.metrics.truncate(2);
        other.metrics.remove(0);
        report.probes.push(other);
        let text = encoded(Snapshot {
            report_misses: 0,
            probes: Some(report),
            tables: Vec::new(),
        });
        assert_eq!(text.matches("# TYPE lookup_latency ").count(), 1, "{text}");
        assert_lines(
            &text,
            &[
                r#"sonde_metric_conflicts{namespace="shop",tracepoint="other",metric="lookup_latency"} 1"#,
            ],
        );
    }

    #[test]
    fn clients_without_openmetrics_get_the_prometheus_text_format() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(Snapshot {
            probes: Some(report()),
            report_misses: 0,
            tables: vec![table()],
        })));
        let text = MetricsFormat::PrometheusText.encode(&registry).unwrap();
        assert_lines(
            &text,
            &[
                "# TYPE sonde_events_captured_total counter",
                &format!("sonde_events_captured_total{{{PROBE}}} 97"),
                "# TYPE sonde_table_held_bytes gauge",
            ],
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[tokio::test]
    async fn the_endpoint_asks_the_engine_owner_at_scrape_time() {
        let waker = Waker::new().unwrap();
        let (client, requests) = report_channel(waker, Duration::from_secs(30));
        // The drive loop's part: answer once a scrape waits.
        let answered = std::thread::spawn(move || {
            let mut answered = false;
            while !answered {
                requests.answer(|| {
                    answered = true;
                    report()
                });
                std::thread::yield_now();
            }
        });
        let store = TableStore::new(probe_store::StoreConfig::default());
        let registry = agent_registry(client, Some(store));
        let server = bind("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
            .await
            .unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\
                  Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        answered.join().unwrap();

        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "content-type: {}",
                MetricsFormat::OpenMetrics
                    .content_type()
                    .to_ascii_lowercase()
            )),
            "{head}"
        );
        assert!(
            body.contains(&format!("sonde_events_captured_total{{{PROBE}}} 97")),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        stop.send(()).unwrap();
        serving.await.unwrap().unwrap();
    }
}
