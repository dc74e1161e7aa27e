//! What the agent captured: one table per attached probe, and the counts
//! that make captured + lost add up to what the kernel matched.
//!
//! [`Capture`] is the ring buffer's sink. Tables sit in a flat array indexed
//! by probe slot, so routing a record is an index, with no lookup. Opened on
//! a [`BatchSink`], sealed batches go to the sink's tables.

use std::{sync::Arc, time::Duration};

use arrow_array::RecordBatch;
use crds::TableName;
use nix::time::{ClockId, clock_gettime};
use probe_common::{MAX_PROBES, ProbeCounters};

use crate::{
    clock::WallClock,
    derived_metrics::{EventMetrics, MetricSample},
    identity::CgroupIdentities,
    plan::RecordSchema,
    ring::{DecodeError, RawEvent, RecordSink},
    rows::TableRows,
    sink::{BatchSink, SinkError},
};

/// How long a captured row may wait in the builders before it is sealed
/// into a batch readers can see.
pub const MAX_PENDING: Duration = Duration::from_secs(1);

/// A probe's table, the metrics derived from its rows, and the records it
/// received.
struct Slot {
    table: TableRows,
    metrics: EventMetrics,
    received: u64,
    decode_errors: u64,
}

/// The tables of all attached probes.
pub struct Capture {
    slots: Vec<Option<Slot>>,
    clock: WallClock,
    node: String,
    /// Where tables opened with [`Capture::open_table`] send their batches.
    sink: Option<Arc<dyn BatchSink>>,
    /// Records that could not be decoded or named no attached probe.
    unattributed_errors: u64,
    /// Which pod container each cgroup is, for the identity columns.
    identities: CgroupIdentities,
}

impl Capture {
    /// Tables that keep every row themselves.
    pub fn new(node: &str) -> Self {
        Self {
            slots: (0..MAX_PROBES).map(|_| None).collect(),
            clock: WallClock::now(),
            node: node.to_owned(),
            sink: None,
            unattributed_errors: 0,
            identities: CgroupIdentities::default(),
        }
    }

    /// Tables that seal their batches into `sink`, where retention and
    /// readers take over.
    pub fn with_sink(node: &str, sink: Arc<dyn BatchSink>) -> Self {
        Self {
            sink: Some(sink),
            ..Self::new(node)
        }
    }

    /// Starts a probe slot's table as `name` in the sink (created there if
    /// new). Without a sink it is the same as [`Capture::open`].
    pub fn open_table(
        &mut self,
        probe: u32,
        schema: RecordSchema,
        name: TableName,
    ) -> Result<(), SinkError> {
        let table = match &self.sink {
            Some(sink) => TableRows::with_sink(schema, &self.node, Arc::clone(sink), name)?,
            None => TableRows::new(schema, &self.node),
        };
        if let Some(slot) = self.slots.get_mut(probe as usize) {
            *slot = Some(Slot {
                table,
                metrics: EventMetrics::default(),
                received: 0,
                decode_errors: 0,
            });
        }
        Ok(())
    }

    /// Drops a sink table (its columns changed); no-op without a sink.
    pub fn drop_sink_table(&mut self, name: &TableName) {
        if let Some(sink) = &self.sink {
            sink.drop_table(name);
        }
    }

    /// Seals every table whose oldest pending row waited at least
    /// `max_pending` (use [`MAX_PENDING`]); call it after each drain and on
    /// a timer, so rows show up at low rates too.
    pub fn seal_older_than(&mut self, max_pending: Duration) {
        let now = monotonic_ns();
        for slot in self.slots.iter_mut().flatten() {
            slot.table.seal_if_older_than(max_pending, now);
        }
    }

    /// Seals every table's pending rows.
    pub fn seal_all(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            slot.table.seal();
        }
    }

    /// Starts a fresh table for a probe slot.
    pub fn open(&mut self, probe: u32, schema: RecordSchema) {
        if let Some(slot) = self.slots.get_mut(probe as usize) {
            *slot = Some(Slot {
                table: TableRows::new(schema, &self.node),
                metrics: EventMetrics::default(),
                received: 0,
                decode_errors: 0,
            });
        }
    }

    /// Forgets a probe slot's table. Pending rows of a store table are
    /// sealed into the store first; the store table outlives the probe.
    pub fn close(&mut self, probe: u32) {
        if let Some(slot) = self.slots.get_mut(probe as usize) {
            if let Some(open) = slot.as_mut() {
                open.table.seal();
            }
            *slot = None;
        }
    }

    /// Derives `metrics` from the rows of an open probe slot from now on;
    /// they go when the slot is closed.
    pub fn set_metrics(&mut self, probe: u32, metrics: EventMetrics) {
        if let Some(slot) = self.slot_mut(probe) {
            slot.metrics = metrics;
        }
    }

    /// What the metrics of a probe slot counted so far.
    pub fn metric_samples(&self, probe: u32) -> Vec<MetricSample> {
        self.slot(probe)
            .map(|s| s.metrics.samples())
            .unwrap_or_default()
    }

    pub fn table(&mut self, probe: u32) -> Option<&mut TableRows> {
        self.slot_mut(probe).map(|s| &mut s.table)
    }

    /// Records received for a probe (decoded or not).
    pub fn received(&self, probe: u32) -> u64 {
        self.slot(probe).map_or(0, |s| s.received)
    }

    pub fn decode_errors(&self, probe: u32) -> u64 {
        self.slot(probe).map_or(0, |s| s.decode_errors)
    }

    pub fn unattributed_errors(&self) -> u64 {
        self.unattributed_errors
    }

    /// The cgroup → container map rows are labelled from; cluster mode
    /// keeps it current.
    pub fn identities_mut(&mut self) -> &mut CgroupIdentities {
        &mut self.identities
    }

    /// Every row of a probe's table.
    pub fn batches(&mut self, probe: u32) -> Vec<RecordBatch> {
        self.table(probe)
            .map(TableRows::batches)
            .unwrap_or_default()
    }

    fn slot(&self, probe: u32) -> Option<&Slot> {
        self.slots.get(probe as usize).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, probe: u32) -> Option<&mut Slot> {
        self.slots.get_mut(probe as usize).and_then(Option::as_mut)
    }
}

impl RecordSink for Capture {
    fn event(&mut self, event: &RawEvent<'_>) {
        let clock = self.clock;
        match self
            .slots
            .get_mut(event.probe_id as usize)
            .and_then(Option::as_mut)
        {
            Some(slot) => {
                slot.received += 1;
                let identity = self.identities.lookup(event.cgroup_id);
                match slot.table.append(event, identity, &clock) {
                    // Only rows make it into metrics, so they agree with the table.
                    Ok(()) => slot.metrics.observe(event, identity, &clock),
                    Err(_) => slot.decode_errors += 1,
                }
            }
            None => self.unattributed_errors += 1,
        }
    }

    fn decode_error(&mut self, _error: DecodeError) {
        self.unattributed_errors += 1;
    }
}

/// Kernel monotonic time (`bpf_ktime_get_ns`'s clock), in nanoseconds.
fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux; zero would only delay sealing
    // until the batch fills.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// A probe's totals: every event the kernel matched, by where it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeTotals {
    /// Events that matched the probe's targets in the kernel.
    pub matched: u64,
    /// Rows in the table.
    pub captured: u64,
    /// Rejected by a filter (by request: not a loss).
    pub filtered: u64,
    /// Dropped by 1-in-N sampling (by request: not a loss).
    pub sampled_out: u64,
    /// Lost: over the rate limit.
    pub rate_limited: u64,
    /// Lost: the ring buffer had no room.
    pub ringbuf_full: u64,
    /// Lost: a return without its entry.
    pub missing_entry: u64,
    /// Lost: the record could not be decoded.
    pub decode_errors: u64,
    /// Fields left empty because they could not be read (rows still captured).
    pub read_errors: u64,
}

impl std::ops::AddAssign for ProbeTotals {
    /// Adds another attachment's totals, field by field (saturating).
    fn add_assign(&mut self, other: Self) {
        self.matched = self.matched.saturating_add(other.matched);
        self.captured = self.captured.saturating_add(other.captured);
        self.filtered = self.filtered.saturating_add(other.filtered);
        self.sampled_out = self.sampled_out.saturating_add(other.sampled_out);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
        self.ringbuf_full = self.ringbuf_full.saturating_add(other.ringbuf_full);
        self.missing_entry = self.missing_entry.saturating_add(other.missing_entry);
        self.decode_errors = self.decode_errors.saturating_add(other.decode_errors);
        self.read_errors = self.read_errors.saturating_add(other.read_errors);
    }
}

impl ProbeTotals {
    pub fn new(kernel: ProbeCounters, received: u64, decode_errors: u64) -> Self {
        Self {
            matched: kernel.matched,
            captured: received - decode_errors.min(received),
            filtered: kernel.filtered,
            sampled_out: kernel.sampled_out,
            rate_limited: kernel.rate_limited,
            ringbuf_full: kernel.ringbuf_full,
            missing_entry: kernel.missing_entry,
            decode_errors,
            read_errors: kernel.read_errors,
        }
    }

    /// Events lost against the user's wishes.
    pub fn lost(&self) -> u64 {
        self.rate_limited + self.ringbuf_full + self.missing_entry + self.decode_errors
    }

    /// Records emitted but not drained from the ring yet.
    pub fn in_flight(&self) -> u64 {
        self.matched
            .saturating_sub(self.captured + self.lost() + self.filtered + self.sampled_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        plan::{ColumnLayout, ColumnPlan},
        sink::MemorySink,
    };

    fn header(probe_id: u32) -> probe_common::RecordHeader {
        probe_common::RecordHeader {
            kind: probe_common::RECORD_KIND_EVENT,
            probe_id,
            ktime_ns: 0,
            pid_tgid: (42u64 << 32) | 43,
            cgroup_id: 0,
            comm: probe_common::RecordHeader::comm_from(b"cat"),
        }
    }

    fn record_with(header: probe_common::RecordHeader, value: u64) -> Vec<u8> {
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&value.to_ne_bytes());
        bytes
    }

    fn record(probe_id: u32, value: u64) -> Vec<u8> {
        record_with(header(probe_id), value)
    }

    fn schema() -> RecordSchema {
        RecordSchema {
            columns: vec![ColumnPlan {
                name: "n".into(),
                offset: 48,
                layout: ColumnLayout::Int(crds::FieldType::I32),
            }],
            record_len: 56,
        }
    }

    #[test]
    fn routes_records_to_their_probe_table() {
        let mut capture = Capture::new("node-a");
        capture.open(3, schema());
        for value in [1u64, (-5i32) as u32 as u64] {
            let bytes = record(3, value);
            capture.event(&crate::ring::decode(&bytes).expect("valid"));
        }
        let short = record(3, 0);
        capture.event(&crate::ring::decode(&short[..50]).expect("header is valid"));
        let orphan = record(4, 0);
        capture.event(&crate::ring::decode(&orphan).expect("valid"));
        assert_eq!(capture.received(3), 3);
        assert_eq!(capture.decode_errors(3), 1);
        assert_eq!(capture.unattributed_errors(), 1);
        let batches = capture.batches(3);
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 2);
        let values = batches[0]
            .column_by_name("n")
            .expect("column n")
            .as_any()
            .downcast_ref::<arrow_array::Int32Array>()
            .expect("i32 column");
        assert_eq!(values.values(), &[1, -5]);
    }

    #[test]
    fn rows_carry_the_pod_of_their_cgroup() {
        let mut capture = Capture::new("node-a");
        capture.open(3, schema());
        capture.identities_mut().insert(
            99,
            crate::identity::ContainerIdentity::new("shop", "web", "main"),
        );
        let in_pod = record_with(
            probe_common::RecordHeader {
                cgroup_id: 99,
                ..header(3)
            },
            1,
        );
        let on_host = record(3, 2);
        for bytes in [&in_pod, &on_host, &in_pod] {
            capture.event(&crate::ring::decode(bytes).expect("valid"));
        }
        let batches = capture.batches(3);
        let schema = batches[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let standard: Vec<&str> = crds::v1alpha1::STANDARD_COLUMNS
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names[..standard.len()], standard[..]);
        assert_eq!(names[standard.len()..], ["n"]);
        for (column, value) in [("namespace", "shop"), ("pod", "web"), ("container", "main")] {
            let values = batches[0]
                .column_by_name(column)
                .expect("identity column")
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .expect("utf8 column");
            let got: Vec<Option<&str>> = values.iter().collect();
            assert_eq!(got, [Some(value), None, Some(value)], "{column}");
        }
    }

    #[test]
    fn sink_tables_get_batches_sealed_by_age() {
        let store = Arc::new(MemorySink::default());
        let name = TableName::new("shop", "opens");
        let mut capture = Capture::with_sink("node-a", store.clone());
        capture
            .open_table(3, schema(), name.clone())
            .expect("new sink table");
        let now = monotonic_ns();
        let bytes = record_with(
            probe_common::RecordHeader {
                ktime_ns: now,
                ..header(3)
            },
            7,
        );
        capture.event(&crate::ring::decode(&bytes).expect("valid"));
        let rows = |store: &MemorySink| store.rows(&name).expect("table");
        // Pending in the builders: not visible yet, and too young to seal.
        capture.seal_older_than(Duration::from_secs(3600));
        assert_eq!(rows(&store), 0);
        let table = capture.table(3).expect("open slot");
        assert!(!table.seal_if_older_than(Duration::from_millis(5), now + 1_000_000));
        assert!(table.seal_if_older_than(Duration::from_millis(5), now + 5_000_000));
        assert_eq!(rows(&store), 1);
        // Closing seals what is pending; the store table stays.
        capture.event(&crate::ring::decode(&bytes).expect("valid"));
        capture.close(3);
        assert_eq!(rows(&store), 2);
        // Dropped under the capture path: rows are counted, not silently lost.
        capture
            .open_table(3, schema(), name.clone())
            .expect("same schema reuses the table");
        assert!(store.drop_table(&name));
        capture.event(&crate::ring::decode(&bytes).expect("valid"));
        capture.seal_all();
        assert_eq!(capture.table(3).map(|t| t.unstored_rows()), Some(1));
    }

    #[test]
    fn totals_balance() {
        let kernel = ProbeCounters {
            matched: 20,
            filtered: 5,
            sampled_out: 3,
            rate_limited: 2,
            ringbuf_full: 1,
            emitted: 9,
            read_errors: 4,
            missing_entry: 0,
            sample_seq: 0,
        };
        let totals = ProbeTotals::new(kernel, 8, 1);
        assert_eq!(totals.captured, 7);
        assert_eq!(totals.lost(), 4);
        assert_eq!(totals.in_flight(), 1);
    }
}
