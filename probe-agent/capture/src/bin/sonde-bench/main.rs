//! `make bench`: what capturing costs, as ratios measured side by side in one
//! run (absolute times drift on a shared machine; ratios measured together
//! do not). Writes `NAME.md` and `NAME.json` into `--out` and prints the
//! Markdown. Asserts nothing; needs root (or CAP_BPF + CAP_PERFMON) unless
//! `--decode-only`.
//!
//! 1. Capture overhead, for four shapes of Tracepoint: (a) `getppid` with
//!    the standard columns only; (b) `openat` with the filename and a prefix
//!    filter that rejects 9 calls in 10; (c) a uprobe with two arguments;
//!    (d) a uretprobe with an argument, the result and the latency. Each is
//!    run untraced, with a minimal program (reserve and submit a header),
//!    with a hand-written reference program that produces exactly Sonde's
//!    record (`probe-ebpf/src/reference.rs`), and with Sonde, interleaved,
//!    for `--rounds` rounds. Reported: the loop's ns per call, the cost each
//!    adds to the untraced loop, Sonde's added cost ÷ the reference's, and
//!    the programs' in-kernel run time per event from the kernel's BPF
//!    statistics (enabled for the run; other load disturbs them far less).
//! 2. Completeness: `--rate` events/s for `--seconds` from `--threads`
//!    threads, then a burst at `--burst-rate`: captured ÷ generated, and
//!    whether captured + counted lost == generated holds exactly.
//! 3. Ingest: the drive thread's CPU time per million events (drain, decode,
//!    append into the table) ÷ a reader that only drains and counts.
//! 6. Decode and derived-metrics cost per event (records already in memory;
//!    `--decode-only` runs just this part, which needs no privileges).
//!
//! (4, Flight, and 5, memory, need the full agent and are not measured here.)
//!
//! Events are drained as the agent drains them: by the drive loop, woken at
//! the ring's watermark and otherwise every 50 ms.

mod report;

use std::{
    io::Write as _,
    os::fd::AsFd,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use probe_capture::{
    drive::{self, DriveOptions, Driven, Waker},
    engine::Engine,
    loader::{LoadOptions, ProbeSet, Targets},
    plan::HostPaths,
    preflight,
    ring::{DecodeError, RawEvent, RecordSink},
    tracefs::Tracefs,
};
use probe_common::{programs, reference};
use report::{Report, Table, median};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Measures the cost of capture, as ratios measured side by side in one run")]
struct Args {
    /// getppid calls per measured loop (shape a); the other shapes make
    /// fewer, slower calls in proportion.
    #[arg(long, default_value_t = 1_000_000)]
    calls: u64,
    /// Rounds of each measurement (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Length of the sustained completeness run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Events per second of the sustained run.
    #[arg(long, default_value_t = 200_000)]
    rate: u64,
    /// Events per second of the burst.
    #[arg(long, default_value_t = 1_000_000)]
    burst_rate: u64,
    /// Events of the burst.
    #[arg(long, default_value_t = 2_000_000)]
    burst_events: u64,
    /// Generator threads of the completeness and ingest runs.
    #[arg(long, default_value_t = 4)]
    threads: u64,
    /// Events per ingest measurement.
    #[arg(long, default_value_t = 2_000_000)]
    ingest_events: u64,
    /// Events per decode-path measurement.
    #[arg(long, default_value_t = 1_000_000)]
    decoded: u64,
    /// Only measure the decode path.
    #[arg(long)]
    decode_only: bool,
    /// Sections to run (default: all).
    #[arg(long, value_delimiter = ',', default_values = ["overhead", "completeness", "ingest", "decode"])]
    sections: Vec<Section>,
    /// Overhead shapes to run, by letter (default: all).
    #[arg(long, value_delimiter = ',', default_values = ["a", "b", "c", "d"])]
    shapes: Vec<String>,
    /// Where the report goes (default: `$CARGO_TARGET_DIR/bench`, or
    /// `target/bench`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// File name of the report, without extension.
    #[arg(long, default_value = "capture")]
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Overhead,
    Completeness,
    Ingest,
    Decode,
}

/// The agent's default drain interval.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// The decode-path cases: a name and the `spec.metrics` YAML.
const DECODE_CASES: [(&str, &str); 5] = [
    ("table only, no metric", "[]"),
    ("+ counter, no labels", "[{name: c, kind: counter}]"),
    (
        "+ counter, labels [size, comm]",
        "[{name: c, kind: counter, labels: [size, comm]}]",
    ),
    (
        "+ histogram (8 buckets), labels [size, comm]",
        "[{name: h, kind: histogram, value: latency, labels: [size, comm], \
         buckets: [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000]}]",
    ),
    (
        "+ both",
        "[{name: c, kind: counter, labels: [size, comm]}, \
         {name: h, kind: histogram, value: latency, labels: [size, comm], \
         buckets: [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000]}]",
    ),
];

/// Records as the ring holds them: the header, `size` (u32 at 48) and
/// `latency` (u64 at 56); 4 sizes, 3 commands, latencies spread over the
/// buckets.
fn decode_records() -> Vec<Vec<u8>> {
    (0..4096u64)
        .map(|i| {
            let mut bytes = vec![0u8; 64];
            let comm: &[u8] = [&b"nginx"[..], b"postgres", b"sonde-demo-app"][(i % 3) as usize];
            let header = probe_common::RecordHeader {
                kind: probe_common::RECORD_KIND_EVENT,
                probe_id: 0,
                ktime_ns: 1_000_000 + i,
                pid_tgid: (1000u64 << 32) | 1000,
                cgroup_id: 0,
                comm: probe_common::RecordHeader::comm_from(comm),
            };
            bytes[..48].copy_from_slice(&header.to_bytes());
            bytes[48..56].copy_from_slice(&(64u64 << (i % 4)).to_ne_bytes());
            bytes[56..64].copy_from_slice(&((i * 37) % 200_000).to_ne_bytes());
            bytes
        })
        .collect()
}

/// ns per event of decoding `events` records into a table with `metrics`.
fn decode_ns(metrics: &str, records: &[Vec<u8>], events: u64) -> anyhow::Result<f64> {
    use probe_capture::{
        capture::Capture,
        derived_metrics::EventMetrics,
        plan::{ColumnLayout, ColumnPlan, RecordSchema},
        ring::{RecordSink, decode},
    };
    let schema = RecordSchema {
        columns: vec![
            ColumnPlan {
                name: "size".into(),
                offset: 48,
                layout: ColumnLayout::Int(crds::FieldType::U32),
            },
            ColumnPlan {
                name: "latency".into(),
                offset: 56,
                layout: ColumnLayout::Int(crds::FieldType::U64),
            },
        ],
        record_len: 64,
    };
    let specs: Vec<crds::v1alpha1::MetricSpec> = serde_yaml::from_str(metrics)?;
    let mut capture = Capture::new("bench");
    capture.open(0, schema.clone());
    capture.set_metrics(0, EventMetrics::compile(&specs, &schema, "bench")?);
    let decoded: Vec<_> = records
        .iter()
        .map(|r| decode(r))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    for event in decoded.iter().cycle().take(events as usize) {
        capture.event(std::hint::black_box(event));
    }
    capture.seal_all();
    let elapsed = start.elapsed();
    std::hint::black_box(capture.metric_samples(0));
    Ok(elapsed.as_nanos() as f64 / events as f64)
}

/// Measures every decode case side by side, `rounds` times.
fn decode_section(report: &mut Report, events: u64, rounds: usize) -> anyhow::Result<()> {
    let records = decode_records();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); DECODE_CASES.len()];
    for _ in 0..rounds {
        for (case, (_, metrics)) in DECODE_CASES.iter().enumerate() {
            times[case].push(decode_ns(metrics, &records, events)?);
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let mut table = Table::new(&["case", "ns/event", "÷ table only", "added ns"]);
    let mut figures = Vec::new();
    for ((name, _), ns) in DECODE_CASES.iter().zip(&medians) {
        table.row(&[
            (*name).to_owned(),
            format!("{ns:.1}"),
            format!("{:.2}", ns / medians[0]),
            format!("{:+.1}", ns - medians[0]),
        ]);
        figures.push(json!({"case": name, "ns_per_event": ns, "ratio": ns / medians[0]}));
    }
    report.section(
        "decode",
        "6. Decode and derived metrics",
        &format!(
            "{events} records already in memory decoded into a table, median of {rounds} \
             rounds; ratios to the table without metrics.\n\n{}",
            table.finish()
        ),
        json!({"events": events, "rounds": rounds, "cases": figures}),
    );
    Ok(())
}

/// Where a shape's programs attach.
#[derive(Clone, Copy)]
enum Hook {
    Tracepoint(&'static str, &'static str),
    /// `handle_request` in `sonde-demo-app`.
    Uprobe,
}

/// One shape of Tracepoint and its load.
struct Shape {
    key: &'static str,
    title: &'static str,
    hook: Hook,
    /// The Tracepoint spec Sonde attaches.
    spec: String,
    /// Programs that do the least a capture does.
    minimal: &'static [&'static str],
    /// Hand-written programs producing Sonde's record.
    reference: &'static [&'static str],
    /// The load: a binary next to this one and its arguments.
    generator: (&'static str, Vec<String>),
    calls: u64,
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(name))
}

fn shapes(calls: u64) -> anyhow::Result<Vec<Shape>> {
    let demo = sibling("sonde-demo-app")?;
    let demo = demo
        .to_str()
        .context("demo app path is not UTF-8")?
        .to_owned();
    let prefix = std::str::from_utf8(reference::OPENAT_PREFIX)?;
    let demo_load = |n: u64| {
        (
            "sonde-demo-app",
            vec!["--requests".into(), n.to_string(), "--print-ns".into()],
        )
    };
    Ok(vec![
        Shape {
            key: "a_standard_columns",
            title: "(a) getppid, standard columns",
            hook: Hook::Tracepoint("syscalls", "sys_enter_getppid"),
            spec: "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}\n\
                   table: bench"
                .into(),
            minimal: &[programs::BASELINE],
            reference: &[programs::reference::STANDARD],
            generator: ("sonde-loadgen", vec!["getppid".into(), calls.to_string()]),
            calls,
        },
        Shape {
            key: "b_openat_prefix_filter",
            title: "(b) openat, filename, prefix filter keeping 1 in 10",
            hook: Hook::Tracepoint("syscalls", "sys_enter_openat"),
            spec: format!(
                "probe: {{tracepoint: {{group: syscalls, name: sys_enter_openat}}}}\n\
                 table: bench\n\
                 fields:\n  - {{name: filename, type: string, maxLength: {}}}\n\
                 filters:\n  - {{field: filename, op: prefix, value: {prefix:?}}}",
                reference::FILENAME_MAX
            ),
            minimal: &[programs::BASELINE],
            reference: &[programs::reference::OPENAT_PREFIX],
            generator: (
                "sonde-loadgen",
                vec![
                    "openat".into(),
                    (calls / 4).to_string(),
                    prefix.into(),
                    "--other-path".into(),
                    "/dev/null".into(),
                    "--path-every".into(),
                    "10".into(),
                ],
            ),
            calls: calls / 4,
        },
        Shape {
            key: "c_uprobe",
            title: "(c) uprobe, two arguments",
            hook: Hook::Uprobe,
            spec: format!(
                "probe: {{uprobe: {{binary: {demo:?}, symbol: handle_request}}}}\n\
                 table: bench\n\
                 fields:\n  - {{name: id, source: arg0, type: u64}}\n  \
                 - {{name: size, source: arg1, type: u32}}"
            ),
            minimal: &[programs::BASELINE_UPROBE],
            reference: &[programs::reference::UPROBE],
            generator: demo_load(calls / 5),
            calls: calls / 5,
        },
        Shape {
            key: "d_uretprobe_latency",
            title: "(d) uretprobe, argument, result, latency",
            hook: Hook::Uprobe,
            spec: format!(
                "probe: {{uretprobe: {{binary: {demo:?}, symbol: handle_request}}}}\n\
                 table: bench\n\
                 fields:\n  - {{name: id, source: arg0, type: u64}}\n  \
                 - {{name: result, source: retval, type: i64}}\n  - {{name: latency}}"
            ),
            minimal: &[programs::BASELINE_URETPROBE],
            reference: &[
                programs::reference::URETPROBE_ENTRY,
                programs::reference::URETPROBE,
            ],
            generator: demo_load(calls / 5),
            calls: calls / 5,
        },
    ])
}

/// Runs a load generator to its end and returns its ns per call.
fn run_load(binary: &str, args: &[String]) -> anyhow::Result<f64> {
    let path = sibling(binary)?;
    let output = Command::new(&path)
        .args(args)
        .output()
        .with_context(|| format!("run {}", path.display()))?;
    parse_ns(binary, &output)
}

fn parse_ns(binary: &str, output: &std::process::Output) -> anyhow::Result<f64> {
    if !output.status.success() {
        bail!(
            "{binary} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|l| l.strip_suffix(" ns/call"))
        .next_back()
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("{binary} printed no ns/call"))
}

fn load_engine() -> anyhow::Result<Engine> {
    Ok(Engine::load(
        Tracefs::locate(None)?,
        LoadOptions::default(),
        "bench",
        Box::new(HostPaths),
    )?)
}

/// In-kernel run time per event: the sum over the given programs of their
/// average run time (a return probe runs two programs per event).
fn kernel_ns(ids: &[u32]) -> f64 {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()) && p.run_count() > 0)
        .map(|p| p.run_time().as_nanos() as f64 / p.run_count() as f64)
        .sum()
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// The engine as the drive loop runs it, keeping the drive thread's CPU time.
struct BenchDrive {
    engine: Engine,
    cpu: Duration,
}

impl Driven for BenchDrive {
    fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    fn after_drain(&mut self, _now: Instant) {}

    fn stopped(&mut self) {
        self.cpu = thread_cpu();
    }
}

/// Runs `work` while the drive loop drains `engine`; returns the engine,
/// the drive thread's CPU time and what `work` returned.
fn driven<T>(
    engine: Engine,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(Engine, Duration, T)> {
    let waker = Waker::new()?;
    let thread = drive::spawn(
        BenchDrive {
            engine,
            cpu: Duration::ZERO,
        },
        waker.clone(),
        DriveOptions {
            drain_interval: DRAIN_INTERVAL,
        },
    )?;
    let result = work();
    waker.stop();
    let drive = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the drive thread panicked"))?;
    Ok((drive.engine, drive.cpu, result?))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Untraced,
    Minimal,
    Reference,
    Sonde,
}

const VARIANTS: [(Variant, &str); 4] = [
    (Variant::Untraced, "untraced"),
    (Variant::Minimal, "minimal"),
    (Variant::Reference, "reference"),
    (Variant::Sonde, "sonde"),
];

/// One measurement: (ns per call, in-kernel ns per event).
fn measure(shape: &Shape, variant: Variant) -> anyhow::Result<(f64, f64)> {
    let (binary, args) = &shape.generator;
    if variant == Variant::Untraced {
        return Ok((run_load(binary, args)?, 0.0));
    }
    let mut engine = load_engine()?;
    let demo = sibling("sonde-demo-app")?;
    let programs = match variant {
        Variant::Minimal => shape.minimal,
        Variant::Reference => shape.reference,
        _ => &[],
    };
    for program in programs {
        match shape.hook {
            Hook::Tracepoint(group, name) => engine
                .probe_set()
                .attach_measurement_tracepoint(program, group, name)?,
            Hook::Uprobe => {
                engine
                    .probe_set()
                    .attach_measurement_uprobe(program, &demo, "handle_request")?;
            }
        }
    }
    if variant == Variant::Sonde {
        let spec: crds::v1alpha1::TracepointSpec = serde_yaml::from_str(&shape.spec)?;
        engine.attach(&spec, Targets::All)?;
    }
    let (engine, _, ns) = driven(engine, || run_load(binary, args))?;
    let ids = engine.program_ids();
    let kernel = kernel_ns(&ids);
    drop(engine);
    unloaded(&ids);
    Ok((ns, kernel))
}

/// Waits (up to 10 s) until the kernel has freed the programs `ids`: the
/// work of freeing them must not land in the next measurement.
fn unloaded(ids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .any(|p| ids.contains(&p.id()))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn overhead_section(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let shapes: Vec<Shape> = shapes(args.calls)?
        .into_iter()
        .filter(|s| args.shapes.iter().any(|k| s.key.starts_with(k.as_str())))
        .collect();
    // [shape][variant] -> per-round values
    let mut loop_ns = vec![vec![Vec::new(); VARIANTS.len()]; shapes.len()];
    let mut in_kernel = vec![vec![Vec::new(); VARIANTS.len()]; shapes.len()];
    for round in 1..=args.rounds {
        eprintln!("overhead: round {round}/{}", args.rounds);
        for (s, shape) in shapes.iter().enumerate() {
            for (v, (variant, _)) in VARIANTS.iter().enumerate() {
                let (ns, kernel) = measure(shape, *variant)
                    .with_context(|| format!("{} {}", shape.title, VARIANTS[v].1))?;
                loop_ns[s][v].push(ns);
                in_kernel[s][v].push(kernel);
            }
        }
    }
    let mut table = Table::new(&[
        "shape",
        "untraced ns/call",
        "minimal +ns",
        "reference +ns",
        "sonde +ns",
        "sonde ÷ reference (added)",
        "in-kernel ns/event: minimal, reference, sonde",
        "sonde ÷ reference (in-kernel)",
    ]);
    let mut figures = serde_json::Map::new();
    for (s, shape) in shapes.iter().enumerate() {
        let ns: Vec<f64> = loop_ns[s].iter().cloned().map(median).collect();
        let kernel: Vec<f64> = in_kernel[s].iter().cloned().map(median).collect();
        // Added costs and their ratios per round (each round's variants run
        // minutes apart at most, rounds further), then the median.
        let rounds = loop_ns[s][0].len();
        let added_in = |v: usize, r: usize| loop_ns[s][v][r] - loop_ns[s][0][r];
        let added_by = |v: usize| median((0..rounds).map(|r| added_in(v, r)).collect());
        let added = [0.0, added_by(1), added_by(2), added_by(3)];
        let added = |v: usize| added[v];
        let ratio = median(
            (0..rounds)
                .map(|r| added_in(3, r) / added_in(2, r).max(1.0))
                .collect(),
        );
        let kernel_ratio = median(
            (0..rounds)
                .map(|r| in_kernel[s][3][r] / in_kernel[s][2][r].max(1.0))
                .collect(),
        );
        table.row(&[
            shape.title.to_owned(),
            format!("{:.1}", ns[0]),
            format!("{:.1}", added(1)),
            format!("{:.1}", added(2)),
            format!("{:.1}", added(3)),
            format!("**{ratio:.2}**"),
            format!("{:.0}, {:.0}, {:.0}", kernel[1], kernel[2], kernel[3]),
            format!("**{kernel_ratio:.2}**"),
        ]);
        figures.insert(
            shape.key.to_owned(),
            json!({
                "title": shape.title,
                "calls": shape.calls,
                "loop_ns_per_call": VARIANTS.iter().zip(&ns)
                    .map(|((_, name), ns)| (name.to_string(), json!(ns)))
                    .collect::<serde_json::Map<_, _>>(),
                "in_kernel_ns_per_event": VARIANTS.iter().zip(&kernel).skip(1)
                    .map(|((_, name), ns)| (name.to_string(), json!(ns)))
                    .collect::<serde_json::Map<_, _>>(),
                "rounds_loop_ns_per_call": VARIANTS.iter().zip(&loop_ns[s])
                    .map(|((_, name), v)| (name.to_string(), json!(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "sonde_over_reference_added": ratio,
                "sonde_over_reference_in_kernel": kernel_ratio,
                "added_ns_per_call": {
                    "minimal": added(1),
                    "reference": added(2),
                    "sonde": added(3),
                },
            }),
        );
    }
    report.section(
        "overhead",
        "1. Capture overhead",
        &format!(
            "Each shape's load run untraced, with a minimal program (reserve and submit a \
             48-byte header), with a hand-written reference program producing exactly \
             Sonde's record, and with Sonde; interleaved, {} rounds. `+ns` is the cost \
             added to that round's untraced call and the ratios are per round, all as \
             medians; in-kernel time is the programs' own run time per event from the \
             kernel's BPF statistics, which other load on the machine disturbs far less \
             than the loop's time (a loop's added cost that is small next to the call \
             itself, as in b, drowns in that noise). Targets: sonde ÷ reference ≤ 1.25 \
             (≤ 1.1 for a).\n\n{}",
            args.rounds,
            table.finish()
        ),
        json!({"rounds": args.rounds, "shapes": figures}),
    );
    Ok(())
}

/// Starts `sonde-loadgen` waiting on stdin.
fn paused_loadgen(args: &[String]) -> anyhow::Result<std::process::Child> {
    let path = sibling("sonde-loadgen")?;
    Command::new(&path)
        .args(args)
        .arg("--wait-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", path.display()))
}

/// Lets a paused generator go and waits for its ns per call.
fn release(mut child: std::process::Child) -> anyhow::Result<f64> {
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"go\n")?;
    }
    let output = child.wait_with_output()?;
    parse_ns("sonde-loadgen", &output)
}

/// A getppid load of `events` at `rate` from `threads` threads, captured
/// by Sonde for that process only; returns the probe's totals and the
/// rate reached.
fn complete_run(
    events: u64,
    rate: u64,
    threads: u64,
) -> anyhow::Result<(probe_capture::capture::ProbeTotals, f64)> {
    let mut engine = load_engine()?;
    let child = paused_loadgen(&[
        "getppid".into(),
        events.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--threads".into(),
        threads.to_string(),
    ])?;
    let spec: crds::v1alpha1::TracepointSpec = serde_yaml::from_str(
        "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}\ntable: bench",
    )?;
    let probe = engine.attach(&spec, Targets::Pids(vec![child.id()]))?.id;
    let (engine, _, ns) = driven(engine, || release(child))?;
    Ok((engine.totals(probe)?, 1e9 / ns))
}

fn completeness_section(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let runs = [
        ("sustained", args.rate * args.seconds, args.rate),
        ("burst", args.burst_events, args.burst_rate),
    ];
    let mut table = Table::new(&[
        "run",
        "generated",
        "asked rate /s",
        "reached rate /s",
        "captured",
        "counted lost",
        "captured ÷ generated",
        "captured + lost == generated",
    ]);
    let mut figures = serde_json::Map::new();
    for (name, events, rate) in runs {
        eprintln!("completeness: {name}, {events} events at {rate}/s");
        let (totals, reached) = complete_run(events, rate, args.threads)?;
        let exact = totals.captured + totals.lost() == events && totals.matched == events;
        table.row(&[
            name.to_owned(),
            events.to_string(),
            rate.to_string(),
            format!("{reached:.0}"),
            totals.captured.to_string(),
            totals.lost().to_string(),
            format!("{:.6}", totals.captured as f64 / events as f64),
            if exact { "yes" } else { "**NO**" }.to_owned(),
        ]);
        figures.insert(
            name.to_owned(),
            json!({
                "generated": events,
                "threads": args.threads,
                "asked_rate": rate,
                "reached_rate": reached,
                "matched": totals.matched,
                "captured": totals.captured,
                "lost": totals.lost(),
                "ringbuf_full": totals.ringbuf_full,
                "decode_errors": totals.decode_errors,
                "captured_over_generated": totals.captured as f64 / events as f64,
                "identity_exact": exact,
            }),
        );
    }
    report.section(
        "completeness",
        "2. Completeness",
        &format!(
            "getppid from {} threads of one process, captured by Sonde (standard columns, \
             that process only). Target: captured ÷ generated ≥ 0.999 sustained; the \
             identity exact in both runs.\n\n{}",
            args.threads,
            table.finish()
        ),
        json!(figures),
    );
    Ok(())
}

/// Counts records and nothing else.
#[derive(Default)]
struct Count(u64);

impl RecordSink for Count {
    fn event(&mut self, event: &RawEvent<'_>) {
        std::hint::black_box(event);
        self.0 += 1;
    }

    fn decode_error(&mut self, _error: DecodeError) {
        self.0 += 1;
    }
}

/// The drain-only reader: the same programs and ring, the same wake-ups and
/// interval as the drive loop, but records are only counted. Returns the
/// reader thread's CPU time and the records it counted.
fn drain_only_run(events: u64, threads: u64) -> anyhow::Result<(Duration, u64)> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let mut set = ProbeSet::load(Tracefs::locate(None)?, LoadOptions::default())?;
    let child = paused_loadgen(&[
        "getppid".into(),
        events.to_string(),
        "--threads".into(),
        threads.to_string(),
    ])?;
    set.attach_tracepoint(
        "syscalls",
        "sys_enter_getppid",
        Targets::Pids(vec![child.id()]),
    )?;
    let mut ring = set.take_ring().context("the ring was taken")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || -> anyhow::Result<(Duration, u64)> {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
            epoll.add(
                ring.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
            )?;
            let timeout = EpollTimeout::try_from(DRAIN_INTERVAL)?;
            let mut count = Count::default();
            let mut ready = [EpollEvent::empty(); 1];
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                // EINTR and friends: drain anyway, then wait again.
                let _ = epoll.wait(&mut ready, timeout);
                ring.drain(&mut count);
            }
            ring.drain(&mut count);
            Ok((thread_cpu(), count.0))
        })
    };
    let result = release(child);
    stop.store(true, std::sync::atomic::Ordering::Release);
    let counted = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    result?;
    drop(set);
    Ok(counted)
}

/// Sonde's drive loop on the same load: CPU time and rows.
fn ingest_run(events: u64, threads: u64) -> anyhow::Result<(Duration, u64)> {
    let mut engine = load_engine()?;
    let child = paused_loadgen(&[
        "getppid".into(),
        events.to_string(),
        "--threads".into(),
        threads.to_string(),
    ])?;
    let spec: crds::v1alpha1::TracepointSpec = serde_yaml::from_str(
        "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}\ntable: bench",
    )?;
    let probe = engine.attach(&spec, Targets::Pids(vec![child.id()]))?.id;
    let (engine, cpu, _) = driven(engine, || release(child))?;
    Ok((cpu, engine.totals(probe)?.captured))
}

fn ingest_section(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let (mut sonde, mut drain) = (Vec::new(), Vec::new());
    let per_million = |(cpu, n): (Duration, u64)| cpu.as_secs_f64() / n.max(1) as f64 * 1e6;
    for round in 1..=args.rounds {
        eprintln!("ingest: round {round}/{}", args.rounds);
        sonde.push(per_million(ingest_run(args.ingest_events, args.threads)?));
        drain.push(per_million(drain_only_run(
            args.ingest_events,
            args.threads,
        )?));
    }
    let (sonde, drain) = (median(sonde), median(drain));
    let mut table = Table::new(&["reader", "CPU-s per million events", "÷ drain only"]);
    table.row(&[
        "sonde drive loop (drain, decode, append)".into(),
        format!("{sonde:.3}"),
        format!("**{:.2}**", sonde / drain),
    ]);
    table.row(&[
        "drain only (count)".into(),
        format!("{drain:.3}"),
        "1.00".into(),
    ]);
    report.section(
        "ingest",
        "3. Ingest cost",
        &format!(
            "{} getppid events from {} threads as fast as they go, standard columns; the \
             reading thread's CPU time, median of {} rounds. Target: ≤ 0.25 CPU-s per million \
             events.\n\n{}",
            args.ingest_events,
            args.threads,
            args.rounds,
            table.finish()
        ),
        json!({
            "events": args.ingest_events,
            "sonde_cpu_s_per_million": sonde,
            "drain_only_cpu_s_per_million": drain,
            "ratio": sonde / drain,
        }),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mut report = Report::on_this_machine("Capture benchmark", "sonde-bench");
    let runs = |section| args.sections.contains(&section) && !args.decode_only;
    if runs(Section::Overhead) || runs(Section::Completeness) || runs(Section::Ingest) {
        preflight::check_privileges()?;
        // Run-time statistics are kept while this fd is open.
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        if runs(Section::Overhead) {
            overhead_section(&mut report, &args)?;
        }
        if runs(Section::Completeness) {
            completeness_section(&mut report, &args)?;
        }
        if runs(Section::Ingest) {
            ingest_section(&mut report, &args)?;
        }
    }
    if args.decode_only || args.sections.contains(&Section::Decode) {
        decode_section(&mut report, args.decoded, args.rounds)?;
    }
    report.finish(args.out.clone(), &args.name, started)?;
    Ok(())
}
