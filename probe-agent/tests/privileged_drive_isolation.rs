//! The drive loop is isolated from everything slow: while a Flight SQL query
//! keeps a core busy for more than the whole load and the apiserver is
//! stopped (SIGSTOP: every request to it hangs), a pod's 200,000 events/s
//! are all captured, with nothing lost, and `/metrics` keeps answering
//! within a second.
//!
//! The query is sized at run time: a small cross join is timed first, and
//! the real one is scaled to outlast the load; the test then checks it did.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use arrow_array::{RecordBatch, cast::AsArray, types::Int64Type};
use arrow_flight::{
    FlightClient, FlightDescriptor,
    sql::{CommandStatementQuery, ProstMessageExt},
};
use common::{AgentProcess, PinnedBinary, count, loadgen, pids, rows, scrape};
use crds::v1alpha1::{AssignmentState, ProbeNode};
use e2e::{Cluster, Component};
use futures::TryStreamExt as _;
use kube::{Api, api::PostParams};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use prost::Message as _;
use serde_json::json;

const NODE: &str = "node-a";
/// Rows the table holds before the query starts, for the cross join.
const WARM_CALLS: u64 = 20_000;
/// The load: 200,000 getppid calls a second for 10 s.
const RATE: u64 = 200_000;
const LOAD_CALLS: u64 = 2_000_000;
/// How long the query should run: well past the 10 s of load.
const QUERY_TARGET: Duration = Duration::from_secs(25);

fn loadgen_pod(loadgen: &Path, name: &str, args: &[&str]) -> k8s_openapi::api::core::v1::Pod {
    let mut command = vec![loadgen.to_str().unwrap()];
    command.extend_from_slice(args);
    let mut pod = e2e::pod(name, NODE, &command);
    pod.metadata.labels = Some([("app".to_owned(), "load".to_owned())].into());
    pod
}

fn probe_node() -> ProbeNode {
    serde_json::from_value(json!({
        "apiVersion": "sonde.dev/v1alpha1",
        "kind": "ProbeNode",
        "metadata": {"name": NODE},
        "spec": {"assignments": [{
            "kind": "Tracepoint",
            "namespace": "shop",
            "name": "calls",
            "uid": "uid-calls",
            "generation": 1,
            "tracepoint": {
                "selector": {"matchLabels": {"app": "load"}},
                "probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}},
                "table": "calls",
            },
        }]},
    }))
    .unwrap()
}

/// A CPU-bound statement whose work grows with `rows` squared, on one
/// partition (the LIMITs make both sides single streams).
fn cross_join(rows: u64) -> String {
    format!(
        "SELECT count(*) AS n FROM \
         (SELECT CAST(time_ AS BIGINT) AS t FROM shop.calls LIMIT {rows}) a CROSS JOIN \
         (SELECT CAST(time_ AS BIGINT) AS t FROM shop.calls LIMIT {rows}) b \
         WHERE (a.t * 31 + b.t) % 7 = 3"
    )
}

/// Runs a Flight SQL statement; the result's batches.
async fn query(url: &str, sql: &str) -> Vec<RecordBatch> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightClient::new(channel);
    let command = CommandStatementQuery {
        query: sql.to_owned(),
        transaction_id: None,
    };
    let info = client
        .get_flight_info(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()))
        .await
        .unwrap();
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.unwrap();
        let stream = client.do_get(ticket).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    batches
}

fn single_count(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// A sample's value from the agent's metrics, 0 if absent.
fn sample(body: &str, series: &str) -> u64 {
    e2e::sample_value(body, series).map_or(0, |v| v as u64)
}

/// The sum of every series whose line starts with `prefix` (one family
/// and some of its labels), 0 if none.
fn sum_of(body: &str, prefix: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_and_a_stopped_apiserver_do_not_delay_the_drain() -> anyhow::Result<()> {
    e2e::require_root()?;
    let agent_binary = PinnedBinary::new(common::AGENT);
    let loadgen = PinnedBinary::new(loadgen());
    let loadgen = loadgen.path();
    let cluster = Cluster::builder()
        .manifests(include_str!("../../crds/sonde.dev.yaml"))
        .start()
        .await?;
    cluster.add_node(NODE, &[]).await?;
    cluster.kubectl(&["create", "namespace", "shop"]).await?;
    let work = tempfile::tempdir()?;
    let (warm_go, load_go) = (work.path().join("warm"), work.path().join("load"));
    let warm_calls = WARM_CALLS.to_string();
    cluster
        .run_pod(
            "shop",
            loadgen_pod(
                loadgen,
                "warm",
                &[
                    "getppid",
                    &warm_calls,
                    "--wait-file",
                    warm_go.to_str().unwrap(),
                    "--hold",
                ],
            ),
        )
        .await?;
    let (load_calls, rate) = (LOAD_CALLS.to_string(), RATE.to_string());
    cluster
        .run_pod(
            "shop",
            loadgen_pod(
                loadgen,
                "load",
                &[
                    "getppid",
                    &load_calls,
                    "--rate",
                    &rate,
                    "--wait-file",
                    load_go.to_str().unwrap(),
                    "--hold",
                ],
            ),
        )
        .await?;
    let load_pid = cluster.pod_processes("shop", "load")[0].pid;

    let agent = AgentProcess::start_cluster(
        agent_binary.path(),
        cluster.kubeconfig_path(),
        NODE,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "1s",
        ],
    );
    let url = tokio::task::block_in_place(|| agent.flight_url(Duration::from_secs(30)));
    let metrics = tokio::task::block_in_place(|| agent.metrics_addr(Duration::from_secs(30)));
    let api: Api<ProbeNode> = Api::all(cluster.client());
    api.create(&PostParams::default(), &probe_node()).await?;
    let start = Instant::now();
    loop {
        let attached = api.get(NODE).await?.status.is_some_and(|s| {
            s.assignments
                .iter()
                .any(|a| a.state == AssignmentState::Attached)
        });
        if attached {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "calls never attached"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Rows for the cross join.
    std::fs::write(&warm_go, "")?;
    let start = Instant::now();
    while count(&rows(&url, "shop.calls").await) < WARM_CALLS {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "warm-up rows missing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Size the query: time a small one, scale (quadratic) to the target.
    let probe_rows = 2_000u64;
    let timed = Instant::now();
    let probe_result = query(&url, &cross_join(probe_rows)).await;
    let probe_time = timed.elapsed();
    assert!(single_count(&probe_result) > 0);
    let scale = (QUERY_TARGET.as_secs_f64() / probe_time.as_secs_f64().max(1e-3)).sqrt();
    let query_rows = ((probe_rows as f64 * scale) as u64).min(WARM_CALLS);
    eprintln!(
        "cross join of {probe_rows}² rows took {probe_time:?}; the slow query joins {query_rows}²"
    );

    // The slow query, the apiserver stopped, then the load.
    let query_url = url.clone();
    let query_started = Instant::now();
    let slow = tokio::spawn(async move {
        let result = query(&query_url, &cross_join(query_rows)).await;
        (single_count(&result), Instant::now())
    });
    let apiserver = cluster
        .pids()
        .into_iter()
        .find(|(component, _)| *component == Component::KubeApiserver)
        .map(|(_, pid)| Pid::from_raw(i32::try_from(pid).unwrap()))
        .unwrap();
    kill(apiserver, Signal::SIGSTOP)?;
    let load_started = Instant::now();
    std::fs::write(&load_go, "")?;

    // Scrapes all through the load: each must answer within a second.
    let mut scrapes = Vec::new();
    while !cluster.pod_log("shop", "load", "main")?.contains("ns/call") {
        assert!(
            load_started.elapsed() < Duration::from_secs(120),
            "the load did not finish"
        );
        let addr = metrics.clone();
        let asked = Instant::now();
        let body = tokio::task::spawn_blocking(move || scrape(&addr)).await?;
        scrapes.push((asked.elapsed(), body));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let load_ended = Instant::now();
    let (joined, query_ended) = slow.await?;
    kill(apiserver, Signal::SIGCONT)?;

    let query_time = query_ended - query_started;
    eprintln!(
        "query: {query_time:?} ({joined} pairs matched); load: {:?} at {RATE}/s; {} scrapes, \
         slowest {:?}",
        load_ended - load_started,
        scrapes.len(),
        scrapes.iter().map(|(t, _)| *t).max().unwrap_or_default()
    );
    assert!(
        query_started <= load_started && query_ended >= load_ended,
        "the query ({query_time:?}) must run through the whole load; it ended {:?} before",
        load_ended.saturating_duration_since(query_ended)
    );
    assert!(
        query_time >= Duration::from_secs(10),
        "the query ran {query_time:?}, not at least 10 s"
    );
    assert!(scrapes.len() >= 10, "only {} scrapes", scrapes.len());
    for (took, body) in &scrapes {
        assert!(*took < Duration::from_secs(1), "a scrape took {took:?}");
        assert!(body.contains("sonde_events_captured_total"), "{body}");
    }

    // Everything the load made is in the table, nothing lost.
    let probe = "namespace=\"shop\",tracepoint=\"calls\",table=\"calls\"";
    let start = Instant::now();
    let body = loop {
        let addr = metrics.clone();
        let body = tokio::task::spawn_blocking(move || scrape(&addr)).await?;
        let captured = sample(&body, &format!("sonde_events_captured_total{{{probe}}}"));
        if captured >= WARM_CALLS + LOAD_CALLS || start.elapsed() > Duration::from_secs(30) {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost = sum_of(&body, &format!("sonde_events_lost_total{{{probe}"));
    let captured = sample(&body, &format!("sonde_events_captured_total{{{probe}}}"));
    assert_eq!(lost, 0, "no event lost: {body}");
    assert_eq!(captured, WARM_CALLS + LOAD_CALLS, "every call captured");
    // The table took every row (its own limits may evict old ones since,
    // which counts them; nothing goes missing in between).
    let table = "namespace=\"shop\",table=\"calls\"";
    let appended = sample(
        &body,
        &format!("sonde_table_appended_rows_total{{{table}}}"),
    );
    assert_eq!(appended, captured, "every captured row reached the store");
    let held = sample(&body, &format!("sonde_table_held_rows{{{table}}}"));
    let evicted = sum_of(&body, &format!("sonde_table_evicted_rows_total{{{table}"));
    assert_eq!(
        held + evicted,
        appended,
        "held + evicted == appended: {body}"
    );
    // The newest rows served are the load's.
    let batches = rows(&url, "shop.calls").await;
    assert_eq!(pids(&batches).last(), Some(&load_pid));
    let misses = sample(&body, "sonde_scrape_report_misses_total");
    eprintln!("captured {captured}, lost {lost}, scrape misses {misses}");
    drop(agent);
    Ok(())
}
