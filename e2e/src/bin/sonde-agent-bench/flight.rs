//! Section 4, Flight: a whole-table DoGet from the agent against pyarrow's
//! own Flight server serving the same table from memory, and a GROUP BY
//! with an exact p99 over Flight SQL against DuckDB on the same Arrow table.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::{
    Args, Bench,
    agent::Agent,
    load::{self, GROUPS},
    python::{ArrowClient, TableServer},
    report::{Report, Table, median},
};

const TICKET: &str = r#"{"table": "bench.requests"}"#;

/// The agent's query: DataFusion's exact percentile.
const AGENT_SQL: &str = "SELECT comm, count(*) AS n, percentile_cont(request_id, 0.99) AS p99 \
                         FROM bench.requests GROUP BY comm ORDER BY comm";

/// The same in DuckDB, on the table registered as `t`.
const DUCKDB_SQL: &str = "SELECT comm, count(*) AS n, quantile_cont(request_id, 0.99) AS p99 \
                          FROM t GROUP BY comm ORDER BY comm";

/// Past this `--cold-after` the table stays hot for the whole section and
/// no compaction is waited for.
pub const HOT: Duration = Duration::from_secs(600);

/// Rows held, captured and lost, from one scrape.
struct Counts {
    held: f64,
    captured: f64,
    lost: f64,
    held_bytes: f64,
    plain_bytes: f64,
}

fn counts(agent: &Agent) -> anyhow::Result<Counts> {
    let m = agent.metrics()?;
    let table = [("namespace", "bench"), ("table", "requests")];
    let tracepoint = [("namespace", "bench"), ("tracepoint", "requests")];
    Ok(Counts {
        held: m.sum("sonde_table_held_rows", &table),
        held_bytes: m.sum("sonde_table_held_bytes", &table),
        plain_bytes: m.sum("sonde_table_held_uncompressed_bytes", &table),
        captured: m.sum("sonde_events_captured_total", &tracepoint),
        lost: m.sum("sonde_events_lost_total", &tracepoint),
    })
}

/// Waits until every generated call is a row (captured rows reach the
/// table when their batch is sealed), and fails clearly if some were lost.
fn wait_captured(agent: &mut Agent, rows: u64) -> anyhow::Result<Counts> {
    const TIMEOUT: Duration = Duration::from_secs(120);
    let start = Instant::now();
    loop {
        agent.ensure_running()?;
        let c = counts(agent)?;
        if c.held as u64 == rows {
            return Ok(c);
        }
        let lost = c.lost > 0.0 && c.captured + c.lost >= rows as f64;
        if lost || start.elapsed() > TIMEOUT {
            bail!(
                "the table holds {} rows, not the {rows} generated: captured {}, counted lost {} \
                 (see sonde_events_lost_total by stage){}; nothing is measured on a partial table",
                c.held,
                c.captured,
                c.lost,
                if lost { "" } else { " after waiting 2 minutes" },
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until compaction has settled: until the last partial run of
/// batches may have gone cold (eleven times `cold_after`), then until held
/// bytes stay unchanged for five seconds (at most two minutes).
fn wait_compacted(agent: &mut Agent, cold_after: Duration) -> anyhow::Result<Counts> {
    if cold_after >= HOT {
        return counts(agent);
    }
    std::thread::sleep(cold_after * 11 + Duration::from_secs(3));
    let start = Instant::now();
    let (mut last, mut same) = (f64::NAN, 0);
    loop {
        agent.ensure_running()?;
        let c = counts(agent)?;
        same = if c.held_bytes == last { same + 1 } else { 0 };
        last = c.held_bytes;
        if same >= 5 || start.elapsed() > Duration::from_secs(120) {
            return Ok(c);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The groups of a query's answer: (comm, count, p99).
fn groups(answer: &Value) -> anyhow::Result<Vec<(String, u64, f64)>> {
    answer["rows"]
        .as_array()
        .context("no rows in the answer")?
        .iter()
        .map(|row| {
            Ok((
                row[0].as_str().context("comm is not a string")?.to_owned(),
                row[1].as_u64().context("count is not an integer")?,
                row[2].as_f64().context("p99 is not a number")?,
            ))
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Runs the section on a fresh agent whose `--cold-after` is `cold_after`:
/// past [`HOT`] the table is read hot, otherwise compacted.
pub fn section(
    report: &mut Report,
    args: &Args,
    bench: &Bench,
    cold_after: Duration,
) -> anyhow::Result<()> {
    let hot = cold_after >= HOT;
    let (key, heading, tag) = if hot {
        ("flight_hot", "4. Flight, hot table", "flight (hot)")
    } else {
        (
            "flight_compacted",
            "4. Flight, compacted table",
            "flight (compacted)",
        )
    };
    let dir = bench.dir.join(key);
    crate::manifests(
        &dir.join("manifests"),
        &bench.workload.tracepoint(),
        "6Gi",
        "24h",
    )?;
    eprintln!("{tag}: starting the agent");
    let mut agent = Agent::start(
        &bench.agent,
        &dir.join("manifests"),
        dir.join("agent.log"),
        &[
            "--memory-budget",
            "8Gi",
            "--query-memory",
            "4Gi",
            "--ring-bytes",
            &(64u32 << 20).to_string(),
            "--cold-after",
            &format!("{}ms", cold_after.as_millis()),
        ],
    )?;

    eprintln!("{tag}: generating {} rows", args.rows);
    let generated_at = Instant::now();
    let per_group = bench.workload.burst(args.rows)?;
    let generate_s = generated_at.elapsed().as_secs_f64();
    wait_captured(&mut agent, args.rows)?;
    eprintln!(
        "{tag}: {} rows captured in {generate_s:.1} s{}",
        args.rows,
        if hot {
            ""
        } else {
            "; waiting for compaction to settle"
        }
    );
    let settled = wait_compacted(&mut agent, cold_after)?;

    let mut client = ArrowClient::start(&bench.python, &bench.script)?;
    let uri = agent.flight_uri();
    let count = client.call(json!({
        "op": "sql", "uri": uri, "query": "SELECT count(*) AS n FROM bench.requests"
    }))?;
    let counted = count["rows"][0][0].as_u64().unwrap_or_default();
    ensure!(
        counted == args.rows,
        "Flight SQL counts {counted} rows in bench.requests, not {}: nothing measured",
        args.rows
    );
    eprintln!(
        "{tag}: Flight SQL counts {counted} rows; loading the table into pyarrow's server and DuckDB"
    );
    let server = TableServer::start(&bench.python, &bench.script, &uri, TICKET)?;
    ensure!(
        server.rows == args.rows,
        "pyarrow's server holds {} rows, not {}",
        server.rows,
        args.rows
    );
    let loaded = client.call(json!({"op": "load", "uri": uri, "ticket": TICKET}))?;
    ensure!(
        loaded["rows"].as_u64() == Some(args.rows),
        "DuckDB's table has {} rows, not {}",
        loaded["rows"],
        args.rows
    );

    let mut doget: [Vec<f64>; 2] = Default::default();
    let mut doget_bytes = 0u64;
    let mut doget_batches = [0u64; 2];
    // The agent's CPU time during each of its DoGets.
    let mut doget_cpu: Vec<f64> = Vec::new();
    let mut sql: [Vec<f64>; 2] = Default::default();
    let mut answers: [Vec<(String, u64, f64)>; 2] = Default::default();
    for round in 0..args.rounds {
        eprintln!("{tag}: round {}/{}", round + 1, args.rounds);
        // Alternate who goes first, so drift falls on both alike.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for &side in &order {
            let target = if side == 0 { &uri } else { &server.uri };
            let cpu_before = agent.cpu_seconds()?;
            let got = client.call(json!({"op": "doget", "uri": target, "ticket": TICKET}))?;
            if side == 0 {
                doget_cpu.push(agent.cpu_seconds()? - cpu_before);
            }
            let rows = got["rows"].as_u64().unwrap_or_default();
            ensure!(
                rows == args.rows,
                "a DoGet from {} returned {rows} rows, not {}",
                ["the agent", "pyarrow's server"][side],
                args.rows
            );
            doget[side].push(got["seconds"].as_f64().context("no seconds")?);
            doget_batches[side] = got["batches"].as_u64().unwrap_or_default();
            if side == 0 {
                doget_bytes = got["bytes"].as_u64().unwrap_or_default();
            }
        }
        for &side in &order {
            let got = if side == 0 {
                client.call(json!({"op": "sql", "uri": uri, "query": AGENT_SQL}))?
            } else {
                client.call(json!({"op": "duckdb", "query": DUCKDB_SQL}))?
            };
            sql[side].push(got["seconds"].as_f64().context("no seconds")?);
            answers[side] = groups(&got)?;
        }
    }
    drop(server);
    drop(client);
    agent.stop()?;

    // Both engines must agree with each other and with what was generated.
    let expected: Vec<(String, u64, f64)> = {
        let mut e: Vec<_> = GROUPS
            .iter()
            .enumerate()
            .map(|(g, (name, _, _))| {
                (
                    (*name).to_owned(),
                    per_group[g],
                    load::expected_p99(g, per_group[g]),
                )
            })
            .collect();
        e.sort_by(|a, b| a.0.cmp(&b.0));
        e
    };
    let same_groups = |a: &[(String, u64, f64)]| {
        a.len() == expected.len()
            && a.iter()
                .zip(&expected)
                .all(|(x, y)| x.0 == y.0 && x.1 == y.1)
    };
    ensure!(
        same_groups(&answers[0]) && same_groups(&answers[1]),
        "the GROUP BY answers differ from the generated rows:\n  sonde:  {:?}\n  duckdb: {:?}\n  \
         generated: {:?}",
        answers[0],
        answers[1],
        expected
    );
    let p99_agree = answers[0]
        .iter()
        .zip(&answers[1])
        .zip(&expected)
        .all(|((a, b), e)| close(a.2, b.2) && close(a.2, e.2));

    let rounds = args.rounds;
    let doget_ratio = median((0..rounds).map(|r| doget[1][r] / doget[0][r]).collect());
    let sql_ratio = median((0..rounds).map(|r| sql[0][r] / sql[1][r]).collect());
    let [agent_s, pyarrow_s] = [median(doget[0].clone()), median(doget[1].clone())];
    let [agent_sql_s, duckdb_s] = [median(sql[0].clone()), median(sql[1].clone())];
    let rows = args.rows as f64;
    let mb = doget_bytes as f64 / 1e6;
    let agent_cpu = median(doget_cpu.clone());

    let mut get_table = Table::new(&["server", "batches", "s", "rows/s", "MB/s", "÷ pyarrow"]);
    get_table.row(&[
        "sonde agent".into(),
        doget_batches[0].to_string(),
        format!("{agent_s:.3}"),
        format!("{:.0}", rows / agent_s),
        format!("{:.0}", mb / agent_s),
        format!("**{doget_ratio:.2}**"),
    ]);
    get_table.row(&[
        "pyarrow `FlightServerBase`, same table in memory".into(),
        doget_batches[1].to_string(),
        format!("{pyarrow_s:.3}"),
        format!("{:.0}", rows / pyarrow_s),
        format!("{:.0}", mb / pyarrow_s),
        "1.00".into(),
    ]);
    let mut sql_table = Table::new(&["engine", "s", "÷ DuckDB"]);
    sql_table.row(&[
        "sonde, Flight SQL through ADBC".into(),
        format!("{agent_sql_s:.3}"),
        format!("**{sql_ratio:.2}**"),
    ]);
    sql_table.row(&[
        "DuckDB in process, same Arrow table".into(),
        format!("{duckdb_s:.3}"),
        "1.00".into(),
    ]);
    let mut answer_table = Table::new(&["comm", "count", "p99(request_id), sonde", "DuckDB"]);
    for (a, b) in answers[0].iter().zip(&answers[1]) {
        answer_table.row(&[
            a.0.clone(),
            a.1.to_string(),
            format!("{:.2}", a.2),
            format!("{:.2}", b.2),
        ]);
    }
    let mib = |b: f64| b / f64::from(1u32 << 20);
    let cold_after_flag = humantime(cold_after);
    let held = if !hot && settled.held_bytes < settled.plain_bytes {
        format!(
            "They are held compacted, as rows older than the default 30 s are: {:.0} MiB in \
             compressed cold batches, {:.0} MiB as appended (`--cold-after {cold_after_flag}` only \
             makes that happen sooner), so every read decodes them (the decode cache is the \
             default 64 MiB).",
            mib(settled.held_bytes),
            mib(settled.plain_bytes)
        )
    } else {
        format!(
            "They are held hot, as appended (`--cold-after {cold_after_flag}`): {:.0} MiB.",
            mib(settled.held_bytes)
        )
    };
    report.section(
        key,
        heading,
        &format!(
            "The agent (release build, standalone, no baseline tables) captured {} rows of a \
             uprobe on `sonde-demo-app`'s `handle_request` (standard columns plus `request_id` \
             u64 and `size` u32, four commands) in {generate_s:.1} s; Flight SQL counted all of \
             them before measuring. {held} pyarrow's server holds the same table, \
             fetched once from the agent. The same pyarrow client reads the whole table from \
             both (`read_all`; MB are 10^6 bytes of Arrow buffers received, {mb:.0} MB), and \
             the query runs through ADBC against DuckDB in the client process on the table read \
             once from the agent; interleaved, {rounds} rounds, medians of the per-round \
             ratios. Target: DoGet ÷ pyarrow ≥ 0.8.\n\n{}\nThe agent's own CPU time per \
             DoGet (user and system, from `/proc`): median {agent_cpu:.3} s, {:.2} CPU-s per \
             GB sent.\n\n`{AGENT_SQL}` (DuckDB: \
             `quantile_cont`, on the same Arrow table):\n\n{}\nBoth return the generated groups \
             and counts; p99s agree with each other and with the generated ids: {}.\n\n{}",
            args.rows,
            get_table.finish(),
            agent_cpu * 1e3 / mb,
            sql_table.finish(),
            if p99_agree { "yes" } else { "**NO**" },
            answer_table.finish(),
        ),
        json!({
            "rows": args.rows,
            "rounds": rounds,
            "generate_seconds": generate_s,
            "cold_after_seconds": cold_after.as_secs_f64(),
            "held_bytes": settled.held_bytes,
            "held_uncompressed_bytes": settled.plain_bytes,
            "doget": {
                "bytes": doget_bytes,
                "agent_seconds": doget[0],
                "pyarrow_seconds": doget[1],
                "agent_batches": doget_batches[0],
                "pyarrow_batches": doget_batches[1],
                "agent_rows_per_s": rows / agent_s,
                "agent_mb_per_s": mb / agent_s,
                "pyarrow_rows_per_s": rows / pyarrow_s,
                "pyarrow_mb_per_s": mb / pyarrow_s,
                "agent_over_pyarrow": doget_ratio,
                "agent_cpu_seconds": doget_cpu,
            },
            "sql": {
                "agent_query": AGENT_SQL,
                "duckdb_query": DUCKDB_SQL,
                "agent_seconds": sql[0],
                "duckdb_seconds": sql[1],
                "agent_over_duckdb": sql_ratio,
                "groups": answers[0].iter().zip(&answers[1]).map(|(a, b)| json!({
                    "comm": a.0, "count": a.1, "agent_p99": a.2, "duckdb_p99": b.2,
                })).collect::<Vec<_>>(),
                "groups_and_counts_agree": true,
                "p99_agree": p99_agree,
            },
        }),
    );
    Ok(())
}

/// A duration as the agent's flags write it.
fn humantime(d: Duration) -> String {
    match d.as_millis() {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}
