//! Measures what capturing costs, side by side in one run (absolute times
//! drift on shared machines; ratios measured together do not):
//!
//! 1. a getppid(2) loop with nothing attached;
//! 2. the same with the baseline program, which only reserves and submits a
//!    header-sized record;
//! 3. the same with a Sonde Tracepoint (standard columns, host-wide), drained
//!    into a table as the agent does;
//! 4. a sustained run of `--seconds` at full speed, reporting the event rate
//!    and whether anything was lost;
//! 5. the decode path alone (records already in memory, decoded into a
//!    table): without metrics, then with a Tracepoint's counter and
//!    histogram metrics (`spec.metrics`), to show what a metric adds per
//!    event. `--decode-only` runs just this part, which needs no privileges.
//!
//! Besides the loop's wall-clock time per call it reports the programs' own
//! run time per event, from the kernel's BPF statistics (enabled for the run),
//! which other load on the machine disturbs far less.
//!
//! Needs root (or CAP_BPF + CAP_PERFMON). Prints a table; asserts nothing.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use probe_capture::{
    engine::Engine,
    loader::{LoadOptions, Targets},
    plan::HostPaths,
    preflight,
    tracefs::Tracefs,
};

#[derive(Debug, Parser)]
#[command(about = "Measures the cost of capturing a syscall, as ratios in one run")]
struct Args {
    /// Calls per measured loop.
    #[arg(long, default_value_t = 2_000_000)]
    calls: u64,
    /// Rounds of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of the sustained run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Events per decode-path measurement.
    #[arg(long, default_value_t = 1_000_000)]
    decoded: u64,
    /// Only measure the decode path.
    #[arg(long)]
    decode_only: bool,
}

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

/// Measures every decode case side by side, `rounds` times, and prints the
/// medians and their ratios to the case without metrics.
fn decode_costs(events: u64, rounds: usize) -> anyhow::Result<()> {
    let records = decode_records();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); DECODE_CASES.len()];
    for _ in 0..rounds {
        for (case, (_, metrics)) in DECODE_CASES.iter().enumerate() {
            times[case].push(decode_ns(metrics, &records, events)?);
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    println!("decode path, {events} events into a table, median of {rounds} rounds");
    for ((name, _), ns) in DECODE_CASES.iter().zip(&medians) {
        println!(
            "  {:<44} {:>8.1} ns/event  {:.2}x  ({:+.1} ns)",
            name,
            ns,
            ns / medians[0],
            ns - medians[0]
        );
    }
    Ok(())
}

/// Runs the load generator and returns its ns per call.
fn loop_ns(calls: u64) -> anyhow::Result<f64> {
    let loadgen = std::env::current_exe()?.with_file_name("sonde-loadgen");
    let output = Command::new(&loadgen)
        .args(["getppid", &calls.to_string()])
        .output()
        .with_context(|| format!("run {}", loadgen.display()))?;
    if !output.status.success() {
        bail!(
            "sonde-loadgen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8(output.stdout)?;
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("sonde-loadgen printed no ns/call")?;
    Ok(ns)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn load_engine() -> anyhow::Result<Engine> {
    Ok(Engine::load(
        Tracefs::locate(None)?,
        LoadOptions::default(),
        "bench",
        Box::new(HostPaths),
    )?)
}

/// Average in-kernel run time per event of the engine's programs.
fn kernel_ns(engine: &Engine) -> f64 {
    let ids = engine.program_ids();
    let (time, count) = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .fold((0u128, 0u64), |(t, c), p| {
            (t + p.run_time().as_nanos(), c + p.run_count())
        });
    time as f64 / count.max(1) as f64
}

/// Drains the engine on the agent's default interval while `work` runs.
fn with_drain<T>(engine: Engine, work: impl FnOnce() -> T) -> (Engine, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut engine = engine;
            while !stop.load(Ordering::Relaxed) {
                engine.drain();
                std::thread::sleep(Duration::from_millis(50));
            }
            engine.drain();
            engine
        })
    };
    let result = work();
    stop.store(true, Ordering::Relaxed);
    // The drain thread only loops and drains; it cannot panic on its own.
    #[allow(clippy::expect_used)]
    let engine = drainer.join().expect("drain thread");
    (engine, result)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    decode_costs(args.decoded, args.rounds)?;
    if args.decode_only {
        return Ok(());
    }
    preflight::check_privileges()?;
    let spec: crds::v1alpha1::TracepointSpec = serde_yaml::from_str(
        "probe: {tracepoint: {group: syscalls, name: sys_enter_getppid}}\ntable: bench",
    )?;

    // Run-time statistics are kept while this fd is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let mut plain = Vec::new();
    let mut baseline = Vec::new();
    let mut sonde = Vec::new();
    let mut baseline_kernel = Vec::new();
    let mut sonde_kernel = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}", args.rounds);
        plain.push(loop_ns(args.calls)?);

        let mut engine = load_engine()?;
        engine
            .probe_set()
            .attach_baseline("syscalls", "sys_enter_getppid")?;
        let (engine, ns) = with_drain(engine, || loop_ns(args.calls));
        baseline_kernel.push(kernel_ns(&engine));
        drop(engine);
        baseline.push(ns?);

        let mut engine = load_engine()?;
        engine.attach(&spec, Targets::All)?;
        let (engine, ns) = with_drain(engine, || loop_ns(args.calls));
        sonde_kernel.push(kernel_ns(&engine));
        drop(engine);
        sonde.push(ns?);
    }
    let (plain, baseline, sonde) = (median(plain), median(baseline), median(sonde));
    let (baseline_kernel, sonde_kernel) = (median(baseline_kernel), median(sonde_kernel));
    println!(
        "getppid loop, {} calls, median of {} rounds",
        args.calls, args.rounds
    );
    println!("  {:<44} {:>8.1} ns/call  1.00x", "nothing attached", plain);
    println!(
        "  {:<44} {:>8.1} ns/call  {:.2}x",
        "baseline: reserve + submit 48 B",
        baseline,
        baseline / plain
    );
    println!(
        "  {:<44} {:>8.1} ns/call  {:.2}x",
        "sonde tracepoint (standard columns)",
        sonde,
        sonde / plain
    );
    println!(
        "  added per event: sonde {:.1} ns, baseline {:.1} ns; sonde / baseline cost = {:.2}",
        sonde - plain,
        baseline - plain,
        (sonde - plain) / (baseline - plain).max(1.0)
    );

    println!(
        "  in-kernel run time per event: sonde {sonde_kernel:.1} ns, baseline \
         {baseline_kernel:.1} ns; ratio {:.2}",
        sonde_kernel / baseline_kernel.max(1.0)
    );

    // Sustained: size the run for the requested seconds at the measured rate.
    let calls = (args.seconds as f64 * 1e9 / sonde) as u64;
    let mut engine = load_engine()?;
    let probe = engine.attach(&spec, Targets::All)?.id;
    let start = Instant::now();
    let (engine, ns) = with_drain(engine, || loop_ns(calls));
    ns?;
    let elapsed = start.elapsed().as_secs_f64();
    let totals = engine.totals(probe)?;
    println!(
        "sustained: {} events in {:.1} s = {:.0} events/s; captured {}, lost {} \
         (ring full {}, decode {})",
        totals.matched,
        elapsed,
        totals.matched as f64 / elapsed,
        totals.captured,
        totals.lost(),
        totals.ringbuf_full,
        totals.decode_errors
    );
    Ok(())
}
