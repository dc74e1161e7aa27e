//! Raw rows kept around anomalies: when a rollup's detection flags a group,
//! the source rows of that group from `around` before the anomalous
//! interval to `around` after it are copied into the table
//! `<rollup>_kept`, which the source table's maxAge and maxBytes do not
//! touch. Each window is one batch of that table, appended once the window
//! has ended; rows already in the source when the anomaly is found are
//! copied at once, so a short maxAge cannot take them first.
//!
//! The kept table is bounded by the rollup's `keepRaw.maxBytes`: past it
//! the store drops the table's oldest batches, so the oldest kept window
//! goes first. Windows gone that way, or dropped while still open because
//! the open windows alone exceeded the budget, are counted.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use arrow_array::{
    Array, ArrayRef, BooleanArray, RecordBatch, TimestampNanosecondArray, cast::AsArray,
    types::TimestampNanosecondType,
};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow_select::{concat::concat_batches, filter::filter_record_batch};

use super::{RetentionPolicy, StoreError, TIME_COLUMN, TableName, TableStore};

/// The column of kept rows that says which anomaly kept them: the start of
/// the anomalous interval.
pub const ANOMALY_TIME_COLUMN: &str = "anomaly_time_";

/// Raw rows kept around anomalies, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepRawSpec {
    /// Kept before the anomalous interval's start and after its end.
    pub around: Duration,
    /// Most bytes the kept table holds on this node.
    pub max_bytes: u64,
}

/// Counters of one rollup's kept windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptStats {
    /// Windows appended to the kept table.
    pub windows: u64,
    /// Windows gone because the budget was exceeded (oldest first),
    /// including open windows dropped before they were appended.
    pub windows_evicted: u64,
    /// Rows appended to the kept table.
    pub rows: u64,
    /// Windows waiting for their end.
    pub open: u64,
}

/// One window being kept.
#[derive(Debug)]
struct OpenWindow {
    /// The group's display values, one per groupBy column.
    group: Vec<Option<String>>,
    anomaly_ns: i64,
    end: i64,
    /// Source rows copied up to here (exclusive).
    copied_until: i64,
    rows: Vec<RecordBatch>,
    bytes: u64,
}

/// The windows of one rollup.
#[derive(Debug)]
pub struct KeptWindows {
    spec: KeepRawSpec,
    table: TableName,
    open: VecDeque<OpenWindow>,
    /// Rows of each appended window still counted as held, oldest first.
    held: VecDeque<u64>,
    stats: KeptStats,
}

impl KeptWindows {
    pub fn new(spec: KeepRawSpec, table: TableName) -> Self {
        Self {
            spec,
            table,
            open: VecDeque::new(),
            held: VecDeque::new(),
            stats: KeptStats::default(),
        }
    }

    pub fn stats(&self) -> KeptStats {
        KeptStats {
            open: self.open.len() as u64,
            ..self.stats
        }
    }

    /// Opens a window around an anomaly of `group` in the interval starting
    /// at `anomaly_ns`; one already open for the group that it overlaps is
    /// stretched instead, so no row is kept twice.
    pub fn open(&mut self, group: Vec<Option<String>>, anomaly_ns: i64, interval: Duration) {
        let around = duration_ns(self.spec.around);
        let start = anomaly_ns.saturating_sub(around);
        let end = anomaly_ns
            .saturating_add(duration_ns(interval))
            .saturating_add(around);
        if let Some(window) = self
            .open
            .iter_mut()
            .find(|w| w.group == group && start <= w.end)
        {
            window.end = window.end.max(end);
            return;
        }
        self.open.push_back(OpenWindow {
            group,
            anomaly_ns,
            end,
            copied_until: start,
            rows: Vec::new(),
            bytes: 0,
        });
    }

    /// Copies the rows of open windows complete before `complete_before`
    /// from `source` (whose groupBy columns are `group_by`), and appends
    /// every window that has ended to the kept table.
    pub fn advance(
        &mut self,
        store: &TableStore,
        source: &TableName,
        group_by: &[String],
        complete_before: i64,
    ) -> Result<(), StoreError> {
        if self.open.is_empty() {
            return Ok(());
        }
        let since = self.open.iter().map(|w| w.copied_until).min();
        let Some(snapshot) = store.snapshot_since(source, since) else {
            return Ok(());
        };
        let arrow = |action| {
            let table = self.table.clone();
            move |source| StoreError::Arrow {
                rollup: table,
                action,
                source,
            }
        };
        let kept_schema = kept_schema(&snapshot.info.schema);
        for window in &mut self.open {
            let until = complete_before.min(window.end);
            if until <= window.copied_until {
                continue;
            }
            for batch in &snapshot.batches {
                let selected = select(batch, group_by, &window.group, window.copied_until, until)
                    .map_err(arrow("select kept rows"))?;
                if let Some(rows) = selected {
                    let rows = mark(&kept_schema, &rows, window.anomaly_ns)
                        .map_err(arrow("mark kept rows"))?;
                    window.bytes += rows.get_array_memory_size() as u64;
                    window.rows.push(rows);
                }
            }
            window.copied_until = until;
        }
        // Open windows alone past the budget: the oldest goes, counted.
        while self.open.iter().map(|w| w.bytes).sum::<u64>() > self.spec.max_bytes {
            self.open.pop_front();
            self.stats.windows_evicted += 1;
        }
        let mut closed = Vec::new();
        while let Some(window) = self.open.front() {
            if window.copied_until < window.end {
                break;
            }
            closed.extend(self.open.pop_front());
        }
        if closed.is_empty() {
            return Ok(());
        }
        store.create_table(self.table.clone(), Arc::clone(&kept_schema))?;
        store.set_policy(
            &self.table,
            Some(RetentionPolicy {
                max_bytes: Some(self.spec.max_bytes),
                max_age: None,
            }),
        )?;
        for window in closed {
            let batch = concat_batches(&kept_schema, &window.rows).map_err(arrow("concat"))?;
            let rows = batch.num_rows() as u64;
            if rows > 0 {
                store.append(&self.table, batch)?;
                self.held.push_back(rows);
            }
            self.stats.windows += 1;
            self.stats.rows += rows;
        }
        self.count_evicted(store);
        Ok(())
    }

    /// Counts the windows the store has dropped from the front of the kept
    /// table since the last call.
    fn count_evicted(&mut self, store: &TableStore) {
        let held = store.table_stats(&self.table).map_or(0, |s| s.rows);
        let mut counted: u64 = self.held.iter().sum();
        while counted > held {
            let Some(front) = self.held.front_mut() else {
                break;
            };
            if counted - *front >= held {
                counted -= *front;
                self.held.pop_front();
                self.stats.windows_evicted += 1;
            } else {
                // Cut, not gone: it still counts as kept.
                *front -= counted - held;
                counted = held;
            }
        }
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The kept table's schema: the source's, and the anomaly's time.
pub fn kept_schema(source: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = source.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        ANOMALY_TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        false,
    ));
    Arc::new(Schema::new(fields))
}

/// The rows of `batch` in `[from, until)` whose groupBy columns show as
/// `group`; `None` when there are none.
fn select(
    batch: &RecordBatch,
    group_by: &[String],
    group: &[Option<String>],
    from: i64,
    until: i64,
) -> Result<Option<RecordBatch>, ArrowError> {
    let Some(times) = batch.column_by_name(TIME_COLUMN) else {
        return Ok(None);
    };
    let times = times.as_primitive::<TimestampNanosecondType>();
    let columns: Vec<&ArrayRef> = group_by
        .iter()
        .filter_map(|c| batch.column_by_name(c))
        .collect();
    if columns.len() != group_by.len() {
        return Ok(None);
    }
    let formatters = columns
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let keep = BooleanArray::from_iter((0..batch.num_rows()).map(|row| {
        let t = times.value(row);
        Some(
            t >= from
                && t < until
                && columns.iter().zip(&formatters).zip(group).all(
                    |((column, f), want)| match want {
                        None => column.is_null(row),
                        Some(want) => column.is_valid(row) && f.value(row).to_string() == *want,
                    },
                ),
        )
    }));
    if keep.true_count() == 0 {
        return Ok(None);
    }
    filter_record_batch(batch, &keep).map(Some)
}

/// `rows` with the anomaly's time appended.
fn mark(
    schema: &SchemaRef,
    rows: &RecordBatch,
    anomaly_ns: i64,
) -> Result<RecordBatch, ArrowError> {
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(
        TimestampNanosecondArray::from_iter_values(std::iter::repeat_n(
            anomaly_ns,
            rows.num_rows(),
        ))
        .with_timezone("UTC"),
    ));
    RecordBatch::try_new(Arc::clone(schema), columns)
}
