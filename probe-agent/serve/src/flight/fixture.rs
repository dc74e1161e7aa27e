//! An in-memory [`TableSource`] for tests of the readers: tables are added
//! and appended to by hand, and followers see every append.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use arrow_array::{
    ArrayRef, Int32Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt32Array,
    UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use tokio::sync::broadcast;

use probe_store::{TableInfo, TableName, TableSnapshot, TableSource};

/// How many appended batches a follower may fall behind.
const FOLLOW_CAPACITY: usize = 64;

struct FixtureTable {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    appended: broadcast::Sender<RecordBatch>,
}

/// Tables held in memory, in name order.
#[derive(Default)]
pub struct MemorySource {
    tables: Mutex<BTreeMap<TableName, FixtureTable>>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<TableName, FixtureTable>> {
        // A panic while holding the lock leaves plain data behind; use it.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds an empty table (or empties an existing one).
    pub fn add_table(&self, name: TableName, schema: SchemaRef) {
        let (appended, _) = broadcast::channel(FOLLOW_CAPACITY);
        self.lock().insert(
            name,
            FixtureTable {
                schema,
                batches: Vec::new(),
                appended,
            },
        );
    }

    /// Appends a batch and hands it to followers. Returns `false` if there
    /// is no such table.
    pub fn append(&self, name: &TableName, batch: RecordBatch) -> bool {
        let mut tables = self.lock();
        let Some(table) = tables.get_mut(name) else {
            return false;
        };
        table.batches.push(batch.clone());
        // No follower is not an error.
        let _ = table.appended.send(batch);
        true
    }

    /// How many followers a table has.
    pub fn followers(&self, name: &TableName) -> usize {
        self.lock()
            .get(name)
            .map_or(0, |t| t.appended.receiver_count())
    }

    fn info(name: &TableName, table: &FixtureTable) -> TableInfo {
        let rows = table.batches.iter().map(|b| b.num_rows() as u64).sum();
        let bytes = table
            .batches
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum();
        TableInfo {
            name: name.clone(),
            schema: Arc::clone(&table.schema),
            rows,
            bytes,
            time_range: None,
        }
    }
}

impl TableSource for MemorySource {
    fn tables(&self) -> Vec<TableInfo> {
        self.lock()
            .iter()
            .map(|(name, table)| Self::info(name, table))
            .collect()
    }

    fn snapshot(&self, name: &TableName) -> Option<TableSnapshot> {
        let tables = self.lock();
        let table = tables.get(name)?;
        Some(TableSnapshot {
            info: Self::info(name, table),
            batches: table.batches.clone(),
        })
    }

    fn subscribe(&self, name: &TableName) -> Option<broadcast::Receiver<RecordBatch>> {
        Some(self.lock().get(name)?.appended.subscribe())
    }
}

/// The standard columns (a pod's rows) followed by two probe fields, `path`
/// and `flags`.
pub fn standard_schema() -> SchemaRef {
    let mut fields = probe_capture::rows::standard_fields();
    fields.extend([
        Field::new("path", DataType::Utf8, true),
        Field::new("flags", DataType::Int32, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// One row of [`standard_schema`].
#[derive(Clone, Debug)]
pub struct Row {
    pub time: i64,
    pub pid: u32,
    pub comm: String,
    pub path: String,
}

impl Row {
    pub fn new(time: i64, pid: u32, comm: &str, path: &str) -> Self {
        Self {
            time,
            pid,
            comm: comm.to_owned(),
            path: path.to_owned(),
        }
    }
}

/// A batch of [`standard_schema`] from rows, on node `node-a`.
pub fn standard_batch(rows: &[Row]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.time))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "node-a"))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.pid))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.pid))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.comm))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|_| 42))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "shop"))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "web-0"))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "main"))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.path))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|_| 0))),
    ];
    RecordBatch::try_new(standard_schema(), columns)
}
