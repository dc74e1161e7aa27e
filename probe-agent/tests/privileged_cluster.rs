//! The agent binary in cluster mode against a real control plane (the e2e
//! harness): the test writes the node's ProbeNode itself, as the operator
//! would, and checks what the agent captures and reports.
//!
//! One node runs a selected `web` pod, a non-selected `other` pod of the
//! same namespace and a process outside any pod, all making the same
//! syscalls: rows come only from the web pod, labelled with its namespace,
//! pod and container, and captured + counted lost equals what it made. A
//! uprobe naming a missing binary fails alone; an agent killed and started
//! again re-attaches and reports; a deleted pod leaves its Tracepoints idle
//! with no program linked.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use arrow_array::RecordBatch;
use common::{
    AGENT, AgentProcess, PinnedBinary, count, linked_programs, loadgen, pids, program_ids, rows,
    scrape, strings,
};
use crds::v1alpha1::{AssignmentState, AssignmentStatus, BaselineTableState, ProbeNode};
use e2e::Cluster;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

const NODE: &str = "node-a";
/// getppid(2) calls of the web pod, the other pod and the host process.
const WEB_CALLS: u64 = 20_000;
const OTHER_CALLS: u64 = 7_000;
const HOST_CALLS: u64 = 5_000;
const MISSING_BINARY: &str = "/usr/local/bin/sonde-not-installed";

fn assignment(
    name: &str,
    generation: i64,
    probe: serde_json::Value,
    table: &str,
) -> serde_json::Value {
    json!({
        "kind": "Tracepoint",
        "namespace": "shop",
        "name": name,
        "uid": format!("uid-{name}"),
        "generation": generation,
        "tracepoint": {
            "selector": {"matchLabels": {"app": "web"}},
            "probe": probe,
            "table": table,
        },
    })
}

fn probe_node() -> ProbeNode {
    let mut calls = assignment(
        "calls",
        1,
        json!({"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}}),
        "calls",
    );
    // A derived metric labelled with what the node resolves per row.
    calls["tracepoint"]["metrics"] = json!([
        {"name": "web_calls", "kind": "counter", "labels": ["namespace", "pod", "container"]}
    ]);
    serde_json::from_value(json!({
        "apiVersion": "sonde.dev/v1alpha1",
        "kind": "ProbeNode",
        "metadata": {"name": NODE},
        "spec": {"assignments": [
            calls,
            // The web pod's load generator polls for its start file with
            // clock_nanosleep: rows as soon as the probe is attached.
            assignment("naps", 1,
                json!({"tracepoint": {"group": "syscalls", "name": "sys_enter_clock_nanosleep"}}),
                "naps"),
            assignment("traced-binary", 1,
                json!({"uprobe": {"binary": MISSING_BINARY, "symbol": "main"}}), "binary_calls"),
        ]},
    }))
    .unwrap()
}

/// The status entry of Tracepoint `name`, if reported.
async fn entry(api: &Api<ProbeNode>, name: &str) -> Option<AssignmentStatus> {
    let node = api.get_opt(NODE).await.ok()??;
    node.status?
        .assignments
        .into_iter()
        .find(|a| a.name == name)
}

/// Polls the status until `check` accepts Tracepoint `name`'s entry.
async fn wait_for_entry(
    api: &Api<ProbeNode>,
    name: &str,
    within: Duration,
    check: impl Fn(&AssignmentStatus) -> bool,
) -> AssignmentStatus {
    let start = Instant::now();
    loop {
        let current = entry(api, name).await;
        if let Some(found) = current.as_ref().filter(|e| check(e)) {
            return found.clone();
        }
        assert!(
            start.elapsed() < within,
            "status of {name} not as expected within {within:?}; last: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits, off the async workers, for an agent log line.
fn line(agent: &AgentProcess, what: &str) -> String {
    tokio::task::block_in_place(|| agent.expect(what, Duration::from_secs(30)).0)
}

/// Waits, off the async workers, for an agent log line containing every
/// one of `parts` (the first picks the candidate lines).
fn line_with_all(agent: &AgentProcess, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::task::block_in_place(|| agent.expect(parts[0], left).0);
        if parts.iter().all(|part| line.contains(part)) {
            return line;
        }
    }
}

fn loadgen_pod(
    loadgen: &Path,
    name: &str,
    calls: u64,
    go: &Path,
) -> k8s_openapi::api::core::v1::Pod {
    let calls = calls.to_string();
    e2e::pod(
        name,
        NODE,
        &[
            loadgen.to_str().unwrap(),
            "getppid",
            &calls,
            "--wait-file",
            go.to_str().unwrap(),
            "--hold",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_agent_captures_selected_pods_and_reports() -> anyhow::Result<()> {
    e2e::require_root()?;
    let test_start = Instant::now();
    let agent_binary = PinnedBinary::new(AGENT);
    let loadgen = PinnedBinary::new(loadgen());
    let loadgen = loadgen.path();
    let cluster = Cluster::builder()
        .manifests(include_str!("../../crds/sonde.dev.yaml"))
        .start()
        .await?;
    cluster.add_node(NODE, &[]).await?;
    cluster.kubectl(&["create", "namespace", "shop"]).await?;
    let work = tempfile::tempdir()?;
    let go = work.path().join("go");
    cluster
        .run_pod("shop", loadgen_pod(loadgen, "web", WEB_CALLS, &go))
        .await?;
    cluster
        .run_pod("shop", loadgen_pod(loadgen, "other", OTHER_CALLS, &go))
        .await?;
    let mut host = Command::new(loadgen)
        .args(["getppid", &HOST_CALLS.to_string(), "--wait-file"])
        .arg(&go)
        .stdout(Stdio::null())
        .spawn()?;
    let web = cluster.pod_processes("shop", "web");
    assert_eq!(web.len(), 1, "one container: {web:?}");
    let web_pid = web[0].pid;

    // Another node's ProbeNode: the agent must not see it. Written first
    // also because the apiserver's first write of a kind takes seconds,
    // which is not the agent's latency.
    let api: Api<ProbeNode> = Api::all(cluster.client());
    let mut elsewhere = probe_node();
    elsewhere.metadata.name = Some("node-z".to_owned());
    api.create(&PostParams::default(), &elsewhere).await?;

    let agent = AgentProcess::start_cluster(
        agent_binary.path(),
        cluster.kubeconfig_path(),
        NODE,
        &[
            "--heartbeat-interval",
            "2s",
            "--metrics-addr",
            "127.0.0.1:0",
            "--process-stats-interval",
            "500ms",
        ],
    );
    line(&agent, "cluster agent running");
    let url = tokio::task::block_in_place(|| agent.flight_url(Duration::from_secs(30)));
    let first_metrics = tokio::task::block_in_place(|| agent.metrics_addr(Duration::from_secs(30)));

    // The assignments, as the operator would write them.
    let written = Instant::now();
    api.create(&PostParams::default(), &probe_node()).await?;
    let attached = wait_for_entry(&api, "calls", Duration::from_secs(10), |e| {
        e.state == AssignmentState::Attached
    })
    .await;
    let to_attached = written.elapsed();
    assert_eq!(attached.generation, 1);
    let start = Instant::now();
    while count(&rows(&url, "shop.naps").await) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no row in shop.naps"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let to_first_row = written.elapsed();
    eprintln!("ProbeNode written -> Attached in {to_attached:?}, -> first row in {to_first_row:?}");

    // A missing binary fails that Tracepoint alone, naming path and pod.
    let failed = wait_for_entry(&api, "traced-binary", Duration::from_secs(10), |e| {
        e.state == AssignmentState::Failed
    })
    .await;
    assert_eq!(failed.reason.as_deref(), Some("BinaryNotFound"));
    let message = failed.message.clone().unwrap_or_default();
    assert!(
        message.contains(MISSING_BINARY) && message.contains("pod shop/web"),
        "{message}"
    );
    assert_eq!(
        entry(&api, "calls").await.map(|e| e.state),
        Some(AssignmentState::Attached)
    );
    assert!(
        api.get("node-z").await?.status.is_none(),
        "the agent writes only its own node's status"
    );
    let status = api.get(NODE).await?.status.unwrap();
    assert_eq!(status.attached, 2);
    // The baseline tables' states, on by default and possible here.
    let baseline: Vec<_> = status
        .baseline_tables
        .iter()
        .map(|b| (b.table.as_str(), b.state))
        .collect();
    assert_eq!(
        baseline,
        [
            ("process_stats", BaselineTableState::Collecting),
            ("network_stats", BaselineTableState::Collecting),
            ("http_events", BaselineTableState::Collecting),
            ("dns_events", BaselineTableState::Collecting),
            ("conn_stats", BaselineTableState::Collecting)
        ]
    );
    assert!(status.kernel_version.is_some_and(|k| !k.is_empty()));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // The same load everywhere; rows only from the web pod.
    std::fs::write(&go, "")?;
    assert!(tokio::task::block_in_place(|| host.wait())?.success());
    let start = Instant::now();
    while !cluster.pod_log("shop", "web", "main")?.contains("ns/call")
        || !cluster
            .pod_log("shop", "other", "main")?
            .contains("ns/call")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the pods' load did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The heartbeat carries the counts: captured + lost adds up once drained.
    let done = wait_for_entry(&api, "calls", Duration::from_secs(15), |e| {
        e.events + e.lost == WEB_CALLS
    })
    .await;
    let start = Instant::now();
    let batches = loop {
        let batches = rows(&url, "shop.calls").await;
        if count(&batches) == done.events || start.elapsed() > Duration::from_secs(5) {
            break batches;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(count(&batches), done.events, "status events equal the rows");
    assert_eq!(count(&batches) + done.lost, WEB_CALLS);
    assert!(
        pids(&batches).iter().all(|&pid| pid == web_pid),
        "rows only from the web pod"
    );
    for (column, value) in [("namespace", "shop"), ("pod", "web"), ("container", "main")] {
        let values = strings(&batches, column);
        assert!(
            values.iter().all(|v| v.as_deref() == Some(value)),
            "every row's {column} is {value}"
        );
    }
    // The baseline process_stats names every pod's processes, selected by
    // a Tracepoint or not, with no resource asking for it.
    let other = cluster.pod_processes("shop", "other");
    let start = Instant::now();
    for (pid, pod) in [(web_pid, "web"), (other[0].pid, "other")] {
        loop {
            let batches = rows(&url, "sonde.process_stats").await;
            let named = pids(&batches)
                .into_iter()
                .zip(strings(&batches, "namespace"))
                .zip(strings(&batches, "pod"))
                .zip(strings(&batches, "container"))
                .any(|(((p, namespace), name), container)| {
                    p == pid
                        && namespace.as_deref() == Some("shop")
                        && name.as_deref() == Some(pod)
                        && container.as_deref() == Some("main")
                });
            if named {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no sonde.process_stats row names pid {pid} as shop/{pod}/main"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The derived counter has one series, the web pod's container, equal
    // to its rows.
    let body = tokio::task::block_in_place(|| scrape(&first_metrics));
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("web_calls_total{"))
        .collect();
    assert_eq!(series.len(), 1, "{body}");
    assert!(
        series[0].contains("namespace=\"shop\",pod=\"web\",container=\"main\""),
        "{}",
        series[0]
    );
    assert_eq!(
        e2e::sample_value(series[0], "web_calls_total"),
        Some(count(&batches) as f64)
    );

    // Killed and started again: it re-attaches from the ProbeNode and reports.
    agent.kill();
    let before = api.get(NODE).await?.status.unwrap().heartbeat_time.unwrap();
    let agent = AgentProcess::start_cluster(
        agent_binary.path(),
        cluster.kubeconfig_path(),
        NODE,
        &[
            "--heartbeat-interval",
            "2s",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let url = tokio::task::block_in_place(|| agent.flight_url(Duration::from_secs(30)));
    let metrics = tokio::task::block_in_place(|| agent.metrics_addr(Duration::from_secs(30)));
    // Two Tracepoints attach, each on its own kernel tracepoint.
    let mut programs_again = program_ids(&line(&agent, "programs=["));
    programs_again.extend(program_ids(&line(&agent, "programs=[")));
    assert!(!programs_again.is_empty());
    let start = Instant::now();
    loop {
        let status = api.get(NODE).await?.status.unwrap();
        // Written by the new agent: its counts start again from zero.
        let reported = status
            .heartbeat_time
            .as_ref()
            .is_some_and(|t| t.0 >= before.0);
        let calls = status.assignments.iter().find(|a| a.name == "calls");
        if reported && calls.is_some_and(|c| c.state == AssignmentState::Attached && c.events == 0)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no report after the restart: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let linked = linked_programs();
    assert!(
        programs_again.iter().any(|id| linked.contains(id)),
        "re-attached"
    );

    // A second selected pod joins the attached probes' target sets: its
    // load generator polls for its start file, which never comes.
    let mut web_2 = loadgen_pod(loadgen, "web-2", 1, &work.path().join("never"));
    web_2.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    cluster.run_pod("shop", web_2).await?;
    let from_web_2 = |batches: &[RecordBatch]| {
        strings(batches, "pod")
            .iter()
            .any(|p| p.as_deref() == Some("web-2"))
    };
    let start = Instant::now();
    while !from_web_2(&rows(&url, "shop.naps").await) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no row from web-2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An edit that adds a column: reattached, the table made anew with it.
    let mut node = api.get(NODE).await?;
    let naps = node
        .spec
        .assignments
        .iter_mut()
        .find(|a| a.name == "naps")
        .unwrap();
    naps.generation = 2;
    naps.tracepoint.as_mut().unwrap().fields =
        serde_json::from_value(json!([{"name": "flags", "type": "i32"}]))?;
    api.replace(NODE, &PostParams::default(), &node).await?;
    wait_for_entry(&api, "naps", Duration::from_secs(10), |e| {
        e.generation == 2 && e.state == AssignmentState::Attached
    })
    .await;
    let start = Instant::now();
    loop {
        let batches = rows(&url, "shop.naps").await;
        let has_flags = batches
            .first()
            .is_some_and(|b| b.schema().column_with_name("flags").is_some());
        if has_flags && from_web_2(&batches) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no row with the new column"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    programs_again.extend(program_ids(&line(&agent, "programs=[")));

    // The pods go: one leaves the target sets, then the Tracepoints go idle
    // and nothing stays linked.
    let web_cgroup = {
        use std::os::unix::fs::MetadataExt as _;
        // The id the kernel and the agent know a cgroup by: its inode.
        std::fs::metadata(&web[0].cgroup)?.ino()
    };
    cluster.delete_pod("shop", "web").await?;
    // The agent acts on the deletion: web's container leaves the target set
    // and, since web-2 still runs, the Tracepoint stays attached. A status
    // it writes after that must say so.
    line_with_all(
        &agent,
        &[
            "targets changed",
            "shop/naps",
            &format!("removed=[{web_cgroup}]"),
        ],
    );
    let acted = k8s_openapi::jiff::Timestamp::now();
    let start = Instant::now();
    let status = loop {
        let status = api.get(NODE).await?.status.unwrap();
        let written_after = status
            .heartbeat_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() > acted.as_second());
        if written_after {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no status written after the retarget: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let naps = status.assignments.iter().find(|a| a.name == "naps");
    assert_eq!(
        naps.map(|e| e.state),
        Some(AssignmentState::Attached),
        "web-2 still runs: {status:?}"
    );
    cluster.delete_pod("shop", "web-2").await?;
    for name in ["calls", "naps"] {
        let idle = wait_for_entry(&api, name, Duration::from_secs(10), |e| {
            e.state == AssignmentState::Idle
        })
        .await;
        assert_eq!(idle.reason.as_deref(), Some("NoMatchingPods"));
    }
    // Scrapes see the same states, through the engine's report; with no
    // selected pod the failed uprobe is idle as well.
    let body = tokio::task::block_in_place(|| scrape(&metrics));
    for (state, count) in [("attached", 0), ("idle", 3), ("failed", 0)] {
        let sample = format!("sonde_probes{{state=\"{state}\"}} {count}");
        assert!(body.lines().any(|l| l == sample), "{sample} in:\n{body}");
    }
    let linked = linked_programs();
    assert!(
        programs_again.iter().all(|id| !linked.contains(id)),
        "no program of the agent is linked: {programs_again:?} in {linked:?}"
    );
    let status = agent.stop();
    assert!(status.success(), "agent exit status {status}");
    api.delete(NODE, &DeleteParams::default()).await?;
    eprintln!("test took {:?}", test_start.elapsed());
    Ok(())
}
