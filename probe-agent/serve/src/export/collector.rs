//! [`ExportCollector`]: the Exports' metric families, read at scrape time
//! from [`Exports::reports`]. Registered beside the agent's own collector:
//!
//! - `sonde_export_rows_total{namespace,export,result}`: rows sent
//!   (`result="sent"`) and rows given up on (`result="dropped"`);
//! - `sonde_export_dropped_rows_total{namespace,export,reason}`: the
//!   dropped rows by reason (`buffer_full`, `rejected`, `unmappable`,
//!   `fell_behind`, `removed`);
//! - `sonde_export_failed_requests_total{namespace,export}`: requests that
//!   failed, retried or not;
//! - `sonde_export_buffered_rows{namespace,export}`: rows waiting now;
//! - `sonde_export_last_success_timestamp_seconds{namespace,export}`.

use std::time::UNIX_EPOCH;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{ExportReport, Exports};

/// Reads every Export's report when scraped.
#[derive(Debug)]
pub struct ExportCollector {
    exports: Exports,
}

impl ExportCollector {
    pub fn new(exports: Exports) -> Self {
        Self { exports }
    }

    pub fn register(self, registry: &mut Registry) {
        registry.register_collector(Box::new(self));
    }
}

fn labels(report: &ExportReport) -> [(&'static str, String); 2] {
    [
        ("namespace", report.namespace.clone()),
        ("export", report.name.clone()),
    ]
}

fn family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ExportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports = self.exports.reports();
        let encoder = &mut encoder;
        family(
            encoder,
            "export_rows",
            "Rows of an Export sent to its back end or given up on.",
            MetricType::Counter,
            reports.iter().flat_map(|r| {
                let [namespace, export] = labels(r);
                [("sent", r.rows_exported), ("dropped", r.rows_dropped())].map(
                    move |(result, rows)| {
                        (
                            [
                                namespace.clone(),
                                export.clone(),
                                ("result", result.to_owned()),
                            ],
                            ConstCounter::new(rows),
                        )
                    },
                )
            }),
        )?;
        family(
            encoder,
            "export_dropped_rows",
            "Rows an Export gave up on, by reason.",
            MetricType::Counter,
            reports.iter().flat_map(|r| {
                let [namespace, export] = labels(r);
                r.dropped.by_reason().map(move |(reason, rows)| {
                    (
                        [
                            namespace.clone(),
                            export.clone(),
                            ("reason", reason.to_owned()),
                        ],
                        ConstCounter::new(rows),
                    )
                })
            }),
        )?;
        family(
            encoder,
            "export_failed_requests",
            "OTLP requests of an Export that failed, retried or not.",
            MetricType::Counter,
            reports
                .iter()
                .map(|r| (labels(r), ConstCounter::new(r.failed_requests))),
        )?;
        family(
            encoder,
            "export_buffered_rows",
            "Rows an Export holds now, waiting or being sent.",
            MetricType::Gauge,
            reports
                .iter()
                .map(|r| (labels(r), ConstGauge::new(r.rows_buffered as i64))),
        )?;
        family(
            encoder,
            "export_last_success_timestamp_seconds",
            "When an Export last delivered a request, Unix time.",
            MetricType::Gauge,
            reports.iter().filter_map(|r| {
                let at = r.last_success?.duration_since(UNIX_EPOCH).ok()?;
                Some((labels(r), ConstGauge::new(at.as_secs_f64())))
            }),
        )
    }
}
