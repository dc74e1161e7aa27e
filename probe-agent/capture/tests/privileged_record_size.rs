//! The largest record a Tracepoint may produce, on this kernel's real eBPF.
//!
//! The eBPF side masks record lengths with `OFFSET_MASK` (4095) so the
//! verifier can bound them: a 4096-byte record would become 0 bytes there
//! and be dropped with no counter. Plans must refuse it, and the largest
//! record they accept must arrive whole: captured + counted lost ==
//! generated.

use arrow_array::{RecordBatch, cast::AsArray};
use crds::v1alpha1::TracepointSpec;
use probe_capture::{
    engine::AttachError,
    loader::{LoadOptions, Targets},
    plan::PlanError,
};
use probe_common::{MAX_FIELDS, MAX_RECORD, RECORD_HEADER_LEN};

mod common;

const LOADGEN: &str = env!("CARGO_BIN_EXE_sonde-loadgen");

/// An openat Tracepoint whose `MAX_FIELDS` columns all read the filename:
/// `MAX_FIELDS - 1` of 256 bytes, and a last one of `last_max` bytes. Each
/// string takes its length plus a NUL, rounded up to 8 bytes.
fn openat_spec(last_max: u32, path: &str) -> TracepointSpec {
    let mut fields = String::new();
    for i in 0..MAX_FIELDS {
        let max = if i + 1 == MAX_FIELDS { last_max } else { 256 };
        fields.push_str(&format!(
            "  - {{name: f{i}, source: filename, type: string, maxLength: {max}}}\n"
        ));
    }
    // Only the opens of `path` pass: the child's dynamic loader opens
    // other files before its load starts, and they must not count.
    serde_yaml::from_str(&format!(
        "probe: {{tracepoint: {{group: syscalls, name: sys_enter_openat}}}}\n\
         table: wide\n\
         fields:\n{fields}\
         filters:\n  - {{field: f0, op: eq, value: {path:?}}}\n"
    ))
    .expect("valid TracepointSpec YAML")
}

fn record_len(last_max: u32) -> u32 {
    let area = |max: u32| (max + 1).next_multiple_of(8);
    RECORD_HEADER_LEN + (MAX_FIELDS as u32 - 1) * area(256) + area(last_max)
}

#[test]
fn a_record_past_the_mask_is_refused_with_its_size() {
    // 48 + 15 × 264 + 88 = 4096: one byte past what the kernel side keeps.
    assert_eq!(record_len(87), MAX_RECORD + 1);
    let mut engine = common::engine(LoadOptions::default());
    let err = engine
        .attach(
            &openat_spec(87, "/dev/null"),
            Targets::Pids(vec![std::process::id()]),
        )
        .expect_err("a 4096-byte record cannot be emitted");
    match err {
        AttachError::Plan(plan) => assert!(
            matches!(
                *plan,
                PlanError::RecordTooLarge {
                    bytes: 4096,
                    limit: MAX_RECORD
                }
            ),
            "{plan}"
        ),
        other => panic!("expected RecordTooLarge, got {other}"),
    }
}

#[test]
fn the_largest_record_allowed_arrives_whole_and_balanced() {
    // 48 + 15 × 264 + 80 = 4088: the largest 8-byte multiple within the mask.
    let last_max = 79;
    let len = record_len(last_max);
    assert_eq!(len, 4088);
    assert!(len <= MAX_RECORD);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("a-file-with-a-known-name.txt");
    std::fs::write(&path, b"x").expect("write file");
    let path = path.to_str().expect("utf-8 path").to_owned();
    let calls = 20_000u64;

    let mut engine = common::engine(LoadOptions::default());
    let mut child = common::paused(
        LOADGEN,
        &["openat", &calls.to_string(), &path, "--wait-stdin"],
    );
    let probe = engine
        .attach(
            &openat_spec(last_max, &path),
            Targets::Pids(vec![child.id()]),
        )
        .expect("the largest record the plan allows attaches")
        .id;
    common::run_to_end(&mut engine, &mut child);

    let totals = engine.totals(probe).expect("totals");
    let batches = engine.batches(probe);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut ours = 0u64;
    for batch in &batches {
        let first = batch.column_by_name("f0").expect("f0").as_string::<i32>();
        let last = batch
            .column_by_name(&format!("f{}", MAX_FIELDS - 1))
            .expect("last field")
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            if first.value(row) == path {
                ours += 1;
                // The last column keeps at most `last_max` bytes of it.
                assert_eq!(last.value(row), &path[..path.len().min(last_max as usize)]);
            }
        }
    }
    assert_eq!(totals.captured, rows as u64);
    assert_eq!(
        ours, rows as u64,
        "only the opens of {path} pass the filter"
    );
    assert_eq!(
        totals.matched,
        totals.captured + totals.filtered + totals.lost(),
        "every matched event is captured, filtered or counted lost: {totals:?}"
    );
    assert_eq!(
        ours + totals.lost(),
        calls,
        "captured + counted lost == generated for {len}-byte records: {totals:?}"
    );
    eprintln!(
        "{len}-byte records: {ours} of {calls} opens captured, {} counted lost",
        totals.lost()
    );
}
