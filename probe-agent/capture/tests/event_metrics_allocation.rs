//! Counting an event in a Tracepoint's metrics allocates only when the
//! event starts a new series: measured with a counting global allocator,
//! which is why this is a test binary of its own.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use crds::{FieldType, v1alpha1::MetricSpec};
use probe_capture::{
    clock::WallClock,
    derived_metrics::EventMetrics,
    plan::{ColumnLayout, ColumnPlan, RecordSchema},
    ring::decode,
};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting this thread's allocations.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A record: the 48-byte header, `code` (i32 at 48), `path` (a 32-byte
/// string at 56), `latency` (u64 at 88).
fn record(code: i32, path: &str, latency: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; 96];
    let header = probe_common::RecordHeader {
        kind: probe_common::RECORD_KIND_EVENT,
        probe_id: 0,
        ktime_ns: 0,
        pid_tgid: (42u64 << 32) | 43,
        cgroup_id: 0,
        comm: probe_common::RecordHeader::comm_from(b"cat"),
    };
    bytes[..48].copy_from_slice(&header.to_bytes());
    bytes[48..56].copy_from_slice(&i64::from(code).to_ne_bytes());
    bytes[56..56 + path.len()].copy_from_slice(path.as_bytes());
    bytes[88..96].copy_from_slice(&latency.to_ne_bytes());
    bytes
}

#[test]
fn known_series_count_without_allocating() {
    let schema = RecordSchema {
        columns: vec![
            ColumnPlan {
                name: "code".into(),
                offset: 48,
                layout: ColumnLayout::Int(FieldType::I32),
            },
            ColumnPlan {
                name: "path".into(),
                offset: 56,
                layout: ColumnLayout::String { area: 32 },
            },
            ColumnPlan {
                name: "latency".into(),
                offset: 88,
                layout: ColumnLayout::Int(FieldType::U64),
            },
        ],
        record_len: 96,
    };
    let specs: Vec<MetricSpec> = serde_yaml::from_str(
        "- {name: latency, kind: histogram, value: latency, buckets: [10, 100, 1000], \
         labels: [code, path, comm, node]}\n\
         - {name: requests, kind: counter, labels: [path, pid]}\n",
    )
    .unwrap();
    let mut metrics = EventMetrics::compile(&specs, &schema, "node-a").unwrap();
    let clock = WallClock::now();
    let records: Vec<Vec<u8>> = (0..1000)
        .map(|i| record(i % 4, &format!("/api/v{}", i % 8), u64::from(i as u32)))
        .collect();

    let before = allocations();
    for bytes in &records[..8] {
        metrics.observe(&decode(bytes).unwrap(), None, &clock);
    }
    assert!(allocations() > before, "new series allocate");

    let before = allocations();
    for _ in 0..100 {
        for bytes in &records {
            metrics.observe(&decode(bytes).unwrap(), None, &clock);
        }
    }
    assert_eq!(allocations() - before, 0, "known series allocate nothing");

    let samples = metrics.samples();
    assert_eq!(samples[0].series.len(), 8);
    assert_eq!(samples[1].series.len(), 8);
    let counted: u64 = samples[1].series.iter().map(|s| s.counts[0]).sum();
    assert_eq!(counted, 8 + 100 * 1000);
}
