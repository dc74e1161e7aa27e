//! Privileged tests: real eBPF programs on this kernel. They need root (or
//! CAP_BPF + CAP_PERFMON) and fail, naming what is missing, without it.

use std::{
    collections::HashMap,
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use probe_capture::{
    loader::{LoadOptions, ProbeSet, Targets},
    preflight,
    ring::{DecodeError, RawEvent, RecordSink},
    tracefs::Tracefs,
};

const LOADGEN: &str = env!("CARGO_BIN_EXE_sonde-loadgen");
const N: u64 = 100_000;

/// Counts records per pid; the per-event path allocates only on a new pid.
#[derive(Default)]
struct CountByPid {
    by_pid: HashMap<u32, u64>,
    decode_errors: u64,
}

impl RecordSink for CountByPid {
    fn event(&mut self, event: &RawEvent<'_>) {
        *self.by_pid.entry(event.pid).or_default() += 1;
    }
    fn decode_error(&mut self, _error: DecodeError) {
        self.decode_errors += 1;
    }
}

fn load(options: LoadOptions) -> ProbeSet {
    if let Err(e) = preflight::check_privileges() {
        panic!("this test loads eBPF programs and cannot run here: {e}");
    }
    let tracefs = Tracefs::locate(None).expect("tracefs mounted (scripts/install.sh mounts it)");
    ProbeSet::load(tracefs, options).expect("eBPF object loads")
}

/// Starts the load generator paused on stdin, so probes can target its pid.
fn paused_loadgen(count: u64) -> Child {
    Command::new(LOADGEN)
        .args(["getppid", &count.to_string(), "--wait-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sonde-loadgen")
}

fn release(child: &mut Child) {
    let mut stdin = child.stdin.take().expect("child stdin is piped");
    stdin
        .write_all(b"go\n")
        .expect("release the load generator");
}

fn wait_exit(child: &mut Child, deadline: Instant, mut between: impl FnMut()) {
    loop {
        between();
        if let Some(status) = child.try_wait().expect("wait for child") {
            assert!(status.success(), "load generator failed: {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "load generator did not finish in time"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_syscall_of_a_child_is_captured_host_wide() {
    let mut probes = load(LoadOptions::default());
    let probe = probes
        .attach_tracepoint("syscalls", "sys_enter_getppid", Targets::All)
        .expect("attach to syscalls/sys_enter_getppid");
    let mut ring = probes.take_ring().expect("ring reader");
    let mut child = paused_loadgen(N);
    let pid = child.id();
    release(&mut child);

    let mut sink = CountByPid::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_exit(&mut child, deadline, || {
        ring.drain(&mut sink);
    });
    ring.drain(&mut sink);

    let counters = probes.counters(probe).expect("read counters");
    assert_eq!(sink.by_pid.get(&pid).copied().unwrap_or(0), N);
    assert_eq!(counters.ringbuf_full, 0, "no record may be lost");
    assert_eq!(counters.read_errors, 0);
    assert_eq!(sink.decode_errors, 0);
    // Host-wide: other processes' getppid calls are captured too, never fewer.
    assert!(counters.emitted >= N);
}

#[test]
fn a_full_ring_counts_exactly_what_it_drops() {
    // One page of ring and no draining until the end: most records must be
    // dropped in-kernel, and every one of them counted.
    let mut probes = load(LoadOptions {
        ring_bytes: 4096,
        wakeup_watermark: u64::MAX,
        ..LoadOptions::default()
    });
    let mut child = paused_loadgen(N);
    let pid = child.id();
    let probe = probes
        .attach_tracepoint("syscalls", "sys_enter_getppid", Targets::Pids(vec![pid]))
        .expect("attach to syscalls/sys_enter_getppid");
    let mut ring = probes.take_ring().expect("ring reader");
    release(&mut child);
    wait_exit(&mut child, Instant::now() + Duration::from_secs(60), || {});

    let mut sink = CountByPid::default();
    ring.drain(&mut sink);
    let seen = sink.by_pid.get(&pid).copied().unwrap_or(0);
    let counters = probes.counters(probe).expect("read counters");
    assert_eq!(sink.by_pid.len(), 1, "only the target pid is captured");
    assert_eq!(counters.matched, N);
    assert!(seen > 0, "the ring held some records");
    assert!(counters.ringbuf_full > 0, "the ring overflowed");
    assert_eq!(seen + counters.ringbuf_full, N);
    eprintln!(
        "full ring: {seen} records seen + {} counted lost == {N} generated",
        counters.ringbuf_full
    );
}

#[test]
fn detaching_stops_capture_and_frees_the_slot() {
    let mut probes = load(LoadOptions::default());
    let mut child = paused_loadgen(1000);
    let pid = child.id();
    let probe = probes
        .attach_tracepoint("syscalls", "sys_enter_getppid", Targets::Pids(vec![pid]))
        .expect("attach");
    probes.detach(probe).expect("detach");
    release(&mut child);
    wait_exit(&mut child, Instant::now() + Duration::from_secs(30), || {});
    let mut ring = probes.take_ring().expect("ring reader");
    let mut sink = CountByPid::default();
    ring.drain(&mut sink);
    assert_eq!(sink.by_pid.get(&pid), None, "nothing captured after detach");
    // The slot is reused, with its counters reset.
    let again = probes
        .attach_tracepoint("syscalls", "sys_enter_getppid", Targets::Pids(vec![pid]))
        .expect("attach again");
    assert_eq!(again, probe);
    assert_eq!(probes.counters(again).expect("counters").matched, 0);
}

#[test]
fn unknown_tracepoints_are_refused_by_name() {
    let mut probes = load(LoadOptions::default());
    let err = probes
        .attach_tracepoint("syscalls", "sys_enter_nonexistent", Targets::All)
        .expect_err("no such tracepoint");
    assert!(
        err.to_string()
            .starts_with("tracepoint syscalls/sys_enter_nonexistent does not exist on this kernel"),
        "{err}"
    );
}
