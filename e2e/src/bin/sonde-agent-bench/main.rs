//! `make bench-agent`: the parts of `make bench` that need the whole agent,
//! as figures measured side by side in one run. Writes `NAME.md` and
//! `NAME.json` into `--out` and prints the Markdown. Asserts nothing but
//! that the run is valid (the rows are really there, both engines agree);
//! needs root, as the agent does.
//!
//! 4. Flight: the release agent, standalone on a manifests folder written
//!    here, captures `--rows` rows (a uprobe on `sonde-demo-app`'s
//!    `handle_request` with two arguments, four commands); once Flight SQL
//!    counts them all, a whole-table DoGet to a pyarrow client is timed
//!    against pyarrow's own Flight server holding the same table, and a
//!    `GROUP BY comm` with an exact p99 over Flight SQL (ADBC) against
//!    DuckDB on the same Arrow table; interleaved, `--rounds` rounds. Run
//!    twice, each on a fresh agent (`--flight-cold-after`): with the table
//!    hot, as appended, and compacted into cold batches, as older rows are.
//! 5. Memory: a fresh agent with a Retention of `--memory-budget-mib`
//!    under `--memory-rate` events/s: RSS ÷ budget once rows are evicted
//!    for maxBytes, then RSS every 10 s for `--memory-minutes`.
//!
//! The Arrow clients are `scripts/bench-flight.py`, run by the bench's own
//! virtualenv (`$SONDE_CACHE/venv-bench`, created here when missing), the
//! only one with DuckDB. Processes are started and stopped by pid and die
//! with the bench; every load is bounded; everything stays on 127.0.0.1.

#[path = "../../../../probe-agent/capture/src/bin/sonde-bench/report.rs"]
mod report;

mod agent;
mod flight;
mod load;
mod memory;
mod python;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use report::Report;

/// Flight throughput and memory of the whole agent, side by side in one run.
#[derive(Debug, clap::Parser)]
#[command(name = "sonde-agent-bench")]
pub struct Args {
    /// Where NAME.md and NAME.json go (default: `$CARGO_TARGET_DIR/bench`,
    /// or `target/bench`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Report file name, without extension.
    #[arg(long, default_value = "agent")]
    name: String,
    /// Sections to run.
    #[arg(long, value_delimiter = ',', default_values = ["flight", "memory"])]
    sections: Vec<Section>,
    /// Rows the Flight table holds.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub rows: u64,
    /// Interleaved rounds of the Flight measurements.
    #[arg(long, default_value_t = 5, value_parser = parse_rounds)]
    pub rounds: usize,
    /// The Flight agents' --cold-after, one Flight run each: the table read
    /// hot (10m or more keeps it hot), then compacted as older rows are.
    #[arg(long, value_delimiter = ',', default_values = ["1h", "2s"], value_parser = parse_duration)]
    pub flight_cold_after: Vec<Duration>,
    /// How long RSS is sampled once retention is full, in minutes.
    #[arg(long, default_value_t = 10.0, value_parser = parse_minutes)]
    pub memory_minutes: f64,
    /// The Retention's maxBytes, in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_budget_mib: u64,
    /// Events per second of the steady load.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub memory_rate: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Flight,
    Memory,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let args = <Self as clap::Parser>::parse();
        let hot = args
            .flight_cold_after
            .iter()
            .filter(|d| **d >= flight::HOT)
            .count();
        if hot > 1 || args.flight_cold_after.len() - hot > 1 {
            bail!("--flight-cold-after: at most one hot (10m or more) and one shorter value");
        }
        Ok(args)
    }
}

fn parse_rounds(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?}: at least 1 round")),
    }
}

fn parse_minutes(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(m) if m > 0.0 && m <= 120.0 => Ok(m),
        _ => Err(format!("{text:?}: above 0 and at most 120 minutes")),
    }
}

/// `250ms`, `2s`, `5m` or `1h`, as the agent's flags take them.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match crds::units::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the agent's manifests folder: the bench's Tracepoint and a
/// Retention of its table with `max_bytes` and `max_age`.
fn manifests(
    dir: &std::path::Path,
    tracepoint: &str,
    max_bytes: &str,
    max_age: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("tracepoint.yaml"), tracepoint)?;
    std::fs::write(
        dir.join("retention.yaml"),
        format!(
            "apiVersion: sonde.dev/v1alpha1
kind: Retention
metadata:
  name: requests
  namespace: bench
spec:
  tables: [requests]
  maxBytes: {max_bytes}
  maxAge: {max_age}
"
        ),
    )?;
    Ok(())
}

/// What both sections use: binaries pinned in a folder of the run's own,
/// the load and the Python side.
pub struct Bench {
    pub dir: PathBuf,
    pub agent: PathBuf,
    pub workload: Arc<load::Workload>,
    pub python: PathBuf,
    pub script: PathBuf,
}

impl Bench {
    fn prepare(dir: PathBuf) -> anyhow::Result<Self> {
        let release = std::env::current_exe()?;
        let sibling = |name: &str| release.with_file_name(name);
        // Copies: a build replacing the originals cannot disturb the run.
        let agent = dir.join("probe-agent");
        std::fs::copy(sibling("probe-agent"), &agent).with_context(|| {
            format!(
                "copy {} (build it with `cargo build --release -p probe-agent --bin probe-agent`)",
                sibling("probe-agent").display()
            )
        })?;
        let workload = Arc::new(load::Workload::new(&dir, &sibling("sonde-demo-app"))?);
        let script = dir.join("bench-flight.py");
        std::fs::write(&script, python::SCRIPT)?;
        Ok(Self {
            python: python::bench_python()?,
            dir,
            agent,
            workload,
            script,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("sonde-agent-bench runs the agent, which loads eBPF programs: run it as root");
    }
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("sonde-agent-bench")
        .tempdir()?;
    let bench = Bench::prepare(work.path().to_owned())?;
    let mut report = Report::on_this_machine("Agent benchmark", "sonde-agent-bench");
    if args.sections.contains(&Section::Flight) {
        for &cold_after in &args.flight_cold_after {
            flight::section(&mut report, &args, &bench, cold_after)?;
        }
    }
    if args.sections.contains(&Section::Memory) {
        memory::section(&mut report, &args, &bench)?;
    }
    report.finish(args.out.clone(), &args.name, started)?;
    Ok(())
}
