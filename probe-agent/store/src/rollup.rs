//! Rollups: summarized history computed from a table at a fixed interval
//! and written to a table of its own, kept much longer than raw rows.
//!
//! [`RollupEngine::tick`] finds every interval window that has ended (plus
//! a grace period for rows still in flight from the capture path), reads
//! the source rows of those windows from a snapshot, and appends one row
//! per window and group to the output table. Windows are aligned to the
//! Unix epoch (`[k·interval, (k+1)·interval)`), so every node cuts the same
//! minutes. A row that reaches the store after its window was rolled up is
//! not counted in it: the grace period is the bound on lateness.
//!
//! Output columns: `time_` (window start, like the CRD says, so rollup
//! tables are aged and queried by time like any other), `node`, the groupBy
//! columns, then one column per aggregate. `count` is a `UInt64`; sum, min,
//! max and percentiles are `Int64`, `UInt64` or `Float64` by the source
//! column's kind. Nulls are skipped, as in SQL; a sum that overflows is
//! null.
//!
//! Percentiles are exact, by nearest rank: p of n sorted values is the
//! value at 1-based rank `ceil(p·n/100)`, i.e. the smallest value with at
//! least p% of the values at or below it.

use std::{collections::VecDeque, ops::Range, sync::Arc, time::Duration};

use arrow_array::{
    Array, ArrayRef, ArrowNumericType, BooleanArray, PrimitiveArray, RecordBatch, StringArray,
    TimestampNanosecondArray, UInt32Array, UInt64Array,
    cast::AsArray,
    types::{
        Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
        TimestampNanosecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
    },
};
use arrow_ord::{
    partition::partition,
    sort::{SortColumn, SortOptions, lexsort_to_indices, sort},
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow_select::{concat::concat_batches, filter::filter_record_batch, take::take};
use crds::{
    AggregateFn, Retention,
    manifest::DEFAULT_NAMESPACE,
    units::{parse_bytes, parse_duration},
};

use super::{
    RetentionPolicy, StoreError, TIME_COLUMN, TableName, TableStore,
    anomaly::{
        Anomaly, AnomalyStats, DetectionSpec, RollupDetector, anomalies_batch, anomalies_schema,
        describe_group,
    },
    kept::{KeepRawSpec, KeptStats, KeptWindows},
};

/// One aggregate column of a rollup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateSpec {
    pub function: AggregateFn,
    /// The numeric input column; for `count`, counts its non-null values
    /// instead of rows.
    pub column: Option<String>,
    /// The output column name.
    pub output: String,
}

/// A rollup, resolved from a Retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollupSpec {
    pub source: TableName,
    pub output: TableName,
    pub interval: Duration,
    pub group_by: Vec<String>,
    pub aggregates: Vec<AggregateSpec>,
    /// How long output rows are kept.
    pub keep: Duration,
    /// Anomaly detection on the output columns.
    pub detect: Vec<DetectionSpec>,
    /// Raw rows kept around anomalies.
    pub keep_raw: Option<KeepRawSpec>,
}

impl RollupSpec {
    /// The rollups of one Retention: its single source table, in its own
    /// namespace.
    pub fn from_retention(retention: &Retention) -> Result<Vec<Self>, StoreError> {
        let name = retention.metadata.name.clone().unwrap_or_default();
        retention
            .spec
            .validate()
            .map_err(|source| StoreError::InvalidRetention {
                name: name.clone(),
                source,
            })?;
        let namespace = retention
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE);
        let Some(source) = retention.spec.tables.first() else {
            return Ok(Vec::new());
        };
        let duration = |path: String, value: &str| {
            parse_duration(value).map_err(|source| StoreError::BadDuration {
                path,
                value: value.to_owned(),
                source,
            })
        };
        retention
            .spec
            .rollups
            .iter()
            .enumerate()
            .map(|(i, rollup)| {
                Ok(Self {
                    source: TableName::new(namespace, source),
                    output: TableName::new(namespace, &rollup.name),
                    interval: duration(format!("spec.rollups[{i}].interval"), &rollup.interval)?,
                    group_by: rollup.group_by.clone(),
                    aggregates: rollup
                        .aggregates
                        .iter()
                        .map(|a| AggregateSpec {
                            function: a.function,
                            column: a.column.clone(),
                            output: a.output_name(),
                        })
                        .collect(),
                    keep: duration(format!("spec.rollups[{i}].keep"), &rollup.keep)?,
                    detect: rollup
                        .detect
                        .iter()
                        .enumerate()
                        .map(|(j, d)| {
                            let season = match &d.season {
                                Some(season) => Some(duration(
                                    format!("spec.rollups[{i}].detect[{j}].season"),
                                    season,
                                )?),
                                None => None,
                            };
                            let interval = parse_duration(&rollup.interval)
                                .unwrap_or(Duration::from_secs(60))
                                .as_nanos()
                                .max(1);
                            Ok(DetectionSpec {
                                column: d.column.clone(),
                                method: d.method,
                                sensitivity: d.sensitivity_fraction(),
                                warm_up: d.warm_up_intervals() as usize,
                                across: d.across.clone(),
                                season: season
                                    .map(|s| usize::try_from(s.as_nanos() / interval).unwrap_or(1)),
                            })
                        })
                        .collect::<Result<_, StoreError>>()?,
                    keep_raw: rollup
                        .keep_raw
                        .as_ref()
                        .map(|k| {
                            Ok::<_, StoreError>(KeepRawSpec {
                                around: duration(
                                    format!("spec.rollups[{i}].keepRaw.around"),
                                    &k.around,
                                )?,
                                // validate() checked it parses.
                                max_bytes: parse_bytes(&k.max_bytes).unwrap_or(0),
                            })
                        })
                        .transpose()?,
                })
            })
            .collect()
    }

    /// The table anomalies are written to.
    pub fn anomalies_table(&self) -> TableName {
        TableName::new(
            &self.output.schema,
            format!("{}{}", self.output.table, crds::ANOMALIES_SUFFIX),
        )
    }

    /// The table raw rows around anomalies are kept in.
    pub fn kept_table(&self) -> TableName {
        TableName::new(
            &self.output.schema,
            format!("{}{}", self.output.table, crds::KEPT_SUFFIX),
        )
    }

    fn interval_ns(&self) -> i64 {
        i64::try_from(self.interval.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

/// Progress of one rollup.
struct RollupState {
    spec: RollupSpec,
    /// Start of the first window not rolled up yet; `None` until the source
    /// has rows, then the window of its oldest row.
    next_start: Option<i64>,
    detector: Option<RollupDetector>,
    kept: Option<KeptWindows>,
    /// The latest anomalies, newest last.
    recent: VecDeque<RecentAnomaly>,
}

impl RollupState {
    fn new(spec: RollupSpec) -> Self {
        let detector = (!spec.detect.is_empty()).then(|| {
            RollupDetector::new(spec.detect.clone(), spec.group_by.clone(), spec.interval)
        });
        let kept = spec
            .keep_raw
            .clone()
            .map(|k| KeptWindows::new(k, spec.kept_table()));
        Self {
            spec,
            next_start: None,
            detector,
            kept,
            recent: VecDeque::new(),
        }
    }

    fn report(&self) -> Option<DetectionReport> {
        let detector = self.detector.as_ref()?;
        Some(DetectionReport {
            rollup: self.spec.output.clone(),
            stats: detector.stats(),
            kept: self.kept.as_ref().map(KeptWindows::stats),
            recent: self.recent.iter().rev().cloned().collect(),
        })
    }
}

/// The latest [`DetectionReport`]s, published by whoever runs the rollups
/// after each tick and read by metrics and status without waiting for a
/// rollup run.
#[derive(Clone, Debug, Default)]
pub struct DetectionBoard(Arc<std::sync::Mutex<Vec<DetectionReport>>>);

impl DetectionBoard {
    pub fn publish(&self, reports: Vec<DetectionReport>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reports;
    }

    pub fn reports(&self) -> Vec<DetectionReport> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How many recent anomalies each rollup remembers for status.
pub const RECENT_ANOMALIES: usize = crds::MAX_RECENT_ANOMALIES;

/// One anomaly as status shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentAnomaly {
    pub time_ns: i64,
    /// `column=value` pairs of the group.
    pub group: String,
    pub column: String,
    pub method: crds::DetectionMethod,
    pub value: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    pub score: f64,
}

/// What one rollup's detection has done: for metrics and status.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionReport {
    pub rollup: TableName,
    pub stats: AnomalyStats,
    pub kept: Option<KeptStats>,
    /// Newest first.
    pub recent: Vec<RecentAnomaly>,
}

/// Computes rollups into the store. Runs off the capture path, on a timer.
pub struct RollupEngine {
    store: TableStore,
    node: String,
    grace: Duration,
    rollups: Vec<RollupState>,
}

impl RollupEngine {
    /// How long after a window ends its rows may still be arriving: the
    /// capture path seals pending rows within a second, plus slack.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

    pub fn new(store: TableStore, node: &str, grace: Duration) -> Self {
        Self {
            store,
            node: node.to_owned(),
            grace,
            rollups: Vec::new(),
        }
    }

    /// Replaces the rollups. A rollup that is unchanged keeps its progress,
    /// so re-applying the same Retentions never rolls a window up twice.
    pub fn set_rollups(&mut self, specs: Vec<RollupSpec>) {
        let mut old = std::mem::take(&mut self.rollups);
        self.rollups = specs
            .into_iter()
            .map(|spec| match old.iter().position(|s| s.spec == spec) {
                // Unchanged: its progress, series and open windows stay.
                Some(i) => old.swap_remove(i),
                None => RollupState::new(spec),
            })
            .collect();
    }

    /// The rollups of every Retention; those that fail validation are left
    /// out and returned as errors.
    pub fn set_retentions(&mut self, retentions: &[Retention]) -> Vec<StoreError> {
        let mut specs = Vec::new();
        let mut errors = Vec::new();
        for retention in retentions {
            match RollupSpec::from_retention(retention) {
                Ok(mut s) => specs.append(&mut s),
                Err(e) => errors.push(e),
            }
        }
        self.set_rollups(specs);
        errors
    }

    pub fn rollups(&self) -> impl Iterator<Item = &RollupSpec> {
        self.rollups.iter().map(|s| &s.spec)
    }

    /// What the detection of each rollup that has any has done.
    pub fn detection_reports(&self) -> Vec<DetectionReport> {
        self.rollups
            .iter()
            .filter_map(RollupState::report)
            .collect()
    }

    /// Rolls up every window that ended at least the grace period before
    /// `now_ns` (Unix-epoch nanoseconds). Returns, per rollup, the rows
    /// written or why it could not run; a failed rollup retries the same
    /// windows next tick.
    pub fn tick(&mut self, now_ns: i64) -> Vec<(TableName, Result<usize, StoreError>)> {
        let grace = i64::try_from(self.grace.as_nanos()).unwrap_or(i64::MAX);
        let default_bytes = self.store.config().default_policy.max_bytes;
        self.rollups
            .iter_mut()
            .map(|state| {
                let result = run_rollup(
                    &self.store,
                    &self.node,
                    state,
                    now_ns.saturating_sub(grace),
                    default_bytes,
                );
                (state.spec.output.clone(), result)
            })
            .collect()
    }
}

/// Where a rollup's inputs are in the source schema.
struct Columns {
    time: usize,
    group_by: Vec<usize>,
    /// Per aggregate: its input column, if any.
    aggregates: Vec<Option<usize>>,
}

fn resolve(spec: &RollupSpec, schema: &Schema) -> Result<Columns, StoreError> {
    let index = |column: &str| {
        schema
            .index_of(column)
            .map_err(|_| StoreError::UnknownColumn {
                table: spec.source.clone(),
                column: column.to_owned(),
            })
    };
    let time = index(TIME_COLUMN)?;
    if !matches!(
        schema.field(time).data_type(),
        DataType::Timestamp(TimeUnit::Nanosecond, _)
    ) {
        return Err(StoreError::NotNumeric {
            table: spec.source.clone(),
            column: TIME_COLUMN.to_owned(),
            data_type: schema.field(time).data_type().clone(),
        });
    }
    let group_by = spec
        .group_by
        .iter()
        .map(|c| index(c))
        .collect::<Result<_, _>>()?;
    let aggregates = spec
        .aggregates
        .iter()
        .map(|a| match (&a.column, a.function) {
            (None, AggregateFn::Count) => Ok(None),
            (None, function) => Err(StoreError::MissingColumn { function }),
            (Some(column), function) => {
                let i = index(column)?;
                let data_type = schema.field(i).data_type();
                if function != AggregateFn::Count && wide_type(data_type).is_none() {
                    return Err(StoreError::NotNumeric {
                        table: spec.source.clone(),
                        column: column.clone(),
                        data_type: data_type.clone(),
                    });
                }
                Ok(Some(i))
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Columns {
        time,
        group_by,
        aggregates,
    })
}

/// The output schema: `time_`, `node`, the groupBy columns, the aggregates.
fn output_schema(spec: &RollupSpec, source: &Schema, columns: &Columns) -> SchemaRef {
    let mut fields = vec![
        Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("node", DataType::Utf8, false),
    ];
    fields.extend(
        columns
            .group_by
            .iter()
            .map(|&i| source.field(i).clone().with_nullable(true)),
    );
    fields.extend(
        spec.aggregates
            .iter()
            .zip(&columns.aggregates)
            .map(|(a, column)| match (a.function, column) {
                (AggregateFn::Count, _) => Field::new(&a.output, DataType::UInt64, false),
                (_, Some(i)) => Field::new(
                    &a.output,
                    wide_type(source.field(*i).data_type()).unwrap_or(DataType::Float64),
                    true,
                ),
                // `resolve` refused aggregates other than count without a column.
                (_, None) => Field::new(&a.output, DataType::Float64, true),
            }),
    );
    Arc::new(Schema::new(fields))
}

fn run_rollup(
    store: &TableStore,
    node: &str,
    state: &mut RollupState,
    complete_before: i64,
    default_bytes: Option<u64>,
) -> Result<usize, StoreError> {
    let spec = &state.spec;
    // No source yet (its probe is not attached): nothing to do, no error.
    // Only batches that may hold rows of the windows still to roll up:
    // cold history is not decoded again.
    let Some(snapshot) = store.snapshot_since(&spec.source, state.next_start) else {
        return Ok(0);
    };
    let source_schema = snapshot.info.schema.clone();
    let columns = resolve(spec, &source_schema)?;
    let interval = spec.interval_ns();
    let end = complete_before.div_euclid(interval) * interval;
    let start = match state.next_start {
        Some(start) => start,
        None => match snapshot.info.time_range {
            Some((oldest, _)) => oldest.div_euclid(interval) * interval,
            None => return Ok(0),
        },
    };
    if start >= end {
        state.next_start = Some(start);
        return Ok(0);
    }
    let arrow = |action| {
        let rollup = spec.output.clone();
        move |source| StoreError::Arrow {
            rollup,
            action,
            source,
        }
    };
    let output_schema = output_schema(spec, &source_schema, &columns);
    store.create_table(spec.output.clone(), Arc::clone(&output_schema))?;
    store.set_policy(
        &spec.output,
        Some(RetentionPolicy {
            max_bytes: default_bytes,
            max_age: Some(spec.keep),
        }),
    )?;

    // Only the columns the rollup reads, only the rows of its windows.
    let mut projection = vec![columns.time];
    projection.extend(&columns.group_by);
    projection.extend(columns.aggregates.iter().flatten());
    let mut selected = Vec::with_capacity(snapshot.batches.len());
    for batch in &snapshot.batches {
        let batch = batch.project(&projection).map_err(arrow("project"))?;
        let times = batch.column(0).as_primitive::<TimestampNanosecondType>();
        let in_windows = BooleanArray::from_unary(times, |t| t >= start && t < end);
        if in_windows.true_count() > 0 {
            selected.push(filter_record_batch(&batch, &in_windows).map_err(arrow("filter"))?);
        }
    }
    let rows = match selected.first() {
        Some(first) => concat_batches(&first.schema(), &selected).map_err(arrow("concat"))?,
        None => {
            state.next_start = Some(end);
            return Ok(0);
        }
    };
    // In `rows`: 0 is time_, then the groupBy columns, then inputs in order.
    let mut next_input = 1 + columns.group_by.len();
    let inputs: Vec<Option<usize>> = columns
        .aggregates
        .iter()
        .map(|c| {
            c.map(|_| {
                next_input += 1;
                next_input - 1
            })
        })
        .collect();
    let batch =
        summarize(spec, node, &output_schema, &rows, &inputs).map_err(arrow("aggregate"))?;
    let written = batch.num_rows();
    store.append(&spec.output, batch.clone())?;
    state.next_start = Some(end);
    // The windows are rolled up: what follows never rolls them up again.
    detect(store, node, state, &batch, end)?;
    Ok(written)
}

/// Judges freshly rolled-up rows, writes the anomalies and keeps raw rows
/// around them; then advances the windows being kept to `end`.
fn detect(
    store: &TableStore,
    node: &str,
    state: &mut RollupState,
    batch: &RecordBatch,
    end: i64,
) -> Result<(), StoreError> {
    let spec = &state.spec;
    let Some(detector) = &mut state.detector else {
        return Ok(());
    };
    let arrow = |action| {
        let rollup = spec.output.clone();
        move |source| StoreError::Arrow {
            rollup,
            action,
            source,
        }
    };
    let anomalies = detector.observe(batch).map_err(arrow("detect"))?;
    let table = spec.anomalies_table();
    let schema = anomalies_schema(&batch.schema(), &spec.group_by);
    store.create_table(table.clone(), Arc::clone(&schema))?;
    store.set_policy(
        &table,
        Some(RetentionPolicy {
            max_bytes: store.config().default_policy.max_bytes,
            max_age: Some(spec.keep),
        }),
    )?;
    if !anomalies.is_empty() {
        let rows = anomalies_batch(&schema, batch, node, &spec.group_by, &anomalies)
            .map_err(arrow("write anomalies"))?;
        store.append(&table, rows)?;
        for anomaly in &anomalies {
            remember(&mut state.recent, &spec.group_by, anomaly);
            if let Some(kept) = &mut state.kept {
                kept.open(anomaly.group.clone(), anomaly.time_ns, spec.interval);
            }
        }
    }
    if let Some(kept) = &mut state.kept {
        kept.advance(store, &spec.source, &spec.group_by, end)?;
    }
    Ok(())
}

fn remember(recent: &mut VecDeque<RecentAnomaly>, group_by: &[String], anomaly: &Anomaly) {
    if recent.len() == RECENT_ANOMALIES {
        recent.pop_front();
    }
    recent.push_back(RecentAnomaly {
        time_ns: anomaly.time_ns,
        group: describe_group(group_by, &anomaly.group),
        column: anomaly.column.clone(),
        method: anomaly.method,
        value: anomaly.value,
        expected: anomaly.expected,
        lower: anomaly.lower,
        upper: anomaly.upper,
        score: anomaly.score,
    });
}

/// One output row per window and group of `rows` (time_, groupBy columns,
/// aggregate inputs at `inputs`).
fn summarize(
    spec: &RollupSpec,
    node: &str,
    schema: &SchemaRef,
    rows: &RecordBatch,
    inputs: &[Option<usize>],
) -> Result<RecordBatch, ArrowError> {
    let interval = spec.interval_ns();
    let times = rows.column(0).as_primitive::<TimestampNanosecondType>();
    let windows: ArrayRef =
        Arc::new(times.unary::<_, Int64Type>(|t| t.div_euclid(interval) * interval));
    // Sort by window, then group; equal keys become runs.
    let mut keys = vec![windows];
    keys.extend((0..spec.group_by.len()).map(|i| Arc::clone(rows.column(1 + i))));
    let sort_columns: Vec<SortColumn> = keys
        .iter()
        .map(|k| SortColumn {
            values: Arc::clone(k),
            options: None,
        })
        .collect();
    let order = lexsort_to_indices(&sort_columns, None)?;
    let sorted_keys = keys
        .iter()
        .map(|k| take(k.as_ref(), &order, None))
        .collect::<Result<Vec<_>, _>>()?;
    let ranges = partition(&sorted_keys)?.ranges();
    let firsts = UInt32Array::from_iter_values(ranges.iter().map(|r| r.start as u32));

    let window_starts = take(sorted_keys[0].as_ref(), &firsts, None)?;
    let window_starts = TimestampNanosecondArray::new(
        window_starts.as_primitive::<Int64Type>().values().clone(),
        None,
    )
    .with_timezone("UTC");
    let mut out: Vec<ArrayRef> = vec![
        Arc::new(window_starts),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            node,
            ranges.len(),
        ))),
    ];
    for key in &sorted_keys[1..] {
        out.push(take(key.as_ref(), &firsts, None)?);
    }
    for (aggregate, input) in spec.aggregates.iter().zip(inputs) {
        let values = match input {
            Some(i) => Some(take(rows.column(*i).as_ref(), &order, None)?),
            None => None,
        };
        out.push(match (aggregate.function, values) {
            (AggregateFn::Count, None) => Arc::new(UInt64Array::from_iter_values(
                ranges.iter().map(|r| r.len() as u64),
            )),
            (AggregateFn::Count, Some(values)) => {
                Arc::new(UInt64Array::from_iter_values(ranges.iter().map(|r| {
                    (r.len() - values.slice(r.start, r.len()).null_count()) as u64
                })))
            }
            (function, Some(values)) => aggregate_wide(function, &values, &ranges)?,
            (function, None) => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "{function} needs a column"
                )));
            }
        });
    }
    RecordBatch::try_new(Arc::clone(schema), out)
}

/// The type sums, extremes and percentiles of a column are reported in.
fn wide_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            Some(DataType::Int64)
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            Some(DataType::UInt64)
        }
        DataType::Float32 | DataType::Float64 => Some(DataType::Float64),
        _ => None,
    }
}

/// Aggregates `values` (sorted into groups) per range, in its wide type.
fn aggregate_wide(
    function: AggregateFn,
    values: &ArrayRef,
    ranges: &[Range<usize>],
) -> Result<ArrayRef, ArrowError> {
    macro_rules! widen {
        ($from:ty, $to:ty) => {{
            let wide: PrimitiveArray<$to> = values.as_primitive::<$from>().unary(|v| v as _);
            Arc::new(aggregate_groups(function, &wide, ranges)?) as ArrayRef
        }};
    }
    Ok(match values.data_type() {
        DataType::Int8 => widen!(Int8Type, Int64Type),
        DataType::Int16 => widen!(Int16Type, Int64Type),
        DataType::Int32 => widen!(Int32Type, Int64Type),
        DataType::Int64 => Arc::new(aggregate_groups(
            function,
            values.as_primitive::<Int64Type>(),
            ranges,
        )?),
        DataType::UInt8 => widen!(UInt8Type, UInt64Type),
        DataType::UInt16 => widen!(UInt16Type, UInt64Type),
        DataType::UInt32 => widen!(UInt32Type, UInt64Type),
        DataType::UInt64 => Arc::new(aggregate_groups(
            function,
            values.as_primitive::<UInt64Type>(),
            ranges,
        )?),
        DataType::Float32 => widen!(Float32Type, Float64Type),
        DataType::Float64 => Arc::new(aggregate_groups(
            function,
            values.as_primitive::<Float64Type>(),
            ranges,
        )?),
        other => {
            return Err(ArrowError::InvalidArgumentError(format!(
                "cannot aggregate {other}"
            )));
        }
    })
}

/// One value per range: sum, min, max or a nearest-rank percentile of the
/// non-null values in it.
fn aggregate_groups<T: ArrowNumericType>(
    function: AggregateFn,
    values: &PrimitiveArray<T>,
    ranges: &[Range<usize>],
) -> Result<PrimitiveArray<T>, ArrowError> {
    use arrow_arith::aggregate;
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let group = values.slice(range.start, range.len());
        out.push(match function {
            // Overflow: null rather than a wrapped, wrong total.
            AggregateFn::Sum => aggregate::sum_checked(&group).ok().flatten(),
            AggregateFn::Min => aggregate::min(&group),
            AggregateFn::Max => aggregate::max(&group),
            AggregateFn::P50 => nearest_rank(&group, 50)?,
            AggregateFn::P90 => nearest_rank(&group, 90)?,
            AggregateFn::P99 => nearest_rank(&group, 99)?,
            // Count is not in the column's type; `summarize` computes it.
            AggregateFn::Count => None,
        });
    }
    Ok(PrimitiveArray::<T>::from_iter(out))
}

/// The value at 1-based rank `ceil(p·n/100)` of the n non-null values.
fn nearest_rank<T: ArrowNumericType>(
    group: &PrimitiveArray<T>,
    p: usize,
) -> Result<Option<T::Native>, ArrowError> {
    let present = group.len() - group.null_count();
    if present == 0 {
        return Ok(None);
    }
    let sorted = sort(
        group,
        Some(SortOptions {
            descending: false,
            nulls_first: false,
        }),
    )?;
    let rank = (p * present).div_ceil(100).max(1);
    Ok(Some(sorted.as_primitive::<T>().value(rank - 1)))
}

#[cfg(test)]
mod tests;
