//! Column builders of a baseline table: the standard columns every Sonde
//! row carries, then `N` unsigned counters of the table's own (tables with
//! other columns use `Columns<0>` and build theirs beside it). Kept from
//! one sample to the next, so a sample allocates little beyond its batch.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        ArrayBuilder as _, StringBuilder, TimestampNanosecondBuilder, UInt32Builder, UInt64Builder,
    },
};
use arrow_schema::{ArrowError, SchemaRef};
use probe_capture::identity::ContainerIdentity;

/// Who a row describes, in the standard columns.
pub struct RowSource<'a> {
    pub time_ns: i64,
    pub node: &'a str,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub cgroup_id: u64,
    /// The pod container of the cgroup; null columns outside any pod.
    pub identity: Option<&'a ContainerIdentity>,
}

pub struct Columns<const N: usize> {
    time: TimestampNanosecondBuilder,
    node: StringBuilder,
    pid: UInt32Builder,
    tid: UInt32Builder,
    comm: StringBuilder,
    cgroup_id: UInt64Builder,
    namespace: StringBuilder,
    pod: StringBuilder,
    container: StringBuilder,
    /// The table's own columns, in its schema's order.
    pub values: [UInt64Builder; N],
}

impl<const N: usize> Default for Columns<N> {
    fn default() -> Self {
        Self {
            time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            node: StringBuilder::new(),
            pid: UInt32Builder::new(),
            tid: UInt32Builder::new(),
            comm: StringBuilder::new(),
            cgroup_id: UInt64Builder::new(),
            namespace: StringBuilder::new(),
            pod: StringBuilder::new(),
            container: StringBuilder::new(),
            values: std::array::from_fn(|_| UInt64Builder::new()),
        }
    }
}

impl<const N: usize> Columns<N> {
    /// Appends a row's standard columns; the caller appends one value to
    /// each of [`Self::values`].
    pub fn append_source(&mut self, source: &RowSource<'_>) {
        self.time.append_value(source.time_ns);
        self.node.append_value(source.node);
        self.pid.append_value(source.pid);
        self.tid.append_value(source.tid);
        self.comm.append_value(source.comm);
        self.cgroup_id.append_value(source.cgroup_id);
        match source.identity {
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
    }

    /// Rows appended since the last finish.
    pub fn len(&self) -> usize {
        self.time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows appended since the last call, as a batch of `schema`: the
    /// standard columns and counters, then `own` (a table's other columns,
    /// in schema order); the builders start over.
    pub fn finish_with(
        &mut self,
        schema: &SchemaRef,
        own: impl IntoIterator<Item = ArrayRef>,
    ) -> Result<RecordBatch, ArrowError> {
        let mut arrays = self.finish_arrays();
        arrays.extend(own);
        RecordBatch::try_new(schema.clone(), arrays)
    }

    /// The standard columns and the table's own counters appended since
    /// the last call, in schema order; the builders start over.
    fn finish_arrays(&mut self) -> Vec<ArrayRef> {
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.node.finish()),
            Arc::new(self.pid.finish()),
            Arc::new(self.tid.finish()),
            Arc::new(self.comm.finish()),
            Arc::new(self.cgroup_id.finish()),
            Arc::new(self.namespace.finish()),
            Arc::new(self.pod.finish()),
            Arc::new(self.container.finish()),
        ];
        arrays.extend(
            self.values
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        arrays
    }

    /// The rows appended since the last call, as a batch of `schema`
    /// (the standard fields, then the table's own); the builders start over.
    pub fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_new(schema.clone(), self.finish_arrays())
    }
}
