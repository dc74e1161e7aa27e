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

/// Read access to the tables, for every way Sonde serves data.
pub trait TableSource: Send + Sync + 'static {
    /// Every table, in name order.
    fn tables(&self) -> Vec<TableInfo>;

    /// A snapshot of one table, or `None` if there is no such table.
    fn snapshot(&self, name: &TableName) -> Option<TableSnapshot>;

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
