//! Three agents over in-memory tables, each behind a byte-counting
//! loopback proxy, and sonde-query in front of them.

#![allow(dead_code, reason = "each test target uses part of the support")]

use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
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

pub const AGENT_TOKEN: &str = "agent-secret";
pub const CLIENT_TOKEN: &str = "client-secret";
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

pub fn table() -> TableName {
    TableName::new("shop", "request_latency")
}

pub fn schema() -> SchemaRef {
    let mut fields = probe_capture_fields();
    fields.push(Field::new("latency", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// The standard columns every capture table starts with.
pub fn probe_capture_fields() -> Vec<Field> {
    probe_serve::flight::fixture::standard_schema()
        .fields()
        .iter()
        .take(9)
        .map(|f| f.as_ref().clone())
        .collect()
}

/// One node's rows: pods `web-0`/`web-1` run on every node (so groups
/// merge across nodes), `<node>-db` only on its own.
pub struct NodeRows {
    pub node: &'static str,
    pub time: Vec<i64>,
    pub pod: Vec<String>,
    pub latency: Vec<i64>,
}

impl NodeRows {
    pub fn generate(index: usize, rows: usize) -> Self {
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

    pub fn batches(&self, batch_rows: usize) -> Vec<RecordBatch> {
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
pub struct CountingProxy {
    port: u16,
    to_query: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target: u16) -> anyhow::Result<Self> {
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

    pub fn bytes_to_query(&self) -> u64 {
        self.to_query.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies and counts as it goes (a long stream is counted before it ends).
pub async fn copy_counting(
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

pub struct Agent {
    pub node: &'static str,
    pub port: u16,
    pub proxy: Option<CountingProxy>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), probe_serve::flight::FlightError>>,
}

impl Agent {
    pub async fn start(rows: &NodeRows, batch_rows: usize) -> anyhow::Result<Self> {
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

    pub fn url(&self) -> Url {
        let port = self.proxy.as_ref().map_or(0, |p| p.port);
        Url::parse(&format!("http://127.0.0.1:{port}")).unwrap()
    }

    /// Stops the agent and its proxy: the node is unreachable from now on.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.proxy.take();
        let _ = self.shutdown.take().context("killed twice")?.send(());
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(10), task).await???;
        Ok(())
    }
}

/// sonde-query over `directory`, with the test tokens; it stops when the
/// sender is dropped or sent to.
pub async fn start_query(directory: AgentDirectory) -> anyhow::Result<(u16, oneshot::Sender<()>)> {
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
    Ok((port, tx))
}

pub struct Cluster {
    pub agents: Vec<Agent>,
    pub rows: Vec<NodeRows>,
    pub port: u16,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Cluster {
    pub async fn start(rows_per_node: usize, batch_rows: usize) -> anyhow::Result<Self> {
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
        let (port, tx) = start_query(directory).await?;
        Ok(Self {
            agents,
            rows,
            port,
            shutdown: Some(tx),
        })
    }

    pub fn bytes_to_query(&self) -> u64 {
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

pub async fn sql_client(port: u16, token: &str) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {token}"));
    Ok(client)
}

/// The answer to `sql`, and the FlightInfo's app_metadata.
pub async fn query(
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

pub fn status_of(error: &FlightError) -> Option<tonic::Status> {
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

pub fn count_of(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
        .sum()
}

/// `pod -> (count, sum)` from a `pod, count, sum` answer.
pub fn groups(batches: &[RecordBatch]) -> BTreeMap<String, (i64, i64)> {
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

pub fn plan_text(batches: &[RecordBatch]) -> String {
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
pub fn exact_percentile(values: &mut [i64], p: f64) -> f64 {
    values.sort_unstable();
    let rank = p * (values.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - low as f64;
    values[low] as f64 * (1.0 - weight) + values[high] as f64 * weight
}

pub async fn python(port: u16, script: &str) -> anyhow::Result<Value> {
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
