//! What the agent captured: one table per attached probe, and the counts
//! that make captured + lost add up to what the kernel matched.
//!
//! [`Capture`] is the ring buffer's sink. Tables sit in a flat array indexed
//! by probe slot, so routing a record is an index, with no lookup.

use arrow_array::RecordBatch;
use probe_common::{MAX_PROBES, ProbeCounters};

use crate::{
    clock::WallClock,
    plan::RecordSchema,
    ring::{DecodeError, RawEvent, RecordSink},
    table::Table,
};

/// A probe's table and the records it received.
struct Slot {
    table: Table,
    received: u64,
    decode_errors: u64,
}

/// The tables of all attached probes.
pub struct Capture {
    slots: Vec<Option<Slot>>,
    clock: WallClock,
    node: String,
    /// Records that could not be decoded or named no attached probe.
    unattributed_errors: u64,
}

impl Capture {
    pub fn new(node: &str) -> Self {
        Self {
            slots: (0..MAX_PROBES).map(|_| None).collect(),
            clock: WallClock::now(),
            node: node.to_owned(),
            unattributed_errors: 0,
        }
    }

    /// Starts a fresh table for a probe slot.
    pub fn open(&mut self, probe: u32, schema: RecordSchema) {
        if let Some(slot) = self.slots.get_mut(probe as usize) {
            *slot = Some(Slot {
                table: Table::new(schema, &self.node),
                received: 0,
                decode_errors: 0,
            });
        }
    }

    /// Forgets a probe slot's table.
    pub fn close(&mut self, probe: u32) {
        if let Some(slot) = self.slots.get_mut(probe as usize) {
            *slot = None;
        }
    }

    pub fn table(&mut self, probe: u32) -> Option<&mut Table> {
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

    /// Every row of a probe's table.
    pub fn batches(&mut self, probe: u32) -> Vec<RecordBatch> {
        self.table(probe).map(Table::batches).unwrap_or_default()
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
                if slot.table.append(event, &clock).is_err() {
                    slot.decode_errors += 1;
                }
            }
            None => self.unattributed_errors += 1,
        }
    }

    fn decode_error(&mut self, _error: DecodeError) {
        self.unattributed_errors += 1;
    }
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
    use crate::plan::{ColumnLayout, ColumnPlan};

    fn record(probe_id: u32, value: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 56];
        bytes[0..4].copy_from_slice(&probe_common::RECORD_KIND_EVENT.to_ne_bytes());
        bytes[4..8].copy_from_slice(&probe_id.to_ne_bytes());
        bytes[16..24].copy_from_slice(&((42u64 << 32) | 43).to_ne_bytes());
        bytes[32..35].copy_from_slice(b"cat");
        bytes[48..56].copy_from_slice(&value.to_ne_bytes());
        bytes
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
