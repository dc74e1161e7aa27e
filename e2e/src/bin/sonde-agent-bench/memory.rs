//! Section 5, memory: the agent's resident memory against its table budget
//! once retention is full, and how it drifts under steady load.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{
    Args, Bench,
    agent::Agent,
    report::{Report, Table},
};

/// How often RSS is sampled once retention is full.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How long the load may take to fill the table.
const FILL_TIMEOUT: Duration = Duration::from_secs(300);

/// One sample: seconds since retention was full, RSS, and the table.
struct Sample {
    at: f64,
    rss: u64,
    held_bytes: f64,
    held_rows: f64,
    window_s: f64,
    evicted_rows: f64,
    lost: f64,
}

fn sample(agent: &Agent, since: Instant) -> anyhow::Result<Sample> {
    let memory = agent.memory()?;
    let m = agent.metrics()?;
    let table = [("namespace", "bench"), ("table", "requests")];
    Ok(Sample {
        at: since.elapsed().as_secs_f64(),
        rss: memory.rss,
        held_bytes: m.sum("sonde_table_held_bytes", &table),
        held_rows: m.sum("sonde_table_held_rows", &table),
        window_s: m.sum("sonde_table_retention_window_seconds", &table),
        evicted_rows: m.sum("sonde_table_evicted_rows_total", &table),
        lost: m.sum(
            "sonde_events_lost_total",
            &[("namespace", "bench"), ("tracepoint", "requests")],
        ),
    })
}

pub fn section(report: &mut Report, args: &Args, bench: &Bench) -> anyhow::Result<()> {
    let budget = args.memory_budget_mib << 20;
    let dir = bench.dir.join("memory");
    crate::manifests(
        &dir.join("manifests"),
        &bench.workload.tracepoint(),
        &budget.to_string(),
        "1h",
    )?;
    eprintln!(
        "memory: starting the agent (Retention maxBytes {} MiB)",
        args.memory_budget_mib
    );
    let mut agent = Agent::start(
        &bench.agent,
        &dir.join("manifests"),
        dir.join("agent.log"),
        &[],
    )?;
    // Let start-up settle before the idle figure.
    std::thread::sleep(Duration::from_secs(2));
    let idle = agent.memory()?.rss;
    let idle_resident = agent.resident()?;

    let window = Duration::from_secs_f64(args.memory_minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + FILL_TIMEOUT + window + Duration::from_secs(60);
    let load = bench
        .workload
        .paced(args.memory_rate, deadline, Arc::clone(&stop));
    let result = measure(&mut agent, args, window);
    stop.store(true, Ordering::Release);
    let paced = load
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let (fill_s, samples) = result?;
    let peak = agent.memory()?.peak;
    let end_resident = agent.resident()?;
    agent.stop()?;

    let first = samples.first().context("no samples")?;
    let last = samples.last().context("no samples")?;
    let max = samples.iter().map(|s| s.rss).max().unwrap_or_default();
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let ratio = |b: u64| b as f64 / budget as f64;
    let mut table = Table::new(&["when", "RSS MiB", "÷ budget"]);
    let mut row = |when: &str, rss: u64, bold: bool| {
        let r = format!("{:.2}", ratio(rss));
        table.row(&[
            when.to_owned(),
            format!("{:.0}", mib(rss)),
            if bold { format!("**{r}**") } else { r },
        ]);
    };
    row("idle (probe attached, table empty)", idle, false);
    row("retention full (first sample)", first.rss, true);
    row(&format!("max over {:.0} s", last.at), max, true);
    row("last sample", last.rss, false);
    row("peak (VmHWM, whole run)", peak, false);
    let drift = last.rss as f64 / first.rss as f64;
    // The table is full and steady by then: the last sample's count stands.
    let end_held = last.held_bytes;
    let mut parts = Table::new(&["resident MiB", "idle", "end of run", "÷ budget at the end"]);
    let mut part = |what: &str, idle: f64, end: f64| {
        parts.row(&[
            what.to_owned(),
            format!("{:.1}", idle / f64::from(1u32 << 20)),
            format!("{:.1}", end / f64::from(1u32 << 20)),
            format!("{:.2}", end / budget as f64),
        ]);
    };
    let (anon, idle_anon) = (end_resident.anon as f64, idle_resident.anon as f64);
    part("table rows held (the store's count)", 0.0, end_held);
    part(
        "other anonymous memory (heap, stacks)",
        idle_anon,
        anon - end_held,
    );
    part(
        "mapped files (the agent's code, libraries)",
        idle_resident.files as f64,
        end_resident.files as f64,
    );
    part(
        "BPF ring buffer (its pages mapped twice)",
        idle_resident.bpf as f64,
        end_resident.bpf as f64,
    );
    let row_bytes = first.held_bytes / first.held_rows.max(1.0);
    let (rows_min, rows_max) = samples.iter().fold((f64::MAX, 0f64), |(lo, hi), s| {
        (lo.min(s.held_rows), hi.max(s.held_rows))
    });
    let (window_min, window_max) = samples.iter().fold((f64::MAX, 0f64), |(lo, hi), s| {
        (lo.min(s.window_s), hi.max(s.window_s))
    });
    let series: String = samples
        .iter()
        .map(|s| format!("{:.0}", mib(s.rss)))
        .collect::<Vec<_>>()
        .join(", ");
    report.section(
        "memory",
        "5. Memory",
        &format!(
            "The agent (release build, standalone, defaults but no baseline tables) with a \
             Retention of maxBytes {budget_mib} MiB on the bench's table, under a steady load \
             of {rate} uprobe events/s (reached {reached:.0}/s; {lost:.0} counted lost). \
             Retention was full (rows evicted for maxBytes) {fill_s:.0} s after the load \
             started; from then RSS (VmRSS) was sampled every {every} s for {minutes} min. The \
             table then held {held:.0} MiB in {rows:.0} rows; over the window it held \
             {rows_min:.0} to {rows_max:.0} rows, the oldest {window_min:.0} to {window_max:.0} s \
             old. Below about {edge:.0} events/s (the budget ÷ (30 s, the default \
             `--cold-after`, × {row_bytes:.0} B a hot row)) rows outlive 30 s and are compacted, \
             and a table this compressible then takes far longer than a run to fill; above it \
             the table holds hot rows only ({state} in this run). Target: RSS ÷ budget ≤ \
             1.3.\n\n{}\n\
             Drift: last ÷ first = **{drift:.3}**; RSS MiB every {every} s: {series}.\n\n\
             Where the resident memory is (`/proc/<pid>/smaps`), idle and after the last \
             sample: the table's rows against the rest of the heap, and the two parts that \
             do not grow with the budget, the code mapped from files and the ring buffer.\n\n{}",
            table.finish(),
            parts.finish(),
            budget_mib = args.memory_budget_mib,
            rate = args.memory_rate,
            reached = paced.calls as f64 / paced.seconds.max(1e-9),
            lost = last.lost,
            every = SAMPLE_EVERY.as_secs(),
            minutes = args.memory_minutes,
            held = first.held_bytes / f64::from(1u32 << 20),
            rows = first.held_rows,
            edge = budget as f64 / (30.0 * row_bytes),
            state = if window_max < 30.0 {
                "hot rows only"
            } else {
                "**rows were compacted at times**"
            },
        ),
        json!({
            "budget_bytes": budget,
            "rate": args.memory_rate,
            "reached_rate": paced.calls as f64 / paced.seconds.max(1e-9),
            "calls": paced.calls,
            "lost": last.lost,
            "fill_seconds": fill_s,
            "idle_rss_bytes": idle,
            "first_rss_bytes": first.rss,
            "last_rss_bytes": last.rss,
            "max_rss_bytes": max,
            "peak_rss_bytes": peak,
            "resident": {
                "idle": { "anon": idle_resident.anon, "files": idle_resident.files, "bpf": idle_resident.bpf },
                "end": { "anon": end_resident.anon, "files": end_resident.files, "bpf": end_resident.bpf, "table_held": end_held },
            },
            "first_over_budget": ratio(first.rss),
            "max_over_budget": ratio(max),
            "last_over_budget": ratio(last.rss),
            "last_over_first": drift,
            "samples": samples.iter().map(|s| json!({
                "seconds": s.at,
                "rss_bytes": s.rss,
                "held_bytes": s.held_bytes,
                "held_rows": s.held_rows,
                "window_seconds": s.window_s,
                "evicted_rows": s.evicted_rows,
            })).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

/// Waits for retention to fill, then samples for `window`. Returns the
/// seconds the fill took and the samples.
fn measure(agent: &mut Agent, args: &Args, window: Duration) -> anyhow::Result<(f64, Vec<Sample>)> {
    let start = Instant::now();
    let table = [
        ("namespace", "bench"),
        ("table", "requests"),
        ("reason", "max_bytes"),
    ];
    loop {
        agent.ensure_running()?;
        let metrics = agent.metrics()?;
        if metrics.sum("sonde_table_evicted_rows_total", &table) > 0.0 {
            break;
        }
        if start.elapsed() > FILL_TIMEOUT {
            bail!(
                "retention never filled within {FILL_TIMEOUT:?} at {} events/s (held {:.0} MiB of \
                 {} MiB); try a higher --memory-rate",
                args.memory_rate,
                metrics.sum(
                    "sonde_table_held_bytes",
                    &[("namespace", "bench"), ("table", "requests")]
                ) / f64::from(1u32 << 20),
                args.memory_budget_mib
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let fill_s = start.elapsed().as_secs_f64();
    eprintln!(
        "memory: retention full after {fill_s:.0} s; sampling RSS for {:.1} min",
        args.memory_minutes
    );
    let full = Instant::now();
    let mut samples = Vec::new();
    let mut next = full;
    loop {
        agent.ensure_running()?;
        let s = sample(agent, full)?;
        eprintln!(
            "memory: {:>4.0} s  RSS {:.0} MiB, table {:.0} MiB in {:.0} rows",
            s.at,
            s.rss as f64 / f64::from(1u32 << 20),
            s.held_bytes / f64::from(1u32 << 20),
            s.held_rows
        );
        samples.push(s);
        next += SAMPLE_EVERY;
        if next > full + window {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok((fill_s, samples))
}
