//! The benchmark's hand-written reference programs produce exactly the
//! records Sonde produces for the same Tracepoint: attached side by side to
//! the same hook, on the same events, every reference record must match
//! Sonde's column by column (latency aside, which each program measures
//! itself), and there must be as many of each. Otherwise `sonde-bench`
//! would compare Sonde with a program doing other work.

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crds::v1alpha1::TracepointSpec;
use probe_capture::{
    loader::{LoadOptions, ProbeSet, Targets},
    plan::{self, ColumnLayout, HookTarget, HostPaths},
    preflight,
    ring::{DecodeError, RawEvent, RecordSink},
    tracefs::Tracefs,
};
use probe_common::{header_offsets, programs, reference};

const LOADGEN: &str = env!("CARGO_BIN_EXE_sonde-loadgen");
const DEMO_APP: &str = env!("CARGO_BIN_EXE_sonde-demo-app");

/// Every record of one process, as bytes, by probe id.
struct Collect {
    pid: u32,
    sonde: Vec<Vec<u8>>,
    reference: Vec<Vec<u8>>,
}

impl RecordSink for Collect {
    fn event(&mut self, event: &RawEvent<'_>) {
        if event.pid != self.pid {
            return;
        }
        if event.probe_id == reference::PROBE_ID {
            self.reference.push(event.record.to_vec());
        } else {
            self.sonde.push(event.record.to_vec());
        }
    }

    fn decode_error(&mut self, error: DecodeError) {
        panic!("undecodable record: {error}");
    }
}

/// Attaches `yaml` through Sonde and `references` to the same hook, runs
/// `child` (paused on stdin) to its end and compares the records; returns
/// how many events each captured.
fn compare(yaml: &str, references: &[&str], mut child: Child) -> usize {
    if let Err(e) = preflight::check_privileges() {
        panic!("this test loads eBPF programs and cannot run here: {e}");
    }
    let tracefs = Tracefs::locate(None).expect("tracefs mounted (scripts/install.sh mounts it)");
    let mut set = ProbeSet::load(tracefs, LoadOptions::default()).expect("eBPF object loads");
    let spec: TracepointSpec = serde_yaml::from_str(yaml).expect("valid spec");
    let targets = Targets::Pids(vec![child.id()]);
    let plan = plan::compile(
        &spec,
        set.tracefs(),
        &HostPaths,
        targets.mode(),
        set.options().wakeup_watermark,
    )
    .expect("spec compiles");
    set.attach(&plan.hook, plan.config, targets)
        .expect("attach Sonde's probe");
    for program in references {
        match &plan.hook {
            HookTarget::Tracepoint { group, name } => {
                set.attach_measurement_tracepoint(program, group, name)
            }
            HookTarget::Uprobe { .. } => {
                set.attach_measurement_uprobe(program, Path::new(DEMO_APP), "handle_request")
            }
            other => panic!("no reference program for {other:?}"),
        }
        .unwrap_or_else(|e| panic!("attach {program}: {e}"));
    }
    let mut ring = set.take_ring().expect("the ring");
    let mut sink = Collect {
        pid: child.id(),
        sonde: Vec::new(),
        reference: Vec::new(),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(b"go\n").expect("release the child");
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ring.drain(&mut sink);
        if let Some(status) = child.try_wait().expect("wait for the child") {
            assert!(status.success(), "child failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "child did not finish in time");
        std::thread::sleep(Duration::from_millis(5));
    }
    ring.drain(&mut sink);

    assert_eq!(
        sink.sonde.len(),
        sink.reference.len(),
        "Sonde and the reference captured different numbers of events"
    );
    let len = plan.schema.record_len as usize;
    for (i, (sonde, reference)) in sink.sonde.iter().zip(&sink.reference).enumerate() {
        assert_eq!(sonde.len(), len, "Sonde record {i} length");
        assert_eq!(reference.len(), len, "reference record {i} length");
        // Kind, then everything from the thread id on: pid/tid, cgroup, comm.
        assert_eq!(sonde[..4], reference[..4], "record {i}: kind");
        let from = header_offsets::TID as usize;
        assert_eq!(
            sonde[from..48],
            reference[from..48],
            "record {i}: standard columns"
        );
        for column in &plan.schema.columns {
            let at = usize::from(column.offset);
            match column.layout {
                ColumnLayout::String { area } => {
                    let text = |r: &[u8]| {
                        let area = &r[at..at + usize::from(area)];
                        area[..area.iter().position(|&b| b == 0).unwrap_or(area.len())].to_vec()
                    };
                    assert_eq!(text(sonde), text(reference), "record {i}: {}", column.name);
                }
                _ if column.name == "latency" => {
                    for record in [sonde, reference] {
                        let latency =
                            u64::from_ne_bytes(record[at..at + 8].try_into().expect("8 bytes"));
                        assert!(latency > 0, "record {i}: latency 0");
                    }
                }
                _ => assert_eq!(
                    sonde[at..at + 8],
                    reference[at..at + 8],
                    "record {i}: {}",
                    column.name
                ),
            }
        }
    }
    sink.sonde.len()
}

fn paused(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .arg("--wait-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"))
}

#[test]
fn standard_columns_match_sonde() {
    let n = compare(
        "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}\ntable: t",
        &[programs::reference::STANDARD],
        paused(LOADGEN, &["getppid", "1000"]),
    );
    assert_eq!(n, 1000);
}

#[test]
fn openat_prefix_filter_matches_sonde() {
    let prefix = std::str::from_utf8(reference::OPENAT_PREFIX).expect("UTF-8 prefix");
    let n = compare(
        &format!(
            "probe: {{tracepoint: {{group: syscalls, name: sys_enter_openat}}}}
table: t
fields:
  - {{name: filename, type: string, maxLength: {}}}
filters:
  - {{field: filename, op: prefix, value: {prefix:?}}}",
            reference::FILENAME_MAX
        ),
        &[programs::reference::OPENAT_PREFIX],
        paused(
            LOADGEN,
            &[
                "openat",
                "1000",
                prefix,
                "--other-path",
                "/dev/null",
                "--path-every",
                "10",
            ],
        ),
    );
    // Calls 0, 10, 20, ... open the prefixed path (plus whatever the
    // process itself opens at start that has the prefix: nothing).
    assert_eq!(n, 100);
}

#[test]
fn uprobe_arguments_match_sonde() {
    let n = compare(
        &format!(
            "probe: {{uprobe: {{binary: {DEMO_APP:?}, symbol: handle_request}}}}
table: t
fields:
  - {{name: id, source: arg0, type: u64}}
  - {{name: size, source: arg1, type: u32}}"
        ),
        &[programs::reference::UPROBE],
        paused(DEMO_APP, &["--requests", "300", "--size", "77"]),
    );
    assert_eq!(n, 300);
}

#[test]
fn uretprobe_result_and_latency_match_sonde() {
    let n = compare(
        &format!(
            "probe: {{uretprobe: {{binary: {DEMO_APP:?}, symbol: handle_request}}}}
table: t
fields:
  - {{name: id, source: arg0, type: u64}}
  - {{name: result, source: retval, type: i64}}
  - {{name: latency}}"
        ),
        &[
            programs::reference::URETPROBE_ENTRY,
            programs::reference::URETPROBE,
        ],
        paused(
            DEMO_APP,
            &["--requests", "100", "--start-id", "5", "--sleep-us", "100"],
        ),
    );
    assert_eq!(n, 100);
}
