//! The metrics Tracepoints derive from their events (`spec.metrics`), the
//! ring buffer's fill level and the Flight request counters, on real eBPF
//! programs: the numbers served on `/metrics` equal what the rows served
//! over Flight SQL say, the cap on series holds exactly, and `promtool
//! check metrics` accepts the text.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::AgentProcess;
use crds::v1alpha1::TracepointSpec;
use probe_capture::{
    engine::Engine,
    loader::{LoadOptions, Targets},
    plan::HostPaths,
    preflight,
    tracefs::Tracefs,
};

/// Histogram bucket upper bounds of the request-id histogram.
const BUCKETS: [u64; 4] = [10, 50, 100, 250];

/// The demo application, paused until released, calling `handle_request`
/// `requests` times with ids from `start_id` and the given size.
struct DemoApp(Child);

impl DemoApp {
    fn start(requests: u64, start_id: u64, size: u32) -> Self {
        let child = Command::new(common::demo_app())
            .args(["--requests", &requests.to_string()])
            .args(["--start-id", &start_id.to_string()])
            .args(["--size", &size.to_string(), "--wait-stdin"])
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

fn tracepoint(name: &str, table: &str, metrics: &str) -> String {
    let demo_app = common::demo_app();
    format!(
        "\
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: {name}
  namespace: shop
spec:
  probe:
    uprobe:
      binary: {demo_app}
      symbol: handle_request
  fields:
    - {{name: request_id, source: arg0, type: u64}}
    - {{name: size, source: arg1, type: u32}}
  table: {table}
  metrics:
{metrics}"
    )
}

struct Agent {
    process: AgentProcess,
    metrics: SocketAddr,
    flight: String,
}

impl Agent {
    /// Starts the agent capturing only from `pids` and waits until it
    /// serves metrics (everything in `manifests` is attached by then).
    fn start(manifests: &Path, pids: &[u32]) -> Self {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let process = AgentProcess::start(
            manifests,
            &[
                "--metrics-addr",
                "127.0.0.1:0",
                "--target-pids",
                &pids.join(","),
                "--report-interval",
                "1m",
            ],
        );
        let line = process.wait_for_line("serving Arrow Flight and Flight SQL on http://");
        let flight = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .and_then(|w| w.strip_suffix(';'))
            .map(|addr| format!("grpc://{addr}"))
            .unwrap();
        let metrics = process
            .metrics_addr(Duration::from_secs(60))
            .parse()
            .unwrap();
        Self {
            process,
            metrics,
            flight,
        }
    }

    fn scrape(&self) -> String {
        let mut stream = TcpStream::connect(self.metrics).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    }

    fn stop(self) {
        let status = self.process.stop();
        assert!(status.success(), "agent exit status {status}");
    }
}

/// Samples of `name` as (labels, value), labels without Sonde's own.
fn samples(body: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name).then(|| (parse_labels(labels), value.parse().unwrap()))
        })
        .collect()
}

/// `a="1",b="x"}` as a map (values here hold no quotes or commas).
fn parse_labels(labels: &str) -> BTreeMap<String, String> {
    labels
        .trim_end_matches('}')
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            (key.to_owned(), value.trim_matches('"').to_owned())
        })
        .collect()
}

/// The one sample of `name` whose labels include `with`.
fn value(body: &str, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let mut found = samples(body, name).into_iter().filter(|(labels, _)| {
        with.iter()
            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    });
    let first = found.next().map(|(_, v)| v);
    assert!(found.next().is_none(), "{name} {with:?} is ambiguous");
    first
}

/// The venv the harness installs (scripts/install-harness.sh), with pyarrow
/// and the ADBC Flight SQL driver.
fn python() -> PathBuf {
    let cache = std::env::var_os("SONDE_CACHE").unwrap_or_else(|| "/var/cache/sonde".into());
    let python = Path::new(&cache).join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-harness.sh",
        python.display()
    );
    python
}

fn run_python(script: &str) -> String {
    let output = Command::new(python())
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `(size, request_id)` of every row of `shop.<table>`, read over Flight
/// SQL with the ADBC driver once the table holds `expected` rows (or after
/// ten seconds, with what it holds then).
fn rows_over_flight_sql(flight: &str, table: &str, expected: usize) -> Vec<(u32, u64)> {
    let script = format!(
        r#"
import time, adbc_driver_flightsql.dbapi as flightsql
conn = flightsql.connect("{flight}")
for _ in range(40):
    cur = conn.cursor()
    cur.execute("SELECT size, request_id FROM shop.{table}")
    rows = cur.fetchall()
    cur.close()
    if len(rows) >= {expected}:
        break
    time.sleep(0.25)
for size, request_id in rows:
    print(size, request_id)
"#
    );
    run_python(&script)
        .lines()
        .map(|line| {
            let (size, id) = line.split_once(' ').unwrap();
            (size.parse().unwrap(), id.parse().unwrap())
        })
        .collect()
}

/// promtool from the harness, beside the Prometheus it installs.
fn promtool_check(text: &str) {
    e2e::promtool_check(text).unwrap();
}

#[test]
fn derived_metrics_equal_the_rows_served_over_flight_sql() {
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("requests.yaml"),
        tracepoint(
            "requests",
            "requests",
            "    - {name: demo_request_ids, kind: histogram, value: request_id, \
             buckets: [10, 50, 100, 250], labels: [size]}\n    \
             - {name: demo_requests, kind: counter, labels: [size]}\n",
        ),
    )
    .unwrap();
    // Three sizes, overlapping ids, some beyond the last bucket.
    let apps = [
        DemoApp::start(120, 1, 16),
        DemoApp::start(200, 1, 32),
        DemoApp::start(300, 50, 64),
    ];
    let generated = 120 + 200 + 300;
    let pids: Vec<u32> = apps.iter().map(DemoApp::pid).collect();
    let agent = Agent::start(manifests.path(), &pids);
    for app in apps {
        app.run();
    }

    let rows = rows_over_flight_sql(&agent.flight, "requests", generated);
    assert_eq!(rows.len(), generated, "every call is a row");
    let body = agent.scrape();
    let source = [("namespace", "shop"), ("tracepoint", "requests")];

    let mut by_size: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (size, id) in &rows {
        by_size.entry(*size).or_default().push(*id);
    }
    assert_eq!(by_size.keys().copied().collect::<Vec<_>>(), [16, 32, 64]);
    for (size, ids) in &by_size {
        let size = size.to_string();
        let labels = [source[0], source[1], ("size", size.as_str())];
        let count = value(&body, "demo_requests_total", &labels).unwrap();
        assert_eq!(count, ids.len() as f64, "size {size}");
        let count = value(&body, "demo_request_ids_count", &labels).unwrap();
        assert_eq!(count, ids.len() as f64, "size {size}");
        let sum = value(&body, "demo_request_ids_sum", &labels).unwrap();
        assert_eq!(sum, ids.iter().sum::<u64>() as f64, "size {size}");
        let buckets: Vec<(String, f64)> = samples(&body, "demo_request_ids_bucket")
            .into_iter()
            .filter(|(l, _)| l["size"] == size && l["tracepoint"] == "requests")
            .map(|(l, v)| (l["le"].clone(), v))
            .collect();
        assert_eq!(buckets.len(), BUCKETS.len() + 1, "{buckets:?}");
        for bound in BUCKETS {
            // The text format writes bounds as floats (`10.0` or `10`).
            let bucket = buckets
                .iter()
                .find(|(le, _)| le.parse::<f64>().ok() == Some(bound as f64))
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no bucket {bound} in {buckets:?}"));
            let expected = ids.iter().filter(|id| **id <= bound).count();
            assert_eq!(bucket, expected as f64, "size {size} le {bound}");
        }
        let inf = value(
            &body,
            "demo_request_ids_bucket",
            &[labels[0], labels[1], labels[2], ("le", "+Inf")],
        )
        .unwrap();
        assert_eq!(inf, ids.len() as f64);
    }
    assert_eq!(samples(&body, "demo_requests_total").len(), 3);
    for metric in ["demo_requests", "demo_request_ids"] {
        let labels = [source[0], source[1], ("metric", metric)];
        assert_eq!(
            value(&body, "sonde_metric_series_rejected_total", &labels),
            Some(0.0)
        );
        assert_eq!(value(&body, "sonde_metric_series", &labels), Some(3.0));
    }
    // Everything was drained before the report was answered.
    assert_eq!(
        value(&body, "sonde_ring_buffer_size_bytes", &[]),
        Some(f64::from(8u32 << 20))
    );
    assert_eq!(value(&body, "sonde_ring_buffer_used_bytes", &[]), Some(0.0));

    // Flight calls, counted by method and status code.
    let flight_calls = |body: &str, method: &str, code: &str| {
        value(
            body,
            "sonde_flight_requests_total",
            &[("method", method), ("command", ""), ("code", code)],
        )
        .unwrap_or(0.0) as u64
    };
    let before = agent.scrape();
    let calls = 5;
    run_python(&format!(
        r#"
import pyarrow, pyarrow.flight as fl
client = fl.FlightClient("{flight}")
for _ in range({calls}):
    info = client.get_flight_info(fl.FlightDescriptor.for_path("shop", "requests"))
    assert client.do_get(info.endpoints[0].ticket).read_all().num_rows == {generated}
try:
    client.get_flight_info(fl.FlightDescriptor.for_path("shop", "nope"))
    raise SystemExit("an unknown table was found")
except pyarrow.ArrowKeyError:
    pass
"#,
        flight = agent.flight
    ));
    let after = agent.scrape();
    for (method, code, expected) in [
        ("GetFlightInfo", "Ok", calls),
        ("DoGet", "Ok", calls),
        ("GetFlightInfo", "NotFound", 1),
        ("DoGet", "NotFound", 0),
    ] {
        assert_eq!(
            flight_calls(&after, method, code) - flight_calls(&before, method, code),
            expected,
            "{method} {code}"
        );
    }
    let durations = value(
        &after,
        "sonde_flight_request_duration_seconds_count",
        &[("method", "DoGet")],
    )
    .unwrap();
    let do_gets: f64 = samples(&after, "sonde_flight_requests_total")
        .into_iter()
        .filter(|(labels, _)| labels["method"] == "DoGet")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(durations, do_gets);
    // The Flight SQL queries that read the rows (the ADBC driver prepares
    // each statement, runs it and closes it), by command.
    let sql_calls = |method: &str, command: &str| {
        value(
            &after,
            "sonde_flight_requests_total",
            &[("method", method), ("command", command), ("code", "Ok")],
        )
        .unwrap_or_else(|| panic!("no {method} {command} in:\n{after}"))
    };
    let prepared = sql_calls("DoAction", "CreatePreparedStatement");
    assert!(prepared >= 1.0, "{after}");
    assert_eq!(
        sql_calls("GetFlightInfo", "CommandPreparedStatementQuery"),
        prepared
    );
    assert_eq!(
        sql_calls("DoGet", "CommandPreparedStatementQuery"),
        prepared
    );
    assert_eq!(sql_calls("DoAction", "ClosePreparedStatement"), prepared);

    promtool_check(&after);
    agent.stop();
}

#[test]
fn series_over_the_cap_are_counted_and_the_agent_keeps_serving() {
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("ids.yaml"),
        tracepoint(
            "ids",
            "ids",
            "    - {name: demo_ids_seen, kind: counter, labels: [request_id], maxSeries: 5}\n",
        ),
    )
    .unwrap();
    // Ids 1..=8 twice, one process after the other: 1..=5 take the five
    // series, 6..=8 are rejected both times.
    let first = DemoApp::start(8, 1, 16);
    let second = DemoApp::start(8, 1, 16);
    let agent = Agent::start(manifests.path(), &[first.pid(), second.pid()]);
    first.run();
    second.run();

    let rows = rows_over_flight_sql(&agent.flight, "ids", 16);
    assert_eq!(rows.len(), 16);
    let body = agent.scrape();
    let series: BTreeMap<String, f64> = samples(&body, "demo_ids_seen_total")
        .into_iter()
        .map(|(labels, value)| (labels["request_id"].clone(), value))
        .collect();
    assert_eq!(series.len(), 5, "{body}");
    let mut rows_per_id: BTreeMap<String, f64> = BTreeMap::new();
    for (_, id) in &rows {
        *rows_per_id.entry(id.to_string()).or_default() += 1.0;
    }
    for (id, count) in &series {
        assert_eq!(Some(count), rows_per_id.get(id), "id {id}");
    }
    let outside: f64 = rows_per_id
        .iter()
        .filter(|(id, _)| !series.contains_key(*id))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(outside, 6.0);
    let labels = [
        ("namespace", "shop"),
        ("tracepoint", "ids"),
        ("metric", "demo_ids_seen"),
    ];
    assert_eq!(
        value(&body, "sonde_metric_series_rejected_total", &labels),
        Some(outside)
    );
    assert_eq!(value(&body, "sonde_metric_series", &labels), Some(5.0));
    // Still serving: rows over Flight SQL and another scrape.
    assert_eq!(rows_over_flight_sql(&agent.flight, "ids", 16).len(), 16);
    promtool_check(&agent.scrape());
    agent.stop();
}

fn engine() -> Engine {
    if let Err(e) = preflight::check_privileges() {
        panic!("this test loads eBPF programs and cannot run here: {e}");
    }
    let tracefs = Tracefs::locate(None).expect("tracefs mounted (scripts/install.sh mounts it)");
    Engine::load(
        tracefs,
        LoadOptions::default(),
        "test-node",
        Box::new(HostPaths),
    )
    .expect("eBPF object loads")
}

#[test]
fn the_ring_fill_level_is_the_bytes_not_drained_yet() {
    let mut engine = engine();
    let requests = 1000;
    let app = DemoApp::start(requests, 1, 16);
    let demo_app = common::demo_app();
    let spec: TracepointSpec = serde_yaml::from_str(&format!(
        "probe: {{uprobe: {{binary: {demo_app:?}, symbol: handle_request}}}}
table: requests
fields:
  - {{name: size, source: arg1, type: u32}}
metrics:
  - {{name: demo_requests, kind: counter, labels: [size, comm]}}"
    ))
    .unwrap();
    let attached = engine
        .attach(&spec, Targets::Pids(vec![app.pid()]))
        .unwrap();
    let usage = engine.ring_usage().expect("ring positions are mapped");
    assert_eq!(usage.used_bytes, 0);
    assert_eq!(
        usage.size_bytes,
        u64::from(LoadOptions::default().ring_bytes)
    );

    app.run();
    // Each record takes its length plus an 8-byte header, 8-byte aligned.
    let per_record = (8 + u64::from(attached.schema.record_len)).next_multiple_of(8);
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.ring_usage().unwrap().used_bytes < requests * per_record {
        assert!(Instant::now() < deadline, "{:?}", engine.ring_usage());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        engine.ring_usage().unwrap().used_bytes,
        requests * per_record
    );

    assert_eq!(engine.drain(), requests);
    assert_eq!(engine.ring_usage().unwrap().used_bytes, 0);
    let metrics = engine.metrics(attached.id);
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].series.len(), 1);
    assert_eq!(metrics[0].series[0].labels, ["16", "sonde-demo-app"]);
    assert_eq!(metrics[0].series[0].counts, [requests]);
    // Detached, the metric goes with the probe.
    engine.detach(attached.id).unwrap();
    assert!(engine.metrics(attached.id).is_empty());
}
