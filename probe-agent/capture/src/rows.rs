//! Decoding records into rows: one probe's records appended to Arrow
//! column builders and sealed into record batches.
//!
//! Rows are appended into column builders and sealed into a batch every
//! [`BATCH_ROWS`] rows, when the oldest pending row has waited long enough
//! ([`TableRows::seal_if_older_than`]), or when read, so appending
//! allocates nothing per event beyond the builders' amortised growth.
//! Sealed batches go to a [`BatchSink`] table when opened on one
//! ([`TableRows::with_sink`]), otherwise they are kept here. Readers get
//! sealed batches, which are cheap to clone (`Arc`ed buffers).

use std::{sync::Arc, time::Duration};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        BooleanBuilder, Int8Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
        TimestampNanosecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
    },
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use crds::FieldType;

use crds::TableName;

use crate::{
    clock::WallClock,
    identity::ContainerIdentity,
    plan::{ColumnLayout, ColumnPlan, RecordSchema},
    ring::{DecodeError, RawEvent, u64_at},
    sink::{BatchSink, SinkError},
};

/// Rows per sealed batch.
pub const BATCH_ROWS: usize = 8192;

/// Builder of one captured column.
enum FieldBuilder {
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl FieldBuilder {
    fn new(layout: ColumnLayout) -> Self {
        match layout {
            ColumnLayout::String { .. } => Self::Str(StringBuilder::new()),
            ColumnLayout::Int(t) => match t {
                FieldType::U8 => Self::U8(UInt8Builder::new()),
                FieldType::U16 => Self::U16(UInt16Builder::new()),
                FieldType::U32 => Self::U32(UInt32Builder::new()),
                FieldType::U64 => Self::U64(UInt64Builder::new()),
                FieldType::I8 => Self::I8(Int8Builder::new()),
                FieldType::I16 => Self::I16(Int16Builder::new()),
                FieldType::I32 => Self::I32(Int32Builder::new()),
                FieldType::I64 => Self::I64(Int64Builder::new()),
                FieldType::Bool => Self::Bool(BooleanBuilder::new()),
                FieldType::String => Self::Str(StringBuilder::new()),
            },
        }
    }

    fn data_type(layout: ColumnLayout) -> DataType {
        match layout {
            ColumnLayout::String { .. } | ColumnLayout::Int(FieldType::String) => DataType::Utf8,
            ColumnLayout::Int(t) => match t {
                FieldType::U8 => DataType::UInt8,
                FieldType::U16 => DataType::UInt16,
                FieldType::U32 => DataType::UInt32,
                FieldType::U64 => DataType::UInt64,
                FieldType::I8 => DataType::Int8,
                FieldType::I16 => DataType::Int16,
                FieldType::I32 => DataType::Int32,
                FieldType::I64 => DataType::Int64,
                FieldType::Bool => DataType::Boolean,
                FieldType::String => DataType::Utf8,
            },
        }
    }

    /// Appends the value at `offset` of `record` (bounds checked by the caller).
    fn append(&mut self, record: &[u8], column: &ColumnPlan) {
        let at = usize::from(column.offset);
        // Integers were cut or extended to their type in the kernel, so
        // the casts below only narrow to the declared width.
        let word = || u64_at(record, at);
        match self {
            Self::U8(b) => b.append_value(word() as u8),
            Self::U16(b) => b.append_value(word() as u16),
            Self::U32(b) => b.append_value(word() as u32),
            Self::U64(b) => b.append_value(word()),
            Self::I8(b) => b.append_value(word() as i8),
            Self::I16(b) => b.append_value(word() as i16),
            Self::I32(b) => b.append_value(word() as i32),
            Self::I64(b) => b.append_value(word() as i64),
            Self::Bool(b) => b.append_value(word() != 0),
            Self::Str(b) => {
                let area = match column.layout {
                    ColumnLayout::String { area } => usize::from(area),
                    ColumnLayout::Int(_) => 8,
                };
                b.append_value(&*c_string(&record[at..at + area]));
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::U8(b) => Arc::new(b.finish()),
            Self::U16(b) => Arc::new(b.finish()),
            Self::U32(b) => Arc::new(b.finish()),
            Self::U64(b) => Arc::new(b.finish()),
            Self::I8(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Str(b) => Arc::new(b.finish()),
        }
    }
}

/// A NUL-terminated string as UTF-8; allocates only for invalid UTF-8.
fn c_string(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

/// Where sealed batches go.
enum Sink {
    /// Kept by the table: every row ever appended.
    Keep(Vec<RecordBatch>),
    /// Appended to a table of the sink (the store, which applies retention).
    Shared {
        sink: Arc<dyn BatchSink>,
        name: TableName,
    },
}

/// The columns every Tracepoint table starts with, in order.
pub fn standard_fields() -> Vec<Field> {
    vec![
        Field::new(
            "time_",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("node", DataType::Utf8, false),
        Field::new("pid", DataType::UInt32, false),
        Field::new("tid", DataType::UInt32, false),
        Field::new("comm", DataType::Utf8, false),
        Field::new("cgroup_id", DataType::UInt64, false),
        // Resolved on the node from the cgroup; null outside any pod (and in
        // standalone mode).
        Field::new("namespace", DataType::Utf8, true),
        Field::new("pod", DataType::Utf8, true),
        Field::new("container", DataType::Utf8, true),
    ]
}

/// One probe's rows being built: the standard columns and the probe's
/// fields.
pub struct TableRows {
    schema: SchemaRef,
    record: RecordSchema,
    node: String,
    time: TimestampNanosecondBuilder,
    node_col: StringBuilder,
    pid: UInt32Builder,
    tid: UInt32Builder,
    comm: StringBuilder,
    cgroup_id: UInt64Builder,
    namespace: StringBuilder,
    pod: StringBuilder,
    container: StringBuilder,
    fields: Vec<FieldBuilder>,
    pending: usize,
    /// Kernel time of the oldest pending row, for sealing by age.
    first_pending_ktime_ns: u64,
    sink: Sink,
    rows: u64,
    /// Rows sealed but refused by the store (the table was dropped under us).
    unstored_rows: u64,
}

impl TableRows {
    /// A table that keeps every batch it seals.
    pub fn new(record: RecordSchema, node: &str) -> Self {
        Self::build(record, node, Sink::Keep(Vec::new()))
    }

    /// Rows whose sealed batches go to `name` in `sink`, created there with
    /// this table's schema (an existing table with the same columns is
    /// reused).
    pub fn with_sink(
        record: RecordSchema,
        node: &str,
        sink: Arc<dyn BatchSink>,
        name: TableName,
    ) -> Result<Self, SinkError> {
        let table = Self::build(record, node, Sink::Keep(Vec::new()));
        sink.create_table(&name, table.schema())?;
        Ok(Self {
            sink: Sink::Shared { sink, name },
            ..table
        })
    }

    fn build(record: RecordSchema, node: &str, sink: Sink) -> Self {
        let mut fields = standard_fields();
        fields.extend(
            record
                .columns
                .iter()
                .map(|c| Field::new(&c.name, FieldBuilder::data_type(c.layout), false)),
        );
        Self {
            schema: Arc::new(Schema::new(fields)),
            fields: record
                .columns
                .iter()
                .map(|c| FieldBuilder::new(c.layout))
                .collect(),
            record,
            node: node.to_owned(),
            time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            node_col: StringBuilder::new(),
            pid: UInt32Builder::new(),
            tid: UInt32Builder::new(),
            comm: StringBuilder::new(),
            cgroup_id: UInt64Builder::new(),
            namespace: StringBuilder::new(),
            pod: StringBuilder::new(),
            container: StringBuilder::new(),
            pending: 0,
            first_pending_ktime_ns: 0,
            sink,
            rows: 0,
            unstored_rows: 0,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Rows appended so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Rows sealed after the store dropped this table: lost, and counted.
    pub fn unstored_rows(&self) -> u64 {
        self.unstored_rows
    }

    /// The sink's table sealed batches go to, if any.
    pub fn sink_name(&self) -> Option<&TableName> {
        match &self.sink {
            Sink::Shared { name, .. } => Some(name),
            Sink::Keep(_) => None,
        }
    }

    /// Appends one event, with the pod container its cgroup belongs to if
    /// known; a record shorter than the probe's layout is refused.
    pub fn append(
        &mut self,
        event: &RawEvent<'_>,
        identity: Option<&ContainerIdentity>,
        clock: &WallClock,
    ) -> Result<(), DecodeError> {
        let expected = self.record.record_len as usize;
        if event.record.len() < expected {
            return Err(DecodeError::Short {
                len: event.record.len(),
                expected,
            });
        }
        if self.pending == 0 {
            self.first_pending_ktime_ns = event.ktime_ns;
        }
        self.time.append_value(clock.to_unix_ns(event.ktime_ns));
        self.node_col.append_value(&self.node);
        self.pid.append_value(event.pid);
        self.tid.append_value(event.tid);
        self.comm.append_value(&*c_string(&event.comm));
        self.cgroup_id.append_value(event.cgroup_id);
        // The builders copy the bytes: nothing is allocated per event.
        match identity {
            Some(identity) => {
                self.namespace.append_value(identity.namespace());
                self.pod.append_value(identity.pod());
                self.container.append_value(identity.container());
            }
            None => {
                self.namespace.append_null();
                self.pod.append_null();
                self.container.append_null();
            }
        }
        for (builder, column) in self.fields.iter_mut().zip(&self.record.columns) {
            builder.append(event.record, column);
        }
        self.pending += 1;
        self.rows += 1;
        if self.pending >= BATCH_ROWS {
            self.seal();
        }
        Ok(())
    }

    /// Seals pending rows if the oldest of them was captured at least
    /// `max_pending` before `now_ktime_ns` (kernel monotonic time, as in
    /// `bpf_ktime_get_ns`), so rows become visible at low rates too.
    /// Returns whether it sealed.
    pub fn seal_if_older_than(&mut self, max_pending: Duration, now_ktime_ns: u64) -> bool {
        let max_pending = u64::try_from(max_pending.as_nanos()).unwrap_or(u64::MAX);
        if self.pending == 0
            || now_ktime_ns.saturating_sub(self.first_pending_ktime_ns) < max_pending
        {
            return false;
        }
        self.seal();
        true
    }

    /// Seals pending rows into a batch.
    pub fn seal(&mut self) {
        if self.pending == 0 {
            return;
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.node_col.finish()),
            Arc::new(self.pid.finish()),
            Arc::new(self.tid.finish()),
            Arc::new(self.comm.finish()),
            Arc::new(self.cgroup_id.finish()),
            Arc::new(self.namespace.finish()),
            Arc::new(self.pod.finish()),
            Arc::new(self.container.finish()),
        ];
        columns.extend(self.fields.iter_mut().map(FieldBuilder::finish));
        self.pending = 0;
        // The builders were made from the schema's own types and every
        // append fills each of them once, so types and lengths always agree.
        #[allow(clippy::expect_used)]
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .expect("builders match the schema");
        match &mut self.sink {
            Sink::Keep(batches) => batches.push(batch),
            Sink::Shared { sink, name } => {
                let rows = batch.num_rows() as u64;
                if sink.append(name, batch).is_err() {
                    self.unstored_rows += rows;
                }
            }
        }
    }

    /// Every row held: all rows so far, or for a store table what its
    /// retention still holds.
    pub fn batches(&mut self) -> Vec<RecordBatch> {
        self.seal();
        match &self.sink {
            Sink::Keep(batches) => batches.clone(),
            Sink::Shared { sink, name } => sink.batches(name),
        }
    }
}
