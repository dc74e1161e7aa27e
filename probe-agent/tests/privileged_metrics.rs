//! The agent binary's `/metrics`, as Prometheus and its tools see it: the
//! counters equal what a load generator did and the losses the test
//! provoked, `promtool check metrics` accepts the text, and a real
//! Prometheus (the e2e harness) reads the same numbers through its query API.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{AgentProcess, loadgen};

/// getppid(2) calls the load generator makes.
const CALLS: u64 = 5000;

fn tracepoint(name: &str, table: &str, extra: &str) -> String {
    format!(
        "\
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: {name}
  namespace: shop
spec:
  probe:
    tracepoint:
      group: syscalls
      name: sys_enter_getppid
  table: {table}
{extra}"
    )
}

/// The load generator, started and waiting for a line on stdin, so that the
/// agent can be pointed at its pid before it makes a single call.
struct Loadgen(Child);

impl Loadgen {
    fn start() -> Self {
        let child = Command::new(loadgen())
            .args(["getppid", &CALLS.to_string(), "--wait-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn run(mut self) {
        self.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(self.0.wait().unwrap().success());
    }
}

struct Agent {
    process: AgentProcess,
    metrics: SocketAddr,
}

impl Agent {
    /// Starts the agent on `manifests`, capturing only from `pid`, with both
    /// ports picked by the system, and waits until it serves metrics.
    fn start(manifests: &Path, pid: u32) -> Self {
        let process = AgentProcess::start(
            manifests,
            &[
                "--metrics-addr",
                "127.0.0.1:0",
                "--target-pids",
                &pid.to_string(),
                "--report-interval",
                "1m",
            ],
        );
        let metrics = process
            .metrics_addr(Duration::from_secs(60))
            .parse()
            .unwrap();
        Self { process, metrics }
    }

    /// Ctrl-C, as a user stops it; it must exit cleanly.
    fn stop(self) {
        let status = self.process.stop();
        assert!(status.success(), "agent exit status {status}");
    }
}

/// `GET /metrics`; returns the content type and the body.
fn scrape(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap();
    (content_type, body.to_owned())
}

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().unwrap())
        });
    let value = found.next();
    assert!(found.next().is_none(), "{name} {labels:?} is ambiguous");
    value
}

fn counter(body: &str, name: &str, tracepoint: &str) -> u64 {
    sample(
        body,
        name,
        &[("namespace", "shop"), ("tracepoint", tracepoint)],
    )
    .unwrap_or_else(|| panic!("no {name} for {tracepoint} in:\n{body}")) as u64
}

fn lost(body: &str, tracepoint: &str, stage: &str) -> u64 {
    sample(
        body,
        "sonde_events_lost_total",
        &[("tracepoint", tracepoint), ("stage", stage)],
    )
    .unwrap_or_else(|| panic!("no {stage} losses for {tracepoint} in:\n{body}")) as u64
}

fn held_rows(body: &str, table: &str) -> u64 {
    sample(
        body,
        "sonde_table_held_rows",
        &[("namespace", "shop"), ("table", table)],
    )
    .unwrap_or(0.0) as u64
}

/// Scrapes until `done` holds (the ring is drained and rows sealed into the
/// store within about a second), or fails with the last scrape.
fn scrape_until(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (_, body) = scrape(addr, None);
        if done(&body) {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "counters never settled:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn served_counters_equal_the_load_and_the_losses_and_promtool_accepts_them() {
    let manifests = tempfile::tempdir().unwrap();
    let files = [
        ("all.yaml", tracepoint("all-lookups", "all_lookups", "")),
        (
            "limited.yaml",
            tracepoint(
                "limited-lookups",
                "limited_lookups",
                "  rateLimit: {eventsPerSecond: 100}\n",
            ),
        ),
        (
            "sampled.yaml",
            tracepoint(
                "sampled-lookups",
                "sampled_lookups",
                "  sampling: {oneIn: 10}\n",
            ),
        ),
        (
            "filtered.yaml",
            tracepoint(
                "init-lookups",
                "init_lookups",
                "  filters: [{field: pid, op: eq, value: 1}]\n",
            ),
        ),
    ];
    for (file, text) in &files {
        std::fs::write(manifests.path().join(file), text).unwrap();
    }
    let loadgen = Loadgen::start();
    let agent = Agent::start(manifests.path(), loadgen.pid());
    let (_, before) = scrape(agent.metrics, None);
    assert_eq!(
        sample(&before, "sonde_probes", &[("state", "attached")]),
        Some(4.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "sonde_probes", &[("state", "failed")]),
        Some(0.0)
    );
    assert_eq!(
        counter(&before, "sonde_events_matched_total", "all-lookups"),
        0
    );

    loadgen.run();
    let body = scrape_until(agent.metrics, |body| {
        held_rows(body, "all_lookups") == CALLS
            && counter(body, "sonde_events_captured_total", "all-lookups") == CALLS
            && held_rows(body, "limited_lookups")
                == counter(body, "sonde_events_captured_total", "limited-lookups")
            && held_rows(body, "sampled_lookups")
                == counter(body, "sonde_events_captured_total", "sampled-lookups")
    });

    // `scrape_until` waited for the capture counters and the held rows to
    // agree; what follows checks the other families against the load.
    let stages = ["rate_limit", "ring_buffer_full", "missing_entry", "decode"];
    for tracepoint in [
        "all-lookups",
        "limited-lookups",
        "sampled-lookups",
        "init-lookups",
    ] {
        // Every call matched, and every match is accounted for exactly once.
        let matched = counter(&body, "sonde_events_matched_total", tracepoint);
        assert_eq!(matched, CALLS, "{tracepoint} matched every call");
        let lost: u64 = stages.iter().map(|s| lost(&body, tracepoint, s)).sum();
        assert_eq!(
            counter(&body, "sonde_events_captured_total", tracepoint)
                + counter(&body, "sonde_events_filtered_total", tracepoint)
                + counter(&body, "sonde_events_sampled_out_total", tracepoint)
                + lost,
            matched,
            "{tracepoint}: captured + filtered + sampled out + lost == matched"
        );
    }
    for stage in stages {
        assert_eq!(lost(&body, "all-lookups", stage), 0, "{stage}");
    }
    // The store was given exactly the captured rows, and evicted none.
    let appended = |table: &str| {
        sample(
            &body,
            "sonde_table_appended_rows_total",
            &[("namespace", "shop"), ("table", table)],
        )
        .unwrap_or(0.0) as u64
    };
    assert_eq!(appended("all_lookups"), CALLS);
    assert!(
        body.lines()
            .filter(|l| l.starts_with("sonde_table_evicted_rows_total{"))
            .all(|l| l.ends_with(" 0")),
        "nothing evicted:\n{body}"
    );

    // The rate limit's loss is exactly what it did not keep.
    let kept = counter(&body, "sonde_events_captured_total", "limited-lookups");
    assert!(kept > 0 && kept < CALLS, "rate limit kept {kept}");
    assert_eq!(appended("limited_lookups"), kept);
    assert_eq!(lost(&body, "limited-lookups", "rate_limit"), CALLS - kept);
    assert_eq!(lost(&body, "limited-lookups", "ring_buffer_full"), 0);

    // Sampling and filters drop by request; they are counted, not lost.
    // Each CPU keeps every tenth of the events it saw.
    let sampled = counter(&body, "sonde_events_captured_total", "sampled-lookups");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    assert!(
        (CALLS / 10 - cpus..=CALLS / 10).contains(&sampled),
        "1 in 10 of {CALLS} kept {sampled}"
    );
    assert_eq!(appended("sampled_lookups"), sampled);
    assert_eq!(
        counter(&body, "sonde_events_sampled_out_total", "sampled-lookups"),
        CALLS - sampled
    );
    assert_eq!(lost(&body, "sampled-lookups", "rate_limit"), 0);
    assert_eq!(
        counter(&body, "sonde_events_filtered_total", "init-lookups"),
        CALLS
    );
    assert_eq!(
        counter(&body, "sonde_events_captured_total", "init-lookups"),
        0
    );
    assert_eq!(held_rows(&body, "init_lookups"), 0);

    // The retention window is the age of the oldest row: positive, and no
    // older than the test.
    let window = sample(
        &body,
        "sonde_table_retention_window_seconds",
        &[("table", "all_lookups")],
    )
    .unwrap();
    assert!(window > 0.0 && window < 120.0, "window {window}");

    // What `curl | promtool check metrics` sees.
    let (content_type, text) = scrape(agent.metrics, None);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    e2e::promtool_check(&text).unwrap();

    // What Prometheus asks for.
    let (content_type, text) = scrape(
        agent.metrics,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        text.contains("# TYPE sonde_events_captured counter"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_the_counters_the_agent_serves() -> anyhow::Result<()> {
    e2e::require_root()?;
    let manifests = tempfile::tempdir()?;
    std::fs::write(
        manifests.path().join("all.yaml"),
        tracepoint("parent-lookups", "parent_lookups", ""),
    )?;
    std::fs::write(
        manifests.path().join("limited.yaml"),
        tracepoint(
            "limited-lookups",
            "limited_lookups",
            "  rateLimit: {eventsPerSecond: 100}\n",
        ),
    )?;
    let loadgen = Loadgen::start();
    let agent = Agent::start(manifests.path(), loadgen.pid());
    loadgen.run();
    let body = scrape_until(agent.metrics, |body| {
        held_rows(body, "parent_lookups") == CALLS
            && held_rows(body, "limited_lookups")
                == counter(body, "sonde_events_captured_total", "limited-lookups")
    });

    let target = agent.metrics.to_string();
    let prometheus = e2e::Prometheus::scraping(&[&target]).await?;
    let value = |promql: &'static str| {
        let prometheus = &prometheus;
        async move {
            let samples = prometheus.wait_for(promql, Duration::from_secs(30)).await?;
            anyhow::ensure!(samples.len() == 1, "{promql}: {samples:?}");
            Ok::<u64, anyhow::Error>(samples[0].value as u64)
        }
    };
    // Prometheus reads what the agent served once it had settled (its
    // counters no longer move: the load is over and drained).
    let matched =
        value(r#"sonde_events_matched_total{namespace="shop",tracepoint="parent-lookups"}"#)
            .await?;
    let captured =
        value(r#"sonde_events_captured_total{namespace="shop",tracepoint="parent-lookups"}"#)
            .await?;
    let rows = value(r#"sonde_table_held_rows{namespace="shop",table="parent_lookups"}"#).await?;
    assert_eq!(matched, CALLS);
    assert_eq!(
        captured,
        counter(&body, "sonde_events_captured_total", "parent-lookups")
    );
    assert_eq!(rows, CALLS);

    let kept = value(r#"sonde_table_held_rows{namespace="shop",table="limited_lookups"}"#).await?;
    let rate_limited = value(
        r#"sonde_events_lost_total{namespace="shop",tracepoint="limited-lookups",stage="rate_limit"}"#,
    )
    .await?;
    assert!(kept > 0 && kept < CALLS, "rate limit kept {kept}");
    assert_eq!(
        kept,
        counter(&body, "sonde_events_captured_total", "limited-lookups")
    );
    assert_eq!(rate_limited, CALLS - kept);
    assert_eq!(rate_limited, lost(&body, "limited-lookups", "rate_limit"));

    // Prometheus scraped in OpenMetrics and found the target healthy.
    let targets = prometheus.targets().await?;
    let health = &targets["data"]["activeTargets"][0]["health"];
    assert_eq!(health, "up", "{targets}");

    drop(prometheus);
    agent.stop();
    Ok(())
}
