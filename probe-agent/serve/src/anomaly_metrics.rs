//! [`DetectionCollector`]: the metric families of the rollups' anomaly
//! detection, read at scrape time from the [`DetectionBoard`]. Registered
//! beside the agent's own collector, under the `sonde_` prefix:
//!
//! - `sonde_anomalies_total{namespace,rollup,column,method}`: anomalies
//!   flagged;
//! - `sonde_anomaly_score{namespace,rollup,column,method,group}`: each
//!   series' current score (distance from expected in robust standard
//!   deviations), for at most [`MAX_SCORE_SERIES`] series per scrape;
//! - `sonde_anomaly_score_series_omitted{namespace,rollup}`: series past
//!   that bound this scrape;
//! - `sonde_anomaly_series_capped_total{namespace,rollup}`: series the
//!   detection did not track because its bound was reached;
//! - `sonde_anomaly_model_failures_total{namespace,rollup}`: judgements a
//!   model could not make;
//! - `sonde_kept_windows_total`, `sonde_kept_windows_evicted_total`,
//!   `sonde_kept_rows_total`, `sonde_kept_windows_open`
//!   `{namespace,rollup}`: raw rows kept around anomalies, and the windows
//!   their budget made go.

use probe_store::{DetectionBoard, DetectionReport};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// Most score series one scrape shows, all rollups together.
pub const MAX_SCORE_SERIES: usize = 500;

/// Reads the rollups' detection reports when scraped.
#[derive(Debug)]
pub struct DetectionCollector {
    board: DetectionBoard,
}

impl DetectionCollector {
    pub fn new(board: DetectionBoard) -> Self {
        Self { board }
    }

    pub fn register(self, registry: &mut Registry) {
        registry.register_collector(Box::new(self));
    }
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

/// Reads one counter of a report.
type ReportField = fn(&DetectionReport) -> u64;

fn labels(report: &DetectionReport) -> [(&'static str, String); 2] {
    [
        ("namespace", report.rollup.schema.clone()),
        ("rollup", report.rollup.table.clone()),
    ]
}

impl Collector for DetectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports = self.board.reports();
        let encoder = &mut encoder;
        family(
            encoder,
            "anomalies",
            "Anomalies a rollup's detection flagged, by column and method.",
            MetricType::Counter,
            reports.iter().flat_map(|r| {
                let [namespace, rollup] = labels(r);
                r.stats
                    .anomalies
                    .iter()
                    .map(move |((column, method), count)| {
                        (
                            [
                                namespace.clone(),
                                rollup.clone(),
                                ("column", column.clone()),
                                ("method", method.as_str().to_owned()),
                            ],
                            ConstCounter::new(*count),
                        )
                    })
            }),
        )?;
        let mut shown = 0usize;
        let mut omitted = Vec::with_capacity(reports.len());
        let mut scores = Vec::new();
        for r in &reports {
            let room = MAX_SCORE_SERIES - shown;
            let take = r.stats.scores.len().min(room);
            shown += take;
            omitted.push((labels(r), (r.stats.scores.len() - take) as u64));
            let [namespace, rollup] = labels(r);
            scores.extend(r.stats.scores[..take].iter().map(|s| {
                (
                    [
                        namespace.clone(),
                        rollup.clone(),
                        ("column", s.column.clone()),
                        ("method", s.method.as_str().to_owned()),
                        ("group", s.group.clone()),
                    ],
                    ConstGauge::new(s.score),
                )
            }));
        }
        family(
            encoder,
            "anomaly_score",
            "A series' current score: its distance from the expected value in robust \
             standard deviations.",
            MetricType::Gauge,
            scores,
        )?;
        family(
            encoder,
            "anomaly_score_series_omitted",
            "Series whose score this scrape left out, past its bound on score series.",
            MetricType::Gauge,
            omitted
                .into_iter()
                .map(|(l, n)| (l, ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)))),
        )?;
        let counters: [(&str, &str, ReportField); 5] = [
            (
                "anomaly_series_capped",
                "Series a rollup's detection did not track: its bound on series was reached.",
                |r| r.stats.series_capped,
            ),
            (
                "anomaly_model_failures",
                "Judgements a rollup's detection could not make (a model that did not fit, \
                 siblings without spread).",
                |r| r.stats.model_failures,
            ),
            (
                "kept_windows",
                "Windows of raw rows kept around anomalies past the source's retention.",
                |r| r.kept.map_or(0, |k| k.windows),
            ),
            (
                "kept_windows_evicted",
                "Kept windows dropped, oldest first, because the keepRaw budget was exceeded.",
                |r| r.kept.map_or(0, |k| k.windows_evicted),
            ),
            ("kept_rows", "Raw rows kept around anomalies.", |r| {
                r.kept.map_or(0, |k| k.rows)
            }),
        ];
        for (name, help, value) in counters {
            family(
                encoder,
                name,
                help,
                MetricType::Counter,
                reports
                    .iter()
                    .map(|r| (labels(r), ConstCounter::new(value(r)))),
            )?;
        }
        family(
            encoder,
            "kept_windows_open",
            "Windows around anomalies still collecting raw rows.",
            MetricType::Gauge,
            reports.iter().filter_map(|r| {
                let open = r.kept?.open;
                Some((
                    labels(r),
                    ConstGauge::new(i64::try_from(open).unwrap_or(i64::MAX)),
                ))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use probe_store::{AnomalyStats, KeptStats, SeriesScore, TableName};

    use super::*;

    fn report(series: usize) -> DetectionReport {
        let mut stats = AnomalyStats::default();
        stats
            .anomalies
            .insert(("p99_latency".into(), crds::DetectionMethod::LevelShift), 3);
        stats.series_capped = 2;
        stats.scores = (0..series)
            .map(|i| SeriesScore {
                column: "p99_latency".into(),
                method: crds::DetectionMethod::LevelShift,
                group: format!("pod=web-{i}"),
                score: 1.5,
            })
            .collect();
        DetectionReport {
            rollup: TableName::new("shop", "requests_1m"),
            stats,
            kept: Some(KeptStats {
                windows: 4,
                windows_evicted: 1,
                rows: 800,
                open: 0,
            }),
            recent: Vec::new(),
        }
    }

    fn scrape(board: DetectionBoard) -> String {
        let mut registry = Registry::with_prefix("sonde");
        DetectionCollector::new(board).register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn counts_anomalies_and_kept_windows_and_bounds_score_series() {
        let board = DetectionBoard::default();
        board.publish(vec![report(MAX_SCORE_SERIES + 7)]);
        let text = scrape(board);
        assert!(text.contains(
            "sonde_anomalies_total{namespace=\"shop\",rollup=\"requests_1m\",column=\"p99_latency\",method=\"levelShift\"} 3"
        ), "{text}");
        assert!(text.contains(
            "sonde_kept_windows_evicted_total{namespace=\"shop\",rollup=\"requests_1m\"} 1"
        ));
        assert!(text.contains(
            "sonde_anomaly_series_capped_total{namespace=\"shop\",rollup=\"requests_1m\"} 2"
        ));
        let scores = text
            .lines()
            .filter(|l| l.starts_with("sonde_anomaly_score{"))
            .count();
        assert_eq!(scores, MAX_SCORE_SERIES);
        assert!(text.contains(
            "sonde_anomaly_score_series_omitted{namespace=\"shop\",rollup=\"requests_1m\"} 7"
        ));
    }
}
