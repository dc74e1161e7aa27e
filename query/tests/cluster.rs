//! sonde-query over three agents (three simulated nodes), each serving
//! its own rows over Flight with the distributed worker on the same port.
//! Every expected answer is computed by the test: from the rows it
//! generated, or from each agent's own Flight SQL answer merged here.
//! A byte-counting loopback proxy sits in front of each agent, so what
//! crosses the network between sonde-query and the nodes is measured.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use arrow_array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt32Array,
    UInt64Array, cast::AsArray, types::Int64Type,
};
use arrow_flight::{error::FlightError, sql::client::FlightSqlServiceClient};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use crds::TableName;
use futures::TryStreamExt;
use probe_serve::flight::{FlightConfig, fixture::MemorySource};
use serde_json::Value;
use sonde_query::{AgentAuth, AgentDirectory, QueryConfig};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::Channel;
use url::Url;

const AGENT_TOKEN: &str = "agent-secret";
const CLIENT_TOKEN: &str = "client-secret";
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn table() -> TableName {
    TableName::new("shop", "request_latency")
}

fn schema() -> SchemaRef {
    let mut fields = probe_capture_fields();
    fields.push(Field::new("latency", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// The standard columns every capture table starts with.
fn probe_capture_fields() -> Vec<Field> {
    probe_serve::flight::fixture::standard_schema()
        .fields()
        .iter()
        .take(9)
        .map(|f| f.as_ref().clone())
        .collect()
}

/// One node's rows: pods `web-0`/`web-1` run on every node (so groups
/// merge across nodes), `<node>-db` only on its own.
struct NodeRows {
    node: &'static str,
    time: Vec<i64>,
    pod: Vec<String>,
    latency: Vec<i64>,
}

impl NodeRows {
    fn generate(index: usize, rows: usize) -> Self {
        let node = NODES[index];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (index as u64 + 1);
        let mut time = Vec::with_capacity(rows);
        let mut pod = Vec::with_capacity(rows);
        let mut latency = Vec::with_capacity(rows);
        for i in 0..rows {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            time.push(1_000_000_000 + i as i64 * 1_000);
            pod.push(match (state >> 33) % 3 {
                0 => "web-0".to_owned(),
                1 => "web-1".to_owned(),
                _ => format!("{node}-db"),
            });
            latency.push(1_000 + ((state >> 20) % 1_000_000) as i64 * (index as i64 + 1));
        }
        Self {
            node,
            time,
            pod,
            latency,
        }
    }

    fn batches(&self, batch_rows: usize) -> Vec<RecordBatch> {
        let n = self.time.len();
        (0..n)
            .step_by(batch_rows)
            .map(|start| {
                let end = (start + batch_rows).min(n);
                let len = end - start;
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(
                        TimestampNanosecondArray::from(self.time[start..end].to_vec())
                            .with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                        self.node, len,
                    ))),
                    Arc::new(UInt32Array::from(vec![7; len])),
                    Arc::new(UInt32Array::from(vec![7; len])),
                    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                        "server", len,
                    ))),
                    Arc::new(UInt64Array::from(vec![42; len])),
                    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                        "shop", len,
                    ))),
                    Arc::new(StringArray::from_iter_values(
                        self.pod[start..end].iter().map(String::as_str),
                    )),
                    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                        "main", len,
                    ))),
                    Arc::new(Int64Array::from(self.latency[start..end].to_vec())),
                ];
                RecordBatch::try_new(schema(), columns).unwrap()
            })
            .collect()
    }
}

/// Forwards loopback connections to an agent and counts the bytes each
/// way; dropping it stops accepting and cuts every forwarded connection.
struct CountingProxy {
    port: u16,
    to_query: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    async fn start(target: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let to_query = Arc::new(AtomicU64::new(0));
        let to_agent = Arc::new(AtomicU64::new(0));
        let (down, up) = (Arc::clone(&to_query), Arc::clone(&to_agent));
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (down, up) = (Arc::clone(&down), Arc::clone(&up));
                connections.spawn(async move {
                    let Ok(agent) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut agent_read, mut agent_write) = agent.into_split();
                    let upstream = async {
                        let n = tokio::io::copy(&mut client_read, &mut agent_write).await;
                        up.fetch_add(n.unwrap_or(0), Ordering::Relaxed);
                        let _ = agent_write.shutdown().await;
                    };
                    let downstream = async {
                        let n = copy_counting(&mut agent_read, &mut client_write, &down).await;
                        let _ = n;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        Ok(Self {
            port,
            to_query,
            task,
        })
    }

    fn bytes_to_query(&self) -> u64 {
        self.to_query.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies and counts as it goes (a long stream is counted before it ends).
async fn copy_counting(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    counter: &AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        to.write_all(&buffer[..n]).await?;
    }
}

struct Agent {
    node: &'static str,
    port: u16,
    proxy: Option<CountingProxy>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), probe_serve::flight::FlightError>>,
}

impl Agent {
    async fn start(rows: &NodeRows, batch_rows: usize) -> anyhow::Result<Self> {
        let source = Arc::new(MemorySource::new());
        source.add_table(table(), schema());
        for batch in rows.batches(batch_rows) {
            ensure!(source.append(&table(), batch));
        }
        let mut config = FlightConfig::new("127.0.0.1:0".parse()?);
        config.token = Some(AGENT_TOKEN.to_owned());
        config.worker_node = Some(rows.node.to_owned());
        let server = probe_serve::flight::bind(source, config).await?;
        let port = server.local_addr().port();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let proxy = CountingProxy::start(port).await?;
        Ok(Self {
            node: rows.node,
            port,
            proxy: Some(proxy),
            shutdown: Some(tx),
            task,
        })
    }

    fn url(&self) -> Url {
        let port = self.proxy.as_ref().map_or(0, |p| p.port);
        Url::parse(&format!("http://127.0.0.1:{port}")).unwrap()
    }

    /// Stops the agent and its proxy: the node is unreachable from now on.
    async fn kill(&mut self) -> anyhow::Result<()> {
        self.proxy.take();
        let _ = self.shutdown.take().context("killed twice")?.send(());
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(10), task).await???;
        Ok(())
    }
}

struct Cluster {
    agents: Vec<Agent>,
    rows: Vec<NodeRows>,
    port: u16,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Cluster {
    async fn start(rows_per_node: usize, batch_rows: usize) -> anyhow::Result<Self> {
        let rows: Vec<NodeRows> = (0..NODES.len())
            .map(|i| NodeRows::generate(i, rows_per_node))
            .collect();
        let mut agents = Vec::new();
        for node_rows in &rows {
            agents.push(Agent::start(node_rows, batch_rows).await?);
        }
        let directory = AgentDirectory::new(
            agents
                .iter()
                .map(|a| (a.node.to_owned(), a.url()))
                .collect(),
        );
        let mut config = QueryConfig::new("127.0.0.1:0".parse()?);
        config.token = Some(CLIENT_TOKEN.to_owned());
        config.agent_auth = AgentAuth {
            token: Some(AGENT_TOKEN.to_owned()),
            ca: None,
        };
        let server = sonde_query::bind(directory, config).await?;
        let port = server.local_addr().port();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Ok(Self {
            agents,
            rows,
            port,
            shutdown: Some(tx),
        })
    }

    fn bytes_to_query(&self) -> u64 {
        self.agents
            .iter()
            .filter_map(|a| a.proxy.as_ref())
            .map(CountingProxy::bytes_to_query)
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for agent in &mut self.agents {
            if let Some(tx) = agent.shutdown.take() {
                let _ = tx.send(());
            }
        }
    }
}

async fn sql_client(port: u16, token: &str) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
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

fn count_of(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
        .sum()
}

/// `pod -> (count, sum)` from a `pod, count, sum` answer.
fn groups(batches: &[RecordBatch]) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let pods = batch.column(0).as_string::<i32>();
        let counts = batch.column(1).as_primitive::<Int64Type>();
        let sums = batch.column(2).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            out.insert(pods.value(i).to_owned(), (counts.value(i), sums.value(i)));
        }
    }
    out
}

fn plan_text(batches: &[RecordBatch]) -> String {
    let mut text = String::new();
    for batch in batches {
        let kinds = batch.column(0).as_string::<i32>();
        let plans = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            text.push_str(&format!("{}:\n{}\n", kinds.value(i), plans.value(i)));
        }
    }
    text
}

/// The exact p99 of `values` by the nearest-rank-free linear rule
/// DataFusion's percentile estimate approximates.
fn exact_percentile(values: &mut [i64], p: f64) -> f64 {
    values.sort_unstable();
    let rank = p * (values.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - low as f64;
    values[low] as f64 * (1.0 - weight) + values[high] as f64 * weight
}

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
    ensure!(output.status.success(), "python failed: {stderr}\n{stdout}");
    let last = stdout.lines().last().context("python printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("not JSON: {last}\n{stderr}"))
}

const GROUP_BY: &str = "SELECT pod, count(*) AS n, sum(latency) AS total, \
     approx_percentile_cont(latency, 0.99) AS p99 \
     FROM shop.request_latency GROUP BY pod ORDER BY pod";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_query_covers_every_node() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(30_000, 4_096).await?;

    // Each agent's own answers, merged here.
    let mut union_count = 0;
    let mut merged: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for agent in &cluster.agents {
        let mut client = sql_client(agent.port, AGENT_TOKEN).await?;
        let (batches, _) = query(&mut client, "SELECT count(*) FROM shop.request_latency").await?;
        union_count += count_of(&batches);
        let (batches, _) = query(
            &mut client,
            "SELECT pod, count(*), sum(latency) FROM shop.request_latency GROUP BY pod",
        )
        .await?;
        for (pod, (n, total)) in groups(&batches) {
            let entry = merged.entry(pod).or_default();
            entry.0 += n;
            entry.1 += total;
        }
    }
    assert_eq!(union_count, 90_000);

    // The exact p99 per pod over every node's rows.
    let mut latencies: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for rows in &cluster.rows {
        for (pod, latency) in rows.pod.iter().zip(&rows.latency) {
            latencies.entry(pod.clone()).or_default().push(*latency);
        }
    }
    let exact_p99: BTreeMap<String, f64> = latencies
        .iter_mut()
        .map(|(pod, values)| (pod.clone(), exact_percentile(values, 0.99)))
        .collect();

    // Through ADBC and pyarrow, as a user would.
    let answer = python(
        cluster.port,
        &format!(
            r#"
import json, os
import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_flightsql as fsql
uri = "grpc://127.0.0.1:" + os.environ["SONDE_PORT"]
conn = dbapi.connect(uri, db_kwargs={{fsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + os.environ["SONDE_TOKEN"]}})
cur = conn.cursor()
cur.execute("SELECT count(*) FROM shop.request_latency")
count = cur.fetchone()[0]
cur.execute("{GROUP_BY}")
rows = [[p, n, t, q] for p, n, t, q in cur.fetchall()]
print(json.dumps({{"count": count, "groups": rows}}))
"#
        ),
    )
    .await?;
    assert_eq!(answer["count"].as_i64(), Some(union_count));
    let groups_seen = answer["groups"].as_array().context("groups")?;
    assert_eq!(groups_seen.len(), merged.len(), "{answer}");
    for group in groups_seen {
        let pod = group[0].as_str().context("pod")?;
        let (n, total) = merged[pod];
        assert_eq!(group[1].as_i64(), Some(n), "count of {pod}");
        assert_eq!(group[2].as_i64(), Some(total), "sum of {pod}");
        let p99 = group[3].as_f64().context("p99")?;
        let exact = exact_p99[pod];
        // approx_percentile_cont is a t-digest estimate, merged across
        // the nodes' partial digests: within 1 % of the exact value.
        assert!(
            (p99 - exact).abs() <= exact * 0.01,
            "p99 of {pod}: {p99} vs exact {exact}"
        );
    }

    // EXPLAIN: the partial aggregate runs in the node stage, over the
    // scan, three tasks; the final aggregate runs above it.
    let mut client = sql_client(cluster.port, CLIENT_TOKEN).await?;
    let (batches, _) = query(&mut client, &format!("EXPLAIN {GROUP_BY}")).await?;
    let plan = plan_text(&batches);
    println!("{plan}");
    let stage_start = plan
        .find("SondeScanExec")
        .and_then(|scan| plan[..scan].rfind("Stage "))
        .context("no stage holds the scan")?;
    let stage_head = &plan[stage_start..];
    let stage = &stage_head[..stage_head.find("└").context("unterminated stage")?];
    assert!(stage.contains("tasks=3"), "{stage}");
    assert!(stage.contains("AggregateExec: mode=Partial"), "{stage}");
    for node in NODES {
        assert!(stage.contains(node), "{node} not in {stage}");
    }
    let head = &plan[..stage_start];
    assert!(
        head.contains("mode=Final"),
        "no final aggregate above: {plan}"
    );

    // Filters and a time range run on the nodes: the scan narrows by time_.
    let (since, until) = (
        1_000_000_000 + 5_000 * 1_000,
        1_000_000_000 + 17_000 * 1_000,
    );
    let filtered = format!(
        "SELECT count(*) FROM shop.request_latency WHERE pod = 'web-0' AND \
         time_ >= to_timestamp_nanos({since}) AND time_ < to_timestamp_nanos({until})"
    );
    let expected = cluster
        .rows
        .iter()
        .flat_map(|r| r.time.iter().zip(&r.pod))
        .filter(|(t, p)| **t >= since && **t < until && *p == "web-0")
        .count() as i64;
    let (batches, _) = query(&mut client, &filtered).await?;
    assert_eq!(count_of(&batches), expected);
    let (batches, _) = query(&mut client, &format!("EXPLAIN {filtered}")).await?;
    let plan = plan_text(&batches);
    assert!(
        plan.contains(&format!("time_=[{since}, {until})")),
        "time range not pushed into the scan: {plan}"
    );
    let (batches, _) = query(
        &mut client,
        "SELECT pod, latency FROM shop.request_latency LIMIT 7",
    )
    .await?;
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 7);

    // One agent gone: the query fails naming it...
    cluster.agents[1].kill().await?;
    let error = query(&mut client, "SELECT count(*) FROM shop.request_latency")
        .await
        .expect_err("a node is missing");
    let status = status_of(&error).context("no status in the error")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("node-b"), "{status:?}");

    // ...unless the client accepts partial results: then it has the other
    // two nodes' rows and says which node is missing.
    let mut partial = sql_client(cluster.port, CLIENT_TOKEN).await?;
    partial.set_header(sonde_query::PARTIAL_HEADER, "true");
    let (batches, metadata) =
        query(&mut partial, "SELECT count(*) FROM shop.request_latency").await?;
    let rest: i64 = [0, 2]
        .iter()
        .map(|&i| cluster.rows[i].time.len() as i64)
        .sum();
    assert_eq!(count_of(&batches), rest);
    let metadata: Value = serde_json::from_slice(&metadata)?;
    let missing = metadata["missing_nodes"]
        .as_object()
        .context("no missing_nodes")?;
    assert_eq!(
        missing.keys().collect::<Vec<_>>(),
        vec!["node-b"],
        "{metadata}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_on_sonde_query_and_on_the_workers() -> anyhow::Result<()> {
    let cluster = Cluster::start(100, 100).await?;
    for token in ["wrong", ""] {
        let mut client = sql_client(cluster.port, token).await?;
        let error = query(&mut client, "SELECT 1").await.expect_err("refused");
        let status = status_of(&error).context("no status")?;
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    // A Flight SQL client without any header.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", cluster.port))?
        .connect()
        .await?;
    let mut bare = FlightSqlServiceClient::new(channel);
    let error = bare
        .execute("SELECT 1".to_owned(), None)
        .await
        .expect_err("refused");
    let status = status_of(&error).context("no status")?;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // The worker service of an agent, called directly.
    let agent = &cluster.agents[0];
    let url = Url::parse(&format!("http://127.0.0.1:{}", agent.port))?;
    for token in [None, Some("wrong")] {
        let connections = sonde_query::Connections::new(AgentAuth {
            token: token.map(str::to_owned),
            ca: None,
        })?;
        let error = connections.worker_version(&url).await.expect_err("refused");
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut code = None;
        while let Some(e) = current {
            if let Some(status) = e.downcast_ref::<tonic::Status>() {
                code = Some(status.code());
            }
            current = e.source();
        }
        assert_eq!(code, Some(tonic::Code::Unauthenticated), "{error}");
    }
    let connections = sonde_query::Connections::new(AgentAuth {
        token: Some(AGENT_TOKEN.to_owned()),
        ca: None,
    })?;
    assert_eq!(
        connections.worker_version(&url).await?,
        probe_serve::cluster::WORKER_VERSION
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_a_plan_that_scans_files() -> anyhow::Result<()> {
    use datafusion::{
        execution::SessionStateBuilder,
        prelude::{CsvReadOptions, SessionContext},
    };
    use datafusion_distributed::{
        DistributedExt, RouteTasksEvent, RouteTasksEventResponse, SessionStateBuilderExt,
        WorkerResolver,
    };

    let cluster = Cluster::start(100, 100).await?;
    let agent = &cluster.agents[0];
    let url = Url::parse(&format!("http://127.0.0.1:{}", agent.port))?;
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("secrets.csv");
    let mut text = String::from("line\n");
    for i in 0..2_000 {
        text.push_str(&format!("secret-{i}\n"));
    }
    std::fs::write(&csv, text)?;

    struct Fixed(Vec<Url>);
    impl WorkerResolver for Fixed {
        fn get_urls(&self) -> Result<Vec<Url>, datafusion::error::DataFusionError> {
            Ok(self.0.clone())
        }
    }
    let connections = sonde_query::Connections::new(AgentAuth {
        token: Some(AGENT_TOKEN.to_owned()),
        ca: None,
    })?;
    let to_agent = url.clone();
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_distributed_planner()
        .with_distributed_worker_resolver(Fixed(vec![url.clone(), url.clone()]))
        .with_distributed_channel_resolver(connections)
        .with_distributed_file_scan_config_bytes_per_partition(64)?
        .with_distributed_route_tasks_handler(move |ev: RouteTasksEvent<'_>| {
            Some(Ok(RouteTasksEventResponse::new(vec![
                to_agent.clone();
                ev.task_count
            ])))
        })
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_csv("secrets", csv.to_str().unwrap(), CsvReadOptions::new())
        .await?;
    let frame = ctx.sql("SELECT count(*) FROM secrets").await?;
    let plan = frame.clone().create_physical_plan().await?;
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    ensure!(
        shown.contains("DistributedExec"),
        "not distributed: {shown}"
    );
    let error = frame.collect().await.expect_err("the agent must refuse");
    assert!(
        error
            .to_string()
            .contains("plan refused by the agent of node node-a"),
        "{error}"
    );
    assert!(error.to_string().contains("DataSourceExec"), "{error}");
    Ok(())
}

/// Bytes moved and latency: a GROUP BY over 1 million rows per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_group_by_moves_partial_aggregates_not_rows() -> anyhow::Result<()> {
    const ROWS: usize = 1_000_000;
    let cluster = Cluster::start(ROWS, 8_192).await?;
    let sql = "SELECT pod, count(*), sum(latency) FROM shop.request_latency GROUP BY pod";
    let mut client = sql_client(cluster.port, CLIENT_TOKEN).await?;
    // The first query also opens the channels: measure the second.
    query(&mut client, sql).await?;
    let before = cluster.bytes_to_query();
    let started = Instant::now();
    let (batches, _) = query(&mut client, sql).await?;
    let cluster_latency = started.elapsed();
    let moved = cluster.bytes_to_query() - before;
    let got = groups(&batches);
    assert_eq!(got.len(), 5);
    assert_eq!(
        got.values().map(|(n, _)| n).sum::<i64>(),
        (ROWS * NODES.len()) as i64
    );

    // The same GROUP BY on one agent, in the same run.
    let agent = &cluster.agents[0];
    let mut direct = sql_client(agent.port, AGENT_TOKEN).await?;
    query(&mut direct, sql).await?;
    let started = Instant::now();
    query(&mut direct, sql).await?;
    let agent_latency = started.elapsed();

    // What the rows themselves would weigh: the two columns read, as Arrow.
    let raw: usize = cluster
        .rows
        .iter()
        .flat_map(|r| r.batches(8_192))
        .map(|b| {
            b.project(&[7, 9])
                .map(|p| p.get_array_memory_size())
                .unwrap_or(0)
        })
        .sum();
    println!(
        "GROUP BY over {} x {ROWS} rows: {moved} bytes from the agents to sonde-query \
         (the rows' two columns: {raw} bytes); cluster {cluster_latency:?}, \
         one agent over its {ROWS} rows {agent_latency:?}",
        NODES.len()
    );
    assert!(
        moved < 1_000_000,
        "{moved} bytes crossed the network for 15 groups"
    );
    assert!((moved as usize) * 100 < raw, "{moved} vs {raw}");
    Ok(())
}
