//! The table store: every table this agent serves, as Arrow record batches.
//!
//! [`TableSource`] is what readers (Arrow Flight, Flight SQL, the metrics
//! and export paths) see: a list of tables, a consistent snapshot of one, and
//! a live feed of new batches for follow mode. The capture path appends
//! sealed batches; retention evicts the oldest.
//!
//! [`TableStore`] is the implementation: tables in memory, bounded per table
//! by [`RetentionPolicy`] (from `Retention` resources, see [`policy_for`])
//! and all together by a global budget. [`RollupEngine`] writes summarized
//! history into tables of its own.

mod anomaly;
mod cold;
mod kept;
mod retention;
mod rollup;
mod table_store;

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, DataType, SchemaRef};
pub use crds::TableName;
use tokio::sync::broadcast;

pub use self::{
    anomaly::{
        Anomaly, AnomalyStats, DetectionSpec, MAX_SERIES, RollupDetector, SeriesScore,
        anomalies_batch, anomalies_schema, describe_group, threshold,
    },
    cold::{Codec, ColdBatch, LOW_CARDINALITY_COLUMNS, cast_to, dictionary_schema},
    kept::{ANOMALY_TIME_COLUMN, KeepRawSpec, KeptStats, kept_schema},
    retention::{RetentionPolicy, policy_for},
    rollup::{
        AggregateSpec, DetectionBoard, DetectionReport, RECENT_ANOMALIES, RecentAnomaly,
        RollupEngine, RollupSpec,
    },
    table_store::{
        CacheStats, Clock, Compacted, Compaction, CountedFollow, DEFAULT_BUDGET_BYTES,
        DEFAULT_CACHE_BYTES, DEFAULT_FOLLOW_CAPACITY, Evicted, EvictionReason, Evictions,
        ManualClock, StoreConfig, SystemClock, TIME_COLUMN, TableStats, TableStore,
    },
};

/// What can go wrong writing to the store or defining rollups.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no table {table}")]
    UnknownTable { table: TableName },

    #[error("table {table} has columns {expected:?}, not {found:?}")]
    SchemaMismatch {
        table: TableName,
        expected: SchemaRef,
        found: SchemaRef,
    },

    #[error("table {table} has no column {column}")]
    UnknownColumn { table: TableName, column: String },

    #[error("column {column} of {table} is {data_type}, not a number")]
    NotNumeric {
        table: TableName,
        column: String,
        data_type: DataType,
    },

    #[error("{function} needs a column")]
    MissingColumn { function: crds::AggregateFn },

    #[error("invalid Retention {name}")]
    InvalidRetention {
        name: String,
        #[source]
        source: crds::ValidationError,
    },

    #[error("bad duration {value:?} at {path}")]
    BadDuration {
        path: String,
        value: String,
        #[source]
        source: crds::units::DurationError,
    },

    #[error("rollup {rollup}: {action} failed")]
    Arrow {
        rollup: TableName,
        action: &'static str,
        #[source]
        source: ArrowError,
    },
}

/// What a reader learns about a table without reading it.
#[derive(Clone, Debug)]
pub struct TableInfo {
    pub name: TableName,
    pub schema: SchemaRef,
    pub rows: u64,
    /// Bytes held by the table's batches.
    pub bytes: u64,
    /// Oldest and newest `time_` held, Unix-epoch nanoseconds.
    pub time_range: Option<(i64, i64)>,
}

/// A consistent view of one table: the batches held at one instant. Later
/// appends and evictions do not change it.
#[derive(Clone, Debug)]
pub struct TableSnapshot {
    pub info: TableInfo,
    pub batches: Vec<RecordBatch>,
}

/// A table's batches at one instant, each read only when a reader loads
/// it: compacted batches are decoded by [`ScanPart::load`], so a reader
/// that streams holds one decoded batch at a time, decodes only the
/// columns it wants, and skips batches outside its time range undecoded.
#[derive(Clone, Debug)]
pub struct TableScan {
    pub info: TableInfo,
    pub parts: Vec<ScanPart>,
}

impl TableScan {
    /// Every part's rows (see [`ScanPart::load`]), in order.
    pub fn load_all(&self) -> Result<Vec<RecordBatch>, ArrowError> {
        let mut batches = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            batches.extend(part.load(None)?);
        }
        Ok(batches)
    }

    /// Whether every part is already in memory (nothing to decode).
    pub fn all_ready(&self) -> bool {
        self.parts.iter().all(ScanPart::is_ready)
    }
}

/// One batch of a [`TableScan`]: in memory, or decoded when loaded.
#[derive(Clone)]
pub struct ScanPart {
    rows: usize,
    time_range: Option<(i64, i64)>,
    source: PartSource,
}

#[derive(Clone)]
enum PartSource {
    Ready(RecordBatch),
    Deferred(Arc<dyn LoadBatch>),
}

/// Reads a deferred [`ScanPart`].
pub trait LoadBatch: Send + Sync {
    /// The part's rows with the columns `projection` names (all for
    /// `None`), or `None` when no row is left to serve.
    fn load(&self, projection: Option<&[usize]>) -> Result<Option<RecordBatch>, ArrowError>;
}

impl ScanPart {
    /// A batch already in memory; `time_range` is its oldest and newest
    /// `time_` if known.
    pub fn ready(batch: RecordBatch, time_range: Option<(i64, i64)>) -> Self {
        Self {
            rows: batch.num_rows(),
            time_range,
            source: PartSource::Ready(batch),
        }
    }

    /// A batch of at most `rows` rows that `loader` reads when asked.
    pub fn deferred(
        rows: usize,
        time_range: Option<(i64, i64)>,
        loader: Arc<dyn LoadBatch>,
    ) -> Self {
        Self {
            rows,
            time_range,
            source: PartSource::Deferred(loader),
        }
    }

    /// Rows held; a deferred part may serve fewer (rows past the table's
    /// maxAge that share a compacted batch with younger ones).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Oldest and newest `time_`, when known: a reader of a time range may
    /// skip the part without loading it.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        self.time_range
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.source, PartSource::Ready(_))
    }

    /// The rows, with the columns `projection` names (all for `None`), or
    /// `None` when none is left to serve. A compacted batch that cannot be
    /// decoded is counted by the store and logged, and loads as `None`.
    pub fn load(&self, projection: Option<&[usize]>) -> Result<Option<RecordBatch>, ArrowError> {
        match &self.source {
            PartSource::Ready(batch) => match projection {
                None => Ok(Some(batch.clone())),
                Some(indices) => batch.project(indices).map(Some),
            },
            PartSource::Deferred(loader) => loader.load(projection),
        }
    }
}

impl std::fmt::Debug for ScanPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanPart")
            .field("rows", &self.rows)
            .field("time_range", &self.time_range)
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// Read access to the tables, for every way Sonde serves data.
pub trait TableSource: Send + Sync + 'static {
    /// Every table, in name order.
    fn tables(&self) -> Vec<TableInfo>;

    /// A snapshot of one table, or `None` if there is no such table.
    fn snapshot(&self, name: &TableName) -> Option<TableSnapshot>;

    /// What one table holds, without reading it. The default takes a
    /// snapshot; stores that can answer cheaper override it.
    fn info(&self, name: &TableName) -> Option<TableInfo> {
        self.snapshot(name).map(|s| s.info)
    }

    /// One table's batches, read as the reader loads them. The default
    /// wraps a snapshot (everything already in memory).
    fn scan(&self, name: &TableName) -> Option<TableScan> {
        let snapshot = self.snapshot(name)?;
        Some(TableScan {
            info: snapshot.info,
            parts: snapshot
                .batches
                .into_iter()
                .map(|batch| ScanPart::ready(batch, None))
                .collect(),
        })
    }

    /// Batches appended to a table from now on (follow mode). A receiver
    /// that falls behind gets `RecvError::Lagged(n)` with the count of
    /// batches it missed.
    fn subscribe(&self, name: &TableName) -> Option<broadcast::Receiver<RecordBatch>>;

    /// A snapshot and the batches appended after it (follow mode). The
    /// default subscribes first, so a batch appended in between may be in
    /// both; implementations that can take both at one instant override it.
    fn follow(
        &self,
        name: &TableName,
    ) -> Option<(TableSnapshot, broadcast::Receiver<RecordBatch>)> {
        let receiver = self.subscribe(name)?;
        Some((self.snapshot(name)?, receiver))
    }
}
