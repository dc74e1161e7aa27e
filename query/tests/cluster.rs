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

mod support;

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context, ensure};
use arrow_array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use serde_json::Value;
use sonde_query::AgentAuth;
use tonic::transport::Channel;
use url::Url;

use support::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_build_is_sent_no_plan() -> anyhow::Result<()> {
    // Three agents of this build and, as node-d, a worker of another build:
    // it reports another plan dialect, and would fail any plan sent to it.
    let rows: Vec<NodeRows> = (0..NODES.len())
        .map(|i| NodeRows::generate(i, 500))
        .collect();
    let mut agents = Vec::new();
    for node_rows in &rows {
        agents.push(Agent::start(node_rows, 100).await?);
    }
    const OTHER: &str = "sonde/0.0.1+datafusion-54+datafusion-distributed-3.0.0+scan-1";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let other_port = listener.local_addr()?.port();
    let other = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                datafusion_distributed::Worker::default()
                    .with_version(OTHER)
                    .into_worker_server(),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut directory: BTreeMap<String, Url> = agents
        .iter()
        .map(|a| (a.node.to_owned(), a.url()))
        .collect();
    directory.insert(
        "node-d".to_owned(),
        Url::parse(&format!("http://127.0.0.1:{other_port}"))?,
    );
    let (port, _stop) = start_query(sonde_query::AgentDirectory::new(directory)).await?;

    // The query fails before any plan leaves sonde-query, naming the node
    // and both dialects.
    let mut client = sql_client(port, CLIENT_TOKEN).await?;
    let error = query(&mut client, "SELECT count(*) FROM shop.request_latency")
        .await
        .expect_err("a worker of another build was accepted");
    let status = status_of(&error).context("no status in the error")?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    for part in ["node-d", OTHER, "sonde/"] {
        assert!(status.message().contains(part), "{part}: {status:?}");
    }

    // With partial results: the three compatible nodes answer, node-d is
    // named missing with why.
    let mut partial = sql_client(port, CLIENT_TOKEN).await?;
    partial.set_header(sonde_query::PARTIAL_HEADER, "true");
    let (batches, metadata) =
        query(&mut partial, "SELECT count(*) FROM shop.request_latency").await?;
    let all: i64 = rows.iter().map(|r| r.time.len() as i64).sum();
    assert_eq!(count_of(&batches), all);
    let metadata: Value = serde_json::from_slice(&metadata)?;
    let missing = metadata["missing_nodes"]
        .as_object()
        .context("no missing_nodes")?;
    assert_eq!(
        missing.keys().collect::<Vec<_>>(),
        vec!["node-d"],
        "{metadata}"
    );
    assert!(
        missing["node-d"]
            .as_str()
            .is_some_and(|m| m.contains(OTHER)),
        "{metadata}"
    );
    other.abort();
    for agent in &mut agents {
        agent.kill().await?;
    }
    Ok(())
}
