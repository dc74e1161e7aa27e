//! Privileged tests of every probe kind, typed fields, in-kernel filters,
//! sampling, rate limits and loss accounting, on this kernel's real eBPF.
//!
//! Each test makes a child produce an exact number of events with known
//! values and checks the table holds exactly those rows, and that every
//! event the kernel matched is accounted for.

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Child, Command},
    time::{Duration, Instant},
};

use arrow_array::{
    Array, ArrowPrimitiveType, RecordBatch,
    cast::AsArray,
    types::{Int32Type, Int64Type, UInt32Type, UInt64Type},
};
use crds::v1alpha1::TracepointSpec;
use probe_capture::{
    engine::{AttachError, Engine},
    loader::{LoadOptions, ProbeId, Targets},
    tracefs::Tracefs,
};

mod common;

use common::{engine, paused, run_to_end};

const LOADGEN: &str = env!("CARGO_BIN_EXE_sonde-loadgen");
const DEMO_APP: &str = env!("CARGO_BIN_EXE_sonde-demo-app");

fn spec(yaml: &str) -> TracepointSpec {
    serde_yaml::from_str(yaml).expect("valid TracepointSpec YAML")
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Every value of a primitive column, across batches.
fn values<T: ArrowPrimitiveType>(batches: &[RecordBatch], column: &str) -> Vec<T::Native> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(column)
                .unwrap_or_else(|| panic!("column {column}"))
                .as_primitive::<T>()
                .values()
                .to_vec()
        })
        .collect()
}

fn u64s(batches: &[RecordBatch], column: &str) -> Vec<u64> {
    values::<UInt64Type>(batches, column)
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let array = b
                .column_by_name(column)
                .unwrap_or_else(|| panic!("column {column}"))
                .as_string::<i32>()
                .clone();
            (0..array.len())
                .map(|i| array.value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Asserts the kernel's and user space's counts add up exactly.
fn assert_balanced(engine: &Engine, probe: ProbeId) -> probe_capture::capture::ProbeTotals {
    let t = engine.totals(probe).expect("totals");
    assert_eq!(
        t.matched,
        t.captured + t.filtered + t.sampled_out + t.lost(),
        "every matched event is captured, filtered, sampled out or counted lost: {t:?}"
    );
    t
}

#[test]
fn syscall_tracepoint_captures_exact_filenames_and_filters_in_kernel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wanted = dir.path().join("wanted.txt");
    let other = dir.path().join("other.txt");
    std::fs::write(&wanted, b"x").expect("write file");
    std::fs::write(&other, b"x").expect("write file");
    let prefix = wanted.to_str().expect("utf-8 path").to_owned();

    let mut engine = engine(LoadOptions::default());
    let mut matching = paused(LOADGEN, &["openat", "3000", &prefix, "--wait-stdin"]);
    let mut filtered = paused(
        LOADGEN,
        &[
            "openat",
            "2000",
            other.to_str().expect("utf-8"),
            "--wait-stdin",
        ],
    );
    let probe = engine
        .attach(
            &spec(&format!(
                "probe: {{tracepoint: {{group: syscalls, name: sys_enter_openat}}}}
table: opens
fields:
  - {{name: filename, type: string, maxLength: 200}}
  - {{name: flags, type: u32}}
  - {{name: dfd, type: i32}}
filters:
  - {{field: filename, op: prefix, value: {prefix:?}}}"
            )),
            Targets::Pids(vec![matching.id(), filtered.id()]),
        )
        .expect("attach openat")
        .id;
    run_to_end(&mut engine, &mut matching);
    run_to_end(&mut engine, &mut filtered);

    let batches = engine.batches(probe);
    assert_eq!(rows(&batches), 3000);
    assert!(strings(&batches, "filename").iter().all(|f| *f == prefix));
    // O_RDONLY | O_CLOEXEC, as std opens files.
    let flags: BTreeSet<u32> = values::<UInt32Type>(&batches, "flags")
        .into_iter()
        .collect();
    assert_eq!(
        flags,
        BTreeSet::from([libc::O_RDONLY as u32 | libc::O_CLOEXEC as u32])
    );
    // AT_FDCWD is -100, sign-extended from the kernel's 8-byte word.
    assert!(
        values::<Int32Type>(&batches, "dfd")
            .iter()
            .all(|&d| d == libc::AT_FDCWD)
    );
    let pids: BTreeSet<u32> = values::<UInt32Type>(&batches, "pid").into_iter().collect();
    assert_eq!(pids, BTreeSet::from([matching.id()]));
    let t = assert_balanced(&engine, probe);
    assert_eq!(
        t.filtered, 2000,
        "exactly the other child's opens are filtered"
    );
    assert_eq!(t.lost(), 0);
}

/// String filters read only the bytes they compare before deciding; rows
/// still hold the whole string, and a longer string never passes for an
/// equal one.
#[test]
fn string_filters_decide_on_a_short_read_and_rows_keep_whole_strings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let short = dir.path().join("wanted.txt");
    let long = dir.path().join("wanted.txt.bak");
    std::fs::write(&short, b"x").expect("write file");
    std::fs::write(&long, b"x").expect("write file");
    let short = short.to_str().expect("utf-8 path").to_owned();
    let long = long.to_str().expect("utf-8 path").to_owned();
    let prefix = format!("{}/want", dir.path().to_str().expect("utf-8 path"));

    let mut engine = engine(LoadOptions::default());
    let mut shorts = paused(LOADGEN, &["openat", "1500", &short, "--wait-stdin"]);
    let mut longs = paused(LOADGEN, &["openat", "1000", &long, "--wait-stdin"]);
    let targets = || Targets::Pids(vec![shorts.id(), longs.id()]);
    let attach = |engine: &mut Engine, table: &str, op: &str, value: &str| {
        engine
            .attach(
                &spec(&format!(
                    "probe: {{tracepoint: {{group: syscalls, name: sys_enter_openat}}}}
table: {table}
fields:
  - {{name: filename, type: string, maxLength: 200}}
filters:
  - {{field: filename, op: {op}, value: {value:?}}}"
                )),
                targets(),
            )
            .expect("attach openat")
            .id
    };
    let by_prefix = attach(&mut engine, "by_prefix", "prefix", &prefix);
    let equal = attach(&mut engine, "equal", "eq", &short);
    let not_equal = attach(&mut engine, "not_equal", "ne", &short);
    run_to_end(&mut engine, &mut shorts);
    run_to_end(&mut engine, &mut longs);

    let mut names = |probe| strings(&engine.batches(probe), "filename");
    let count = |names: &[String], name: &str| names.iter().filter(|f| *f == name).count();
    // The prefix is shorter than both names: both pass, whole.
    let kept = names(by_prefix);
    assert_eq!(kept.len(), 2500);
    assert_eq!((count(&kept, &short), count(&kept, &long)), (1500, 1000));
    // The long name starts with the short one: only equality tells them apart.
    let kept = names(equal);
    assert_eq!((kept.len(), count(&kept, &short)), (1500, 1500));
    let kept = names(not_equal);
    assert_eq!((kept.len(), count(&kept, &long)), (1000, 1000));
    for (probe, filtered) in [(by_prefix, 0), (equal, 1000), (not_equal, 1500)] {
        let t = assert_balanced(&engine, probe);
        assert_eq!(t.filtered, filtered, "{t:?}");
        assert_eq!(t.lost(), 0, "{t:?}");
    }
}

#[test]
fn sampling_keeps_one_in_ten_with_an_exact_sampled_out_count() {
    let mut engine = engine(LoadOptions::default());
    let mut child = paused(LOADGEN, &["getppid", "100000", "--wait-stdin"]);
    let probe = engine
        .attach(
            &spec(
                "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}
table: sampled
sampling: {oneIn: 10}",
            ),
            Targets::Pids(vec![child.id()]),
        )
        .expect("attach")
        .id;
    run_to_end(&mut engine, &mut child);
    let t = assert_balanced(&engine, probe);
    assert_eq!(t.matched, 100_000);
    assert!((9_900..=10_100).contains(&t.captured), "{t:?}");
    assert_eq!(t.captured + t.sampled_out, 100_000);
    eprintln!(
        "sampling 1 in 10: {} kept, {} sampled out",
        t.captured, t.sampled_out
    );
}

#[test]
fn rate_limit_drops_the_excess_and_counts_it() {
    let mut engine = engine(LoadOptions::default());
    let mut child = paused(LOADGEN, &["getppid", "200000", "--wait-stdin"]);
    let probe = engine
        .attach(
            &spec(
                "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}
table: limited
rateLimit: {eventsPerSecond: 1000}",
            ),
            Targets::Pids(vec![child.id()]),
        )
        .expect("attach")
        .id;
    let start = Instant::now();
    run_to_end(&mut engine, &mut child);
    let seconds = start.elapsed().as_secs() + 1;
    let t = assert_balanced(&engine, probe);
    assert_eq!(t.captured + t.rate_limited, 200_000);
    // At most the limit per started second, plus one per CPU racing at a
    // window's edge.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    assert!(t.captured <= (1000 + cpus) * seconds, "{t:?} in {seconds}s");
    assert!(t.captured >= 1000, "{t:?}");
    eprintln!(
        "rate limit 1000/s: {} kept, {} counted lost",
        t.captured, t.rate_limited
    );
}

#[test]
fn a_flood_beyond_the_ring_is_exactly_accounted() {
    // A 16 KiB ring drained every 5 ms cannot keep up with a tight syscall
    // loop: the kernel drops records and counts each one.
    let mut engine = engine(LoadOptions {
        ring_bytes: 16 << 10,
        wakeup_watermark: u64::MAX,
        ..LoadOptions::default()
    });
    let mut child = paused(LOADGEN, &["getppid", "300000", "--wait-stdin"]);
    let probe = engine
        .attach(
            &spec(
                "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}
table: flood",
            ),
            Targets::Pids(vec![child.id()]),
        )
        .expect("attach")
        .id;
    run_to_end(&mut engine, &mut child);
    let t = assert_balanced(&engine, probe);
    assert_eq!(t.matched, 300_000);
    assert!(t.ringbuf_full > 0, "the flood overflowed the ring: {t:?}");
    assert_eq!(t.captured + t.ringbuf_full, 300_000);
    assert_eq!(rows(&engine.batches(probe)) as u64, t.captured);
    eprintln!(
        "flood: {} captured + {} counted lost == 300000",
        t.captured, t.ringbuf_full
    );
}

#[test]
fn raw_tracepoint_sees_every_exec_with_its_old_pid() {
    let mut engine = engine(LoadOptions::default());
    let probe = engine
        .attach(
            &spec(
                "probe: {rawTracepoint: {name: sched_process_exec}}
table: execs
fields:
  - {name: old_pid, source: arg1, type: i32}",
            ),
            Targets::All,
        )
        .expect("attach sched_process_exec")
        .id;
    let mut pids = BTreeSet::new();
    for _ in 0..20 {
        let child = Command::new("/bin/true").spawn().expect("run /bin/true");
        pids.insert(child.id());
        let mut child = child;
        assert!(child.wait().expect("wait").success());
    }
    engine.drain();
    let batches = engine.batches(probe);
    let mut seen = BTreeSet::new();
    for batch in &batches {
        let pid = batch
            .column_by_name("pid")
            .expect("pid")
            .as_primitive::<UInt32Type>();
        let old = batch
            .column_by_name("old_pid")
            .expect("old_pid")
            .as_primitive::<Int32Type>();
        let comm = batch
            .column_by_name("comm")
            .expect("comm")
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            if pids.contains(&pid.value(row)) {
                assert_eq!(comm.value(row), "true");
                assert_eq!(old.value(row) as u32, pid.value(row));
                seen.insert(pid.value(row));
            }
        }
    }
    assert_eq!(seen, pids, "one exec row per child");
    assert_balanced(&engine, probe);
}

#[test]
fn uprobe_captures_exact_arguments() {
    let mut engine = engine(LoadOptions::default());
    let mut app = paused(
        DEMO_APP,
        &[
            "--requests",
            "500",
            "--start-id",
            "1000",
            "--size",
            "77",
            "--wait-stdin",
        ],
    );
    let probe = engine
        .attach(
            &spec(&format!(
                "probe: {{uprobe: {{binary: {DEMO_APP:?}, symbol: handle_request}}}}
table: requests
fields:
  - {{name: id, source: arg0, type: u64}}
  - {{name: size, source: arg1, type: u32}}"
            )),
            Targets::Pids(vec![app.id()]),
        )
        .expect("attach uprobe")
        .id;
    run_to_end(&mut engine, &mut app);
    let batches = engine.batches(probe);
    assert_eq!(u64s(&batches, "id"), (1000..1500).collect::<Vec<_>>());
    assert!(
        values::<UInt32Type>(&batches, "size")
            .iter()
            .all(|&s| s == 77)
    );
    let t = assert_balanced(&engine, probe);
    assert_eq!((t.matched, t.lost()), (500, 0));
}

#[test]
fn uretprobe_captures_return_value_and_latency() {
    let mut engine = engine(LoadOptions::default());
    let sleep_us = 2000u64;
    let mut app = paused(
        DEMO_APP,
        &[
            "--requests",
            "50",
            "--start-id",
            "7",
            "--size",
            "5",
            "--sleep-us",
            &sleep_us.to_string(),
            "--wait-stdin",
        ],
    );
    let probe = engine
        .attach(
            &spec(&format!(
                "probe: {{uretprobe: {{binary: {DEMO_APP:?}, symbol: handle_request}}}}
table: latencies
fields:
  - {{name: id, source: arg0, type: u64}}
  - {{name: result, source: retval, type: i64}}
  - {{name: latency}}"
            )),
            Targets::Pids(vec![app.id()]),
        )
        .expect("attach uretprobe")
        .id;
    run_to_end(&mut engine, &mut app);
    let batches = engine.batches(probe);
    let ids = u64s(&batches, "id");
    assert_eq!(ids, (7..57).collect::<Vec<_>>());
    let results = values::<Int64Type>(&batches, "result");
    let expected: Vec<i64> = ids.iter().map(|&id| 2 * id as i64 + 5).collect();
    assert_eq!(results, expected, "handle_request returns 2 * id + size");
    for latency in u64s(&batches, "latency") {
        assert!(
            (sleep_us * 1000..sleep_us * 1000 + 250_000_000).contains(&latency),
            "latency {latency} ns outside [{} ns, +250 ms)",
            sleep_us * 1000
        );
    }
    let t = assert_balanced(&engine, probe);
    assert_eq!((t.matched, t.lost()), (50, 0));
}

#[test]
fn usdt_probe_captures_its_arguments() {
    let mut engine = engine(LoadOptions::default());
    let mut app = paused(
        DEMO_APP,
        &[
            "--requests",
            "300",
            "--start-id",
            "40",
            "--size",
            "9",
            "--wait-stdin",
        ],
    );
    let probe = engine
        .attach(
            &spec(&format!(
                "probe: {{usdt: {{binary: {DEMO_APP:?}, provider: sonde, name: request}}}}
table: usdt_requests
fields:
  - {{name: id, source: arg0, type: u64}}
  - {{name: size, source: arg1, type: u32}}"
            )),
            Targets::Pids(vec![app.id()]),
        )
        .expect("attach usdt")
        .id;
    run_to_end(&mut engine, &mut app);
    let batches = engine.batches(probe);
    assert_eq!(u64s(&batches, "id"), (40..340).collect::<Vec<_>>());
    let t = assert_balanced(&engine, probe);
    assert_eq!((t.matched, t.lost()), (300, 0));
}

/// The kernel function behind getppid(2) on this architecture.
const GETPPID_FUNCTION: &str = if cfg!(target_arch = "aarch64") {
    "__arm64_sys_getppid"
} else {
    "__x64_sys_getppid"
};

/// The kernel's build configuration and where it was read, if the kernel
/// exposes it (`/proc/config.gz`) or the distribution installed it.
fn kernel_config() -> Option<(String, String)> {
    let proc_config = "/proc/config.gz";
    if std::path::Path::new(proc_config).exists() {
        let output = Command::new("gzip")
            .args(["-dc", proc_config])
            .output()
            .expect("run gzip to read /proc/config.gz");
        assert!(output.status.success(), "gzip -dc {proc_config} failed");
        let text = String::from_utf8(output.stdout).expect("the kernel config is text");
        return Some((proc_config.to_owned(), text));
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let boot_config = format!("/boot/config-{}", release.trim());
    std::fs::read_to_string(&boot_config)
        .ok()
        .map(|text| (boot_config, text))
}

/// Whether this kernel can place kprobes, decided from facts Sonde's own
/// detector does not look at: the kernel's build configuration
/// (CONFIG_KPROBES, CONFIG_KPROBE_EVENTS) and the kprobe PMU that BPF
/// kprobes are created through. `Err` says why not.
fn kernel_kprobes() -> Result<(), String> {
    let config = kernel_config();
    if let Some((source, text)) = &config {
        for option in ["CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS"] {
            if !text.lines().any(|line| line == format!("{option}=y")) {
                return Err(format!("{option} is not set in {source}"));
            }
        }
    }
    let pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type");
    if !pmu.exists() {
        return Err(format!(
            "the kernel has no kprobe PMU ({} does not exist){}",
            pmu.display(),
            if config.is_none() {
                "; its build configuration is not readable"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// On a kernel that has kprobes: checks `function` is a function of this
/// kernel (`/proc/kallsyms`) and that the kernel itself accepts a kprobe on
/// it (a probe defined and removed through tracefs's `kprobe_events`), so
/// a failed attach is Sonde's fault and not the function's.
fn assert_kernel_probes(function: &str) {
    let symbols = std::fs::read_to_string("/proc/kallsyms").expect("read /proc/kallsyms");
    assert!(
        symbols.lines().any(|line| {
            let mut parts = line.split_whitespace().skip(1);
            matches!(parts.next(), Some("t" | "T")) && parts.next() == Some(function)
        }),
        "{function} is not a function of this kernel (/proc/kallsyms); the test needs it"
    );
    let tracefs = Tracefs::locate(None).expect("tracefs");
    let events = tracefs.root().join("kprobe_events");
    let event = format!("sonde_test_{}/probe", std::process::id());
    let define = |line: String| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&events)
            .and_then(|mut file| file.write_all(line.as_bytes()))
    };
    define(format!("p:{event} {function}\n")).unwrap_or_else(|e| {
        panic!(
            "the kernel refused a kprobe on {function} through {}: {e}",
            events.display()
        )
    });
    define(format!("-:{event}\n")).expect("remove the trial kprobe");
}

/// Waits until `child` is blocked reading stdin (`/proc/<pid>/syscall`
/// shows read(0, ...)), so everything it did while starting (the dynamic
/// loader's opens) happened before a probe is attached to it.
fn wait_until_reading_stdin(child: &Child) {
    let read = if cfg!(target_arch = "aarch64") { 63 } else { 0 };
    let blocked = format!("{read} 0x0 ");
    let path = format!("/proc/{}/syscall", child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let syscall = std::fs::read_to_string(&path).unwrap_or_default();
        if syscall.starts_with(&blocked) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {} did not block on stdin: {path} is {syscall:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kprobes_capture_exact_arguments_where_the_kernel_has_them_and_are_unsupported_elsewhere() {
    const OPENS: u64 = 2000;
    let mut engine = engine(LoadOptions::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("opened.txt");
    std::fs::write(&file, b"x").expect("write file");
    let mut child = paused(
        LOADGEN,
        &[
            "openat",
            &OPENS.to_string(),
            file.to_str().expect("utf-8 path"),
            "--wait-stdin",
        ],
    );
    wait_until_reading_stdin(&child);
    // do_sys_openat2(int dfd, const char __user *filename, struct open_how *how)
    let result = engine.attach(
        &spec(
            "probe: {kprobe: {function: do_sys_openat2}}
table: kopens
fields:
  - {name: dfd, source: arg0, type: i32}",
        ),
        Targets::Pids(vec![child.id()]),
    );
    match kernel_kprobes() {
        Ok(()) => {
            assert_kernel_probes("do_sys_openat2");
            let probe = result.expect("kprobe attaches on a kernel with kprobes").id;
            run_to_end(&mut engine, &mut child);
            let batches = engine.batches(probe);
            let t = assert_balanced(&engine, probe);
            assert_eq!(t.matched, OPENS, "one call per open: {t:?}");
            assert_eq!(rows(&batches) as u64, t.captured);
            assert_eq!(t.captured + t.lost(), OPENS, "{t:?}");
            let pids: BTreeSet<u32> = values::<UInt32Type>(&batches, "pid").into_iter().collect();
            assert_eq!(pids, BTreeSet::from([child.id()]));
            assert!(
                strings(&batches, "comm")
                    .iter()
                    .all(|c| c == "sonde-loadgen")
            );
            // std opens relative to the working directory: AT_FDCWD.
            assert!(
                values::<Int32Type>(&batches, "dfd")
                    .iter()
                    .all(|&d| d == libc::AT_FDCWD)
            );
            eprintln!(
                "kprobes: this kernel has them; do_sys_openat2 captured {} of {OPENS} opens \
                 (+ {} counted lost) with dfd AT_FDCWD",
                t.captured,
                t.lost()
            );
        }
        Err(why) => {
            let err = result.expect_err("this kernel has no kprobes");
            assert!(err.is_unsupported(), "{err}");
            assert_eq!(
                err.to_string(),
                "kprobe probes are unsupported on this node: this kernel was built without \
                 kprobes (CONFIG_KPROBES)"
            );
            run_to_end(&mut engine, &mut child);
            eprintln!(
                "kprobes: not available on this kernel ({why}); the supported path did not run; \
                 tested that Sonde reports the kprobe unsupported on this node"
            );
        }
    }
}

#[test]
fn kretprobes_capture_the_return_value_and_latency_where_the_kernel_has_them() {
    const CALLS: u64 = 3000;
    let mut engine = engine(LoadOptions::default());
    let mut child = paused(LOADGEN, &["getppid", &CALLS.to_string(), "--wait-stdin"]);
    let result = engine.attach(
        &spec(&format!(
            "probe: {{kretprobe: {{function: {GETPPID_FUNCTION}}}}}
table: kparents
fields:
  - {{name: parent, source: retval, type: i64}}
  - {{name: latency}}"
        )),
        Targets::Pids(vec![child.id()]),
    );
    match kernel_kprobes() {
        Ok(()) => {
            assert_kernel_probes(GETPPID_FUNCTION);
            let probe = result
                .expect("kretprobe attaches on a kernel with kprobes")
                .id;
            run_to_end(&mut engine, &mut child);
            let batches = engine.batches(probe);
            let t = assert_balanced(&engine, probe);
            assert_eq!(t.matched, CALLS, "one return per call: {t:?}");
            assert_eq!(rows(&batches) as u64, t.captured);
            assert_eq!(t.captured + t.lost(), CALLS, "{t:?}");
            let pids: BTreeSet<u32> = values::<UInt32Type>(&batches, "pid").into_iter().collect();
            assert_eq!(pids, BTreeSet::from([child.id()]));
            // The child's parent is this test process.
            let parents: BTreeSet<i64> = values::<Int64Type>(&batches, "parent")
                .into_iter()
                .collect();
            assert_eq!(parents, BTreeSet::from([i64::from(std::process::id())]));
            // A getppid call takes well under a microsecond; a preempted one
            // may take longer, but never a second.
            let latencies = u64s(&batches, "latency");
            assert!(
                latencies.iter().all(|&l| l > 0 && l < 1_000_000_000),
                "latencies outside (0, 1 s): {:?}",
                latencies
                    .iter()
                    .filter(|&&l| l == 0 || l >= 1_000_000_000)
                    .collect::<Vec<_>>()
            );
            let mut sorted = latencies;
            sorted.sort_unstable();
            eprintln!(
                "kretprobes: this kernel has them; {GETPPID_FUNCTION} returned this test's pid \
                 {} times (+ {} counted lost), median latency {} ns",
                t.captured,
                t.lost(),
                sorted.get(sorted.len() / 2).copied().unwrap_or_default()
            );
        }
        Err(why) => {
            let err = result.expect_err("this kernel has no kprobes");
            assert!(err.is_unsupported(), "{err}");
            assert_eq!(
                err.to_string(),
                "kretprobe probes are unsupported on this node: this kernel was built without \
                 kprobes (CONFIG_KPROBES)"
            );
            run_to_end(&mut engine, &mut child);
            eprintln!(
                "kretprobes: not available on this kernel ({why}); the supported path did not \
                 run; tested that Sonde reports the kretprobe unsupported on this node"
            );
        }
    }
}

#[test]
fn bad_specs_are_refused_by_name_and_others_keep_running() {
    let mut engine = engine(LoadOptions::default());
    let mut child = paused(LOADGEN, &["getppid", "1000", "--wait-stdin"]);
    let good = engine
        .attach(
            &spec("probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}\ntable: good"),
            Targets::Pids(vec![child.id()]),
        )
        .expect("attach")
        .id;
    let refuse = |engine: &mut Engine, yaml: &str| -> String {
        let err: AttachError = engine.attach(&spec(yaml), Targets::All).expect_err(yaml);
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        message
    };
    let cases: Vec<(String, &str)> = vec![
        (
            "probe: {tracepoint: {group: syscalls, name: sys_enter_nothing}}\ntable: t".into(),
            "tracepoint syscalls/sys_enter_nothing does not exist on this kernel",
        ),
        (
            "probe: {tracepoint: {group: syscalls, name: sys_enter_openat}}\ntable: t\n\
             fields: [{name: path}]"
                .into(),
            "tracepoint syscalls/sys_enter_openat has no field \"path\"; it has: __syscall_nr, \
             dfd, filename, flags, mode",
        ),
        (
            "probe: {tracepoint: {group: syscalls, name: sys_enter_openat}}\ntable: t\n\
             fields: [{name: flags, type: string}]"
                .into(),
            "field \"flags\" of tracepoint syscalls/sys_enter_openat is a u64, which cannot be \
             read as string",
        ),
        (
            "probe: {uprobe: {binary: /nonexistent/app, symbol: main}}\ntable: t".into(),
            "binary /nonexistent/app does not exist",
        ),
        (
            format!("probe: {{uprobe: {{binary: {DEMO_APP:?}, symbol: handle_reqest}}}}\ntable: t"),
            "symbol \"handle_reqest\" not found",
        ),
        (
            "probe: {rawTracepoint: {name: no_such_event}}\ntable: t".into(),
            "raw tracepoint no_such_event does not exist on this kernel",
        ),
        (
            format!(
                "probe: {{usdt: {{binary: {DEMO_APP:?}, provider: sonde, name: request_done}}}}\n\
                 table: t"
            ),
            "the probe is gated by a semaphore, which this agent cannot raise yet",
        ),
        (
            format!(
                "probe: {{usdt: {{binary: {DEMO_APP:?}, provider: sonde, name: nothing}}}}\n\
                 table: t"
            ),
            "USDT probe sonde:nothing not found in",
        ),
    ];
    for (yaml, expected) in &cases {
        let message = refuse(&mut engine, yaml);
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
    run_to_end(&mut engine, &mut child);
    assert_eq!(engine.totals(good).expect("totals").captured, 1000);
}

#[test]
fn tracepoints_on_one_hook_share_its_attachment() {
    let mut engine = engine(LoadOptions::default());
    let mut first = paused(LOADGEN, &["getppid", "3000", "--wait-stdin"]);
    let mut second = paused(LOADGEN, &["getppid", "2000", "--wait-stdin"]);
    let targets = Targets::Pids(vec![first.id(), second.id()]);
    let all = engine
        .attach(
            &spec("probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}\ntable: all"),
            targets.clone(),
        )
        .expect("attach")
        .id;
    let only_first = engine
        .attach(
            &spec(&format!(
                "probe: {{tracepoint: {{group: syscalls, name: sys_enter_getppid}}}}
table: first
filters: [{{field: pid, op: eq, value: {}}}]",
                first.id()
            )),
            targets,
        )
        .expect("attach")
        .id;
    assert_eq!(
        engine.probe_set().attachment_count(),
        1,
        "one link serves both"
    );
    run_to_end(&mut engine, &mut first);
    assert_eq!(engine.totals(all).expect("totals").captured, 3000);
    assert_eq!(engine.totals(only_first).expect("totals").captured, 3000);

    // Detaching one keeps the other running on the same attachment.
    engine.detach(only_first).expect("detach");
    assert_eq!(engine.probe_set().attachment_count(), 1);
    run_to_end(&mut engine, &mut second);
    let t = assert_balanced(&engine, all);
    assert_eq!((t.captured, t.lost()), (5000, 0));
    engine.detach(all).expect("detach");
    assert_eq!(
        engine.probe_set().attachment_count(),
        0,
        "the last probe takes the link"
    );
}

#[test]
fn a_comm_filter_keeps_only_that_command_with_its_name_in_the_rows() {
    // The command name is read before the filters only when one compares
    // it: a second copy of the load generator under another name makes the
    // events the filter must reject.
    let dir = tempfile::tempdir().expect("temp dir");
    let renamed = dir.path().join("other-gen");
    std::fs::copy(LOADGEN, &renamed).expect("copy the load generator");
    let mut engine = engine(LoadOptions::default());
    let mut kept = paused(LOADGEN, &["getppid", "300", "--wait-stdin"]);
    let mut rejected = paused(
        renamed.to_str().expect("UTF-8 path"),
        &["getppid", "200", "--wait-stdin"],
    );
    let probe = engine
        .attach(
            &spec(
                "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}
table: kept
filters: [{field: comm, op: eq, value: sonde-loadgen}]",
            ),
            Targets::Pids(vec![kept.id(), rejected.id()]),
        )
        .expect("attach")
        .id;
    run_to_end(&mut engine, &mut kept);
    run_to_end(&mut engine, &mut rejected);
    let batches = engine.batches(probe);
    assert_eq!(rows(&batches), 300);
    assert!(
        strings(&batches, "comm")
            .iter()
            .all(|c| c == "sonde-loadgen")
    );
    let t = assert_balanced(&engine, probe);
    assert_eq!((t.captured, t.filtered, t.lost()), (300, 200, 0));
}

/// A cgroup v2 directory made for one test and removed after it.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Self {
        let root = std::path::Path::new("/sys/fs/cgroup/unified");
        let root = if root.join("cgroup.procs").exists() {
            root
        } else {
            std::path::Path::new("/sys/fs/cgroup")
        };
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a cgroup v2 directory");
        Self(dir)
    }

    /// The id `bpf_get_current_cgroup_id` reports: the directory's inode.
    fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.0).expect("cgroup metadata").ino()
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_cgroup_target_set_captures_only_processes_in_those_cgroups() {
    let cgroup = TestCgroup::new("sonde-test");
    let mut engine = engine(LoadOptions::default());
    let mut inside = paused(LOADGEN, &["getppid", "4000", "--wait-stdin"]);
    let mut outside = paused(LOADGEN, &["getppid", "3000", "--wait-stdin"]);
    cgroup.add(inside.id());
    let probe = engine
        .attach(
            &spec("probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}\ntable: pods"),
            Targets::Cgroups(vec![cgroup.id()]),
        )
        .expect("attach")
        .id;
    run_to_end(&mut engine, &mut outside);
    run_to_end(&mut engine, &mut inside);
    let batches = engine.batches(probe);
    assert_eq!(rows(&batches), 4000);
    assert!(
        u64s(&batches, "cgroup_id")
            .iter()
            .all(|&id| id == cgroup.id())
    );
    let t = assert_balanced(&engine, probe);
    assert_eq!(
        (t.matched, t.lost()),
        (4000, 0),
        "the outsider is not even matched"
    );
}

#[test]
fn raw_tracepoints_see_forks_and_exits() {
    let mut engine = engine(LoadOptions::default());
    let forks = engine
        .attach(
            &spec("probe: {rawTracepoint: {name: sched_process_fork}}\ntable: forks"),
            Targets::Pids(vec![std::process::id()]),
        )
        .expect("attach sched_process_fork")
        .id;
    let mut children = BTreeSet::new();
    let exits = engine
        .attach(
            &spec("probe: {rawTracepoint: {name: sched_process_exit}}\ntable: exits"),
            Targets::All,
        )
        .expect("attach sched_process_exit")
        .id;
    for _ in 0..10 {
        let mut child = Command::new("/bin/true").spawn().expect("run /bin/true");
        children.insert(child.id());
        assert!(child.wait().expect("wait").success());
    }
    engine.drain();
    // This process forked each child: at least ten forks are ours.
    assert!(rows(&engine.batches(forks)) >= 10);
    let exited: BTreeSet<u32> = values::<UInt32Type>(&engine.batches(exits), "pid")
        .into_iter()
        .filter(|pid| children.contains(pid))
        .collect();
    assert_eq!(exited, children, "every child's exit is seen");
    assert_balanced(&engine, forks);
    assert_balanced(&engine, exits);
}
