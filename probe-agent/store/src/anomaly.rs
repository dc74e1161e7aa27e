//! Anomaly detection on rollups: each rollup that declares `detect` watches
//! the series its rows form (one per group and column) and judges every new
//! interval as it is rolled up.
//!
//! The statistics come from the `augurs` crates:
//! - `levelShift`: Bayesian online changepoint detection over the group's
//!   series since its last level change, standardized by that level's median
//!   and median absolute deviation. A changepoint among the two newest points
//!   whose points all lie outside the band is a level shift; the series then
//!   starts a new level (and a new warm-up).
//! - `forecastBand`: an exponential smoothing forecast (AutoETS; MSTL with
//!   an ETS trend once two seasons are held) of the next value from the
//!   group's history; a value outside the forecast band is an anomaly.
//! - `siblings`: the median absolute deviation across the recent values of
//!   groups that differ only in the `across` column (a workload's pods); a
//!   group whose newest value is outlying is an anomaly.
//!
//! A series is flagged when it enters the anomalous state and not again
//! until it has left it, so one slow pod is one anomaly, not one per
//! interval. The number of series tracked is bounded; series beyond the
//! bound are not judged and counted.
//!
//! Sensitivity (a fraction in (0, 1)) maps to a threshold in robust
//! standard deviations the way `augurs`' MAD detector maps it, from 7.9 at
//! 0 to 0.84 at 1: 0.25 gives 4.39, 0.5 gives 2.92.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use arrow_array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt32Array,
    cast::AsArray, types::TimestampNanosecondType,
};
use arrow_cast::{
    cast,
    display::{ArrayFormatter, FormatOptions},
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow_select::take::take;
use augurs::{
    Fit, Predict,
    changepoint::{Detector as _, NormalGammaDetector},
    ets::AutoETS,
    mstl::MSTLModel,
    outlier::{MADDetector, OutlierDetector},
};
use crds::DetectionMethod;

use super::TIME_COLUMN;

/// Most series (group × detection) one rollup engine tracks; series beyond
/// it are not judged and counted in [`AnomalyStats::series_capped`].
pub const MAX_SERIES: usize = 2000;
/// Most recent intervals of each sibling compared with the others.
const SIBLING_WINDOW: usize = 30;
/// Siblings needed for a comparison to mean something.
const MIN_SIBLINGS: usize = 3;
/// History kept per series for levelShift, and for forecastBand without a
/// season.
const HISTORY: usize = 64;
/// Smallest scale a series' spread is taken to have, as a fraction of its
/// level: a perfectly steady series would otherwise flag any change at all.
const MIN_RELATIVE_SCALE: f64 = 0.01;
/// z of the 95% interval the forecast is asked for; its width gives the
/// forecast's standard deviation, scaled to the sensitivity's threshold.
const Z_95: f64 = 1.959_963_985;
/// Scale factor from a median absolute deviation to a normal standard
/// deviation.
const MAD_K: f64 = 1.4826;

/// One detection of a rollup, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionSpec {
    /// Output column of the rollup watched.
    pub column: String,
    pub method: DetectionMethod,
    /// In (0, 1); higher flags smaller deviations.
    pub sensitivity: f64,
    /// Points of history a series needs before it is judged.
    pub warm_up: usize,
    /// siblings: the groupBy column that tells siblings apart.
    pub across: Option<String>,
    /// forecastBand: season length in intervals.
    pub season: Option<usize>,
}

// The sensitivity comes from an integer percentage, never NaN, so equality
// is reflexive: rollups compare specs to keep their state across updates.
impl Eq for DetectionSpec {}

impl DetectionSpec {
    /// The threshold in robust standard deviations.
    pub fn threshold(&self) -> f64 {
        threshold(self.sensitivity)
    }

    fn history(&self) -> usize {
        let season = self.season.map_or(0, |s| 2 * s + 1);
        HISTORY.max(season).max(self.warm_up + 2)
    }
}

/// The threshold, in robust standard deviations, of a sensitivity in (0, 1).
pub fn threshold(sensitivity: f64) -> f64 {
    // The same scale as augurs' MAD detector: 0.8 to 1 - 1e-16 percentiles.
    const MAX_T: f64 = 7.941_444_487;
    const MIN_T: f64 = 0.841_621_234;
    MAX_T - (MAX_T - MIN_T) * sensitivity.clamp(0.0, 1.0).sqrt()
}

/// One anomaly, as written to the anomalies table.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    /// Start of the anomalous interval.
    pub time_ns: i64,
    /// The group: one value per groupBy column (display text, `None` for
    /// null).
    pub group: Vec<Option<String>>,
    /// Row of the rollup batch it was found in (for the group's columns).
    pub row: usize,
    pub column: String,
    pub method: DetectionMethod,
    pub value: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    /// Distance from expected in robust standard deviations.
    pub score: f64,
}

/// A series' current score, for the gauge.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesScore {
    pub column: String,
    pub method: DetectionMethod,
    /// `column=value` pairs of the group, comma-separated.
    pub group: String,
    pub score: f64,
}

/// Counters of one rollup's detection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnomalyStats {
    /// Anomalies flagged, by (column, method).
    pub anomalies: BTreeMap<(String, DetectionMethod), u64>,
    /// Series not tracked because [`MAX_SERIES`] was reached.
    pub series_capped: u64,
    /// Series judgements a model could not make (a fit that failed, a
    /// spread of zero).
    pub model_failures: u64,
    /// The current score of every series tracked.
    pub scores: Vec<SeriesScore>,
}

/// One series: its recent points and whether it is flagged now.
#[derive(Debug, Default)]
struct Series {
    /// (window start, value), oldest first.
    points: VecDeque<(i64, f64)>,
    flagged: bool,
    score: f64,
}

impl Series {
    fn push(&mut self, time: i64, value: f64, capacity: usize) {
        if self.points.len() == capacity {
            self.points.pop_front();
        }
        self.points.push_back((time, value));
    }

    fn values(&self) -> Vec<f64> {
        self.points.iter().map(|&(_, v)| v).collect()
    }

    fn last_time(&self) -> i64 {
        self.points.back().map_or(i64::MIN, |&(t, _)| t)
    }
}

/// What a model concluded about a series' newest point.
struct Judgement {
    anomalous: bool,
    expected: f64,
    lower: f64,
    upper: f64,
    score: f64,
}

/// The detection state of one rollup.
#[derive(Debug)]
pub struct RollupDetector {
    specs: Vec<DetectionSpec>,
    group_by: Vec<String>,
    interval_ns: i64,
    /// Per detection: series by group.
    series: Vec<HashMap<Vec<Option<String>>, Series>>,
    stats: AnomalyStats,
}

impl RollupDetector {
    pub fn new(specs: Vec<DetectionSpec>, group_by: Vec<String>, interval: Duration) -> Self {
        let series = specs.iter().map(|_| HashMap::new()).collect();
        Self {
            specs,
            group_by,
            interval_ns: i64::try_from(interval.as_nanos())
                .unwrap_or(i64::MAX)
                .max(1),
            series,
            stats: AnomalyStats::default(),
        }
    }

    pub fn specs(&self) -> &[DetectionSpec] {
        &self.specs
    }

    /// Counters and current scores.
    pub fn stats(&self) -> AnomalyStats {
        let mut stats = self.stats.clone();
        stats.scores = self
            .specs
            .iter()
            .zip(&self.series)
            .flat_map(|(spec, series)| {
                series.iter().map(|(group, s)| SeriesScore {
                    column: spec.column.clone(),
                    method: spec.method,
                    group: describe_group(&self.group_by, group),
                    score: s.score,
                })
            })
            .collect();
        stats
    }

    fn tracked(&self) -> usize {
        self.series.iter().map(HashMap::len).sum()
    }

    /// Judges the rows of a rollup batch (time_, node, groupBy columns,
    /// aggregates; sorted by window) and returns the anomalies among them.
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<Vec<Anomaly>, ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let times = batch
            .column_by_name(TIME_COLUMN)
            .ok_or_else(|| missing(TIME_COLUMN))?
            .as_primitive::<TimestampNanosecondType>()
            .clone();
        let formatters: Vec<ArrayFormatter<'_>> = self
            .group_by
            .iter()
            .map(|c| {
                let column = batch.column_by_name(c).ok_or_else(|| missing(c))?;
                ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
            })
            .collect::<Result<_, _>>()?;
        let group_columns: Vec<&ArrayRef> = self
            .group_by
            .iter()
            .filter_map(|c| batch.column_by_name(c))
            .collect();
        let groups: Vec<Vec<Option<String>>> = (0..batch.num_rows())
            .map(|row| {
                formatters
                    .iter()
                    .zip(&group_columns)
                    .map(|(f, column)| column.is_valid(row).then(|| f.value(row).to_string()))
                    .collect()
            })
            .collect();
        // Rows by window, in window order.
        let mut windows: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            windows.entry(times.value(row)).or_default().push(row);
        }
        let mut anomalies = Vec::new();
        for d in 0..self.specs.len() {
            let column = batch
                .column_by_name(&self.specs[d].column)
                .ok_or_else(|| missing(&self.specs[d].column))?;
            let values = cast(column.as_ref(), &DataType::Float64)?;
            let values = values.as_primitive::<arrow_array::types::Float64Type>();
            for (&time, rows) in &windows {
                let points: Vec<(usize, f64)> = rows
                    .iter()
                    .filter(|&&row| values.is_valid(row) && values.value(row).is_finite())
                    .map(|&row| (row, values.value(row)))
                    .collect();
                match self.specs[d].method {
                    DetectionMethod::Siblings => {
                        self.observe_siblings(d, time, &points, &groups, &mut anomalies)
                    }
                    _ => self.observe_own(d, time, &points, &groups, &mut anomalies),
                }
            }
        }
        self.forget_stale(windows.keys().next_back().copied().unwrap_or(i64::MIN));
        for a in &anomalies {
            *self
                .stats
                .anomalies
                .entry((a.column.clone(), a.method))
                .or_default() += 1;
        }
        Ok(anomalies)
    }

    /// The series of detection `d` for `group`, created if there is room.
    fn series_mut(&mut self, d: usize, group: &[Option<String>]) -> Option<&mut Series> {
        if !self.series[d].contains_key(group) {
            if self.tracked() >= MAX_SERIES {
                self.stats.series_capped += 1;
                return None;
            }
            self.series[d].insert(group.to_vec(), Series::default());
        }
        self.series[d].get_mut(group)
    }

    /// levelShift and forecastBand: each group against its own history.
    fn observe_own(
        &mut self,
        d: usize,
        time: i64,
        points: &[(usize, f64)],
        groups: &[Vec<Option<String>>],
        anomalies: &mut Vec<Anomaly>,
    ) {
        let spec = self.specs[d].clone();
        let capacity = spec.history();
        for &(row, value) in points {
            let group = &groups[row];
            let Some(series) = self.series_mut(d, group) else {
                continue;
            };
            if series.last_time() >= time {
                // Already seen (a window rolled up again): judged once only.
                continue;
            }
            let history = series.values();
            series.push(time, value, capacity);
            if history.len() < spec.warm_up {
                continue;
            }
            let judgement = match spec.method {
                DetectionMethod::LevelShift => level_shift(&spec, series),
                _ => forecast_band(&spec, &history, value),
            };
            let Some(judgement) = judgement else {
                self.stats.model_failures += 1;
                continue;
            };
            series.score = judgement.score;
            if judgement.anomalous && !series.flagged {
                anomalies.push(Anomaly {
                    time_ns: time,
                    group: group.clone(),
                    row,
                    column: spec.column.clone(),
                    method: spec.method,
                    value,
                    expected: judgement.expected,
                    lower: judgement.lower,
                    upper: judgement.upper,
                    score: judgement.score,
                });
            }
            series.flagged = judgement.anomalous;
            if judgement.anomalous && spec.method == DetectionMethod::LevelShift {
                // A new level: judged against itself after a new warm-up.
                let keep = series
                    .points
                    .iter()
                    .rev()
                    .take_while(|&&(_, v)| outside(v, &judgement))
                    .count();
                let drop = series.points.len() - keep;
                series.points.drain(..drop);
                series.flagged = false;
            }
        }
    }

    /// siblings: each group against the groups that differ from it only in
    /// the `across` column.
    fn observe_siblings(
        &mut self,
        d: usize,
        time: i64,
        points: &[(usize, f64)],
        groups: &[Vec<Option<String>>],
        anomalies: &mut Vec<Anomaly>,
    ) {
        let spec = self.specs[d].clone();
        let Some(across) = spec
            .across
            .as_ref()
            .and_then(|a| self.group_by.iter().position(|c| c == a))
        else {
            return;
        };
        let capacity = spec.warm_up.max(SIBLING_WINDOW);
        // Sibling sets: groups without the across column.
        let mut sets: BTreeMap<Vec<Option<String>>, Vec<(usize, f64)>> = BTreeMap::new();
        for &(row, value) in points {
            let mut set = groups[row].clone();
            set.remove(across);
            sets.entry(set).or_default().push((row, value));
            if let Some(series) = self.series_mut(d, &groups[row])
                && series.last_time() < time
            {
                series.push(time, value, capacity);
            }
        }
        for members in sets.values() {
            // Members past their warm-up, over the recent intervals all of
            // them have (the spread of many points is a steadier scale).
            let ready: Vec<(usize, Vec<f64>)> = members
                .iter()
                .filter_map(|&(row, _)| {
                    let series = self.series[d].get(&groups[row])?;
                    (series.points.len() >= spec.warm_up).then(|| (row, series.values()))
                })
                .collect();
            if ready.len() < MIN_SIBLINGS {
                continue;
            }
            let window = ready
                .iter()
                .map(|(_, v)| v.len())
                .min()
                .unwrap_or(0)
                .min(SIBLING_WINDOW);
            let judged: Vec<(usize, Vec<f64>)> = ready
                .into_iter()
                .map(|(row, v)| (row, v[v.len() - window..].to_vec()))
                .collect();
            let slices: Vec<&[f64]> = judged.iter().map(|(_, v)| v.as_slice()).collect();
            let detector = MADDetector::with_threshold(spec.threshold());
            let output = match detector
                .preprocess(&slices)
                .and_then(|data| detector.detect(&data))
            {
                Ok(output) => output,
                Err(_) => {
                    // A spread of zero on one side: the siblings agree
                    // exactly there, so there is no scale to judge by.
                    self.stats.model_failures += 1;
                    continue;
                }
            };
            let band = output.cluster_band.as_ref();
            let lower = band.and_then(|b| b.min.last().copied()).unwrap_or(f64::NAN);
            let upper = band.and_then(|b| b.max.last().copied()).unwrap_or(f64::NAN);
            let expected = median(slices.iter().flat_map(|s| s.iter().copied()).collect());
            for ((row, values), result) in judged.iter().zip(&output.series_results) {
                let score = result.scores.last().copied().unwrap_or(0.0);
                let score = if score.is_finite() { score } else { 0.0 };
                let anomalous = score > spec.threshold();
                let Some(series) = self.series[d].get_mut(&groups[*row]) else {
                    continue;
                };
                series.score = score;
                if anomalous && !series.flagged {
                    anomalies.push(Anomaly {
                        time_ns: time,
                        group: groups[*row].clone(),
                        row: *row,
                        column: spec.column.clone(),
                        method: spec.method,
                        value: values.last().copied().unwrap_or(f64::NAN),
                        expected,
                        lower,
                        upper,
                        score,
                    });
                }
                series.flagged = anomalous;
            }
        }
    }

    /// Drops series not seen for as long as their history spans: pods come
    /// and go, and their series must not hold the bound forever.
    fn forget_stale(&mut self, newest: i64) {
        for (spec, series) in self.specs.iter().zip(&mut self.series) {
            let horizon = self
                .interval_ns
                .saturating_mul(i64::try_from(spec.history()).unwrap_or(i64::MAX));
            series.retain(|_, s| s.last_time() >= newest.saturating_sub(horizon));
        }
    }
}

fn missing(column: &str) -> ArrowError {
    ArrowError::SchemaError(format!("rollup batch has no column {column}"))
}

fn outside(value: f64, judgement: &Judgement) -> bool {
    value < judgement.lower || value > judgement.upper
}

/// `column=value` pairs, comma-separated.
pub fn describe_group(group_by: &[String], group: &[Option<String>]) -> String {
    group_by
        .iter()
        .zip(group)
        .map(|(c, v)| format!("{c}={}", v.as_deref().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    }
}

/// A level's centre and robust spread (floored, see [`MIN_RELATIVE_SCALE`]).
fn level_of(values: &[f64]) -> (f64, f64) {
    let centre = median(values.to_vec());
    let mad = median(values.iter().map(|v| (v - centre).abs()).collect());
    let scale = (MAD_K * mad)
        .max(centre.abs() * MIN_RELATIVE_SCALE)
        .max(f64::MIN_POSITIVE);
    (centre, scale)
}

/// levelShift on a series whose newest point was just pushed.
fn level_shift(spec: &DetectionSpec, series: &Series) -> Option<Judgement> {
    let values = series.values();
    let n = values.len();
    // The level is judged by the points before the newest three, which may
    // already belong to a new one.
    let base = &values[..n.saturating_sub(3).max(spec.warm_up.min(n - 1)).max(1)];
    let (centre, scale) = level_of(base);
    let standardized: Vec<f64> = values.iter().map(|v| (v - centre) / scale).collect();
    let mut detector = NormalGammaDetector::default();
    let changepoints = detector.detect_changepoints(&standardized);
    let threshold = spec.threshold();
    let (lower, upper) = (centre - threshold * scale, centre + threshold * scale);
    let newest = values[n - 1];
    let score = (newest - centre).abs() / scale;
    // The run of points since the latest changepoint, if it is recent. A
    // changepoint is reported as the last index of the old run (0 alone: no
    // change).
    let shifted = changepoints
        .last()
        .map(|&c| c + 1)
        .filter(|&start| start > 1 && start < n && start + 3 >= n)
        .is_some_and(|start| {
            let run = &values[start..];
            let above = run.iter().all(|&v| v > upper);
            let below = run.iter().all(|&v| v < lower);
            above || below
        });
    Some(Judgement {
        anomalous: shifted,
        expected: centre,
        lower,
        upper,
        score,
    })
}

/// forecastBand: the newest value against the band forecast from history.
fn forecast_band(spec: &DetectionSpec, history: &[f64], value: f64) -> Option<Judgement> {
    let threshold = spec.threshold();
    let forecast = match spec.season {
        Some(season) if history.len() >= 2 * season => {
            let model = MSTLModel::new(
                vec![season],
                AutoETS::new(1, "AZN").ok()?.into_trend_model(),
            );
            model.fit(history).ok()?.predict(1, 0.95).ok()?
        }
        _ => AutoETS::new(1, "AZN")
            .ok()?
            .fit(history)
            .ok()?
            .predict(1, 0.95)
            .ok()?,
    };
    let expected = *forecast.point.first()?;
    let intervals = forecast.intervals?;
    let half_width = (intervals.upper.first()? - intervals.lower.first()?) / 2.0;
    // The forecast's standard deviation, floored like a level's spread.
    let sigma = (half_width / Z_95)
        .max(expected.abs() * MIN_RELATIVE_SCALE)
        .max(f64::MIN_POSITIVE);
    if !expected.is_finite() || !sigma.is_finite() {
        return None;
    }
    let (lower, upper) = (expected - threshold * sigma, expected + threshold * sigma);
    Some(Judgement {
        anomalous: value < lower || value > upper,
        expected,
        lower,
        upper,
        score: (value - expected).abs() / sigma,
    })
}

/// The anomalies table's schema: time_, node, the rollup's groupBy
/// columns (as typed in the rollup), then what was found.
pub fn anomalies_schema(rollup: &Schema, group_by: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("node", DataType::Utf8, false),
    ];
    fields.extend(
        group_by
            .iter()
            .filter_map(|c| rollup.field_with_name(c).ok())
            .map(|f| f.clone().with_nullable(true)),
    );
    fields.extend([
        Field::new("column", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("expected", DataType::Float64, true),
        Field::new("lower", DataType::Float64, true),
        Field::new("upper", DataType::Float64, true),
        Field::new("score", DataType::Float64, false),
        Field::new("method", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// The anomalies as rows of [`anomalies_schema`]; group columns are taken
/// from the rollup batch they were found in.
pub fn anomalies_batch(
    schema: &SchemaRef,
    rollup: &RecordBatch,
    node: &str,
    group_by: &[String],
    anomalies: &[Anomaly],
) -> Result<RecordBatch, ArrowError> {
    let nan = |v: f64| (!v.is_nan()).then_some(v);
    let rows = UInt32Array::from_iter_values(anomalies.iter().map(|a| a.row as u32));
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampNanosecondArray::from_iter_values(anomalies.iter().map(|a| a.time_ns))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            node,
            anomalies.len(),
        ))),
    ];
    for c in group_by {
        let column = rollup.column_by_name(c).ok_or_else(|| missing(c))?;
        columns.push(take(column.as_ref(), &rows, None)?);
    }
    columns.push(Arc::new(StringArray::from_iter_values(
        anomalies.iter().map(|a| a.column.as_str()),
    )));
    columns.push(Arc::new(Float64Array::from_iter_values(
        anomalies.iter().map(|a| a.value),
    )));
    for pick in [
        |a: &Anomaly| a.expected,
        |a: &Anomaly| a.lower,
        |a: &Anomaly| a.upper,
    ] {
        columns.push(Arc::new(Float64Array::from_iter(
            anomalies.iter().map(|a| nan(pick(a))),
        )));
    }
    columns.push(Arc::new(Float64Array::from_iter_values(
        anomalies.iter().map(|a| a.score),
    )));
    columns.push(Arc::new(StringArray::from_iter_values(
        anomalies.iter().map(|a| a.method.as_str()),
    )));
    RecordBatch::try_new(Arc::clone(schema), columns)
}

#[cfg(test)]
mod tests;
