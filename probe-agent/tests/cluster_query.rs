//! The cluster query path with real components only: the control plane,
//! the operator, three agents (one per simulated node) and `sonde-query`,
//! each running as its ServiceAccount with the chart's RBAC. A uretprobe
//! Tracepoint captures the demo application's requests in pods on all
//! three nodes, each node making a different known number of calls;
//! sonde-query finds the agents from their ProbeNodes' status (which also
//! report the agents' baseline tables as switched off). Then:
//!
//! - one query through pyarrow and ADBC counts exactly the union: the sum
//!   of each agent's own count, which is every call made (captured +
//!   counted lost);
//! - a `GROUP BY pod` with count, sum and p99 gives the per-agent answers
//!   merged here, and p99s within the t-digest's bounds of the exact ones
//!   computed from every row read from each agent;
//! - `EXPLAIN` shows the partial aggregate in the node stage, one task per
//!   node, under the final aggregate;
//! - with one agent killed, the query fails naming its node; with partial
//!   results allowed it returns exactly the other two nodes' rows and names
//!   the missing node.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use arrow_array::{Array, RecordBatch, StringArray, cast::AsArray, types::Int64Type};
use arrow_flight::{error::FlightError, sql::client::FlightSqlServiceClient};
use arrow_schema::DataType;
use common::AgentProcess;
use crds::{
    Tracepoint,
    v1alpha1::{AssignmentStatus, BaselineTableState, Phase, ProbeNode, TracepointStatus},
};
use e2e::Cluster;
use futures::TryStreamExt as _;
use kube::Api;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;
use tonic::transport::Channel;

const NAMESPACE: &str = "sonde-system";
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// The agents' Flight token: their Flight SQL port and the worker take it.
const AGENT_TOKEN: &str = "agent-secret";
/// What clients of sonde-query send.
const CLIENT_TOKEN: &str = "client-secret";
/// The call header allowing partial results (docs/cluster-queries.md).
const PARTIAL_HEADER: &str = "x-sonde-partial-results";
/// The node whose agent is killed.
const KILLED: &str = "node-b";

/// The selected pods: name, node, requests, microseconds each sleeps and
/// the first request id. Each node makes a different number of calls;
/// node-c runs two pods.
const PODS: [(&str, &str, u64, u64, u64); 4] = [
    ("web-a", "node-a", 1_200, 20, 1),
    ("web-b", "node-b", 2_500, 40, 100_001),
    ("web-c", "node-c", 1_500, 60, 200_001),
    ("web-d", "node-c", 1_900, 80, 300_001),
];

const GROUP_BY: &str = "SELECT pod, count(*) AS n, sum(latency) AS total, \
     approx_percentile_cont(latency, 0.99) AS p99, \
     approx_percentile_cont(result, 0.99) AS p99_result \
     FROM shop.requests GROUP BY pod ORDER BY pod";

/// A binary built beside the agent's by `cargo test --workspace`.
fn sibling_binary(name: &str, package: &str) -> PathBuf {
    let path = Path::new(common::AGENT).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p {package}`",
        path.display()
    );
    path
}

/// A process whose log (stdout and stderr) is read line by line; killed
/// on drop.
struct Process {
    child: Child,
    lines: Receiver<String>,
}

impl Process {
    fn spawn(mut command: Command, label: &'static str) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {label}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let outputs: [Box<dyn std::io::Read + Send>; 2] = [Box::new(stdout), Box::new(stderr)];
        for output in outputs {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    eprintln!("{label}: {line}");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self { child, lines }
    }

    /// Waits for a log line containing every one of `parts`.
    fn expect(&self, parts: &[&str], within: Duration) -> String {
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) if parts.iter().all(|p| line.contains(p)) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {parts:?} within {within:?}"),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn operator(kubeconfig: &Path) -> Process {
    let port = e2e::free_port().unwrap();
    let mut command = Command::new(sibling_binary("sonde-operator", "operator"));
    command
        .args(["--namespace", NAMESPACE, "--heartbeat-grace", "6s"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn");
    Process::spawn(command, "operator")
}

/// sonde-query as the chart runs it: no `--agent`, so it discovers the
/// agents from the ProbeNodes with its ServiceAccount's kubeconfig.
fn sonde_query(kubeconfig: &Path, port: u16) -> Process {
    let mut command = Command::new(sibling_binary("sonde-query", "sonde-query"));
    command
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .env("SONDE_QUERY_TOKEN", CLIENT_TOKEN)
        .env("SONDE_AGENT_TOKEN", AGENT_TOKEN)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info");
    Process::spawn(command, "sonde-query")
}

fn agent(kubeconfig: &Path, node: &str) -> AgentProcess {
    AgentProcess::start_cluster(
        Path::new(common::AGENT),
        kubeconfig,
        node,
        &[
            "--heartbeat-interval",
            "2s",
            "--heartbeat-namespace",
            NAMESPACE,
            "--status-interval",
            "2s",
            "--flight-token",
            AGENT_TOKEN,
            // Off baseline tables are reported as such in the ProbeNode.
            "--baseline-tables",
            "none",
        ],
    )
}

/// A pod (label app=web) running the demo application once `go` exists,
/// then staying up so that its node keeps it selected.
fn demo_pod(
    (name, node, requests, sleep_us, start_id): (&str, &str, u64, u64, u64),
    go: &Path,
) -> k8s_openapi::api::core::v1::Pod {
    let script = format!(
        "{} --requests {requests} --sleep-us {sleep_us} --start-id {start_id} \
         --wait-file {} --print-ns && exec sleep 3600",
        common::demo_app(),
        go.display()
    );
    let mut pod = e2e::pod(name, node, &["/bin/sh", "-c", &script]);
    pod.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    pod
}

/// Polls every 50 ms until `check` gives a value.
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(api: &Api<Tracepoint>, name: &str) -> Option<TracepointStatus> {
    api.get_opt(name).await.ok()??.status
}

async fn report(api: &Api<ProbeNode>, node: &str, name: &str) -> Option<AssignmentStatus> {
    api.get_opt(node)
        .await
        .ok()??
        .status?
        .assignments
        .into_iter()
        .find(|a| a.name == name)
}

async fn sql_client(url: &str, token: &str) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {token}"));
    Ok(client)
}

/// The answer to `sql`, and the FlightInfo's app_metadata.
async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<(Vec<RecordBatch>, Vec<u8>), FlightError> {
    let info = client.execute(sql.to_owned(), None).await?;
    let mut batches = Vec::new();
    for endpoint in &info.endpoint {
        let ticket = endpoint.ticket.clone().unwrap();
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok((batches, info.app_metadata.to_vec()))
}

fn status_of(error: &FlightError) -> Option<tonic::Status> {
    if let FlightError::Tonic(status) = error {
        return Some((**status).clone());
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            return Some(status.clone());
        }
        current = e.source();
    }
    None
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let values = arrow_cast::cast(batch.column_by_name(column).unwrap(), &DataType::Utf8).unwrap();
    let values = values.as_any().downcast_ref::<StringArray>().unwrap();
    (0..values.len())
        .map(|i| values.value(i).to_owned())
        .collect()
}

fn ints(batch: &RecordBatch, column: &str) -> Vec<i64> {
    let values = arrow_cast::cast(batch.column_by_name(column).unwrap(), &DataType::Int64).unwrap();
    assert_eq!(values.null_count(), 0, "{column} has nulls");
    values.as_primitive::<Int64Type>().values().to_vec()
}

/// One captured request, as read back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    node: String,
    pod: String,
    request_id: i64,
    latency: i64,
    result: i64,
}

const ROWS: &str = "SELECT node, pod, request_id, latency, result FROM shop.requests";

fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
    let mut rows = Vec::new();
    for batch in batches {
        let (node, pod) = (strings(batch, "node"), strings(batch, "pod"));
        let (id, latency, result) = (
            ints(batch, "request_id"),
            ints(batch, "latency"),
            ints(batch, "result"),
        );
        for i in 0..batch.num_rows() {
            rows.push(Row {
                node: node[i].clone(),
                pod: pod[i].clone(),
                request_id: id[i],
                latency: latency[i],
                result: result[i],
            });
        }
    }
    rows.sort();
    rows
}

/// `pod -> (count, sum of latency)` from a `pod, n, total` answer.
fn groups(batches: &[RecordBatch]) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let (pod, n, total) = (
            strings(batch, "pod"),
            ints(batch, "n"),
            ints(batch, "total"),
        );
        for i in 0..batch.num_rows() {
            out.insert(pod[i].clone(), (n[i], total[i]));
        }
    }
    out
}

fn plan_text(batches: &[RecordBatch]) -> String {
    let mut text = String::new();
    for batch in batches {
        let kinds = strings(batch, "plan_type");
        let plans = strings(batch, "plan");
        for (kind, plan) in kinds.iter().zip(&plans) {
            text.push_str(&format!("{kind}:\n{plan}\n"));
        }
    }
    text
}

/// The exact percentile of `values` by the linear rule the t-digest
/// estimate approximates.
fn exact_percentile(values: &mut [i64], p: f64) -> f64 {
    values.sort_unstable();
    let rank = p * (values.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - low as f64;
    values[low] as f64 * (1.0 - weight) + values[high] as f64 * weight
}

/// Runs a Python script with pyarrow and ADBC; its last line is JSON.
async fn python(port: u16, script: &str) -> anyhow::Result<Value> {
    let output = tokio::process::Command::new(e2e::python()?)
        .arg("-c")
        .arg(script)
        .env("SONDE_PORT", port.to_string())
        .env("SONDE_TOKEN", CLIENT_TOKEN)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "python failed: {stderr}\n{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(last)?)
}

const ADBC_CONNECT: &str = r#"
import json, os
import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_flightsql as fsql
def connect(**options):
    options[fsql.DatabaseOptions.AUTHORIZATION_HEADER.value] = "Bearer " + os.environ["SONDE_TOKEN"]
    return dbapi.connect("grpc://127.0.0.1:" + os.environ["SONDE_PORT"], db_kwargs=options)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_query_over_three_real_agents() -> anyhow::Result<()> {
    e2e::require_root()?;
    let test_start = Instant::now();
    let cluster = Cluster::start_with_sonde(NAMESPACE).await?;
    let operator_config = cluster
        .service_account_kubeconfig(NAMESPACE, "sonde-operator")
        .await?;
    let agent_config = cluster
        .service_account_kubeconfig(NAMESPACE, "sonde-agent")
        .await?;
    // start_with_sonde applies the chart's whole RBAC, sonde-query's too.
    let query_config = cluster
        .service_account_kubeconfig(NAMESPACE, "sonde-query")
        .await?;
    for node in NODES {
        cluster.add_node(node, &[]).await?;
    }
    let work = tempfile::tempdir()?;
    let go = work.path().join("go");
    for pod in PODS {
        cluster.run_pod("shop", demo_pod(pod, &go)).await?;
    }
    eprintln!("cluster, nodes and pods up: {:?}", test_start.elapsed());

    let _operator = operator(&operator_config);
    let mut agents: BTreeMap<&str, AgentProcess> = NODES
        .iter()
        .map(|&node| (node, agent(&agent_config, node)))
        .collect();
    let mut urls = BTreeMap::new();
    for (node, agent) in &agents {
        let url = tokio::task::block_in_place(|| agent.flight_url(Duration::from_secs(30)));
        urls.insert(*node, url);
    }
    // Each agent reports where it serves Flight; sonde-query finds all three.
    let probe_nodes: Api<ProbeNode> = Api::all(cluster.client());
    for (node, url) in &urls {
        let reported = until(
            "flightEndpoint reported",
            Duration::from_secs(30),
            || async {
                let status = probe_nodes.get_opt(node).await.ok()??.status?;
                (status.flight_endpoint.as_ref() == Some(url)).then_some(status)
            },
        )
        .await;
        assert!(
            !reported.baseline_tables.is_empty()
                && reported
                    .baseline_tables
                    .iter()
                    .all(|t| t.state == BaselineTableState::Off),
            "{node}: {:?}",
            reported.baseline_tables
        );
    }
    let query_port = e2e::free_port()?;
    let query_process = sonde_query(&query_config, query_port);
    tokio::task::block_in_place(|| {
        query_process.expect(
            &[
                "agents from the ProbeNodes",
                r#"["node-a", "node-b", "node-c"]"#,
            ],
            Duration::from_secs(30),
        )
    });
    eprintln!(
        "operator, 3 agents and sonde-query up: {:?}",
        test_start.elapsed()
    );

    // The Tracepoint: every completed request, with its latency and result.
    cluster
        .apply(&format!(
            "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata: {{name: requests, namespace: shop}}
spec:
  selector:
    matchLabels: {{app: web}}
  probe:
    uretprobe: {{binary: {:?}, symbol: handle_request}}
  fields:
    - name: latency
    - {{name: result, source: retval, type: i64}}
    - {{name: request_id, source: arg0, type: u64}}
  table: requests
",
            common::demo_app()
        ))
        .await?;
    let tracepoints: Api<Tracepoint> = Api::namespaced(cluster.client(), "shop");
    until(
        "requests Running on 3 nodes",
        Duration::from_secs(20),
        || async {
            status(&tracepoints, "requests").await.filter(|s| {
                s.phase == Some(Phase::Running)
                    && s.nodes
                        .as_ref()
                        .is_some_and(|n| n.selected == 3 && n.running == 3)
            })
        },
    )
    .await;
    eprintln!("Tracepoint Running on 3 nodes: {:?}", test_start.elapsed());

    // Go: every pod makes its requests.
    std::fs::write(&go, "")?;
    for (pod, ..) in PODS {
        until(pod, Duration::from_secs(30), || async {
            cluster
                .pod_log("shop", pod, "main")
                .ok()
                .filter(|log| log.contains("ns/call"))
        })
        .await;
    }

    // Each node accounts for its calls (captured + counted lost); then every
    // captured row is served by its agent, whose own Flight SQL answers are
    // the reference.
    let mut own_count = BTreeMap::new();
    let mut lost = 0;
    let mut merged: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut node_rows: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
    for node in NODES {
        let made: u64 = PODS.iter().filter(|p| p.1 == node).map(|p| p.2).sum();
        let done = until(
            "captured + lost = made",
            Duration::from_secs(20),
            || async {
                report(&probe_nodes, node, "requests")
                    .await
                    .filter(|r| r.events + r.lost == made)
            },
        )
        .await;
        lost += done.lost;
        let url = &urls[node];
        let count = until("every row served", Duration::from_secs(10), || async {
            let mut client = sql_client(url, AGENT_TOKEN).await.ok()?;
            let (batches, _) = query(&mut client, "SELECT count(*) AS n FROM shop.requests")
                .await
                .ok()?;
            let n = batches.iter().flat_map(|b| ints(b, "n")).sum::<i64>();
            (n as u64 == done.events).then_some(n)
        })
        .await;
        let mut client = sql_client(url, AGENT_TOKEN).await?;
        own_count.insert(node, count);
        let (batches, _) = query(
            &mut client,
            "SELECT pod, count(*) AS n, sum(latency) AS total FROM shop.requests GROUP BY pod",
        )
        .await?;
        for (pod, (n, total)) in groups(&batches) {
            let entry = merged.entry(pod).or_default();
            entry.0 += n;
            entry.1 += total;
        }
        let (batches, _) = query(&mut client, ROWS).await?;
        let rows = rows_of(&batches);
        assert_eq!(rows.len() as i64, count, "{node}: rows read = its count");
        assert!(rows.iter().all(|r| r.node == node), "{node}: node column");
        node_rows.insert(node, rows);
    }
    let union: i64 = own_count.values().sum();
    let made: u64 = PODS.iter().map(|p| p.2).sum();
    assert_eq!(union as u64 + lost, made, "captured + counted lost = made");
    eprintln!(
        "per-agent answers ({own_count:?}, {lost} lost): {:?}",
        test_start.elapsed()
    );

    // The exact p99s per pod, from every row read from each agent.
    let mut latencies: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut results: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in node_rows.values().flatten() {
        latencies
            .entry(row.pod.clone())
            .or_default()
            .push(row.latency);
        results.entry(row.pod.clone()).or_default().push(row.result);
    }
    assert!(
        latencies.keys().eq(PODS.iter().map(|p| p.0)),
        "rows of the selected pods only: {:?}",
        latencies.keys()
    );

    // Through pyarrow and ADBC, as a user would.
    let answer = python(
        query_port,
        &format!(
            r#"{ADBC_CONNECT}
cur = connect().cursor()
cur.execute("SELECT count(*) FROM shop.requests")
count = cur.fetch_arrow_table().column(0)[0].as_py()
cur.execute("{GROUP_BY}")
table = cur.fetch_arrow_table()
groups = [list(row.values()) for row in table.to_pylist()]
print(json.dumps({{"count": count, "groups": groups}}))
"#
        ),
    )
    .await?;
    assert_eq!(
        answer["count"].as_i64(),
        Some(union),
        "the union: the sum of every agent's own count"
    );
    let seen = answer["groups"].as_array().unwrap();
    assert_eq!(seen.len(), merged.len(), "{answer}");
    for group in seen {
        let pod = group[0].as_str().unwrap();
        let (n, total) = merged[pod];
        assert_eq!(group[1].as_i64(), Some(n), "count of {pod}");
        assert_eq!(group[2].as_i64(), Some(total), "sum of {pod}");
        // approx_percentile_cont is a t-digest estimate: its error bound is
        // on ranks, not values. Latencies are sparse in the tail (adjacent
        // values there differ by percents), so the estimate must lie within
        // half a percent of the rows around the exact p99...
        let p99 = group[3].as_f64().unwrap();
        let values = latencies.get_mut(pod).unwrap();
        let (low, high) = (
            exact_percentile(values, 0.985),
            exact_percentile(values, 0.995),
        );
        assert!(
            p99 >= low - 1.0 && p99 <= high + 1.0,
            "p99 latency of {pod}: {p99} outside [{low}, {high}] (exact {})",
            exact_percentile(values, 0.99)
        );
        // ...and, on a column of evenly spread values (the results, 2 ×
        // request id + 64), within 1 % of the exact p99.
        let p99 = group[4].as_f64().unwrap();
        let exact = exact_percentile(results.get_mut(pod).unwrap(), 0.99);
        assert!(
            (p99 - exact).abs() <= exact * 0.01,
            "p99 result of {pod}: {p99} vs exact {exact}"
        );
    }
    eprintln!("ADBC count and GROUP BY: {:?}", test_start.elapsed());

    // EXPLAIN: the partial aggregate runs in the node stage, over the
    // scan, one task per node; the final aggregate runs above it.
    let query_url = format!("http://127.0.0.1:{query_port}");
    let mut client = sql_client(&query_url, CLIENT_TOKEN).await?;
    let (batches, _) = query(&mut client, &format!("EXPLAIN {GROUP_BY}")).await?;
    let plan = plan_text(&batches);
    let stage_start = plan
        .find("SondeScanExec")
        .and_then(|scan| plan[..scan].rfind("Stage "))
        .unwrap_or_else(|| panic!("no stage holds the scan: {plan}"));
    let stage_head = &plan[stage_start..];
    let stage = &stage_head[..stage_head.find('└').expect("a terminated stage")];
    assert!(stage.contains("tasks=3"), "{stage}");
    assert!(stage.contains("AggregateExec: mode=Partial"), "{stage}");
    let partial = stage.find("AggregateExec: mode=Partial").unwrap();
    for node in NODES {
        let scan = stage
            .find(&format!("nodes=[{node}]"))
            .unwrap_or_else(|| panic!("no scan of {node} in {stage}"));
        assert!(partial < scan, "the partial aggregate is over the scans");
    }
    assert!(
        plan[..stage_start].contains("mode=Final"),
        "no final aggregate above the node stage: {plan}"
    );
    eprintln!("EXPLAIN: {:?}", test_start.elapsed());

    // One agent killed: the query fails naming its node...
    agents.remove(KILLED).unwrap().kill();
    let error = query(&mut client, "SELECT count(*) FROM shop.requests")
        .await
        .expect_err("a node is missing");
    let status = status_of(&error).unwrap_or_else(|| panic!("no status in {error}"));
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains(KILLED), "{status:?}");

    // ...through ADBC too; with partial results allowed, the answer has the
    // other two nodes' rows.
    let answer = python(
        query_port,
        &format!(
            r#"{ADBC_CONNECT}
cur = connect().cursor()
try:
    cur.execute("SELECT count(*) FROM shop.requests")
    cur.fetch_arrow_table()
    error = None
except Exception as e:
    error = str(e)
cur = connect(**{{"adbc.flight.sql.rpc.call_header.{}": "true"}}).cursor()
cur.execute("SELECT node, count(*) FROM shop.requests GROUP BY node ORDER BY node")
nodes = {{node: n for node, n in cur.fetchall()}}
print(json.dumps({{"error": error, "nodes": nodes}}))
"#,
            PARTIAL_HEADER
        ),
    )
    .await?;
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(message.contains(KILLED), "ADBC error: {answer}");
    let expected: serde_json::Map<String, Value> = own_count
        .iter()
        .filter(|(node, _)| **node != KILLED)
        .map(|(node, n)| ((*node).to_owned(), Value::from(*n)))
        .collect();
    assert_eq!(answer["nodes"], Value::Object(expected), "{answer}");

    // Every row of the two others exactly, and the missing node named.
    let mut partial = sql_client(&query_url, CLIENT_TOKEN).await?;
    partial.set_header(PARTIAL_HEADER, "true");
    let (batches, metadata) = query(&mut partial, ROWS).await?;
    let mut expected: Vec<Row> = node_rows
        .iter()
        .filter(|(node, _)| **node != KILLED)
        .flat_map(|(_, rows)| rows.iter().cloned())
        .collect();
    expected.sort();
    let got = rows_of(&batches);
    assert_eq!(got.len(), expected.len(), "rows of the two other nodes");
    assert!(got == expected, "the two other nodes' rows exactly");
    let metadata: Value = serde_json::from_slice(&metadata)?;
    let missing = metadata["missing_nodes"]
        .as_object()
        .unwrap_or_else(|| panic!("no missing_nodes in {metadata}"));
    assert_eq!(
        missing.keys().collect::<Vec<_>>(),
        vec![KILLED],
        "{metadata}"
    );
    assert!(
        missing[KILLED]
            .as_str()
            .unwrap_or_default()
            .contains(KILLED),
        "{metadata}"
    );
    eprintln!("one agent killed: {:?}", test_start.elapsed());

    drop(query_process);
    drop(agents);
    eprintln!("test took {:?}", test_start.elapsed());
    Ok(())
}
