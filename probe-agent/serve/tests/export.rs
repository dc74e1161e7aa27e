//! Exports driven directly against a table store the test fills, delivering
//! to a real OpenTelemetry Collector (the harness's `otelcol`): every row
//! arrives once as the mapped signal, a 20 s outage loses nothing when the
//! buffer is large enough and exactly what `rows_dropped` says when it is
//! not, and an unreachable endpoint is reported and counted.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use arrow_array::{Int64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use crds::TableName;
use crds::v1alpha1::ExportSpec;
use e2e::Collector;
use probe_serve::export::{Credentials, ExportReport, Exports};
use probe_store::{StoreConfig, TableStore};
use serde_json::Value;

const NODE: &str = "node-a";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "time_",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
        Field::new("pod", DataType::Utf8, false),
        Field::new("container", DataType::Utf8, false),
        Field::new("id", DataType::Int64, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("latency", DataType::UInt64, false),
    ]))
}

/// A store with table `shop.requests`.
fn store() -> (TableStore, TableName) {
    let store = TableStore::new(StoreConfig::default());
    let table = TableName::new("shop", "requests");
    store
        .create_table(table.clone(), schema())
        .expect("new table");
    (store, table)
}

/// Rows `ids`: latency is `|id| * 10`, path `/r/<id>`, pod `web-<id mod 2>`.
/// Negative ids are markers (see [`follow_with_markers`]).
fn append(store: &TableStore, table: &TableName, ids: std::ops::Range<i64>) {
    let base = 1_700_000_000_000_000_000_i64;
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampNanosecondArray::from_iter_values(
                ids.clone().map(|i| base + i * 1_000),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.clone().map(|i| format!("web-{}", i.rem_euclid(2))),
            )),
            Arc::new(StringArray::from_iter_values(ids.clone().map(|_| "app"))),
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.clone().map(|i| format!("/r/{i}")),
            )),
            Arc::new(UInt64Array::from_iter_values(
                ids.map(|i| i.unsigned_abs() * 10),
            )),
        ],
    )
    .expect("columns match the schema");
    store.append(table, batch).expect("append");
}

fn spec(yaml: &str) -> ExportSpec {
    let spec: ExportSpec = serde_yaml::from_str(yaml).expect("an Export spec");
    spec.validate().expect("a valid spec");
    spec
}

fn attribute<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.get("attributes")?
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// An OTLP/JSON int64, written as a string (or a number).
fn json_i64(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_i64())
}

/// The int of an OTLP/JSON AnyValue.
fn int(value: Option<&Value>) -> Option<i64> {
    json_i64(value?.get("intValue")?)
}

/// The `id` attribute of every item.
fn ids(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|item| int(attribute(item, "id")).expect("every item has an id"))
        .collect()
}

/// The items of rows the test generated, without the markers, and how many
/// markers there were.
fn without_markers(items: Vec<Value>) -> (Vec<Value>, u64) {
    let (data, markers): (Vec<Value>, Vec<Value>) = items
        .into_iter()
        .partition(|item| int(attribute(item, "id")).is_some_and(|id| id >= 0));
    (data, markers.len() as u64)
}

/// Rows an Export has taken from the tables it follows.
fn taken(report: &ExportReport) -> u64 {
    report.rows_exported + report.rows_buffered + report.rows_dropped()
}

/// Makes sure each Export in `names` follows `table`, so every row appended
/// afterwards is theirs: rows appended before an Export's reader follows a
/// table that already existed are not (the reader starts on a task of its
/// own after `apply` returns). Appends one marker row (a negative id) at a
/// time until each Export has taken one, and returns how many markers each
/// took then. Markers are sent like any row: tests count them apart.
async fn follow_with_markers(
    store: &TableStore,
    table: &TableName,
    exports: &Exports,
    names: &[&str],
) -> Vec<u64> {
    let start = Instant::now();
    let mut next = -1_i64;
    loop {
        append(store, table, next..next + 1);
        next -= 1;
        // A reader that follows pushes a row within milliseconds; after 2 s
        // without it, the marker came before the reader and another goes.
        let appended = Instant::now();
        while appended.elapsed() < Duration::from_secs(2) {
            let counts: Vec<u64> = names.iter().map(|n| taken(&report(exports, n))).collect();
            if counts.iter().all(|&c| c > 0) {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the Exports {names:?} never followed {table}"
        );
    }
}

async fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(done) = check() {
            return done;
        }
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn report(exports: &Exports, name: &str) -> ExportReport {
    exports.status("shop", name).expect("the export runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_arrives_once_as_a_log_record_over_grpc() {
    let collector = Collector::start().await.expect("collector");
    let (store, table) = store();
    let exports = Exports::new(store.clone(), NODE);
    let spec = spec(&format!(
        "tables: [req*]\ndestination:\n  otlp:\n    endpoint: http://{}\n    protocol: grpc\n    \
         signal: logs\nmapping:\n  body: path\n  attributes: [id, latency]\ninterval: 200ms\n\
         batchSize: 700\nbufferRows: 100000\n",
        collector.otlp_grpc_endpoint()
    ));
    exports
        .apply("shop", "logs", &spec, Ok(Credentials::default()))
        .expect("applied");
    follow_with_markers(&store, &table, &exports, &["logs"]).await;
    const ROWS: i64 = 5_000;
    for start in (0..ROWS).step_by(500) {
        append(&store, &table, start..start + 500);
    }
    // Settled: every row arrived, the Export holds nothing more, and the
    // collector has recorded every row the Export had accepted, so nothing
    // more is coming.
    let (all, report) = wait_until(Duration::from_secs(30), "5000 log records", || {
        let report = report(&exports, "logs");
        let records = collector.log_records().expect("read");
        let data = records
            .iter()
            .filter(|r| int(attribute(r, "id")).is_some_and(|id| id >= 0))
            .count();
        let settled = data >= ROWS as usize
            && report.rows_buffered == 0
            && records.len() as u64 >= report.rows_exported;
        settled.then_some((records, report))
    })
    .await;
    assert_eq!(
        all.len() as u64,
        report.rows_exported,
        "the collector holds what the Export sent, each once"
    );
    let (records, markers) = without_markers(all);
    let got = ids(&records);
    let distinct: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(got.len(), ROWS as usize, "each row exactly once");
    assert_eq!(distinct, (0..ROWS).collect());

    let record = records
        .iter()
        .find(|r| int(attribute(r, "id")) == Some(42))
        .expect("row 42");
    assert_eq!(record["body"]["stringValue"], "/r/42");
    assert_eq!(int(attribute(record, "latency")), Some(420));
    assert_eq!(
        record["timeUnixNano"],
        (1_700_000_000_000_000_000_i64 + 42_000).to_string()
    );
    assert!(
        attribute(record, "path").is_none(),
        "only the listed columns"
    );
    let request = &collector.received(e2e::Signal::Logs).expect("read")[0];
    let resource = &request["resourceLogs"][0]["resource"];
    let resource_attribute = |key: &str| attribute(resource, key).map(|v| v["stringValue"].clone());
    assert_eq!(resource_attribute("k8s.node.name"), Some(NODE.into()));
    assert_eq!(
        resource_attribute("k8s.namespace.name"),
        Some("shop".into())
    );
    assert_eq!(
        resource_attribute("sonde.table"),
        Some("shop.requests".into())
    );
    assert_eq!(resource_attribute("k8s.container.name"), Some("app".into()));

    assert_eq!(report.rows_exported, ROWS as u64 + markers);
    assert_eq!(report.rows_dropped(), 0);
    assert!(report.last_success.is_some() && report.last_error.is_none());
    exports.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_become_gauge_points_over_http_and_spans_over_grpc() {
    let collector = Collector::start().await.expect("collector");
    let (store, table) = store();
    let exports = Exports::new(store.clone(), NODE);
    let metrics = spec(&format!(
        "tables: [requests]\ndestination:\n  otlp:\n    endpoint: {}\n    protocol: http\n    \
         signal: metrics\nmapping:\n  metricName: sonde.request.latency\n  value: latency\n  \
         attributes: [id]\ninterval: 200ms\nbatchSize: 400\nbufferRows: 10000\n",
        collector.otlp_http_endpoint()
    ));
    let traces = spec(&format!(
        "tables: [requests]\ndestination:\n  otlp:\n    endpoint: http://{}\n    protocol: grpc\n    \
         signal: traces\nmapping:\n  spanName: handle_request\n  duration: latency\n  \
         attributes: [id, path]\ninterval: 200ms\nbatchSize: 1000\nbufferRows: 10000\n",
        collector.otlp_grpc_endpoint()
    ));
    exports
        .apply("shop", "metrics", &metrics, Ok(Credentials::default()))
        .expect("applied");
    exports
        .apply("shop", "traces", &traces, Ok(Credentials::default()))
        .expect("applied");
    follow_with_markers(&store, &table, &exports, &["metrics", "traces"]).await;
    const ROWS: i64 = 2_000;
    for start in (0..ROWS).step_by(250) {
        append(&store, &table, start..start + 250);
    }
    let data_points = || -> Vec<Value> {
        collector
            .metrics()
            .expect("read")
            .iter()
            .inspect(|m| assert_eq!(m["name"], "sonde.request.latency"))
            .flat_map(|m| {
                m["gauge"]["dataPoints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    };
    // Settled as in the logs test: all rows arrived, nothing is held, and
    // the collector has recorded all each Export had sent.
    let settled = |name: &str, items: &[Value]| {
        let report = report(&exports, name);
        let data = items
            .iter()
            .filter(|i| int(attribute(i, "id")).is_some_and(|id| id >= 0))
            .count();
        data >= ROWS as usize
            && report.rows_buffered == 0
            && items.len() as u64 >= report.rows_exported
    };
    let all_points = wait_until(Duration::from_secs(30), "2000 data points", || {
        let points = data_points();
        settled("metrics", &points).then_some(points)
    })
    .await;
    let all_spans = wait_until(Duration::from_secs(30), "2000 spans", || {
        let spans = collector.spans().expect("read");
        settled("traces", &spans).then_some(spans)
    })
    .await;
    for (name, items) in [("metrics", &all_points), ("traces", &all_spans)] {
        assert_eq!(
            items.len() as u64,
            report(&exports, name).rows_exported,
            "{name}: the collector holds what the Export sent, each once"
        );
    }
    let (points, point_markers) = without_markers(all_points);
    let (spans, span_markers) = without_markers(all_spans);

    assert_eq!(points.len(), ROWS as usize);
    let distinct: BTreeSet<i64> = ids(&points).into_iter().collect();
    assert_eq!(distinct, (0..ROWS).collect());
    for point in &points {
        let id = int(attribute(point, "id")).expect("id");
        // Zero is the default, which OTLP/JSON leaves out.
        let value = point.get("asInt").map_or(Some(0), json_i64);
        assert_eq!(value, Some(id * 10), "value of row {id}");
    }
    assert_eq!(spans.len(), ROWS as usize);
    let distinct: BTreeSet<i64> = ids(&spans).into_iter().collect();
    assert_eq!(distinct, (0..ROWS).collect());
    let span = spans
        .iter()
        .find(|s| int(attribute(s, "id")) == Some(7))
        .expect("row 7");
    assert_eq!(span["name"], "handle_request");
    let end: i64 = span["endTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("end");
    let start: i64 = span["startTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("start");
    assert_eq!(end, 1_700_000_000_000_000_000 + 7_000);
    assert_eq!(end - start, 70, "the latency column");
    assert_eq!(
        attribute(span, "path").map(|v| v["stringValue"].clone()),
        Some("/r/7".into())
    );

    for (name, markers) in [("metrics", point_markers), ("traces", span_markers)] {
        let report = report(&exports, name);
        assert_eq!(report.rows_exported, ROWS as u64 + markers, "{name}");
        assert_eq!(report.rows_dropped(), 0, "{name}");
    }
    exports.shutdown();
}

/// What an outage test saw.
struct Outage {
    /// Distinct ids of generated rows received.
    distinct: BTreeSet<i64>,
    /// Generated rows received, duplicates kept.
    received: usize,
    /// Marker rows received (all before the outage).
    markers: u64,
    report: ExportReport,
    generated: i64,
}

/// Sends 400 rows, stops the collector for 20 s while 2000 rows are
/// appended, restarts it on the same ports, sends 400 more, and returns
/// what arrived and the export's final report.
async fn outage(buffer_rows: u32, batch_size: u32) -> Outage {
    let (store, table) = store();
    let exports = Exports::new(store.clone(), NODE);
    let first = Collector::start().await.expect("collector");
    let grpc_port: u16 = first
        .otlp_grpc_endpoint()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    let http_port: u16 = first
        .otlp_http_endpoint()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    let spec = spec(&format!(
        "tables: [requests]\ndestination:\n  otlp:\n    endpoint: http://127.0.0.1:{grpc_port}\n    \
         protocol: grpc\n    signal: logs\nmapping:\n  attributes: [id]\ninterval: 200ms\n\
         batchSize: {batch_size}\nbufferRows: {buffer_rows}\n"
    ));
    let name = format!("outage-{buffer_rows}");
    exports
        .apply("shop", &name, &spec, Ok(Credentials::default()))
        .expect("applied");
    follow_with_markers(&store, &table, &exports, &[name.as_str()]).await;

    let mut received: Vec<i64> = Vec::new();
    // Fewer than the small buffer holds, so none is dropped yet. Before the
    // outage, everything the Export took (markers too) has arrived.
    append(&store, &table, 0..400);
    let before = wait_until(Duration::from_secs(30), "the first 400 rows", || {
        let report = report(&exports, &name);
        let got = ids(&first.log_records().expect("read"));
        let settled = got.iter().filter(|&&id| id >= 0).count() >= 400
            && report.rows_buffered == 0
            && got.len() as u64 >= report.rows_exported;
        settled.then_some(got)
    })
    .await;
    received.extend(before);
    let markers = received.iter().filter(|&&id| id < 0).count() as u64;
    drop(first);

    // 20 s down (the scenario, not a wait for anything); rows keep coming
    // meanwhile.
    let down = Instant::now();
    for step in 0..10_i64 {
        let start = 400 + step * 200;
        append(&store, &table, start..start + 200);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(down.elapsed())).await;
    wait_until(
        Duration::from_secs(30),
        "failed sends reported, naming the endpoint",
        || {
            let during = report(&exports, &name);
            let named = during
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(&grpc_port.to_string()));
            (during.failed_requests > 0 && named).then_some(())
        },
    )
    .await;

    let second = Collector::builder()
        .grpc_port(grpc_port)
        .http_port(http_port)
        .start()
        .await
        .expect("collector back on the same ports");
    // The backlog drains first; then new rows flow as before.
    wait_until(Duration::from_secs(30), "the backlog sent", || {
        (report(&exports, &name).rows_buffered == 0).then_some(())
    })
    .await;
    append(&store, &table, 2_400..2_800);
    const GENERATED: i64 = 2_800;
    let (after, report) = wait_until(Duration::from_secs(60), "everything settled", || {
        let report = report(&exports, &name);
        let got = ids(&second.log_records().expect("read"));
        let settled = report.rows_buffered == 0
            && (received.len() + got.len()) as u64 == report.rows_exported
            && taken(&report) >= GENERATED as u64 + markers;
        settled.then_some((got, report))
    })
    .await;
    received.extend(after);
    exports.shutdown();
    received.retain(|&id| id >= 0);
    Outage {
        distinct: received.iter().copied().collect(),
        received: received.len(),
        markers,
        report,
        generated: GENERATED,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_for_20s_loses_nothing_with_a_large_buffer() {
    let Outage {
        distinct,
        received,
        markers,
        report,
        generated,
    } = outage(100_000, 500).await;
    eprintln!(
        "large buffer: generated {generated}, received {received} ({} distinct), \
         dropped {}, failed requests {}",
        distinct.len(),
        report.rows_dropped(),
        report.failed_requests
    );
    assert_eq!(distinct, (0..generated).collect(), "nothing missing");
    assert_eq!(received as i64, generated, "nothing twice");
    assert_eq!(report.rows_dropped(), 0);
    assert_eq!(report.rows_exported, generated as u64 + markers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_for_20s_with_a_small_buffer_drops_exactly_what_it_counts() {
    let Outage {
        distinct,
        received,
        report,
        generated,
        ..
    } = outage(500, 100).await;
    eprintln!(
        "small buffer: generated {generated}, received {received} ({} distinct), \
         dropped {} ({:?}), failed requests {}",
        distinct.len(),
        report.rows_dropped(),
        report.dropped,
        report.failed_requests
    );
    assert_eq!(received, distinct.len(), "nothing twice");
    assert!(report.dropped.buffer_full > 0, "the buffer overflowed");
    assert_eq!(
        distinct.len() as u64 + report.rows_dropped(),
        generated as u64,
        "received + dropped == generated"
    );
    // Rows sent before the outage and after it all arrived; what went was
    // appended while it was down.
    assert!((0..400).all(|id| distinct.contains(&id)));
    assert!((2_400..2_800).all(|id| distinct.contains(&id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_reported_and_overflow_counted() {
    let (store, table) = store();
    let exports = Exports::new(store.clone(), NODE);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let spec = spec(&format!(
        "tables: [requests]\ndestination:\n  otlp:\n    endpoint: http://127.0.0.1:{port}\n    \
         protocol: http\n    signal: logs\ninterval: 100ms\nbatchSize: 50\nbufferRows: 100\n"
    ));
    exports
        .apply("shop", "nowhere", &spec, Ok(Credentials::default()))
        .expect("applied");
    // Nothing leaves this Export: the markers it took stay in its counts.
    let markers = follow_with_markers(&store, &table, &exports, &["nowhere"]).await[0];
    append(&store, &table, 0..300);
    let report = wait_until(
        Duration::from_secs(15),
        "failures and overflow counted",
        || {
            let report = report(&exports, "nowhere");
            (report.failed_requests >= 2 && taken(&report) == 300 + markers).then_some(report)
        },
    )
    .await;
    assert_eq!(report.rows_exported, 0);
    assert_eq!(report.rows_buffered, 100, "the buffer stays full");
    assert_eq!(report.dropped.buffer_full, 200 + markers);
    let error = report.last_error.expect("an error");
    assert!(
        error.contains(&format!("http://127.0.0.1:{port}/v1/logs")),
        "{error}"
    );
    // Removing it counts what it still held.
    let last = exports.remove("shop", "nowhere").expect("was running");
    assert_eq!(last.dropped.removed, 100);
    assert_eq!(last.rows_dropped(), 300 + markers);
}
