//! The agent binary exporting a captured table to a real OpenTelemetry
//! Collector: every getppid(2) call of a child process arrives as one log
//! record; an Export whose Secret is missing reports it, buffers and counts,
//! and sends once the Secret appears; capture and Flight go on throughout.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use arrow_flight::{Criteria, flight_service_client::FlightServiceClient};
use common::{AgentProcess, loadgen};
use e2e::Collector;
use futures::TryStreamExt;
use serde_json::Value;

const CALLS: usize = 2_500;

fn manifests(endpoint: &str) -> String {
    format!(
        "\
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: parent-lookups
  namespace: default
spec:
  probe:
    tracepoint:
      group: syscalls
      name: sys_enter_getppid
  table: parent_lookups
---
apiVersion: sonde.dev/v1alpha1
kind: Export
metadata:
  name: lookups
  namespace: default
spec:
  tables: [parent_*]
  destination:
    otlp:
      endpoint: http://{endpoint}
      protocol: grpc
      signal: logs
  mapping:
    body: comm
    attributes: [pid, tid]
  interval: 500ms
  batchSize: 1000
  bufferRows: 100000
---
apiVersion: sonde.dev/v1alpha1
kind: Export
metadata:
  name: with-token
  namespace: default
spec:
  tables: [parent_lookups]
  destination:
    otlp:
      endpoint: http://{endpoint}
      protocol: grpc
      signal: logs
      headersFrom:
        name: otlp-token
  mapping:
    attributes: [pid]
  interval: 500ms
  batchSize: 1000
  bufferRows: 100000
"
    )
}

const SECRET: &str = "\
apiVersion: v1
kind: Secret
metadata:
  name: otlp-token
  namespace: default
stringData:
  authorization: Bearer not-checked-by-the-test-collector
";

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

/// The value of the sample whose line starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn attribute_int(record: &Value, key: &str) -> Option<i64> {
    let value = record["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let int = &value["value"]["intValue"];
    int.as_str().and_then(|s| s.parse().ok()).or(int.as_i64())
}

/// Log records of process `pid`, by export (the `with-token` Export sends
/// no `tid`).
fn records_of(collector: &Collector, pid: u32) -> (Vec<Value>, Vec<Value>) {
    collector
        .log_records()
        .expect("read")
        .into_iter()
        .filter(|r| attribute_int(r, "pid") == Some(i64::from(pid)))
        .partition(|r| attribute_int(r, "tid").is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_rows_reach_the_collector_and_a_missing_secret_is_reported() {
    let collector = Collector::start().await.expect("collector");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("export.yaml"),
        manifests(&collector.otlp_grpc_endpoint()),
    )
    .expect("write manifests");
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], e2e::free_port().expect("free port")));
    let agent = AgentProcess::start(
        dir.path(),
        &[
            "--metrics-addr",
            &metrics_addr.to_string(),
            "--rescan-interval",
            "200ms",
            "--report-interval",
            "1m",
        ],
    );
    let (missing, _) = agent.expect(
        "Secret default/otlp-token does not exist",
        Duration::from_secs(60),
    );
    assert!(missing.contains("with-token"), "{missing}");
    agent.expect("standalone agent running", Duration::from_secs(30));
    let (serving, _) = agent.expect("serving Arrow Flight", Duration::from_secs(5));
    let flight_url = serving
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .and_then(|w| w.strip_suffix(';'))
        .expect("a http:// address")
        .to_owned();

    let mut loadgen = Command::new(loadgen())
        .args(["getppid", &CALLS.to_string(), "--wait-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sonde-loadgen");
    let pid = loadgen.id();
    loadgen
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"go\n")
        .expect("release the load generator");
    assert!(loadgen.wait().expect("wait").success());

    // Every call, exactly once, from the Export with its Secret in order.
    let start = Instant::now();
    let records = loop {
        let (records, _) = records_of(&collector, pid);
        if records.len() >= CALLS || start.elapsed() > Duration::from_secs(30) {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        records.len() >= CALLS,
        "{} of {CALLS} calls arrived within 30 s",
        records.len()
    );
    // Nothing more is coming once the Export holds no row and the collector
    // has recorded every row the Export says it sent (the capture is
    // host-wide, so other processes' rows may still trickle in: compare
    // the counts of one scrape with what the collector held after it).
    let start = Instant::now();
    let (records, without_secret) = loop {
        let metrics = scrape(metrics_addr);
        let buffered = sample(
            &metrics,
            "sonde_export_buffered_rows{namespace=\"default\",export=\"lookups\"}",
        );
        let sent = sample(
            &metrics,
            "sonde_export_rows_total{namespace=\"default\",export=\"lookups\",result=\"sent\"}",
        );
        let from_lookups = collector
            .log_records()
            .expect("read")
            .iter()
            .filter(|r| attribute_int(r, "tid").is_some())
            .count() as u64;
        if buffered == Some(0) && sent.is_some_and(|sent| from_lookups >= sent) {
            break records_of(&collector, pid);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the lookups Export did not settle: {buffered:?} buffered, {sent:?} sent, \
             {from_lookups} received"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(records.len(), CALLS, "each call exactly once");
    let distinct: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["timeUnixNano"].as_str())
        .collect();
    assert_eq!(distinct.len(), CALLS, "distinct rows");
    assert!(
        records
            .iter()
            .all(|r| r["body"]["stringValue"] == "sonde-loadgen")
    );
    assert!(without_secret.is_empty(), "nothing sent without its Secret");

    // The Export without its Secret counted what it holds, and the agent
    // still captures and serves.
    let metrics = scrape(metrics_addr);
    let buffered = sample(
        &metrics,
        "sonde_export_buffered_rows{namespace=\"default\",export=\"with-token\"}",
    )
    .expect("buffered rows of with-token");
    assert!(buffered >= CALLS as u64, "{buffered} rows held");
    let sent = sample(
        &metrics,
        "sonde_export_rows_total{namespace=\"default\",export=\"lookups\",result=\"sent\"}",
    )
    .expect("rows sent by lookups");
    assert!(sent >= CALLS as u64, "{sent} sent");
    assert_eq!(
        sample(
            &metrics,
            "sonde_export_rows_total{namespace=\"default\",export=\"lookups\",result=\"dropped\"}"
        ),
        Some(0)
    );
    let channel = tonic::transport::Endpoint::from_shared(flight_url)
        .expect("a URL")
        .connect()
        .await
        .expect("Flight still serves");
    let mut flight = FlightServiceClient::new(channel);
    let flights: Vec<_> = flight
        .list_flights(Criteria::default())
        .await
        .expect("ListFlights")
        .into_inner()
        .try_collect()
        .await
        .expect("every flight");
    assert!(
        flights.iter().any(|f| f
            .flight_descriptor
            .as_ref()
            .is_some_and(|d| d.path == ["default", "parent_lookups"])),
        "the captured table is served"
    );

    // The Secret appears: what was held goes out.
    std::fs::write(dir.path().join("secret.yaml"), SECRET).expect("write the Secret");
    let start = Instant::now();
    let delivered = loop {
        let (_, delivered) = records_of(&collector, pid);
        if delivered.len() >= CALLS || start.elapsed() > Duration::from_secs(30) {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        delivered.len(),
        CALLS,
        "held rows sent once the Secret exists"
    );

    let status = agent.stop();
    assert!(status.success(), "agent exit status {status}");
}
