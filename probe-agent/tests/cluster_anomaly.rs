//! Edge anomaly detection end to end, with nothing faked: the real control
//! plane, the operator and an agent running as their ServiceAccounts, a
//! uretprobe on the demo application's `handle_request` in two pods, and a
//! Retention whose one-second rollup per pod watches the median latency
//! with `levelShift`.
//!
//! Both pods run steady; then the test steps `web-1`'s latency up 3× at a
//! moment it picks. Proven: the anomaly is in `<rollup>_anomalies` (read
//! over the agent's Flight) for an interval within two rollup intervals of
//! the step (the step's time taken from the raw rows, not from the
//! detector), on pod `web-1` only, with `expected`, `lower` and `upper`
//! around the old level the test computes from the raw rows and `value` at
//! the new one; nothing was flagged before the step and `web-2` never is;
//! `sonde_anomalies_total` on the agent's `/metrics` counts it; the
//! operator shows it in the Retention's `status.anomalies` and writes an
//! `AnomalyDetected` Event on the Retention, related to the pod.
//!
//! The median, not the p99: the latency is a timer sleep on a shared
//! machine, whose tail swings by several milliseconds from one second to
//! the next with the other processes' load, while its median stays within
//! a few microseconds of the level. The rollup also computes the p99, which
//! the test prints.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use arrow_array::{RecordBatch, cast::AsArray, types::Float64Type};
use arrow_schema::DataType;
use common::{AgentProcess, Operator, count, rows, scrape, strings};
use crds::{
    Tracepoint,
    v1alpha1::{AssignmentKind, Phase, ProbeNode, RecentAnomaly},
};
use e2e::Cluster;
use kube::Api;

const NAMESPACE: &str = "sonde-system";
const NODE: &str = "node-a";
/// The rollup's interval (`1s` in the Retention): short, so that two of
/// them are a tight bound, and a whole second the test can align its step
/// to.
const INTERVAL_NS: i64 = 1_000_000_000;
/// Intervals a pod's series needs before it is judged (`warmUp`).
const WARM_UP: u64 = 5;
/// Intervals judged at the old level before the step.
const JUDGED_BEFORE_STEP: u64 = 6;
/// Each request's sleep before the step, and after it on web-1.
const SLEEP_US: u64 = 5000;
const STEP_SLEEP_US: u64 = 3 * SLEEP_US;
const ROLLUP: &str = "latency_1s";

/// Polls every 100 ms until `check` gives a value.
async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod running the demo app steady at `SLEEP_US` per request, for longer
/// than the test; with `step`, its requests sleep `STEP_SLEEP_US` once that
/// file exists.
fn demo_pod(name: &str, step: Option<&Path>) -> k8s_openapi::api::core::v1::Pod {
    let sleep = SLEEP_US.to_string();
    let stepped = STEP_SLEEP_US.to_string();
    let mut command = vec![
        common::demo_app(),
        "--requests",
        "1000000",
        "--sleep-us",
        &sleep,
    ];
    if let Some(step) = step {
        command.extend([
            "--step-file",
            step.to_str().unwrap(),
            "--step-sleep-us",
            &stepped,
        ]);
    }
    let mut pod = e2e::pod(name, NODE, &command);
    pod.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    pod
}

/// A numeric column of every batch, as f64.
fn floats(batches: &[RecordBatch], column: &str) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            let values =
                arrow_cast::cast(b.column_by_name(column).unwrap(), &DataType::Float64).unwrap();
            values.as_primitive::<Float64Type>().values().to_vec()
        })
        .collect()
}

/// The `time_` column of every batch, in Unix-epoch nanoseconds.
fn times(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let values =
                arrow_cast::cast(b.column_by_name("time_").unwrap(), &DataType::Int64).unwrap();
            values
                .as_primitive::<arrow_array::types::Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// The p50 by nearest rank, as the rollup computes it.
fn p50(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty());
    values.sort_by(f64::total_cmp);
    values[values.len().div_ceil(2) - 1]
}

/// A row's interval (or event time) and pod.
#[derive(Debug)]
struct Row {
    time_ns: i64,
    pod: Option<String>,
}

/// `(time_, pod)` of every row.
fn time_and_pod(batches: &[RecordBatch]) -> Vec<Row> {
    times(batches)
        .into_iter()
        .zip(strings(batches, "pod"))
        .map(|(time_ns, pod)| Row { time_ns, pod })
        .collect()
}

/// The AnomalyDetected Events on the Retention, as JSON.
async fn anomaly_events(cluster: &Cluster) -> Vec<serde_json::Value> {
    let Ok(events) = cluster
        .kubectl(&["get", "events", "-n", "shop", "-o", "json"])
        .await
    else {
        return Vec::new();
    };
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["reason"] == "AnomalyDetected"
                && e["involvedObject"]["kind"] == "Retention"
                && e["involvedObject"]["name"] == "request-latency"
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3x_latency_step_is_flagged_on_the_right_pod_with_status_and_event() -> anyhow::Result<()>
{
    e2e::require_root()?;
    let test_start = Instant::now();
    let cluster = Cluster::start_with_sonde(NAMESPACE).await?;
    let operator_config = cluster
        .service_account_kubeconfig(NAMESPACE, "sonde-operator")
        .await?;
    let agent_config = cluster
        .service_account_kubeconfig(NAMESPACE, "sonde-agent")
        .await?;
    cluster.add_node(NODE, &[]).await?;
    let work = tempfile::tempdir()?;
    let step = work.path().join("step");
    cluster
        .run_pod("shop", demo_pod("web-1", Some(&step)))
        .await?;
    cluster.run_pod("shop", demo_pod("web-2", None)).await?;
    let _operator = Operator::start(&operator_config, NAMESPACE);
    let agent = AgentProcess::start_cluster(
        Path::new(common::AGENT),
        &agent_config,
        NODE,
        &[
            "--heartbeat-interval",
            "2s",
            "--heartbeat-namespace",
            NAMESPACE,
            "--status-interval",
            "2s",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let url = tokio::task::block_in_place(|| agent.flight_url(Duration::from_secs(30)));
    let metrics = tokio::task::block_in_place(|| agent.metrics_addr(Duration::from_secs(30)));
    eprintln!(
        "cluster, operator, agent and pods up: {:?}",
        test_start.elapsed()
    );

    // The latency of every request, and a rollup per pod and second that
    // watches its median.
    let demo_app = common::demo_app();
    cluster
        .apply(&format!(
            "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata: {{name: request-latency, namespace: shop}}
spec:
  selector:
    matchLabels: {{app: web}}
  probe:
    uretprobe: {{binary: {demo_app:?}, symbol: handle_request}}
  fields:
    - name: latency
    - {{name: sleep_us, source: arg2, type: u64}}
  table: request_latency
---
apiVersion: sonde.dev/v1alpha1
kind: Retention
metadata: {{name: request-latency, namespace: shop}}
spec:
  tables: [request_latency]
  maxAge: 10m
  rollups:
    - name: {ROLLUP}
      interval: 1s
      groupBy: [pod]
      aggregates:
        - fn: count
        - {{fn: p50, column: latency}}
        - {{fn: p99, column: latency}}
      keep: 1h
      detect:
        - column: p50_latency
          method: levelShift
          # The default: 4.39 robust standard deviations.
          sensitivity: 25
          warmUp: {WARM_UP}
"
        ))
        .await?;
    let tracepoints: Api<Tracepoint> = Api::namespaced(cluster.client(), "shop");
    until("Tracepoint Running", Duration::from_secs(20), || async {
        tracepoints
            .get_opt("request-latency")
            .await
            .ok()??
            .status
            .filter(|s| s.phase == Some(Phase::Running))
    })
    .await;
    eprintln!("Tracepoint Running: {:?}", test_start.elapsed());

    // Steady: both pods' series judged for a while, nothing flagged.
    let rollup_table = format!("shop.{ROLLUP}");
    let anomalies_table = format!("shop.{ROLLUP}_anomalies");
    let steady = until(
        "both pods judged at the old level",
        Duration::from_secs(40),
        || async {
            let batches = rows(&url, &rollup_table).await;
            let rows = time_and_pod(&batches);
            let enough = ["web-1", "web-2"].iter().all(|pod| {
                rows.iter()
                    .filter(|r| r.pod.as_deref() == Some(pod))
                    .count() as u64
                    >= WARM_UP + JUDGED_BEFORE_STEP
            });
            enough.then_some(batches)
        },
    )
    .await;
    assert_eq!(
        count(&rows(&url, &anomalies_table).await),
        0,
        "nothing flagged while both pods run steady"
    );
    print_rollup("steady", &steady);

    // The step: web-1's requests sleep 3× as long from now on. Just after
    // a whole second, so that nearly all of the step's interval is at the
    // new level: a median over a mix of both levels could be anything in
    // between.
    let into_second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let to_next_second = Duration::from_secs(1) - Duration::from_nanos(u64::from(into_second));
    tokio::time::sleep(to_next_second + Duration::from_millis(20)).await;
    std::fs::write(&step, "")?;
    let stepped = Instant::now();
    eprintln!("step triggered: {:?}", test_start.elapsed());
    let found = until(
        "the anomaly in the table",
        Duration::from_secs(20),
        || async {
            let batches = rows(&url, &anomalies_table).await;
            (count(&batches) > 0).then_some(batches)
        },
    )
    .await;
    let to_table = stepped.elapsed();
    eprintln!("anomaly in the table {to_table:?} after the step");

    // The step's time, from the raw rows: web-1's first request that slept
    // the new time; the old level: web-1's median latency before it.
    let raw = rows(&url, "shop.request_latency").await;
    let raw_times = times(&raw);
    let raw_pods = strings(&raw, "pod");
    let raw_sleeps = floats(&raw, "sleep_us");
    let raw_latency = floats(&raw, "latency");
    let web_1 = |i: &usize| raw_pods[*i].as_deref() == Some("web-1");
    let step_ns = (0..raw_times.len())
        .filter(web_1)
        .filter(|&i| raw_sleeps[i] == STEP_SLEEP_US as f64)
        .map(|i| raw_times[i])
        .min()
        .expect("web-1 slept the new time");
    let step_window = step_ns - step_ns.rem_euclid(INTERVAL_NS);
    let old_level = p50((0..raw_times.len())
        .filter(web_1)
        .filter(|&i| raw_times[i] < step_window)
        .map(|i| raw_latency[i])
        .collect());

    // Exactly one anomaly: web-1's median, within two intervals of the
    // step, its band around the old level and its value at the new one.
    assert_eq!(count(&found), 1, "one step, one anomaly");
    let time_ns = times(&found)[0];
    let column = |name: &str| floats(&found, name)[0];
    let (value, expected, lower, upper, score) = (
        column("value"),
        column("expected"),
        column("lower"),
        column("upper"),
        column("score"),
    );
    eprintln!(
        "step at {step_ns} (window {step_window}); anomaly at {time_ns}: interval {} after the \
         step's; old level {old_level} ns, expected {expected}, band {lower} to {upper}, value \
         {value} ({:.2}×), score {score:.1}",
        (time_ns - step_window) / INTERVAL_NS,
        value / old_level,
    );
    assert_eq!(strings(&found, "pod"), [Some("web-1".to_owned())]);
    assert_eq!(strings(&found, "node"), [Some(NODE.to_owned())]);
    assert_eq!(strings(&found, "column"), [Some("p50_latency".to_owned())]);
    assert_eq!(strings(&found, "method"), [Some("levelShift".to_owned())]);
    assert!(
        time_ns >= step_window && time_ns + INTERVAL_NS <= step_ns + 2 * INTERVAL_NS,
        "the anomalous interval [{time_ns}, +1s) lies within two intervals after the step at \
         {step_ns}"
    );
    assert!(
        (expected - old_level).abs() <= 0.05 * old_level,
        "expected {expected} is the old level {old_level}"
    );
    assert!(
        lower <= old_level && old_level <= upper,
        "the band {lower} to {upper} holds the old level {old_level}"
    );
    assert!(value > upper, "value {value} above the band's {upper}");
    assert!(
        (2.5..=3.5).contains(&(value / old_level)),
        "value {value} is about 3× the old level {old_level}"
    );
    // The value is the rollup's median for web-1 in that interval.
    let rollup = rows(&url, &rollup_table).await;
    let in_rollup = time_and_pod(&rollup)
        .iter()
        .zip(floats(&rollup, "p50_latency"))
        .find(|(r, _)| r.time_ns == time_ns && r.pod.as_deref() == Some("web-1"))
        .map(|(_, v)| v);
    assert_eq!(in_rollup, Some(value));

    // web-2 stays unflagged while its series is judged on.
    let after = until(
        "web-2 judged three more intervals",
        Duration::from_secs(15),
        || async {
            let batches = rows(&url, &rollup_table).await;
            time_and_pod(&batches)
                .iter()
                .any(|r| {
                    r.pod.as_deref() == Some("web-2") && r.time_ns >= time_ns + 3 * INTERVAL_NS
                })
                .then_some(batches)
        },
    )
    .await;
    print_rollup("after the step", &after);
    let all = rows(&url, &anomalies_table).await;
    assert_eq!(
        strings(&all, "pod"),
        [Some("web-1".to_owned())],
        "web-2 never flagged"
    );

    // The agent counts it on /metrics.
    let counter = format!(
        "sonde_anomalies_total{{namespace=\"shop\",rollup=\"{ROLLUP}\",column=\"p50_latency\",\
         method=\"levelShift\"}} 1"
    );
    let text = tokio::task::block_in_place(|| scrape(&metrics));
    assert!(
        text.lines().any(|l| l == counter),
        "{counter} in:\n{}",
        text.lines()
            .filter(|l| l.contains("anomal"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The agent reports it on its ProbeNode, the operator in the
    // Retention's status and an Event.
    let probe_nodes: Api<ProbeNode> = Api::all(cluster.client());
    let reported = until(
        "reported on the ProbeNode",
        Duration::from_secs(15),
        || async {
            probe_nodes
                .get_opt(NODE)
                .await
                .ok()??
                .status?
                .assignments
                .into_iter()
                .find(|a| a.kind == AssignmentKind::Retention && a.name == "request-latency")
                .filter(|a| !a.anomalies.is_empty())
                .map(|a| a.anomalies)
        },
    )
    .await;
    let retentions: Api<crds::Retention> = Api::namespaced(cluster.client(), "shop");
    let status: Vec<RecentAnomaly> = until("status.anomalies", Duration::from_secs(15), || async {
        retentions
            .get_opt("request-latency")
            .await
            .ok()??
            .status
            .map(|s| s.anomalies)
            .filter(|a| !a.is_empty())
    })
    .await;
    eprintln!("Retention status.anomalies: {status:?}");
    assert_eq!(status, reported, "the node's report, as is");
    assert_eq!(status.len(), 1, "{status:?}");
    let shown = &status[0];
    assert_eq!(
        (
            shown.node.as_str(),
            shown.group.as_str(),
            shown.column.as_str(),
            shown.method.as_str()
        ),
        (NODE, "pod=web-1", "p50_latency", "levelShift")
    );
    assert!(shown.rollup.contains(ROLLUP), "{shown:?}");
    let shown_ns = shown
        .time
        .parse::<k8s_openapi::jiff::Timestamp>()?
        .as_nanosecond();
    assert_eq!(shown_ns, i128::from(time_ns), "{shown:?}");
    assert_eq!(shown.value.parse::<f64>()?, value, "{shown:?}");
    let events = until(
        "an AnomalyDetected Event",
        Duration::from_secs(15),
        || async {
            let events = anomaly_events(&cluster).await;
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["related"]["kind"], "Pod", "{event:#}");
    assert_eq!(event["related"]["name"], "web-1", "{event:#}");
    let message = event["message"].as_str().unwrap();
    assert!(
        message.starts_with("levelShift on p50_latency of pod=web-1 in "),
        "{message}"
    );
    eprintln!("Event: {message}");
    eprintln!("test took {:?}", test_start.elapsed());
    drop(agent);
    Ok(())
}

/// Prints each pod's medians and p99s, oldest first.
fn print_rollup(phase: &str, batches: &[RecordBatch]) {
    let rows = time_and_pod(batches);
    let p50s = floats(batches, "p50_latency");
    let p99s = floats(batches, "p99_latency");
    for pod in ["web-1", "web-2"] {
        let mut series: Vec<(i64, f64, f64)> = rows
            .iter()
            .zip(p50s.iter().zip(&p99s))
            .filter(|(r, _)| r.pod.as_deref() == Some(pod))
            .map(|(r, (p50, p99))| (r.time_ns, *p50, *p99))
            .collect();
        series.sort_by_key(|s| s.0);
        let text: Vec<String> = series
            .iter()
            .map(|(_, p50, p99)| format!("{:.0}/{:.0}", p50 / 1e3, p99 / 1e3))
            .collect();
        eprintln!("{phase}: {pod} p50/p99 µs per second: {}", text.join(" "));
    }
}
