//! The whole cluster path, as users meet it: the real control plane, the
//! operator and two agents (one per simulated node), each running as its
//! ServiceAccount with the chart's RBAC. `kubectl apply` a Tracepoint, and
//! rows appear on the right node, from the right pods only; status follows
//! pods coming and going, edits, a missing binary, an agent killed and
//! restarted, and the operator stopped for 30 s while events flow.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use arrow_array::RecordBatch;
use common::{
    AgentProcess, Operator, count, linked_programs, loadgen, pids, program_ids, rows, strings,
};
use crds::{
    Tracepoint,
    v1alpha1::{
        AssignmentState, AssignmentStatus, HEARTBEAT_LEASE_LABEL, Phase, ProbeNode,
        TracepointStatus,
    },
};
use e2e::Cluster;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::DeleteParams};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const NAMESPACE: &str = "sonde-system";
const MISSING_BINARY: &str = "/usr/local/bin/sonde-not-installed";
/// getppid(2) calls each load makes.
const CALLS: u64 = 10_000;

/// A control plane with the CRDs, the chart's RBAC in `sonde-system`, a
/// `shop` namespace, and kubeconfigs of the operator's and the agents'
/// ServiceAccounts.
async fn sonde_cluster() -> anyhow::Result<(Cluster, PathBuf, PathBuf)> {
    let cluster = Cluster::start_with_sonde(NAMESPACE).await?;
    let operator = cluster
        .service_account_kubeconfig(NAMESPACE, "sonde-operator")
        .await?;
    let agent = cluster
        .service_account_kubeconfig(NAMESPACE, "sonde-agent")
        .await?;
    Ok((cluster, operator, agent))
}

/// The load generator outside any pod; killed if the test ends first.
struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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
        ],
    )
}

fn loadgen_pod(name: &str, node: &str, go: &Path) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = e2e::pod(
        name,
        node,
        &[
            loadgen(),
            "getppid",
            &CALLS.to_string(),
            "--wait-file",
            go.to_str().unwrap(),
            "--hold",
        ],
    );
    let app = if name.starts_with("web") {
        "web"
    } else {
        "other"
    };
    pod.metadata.labels = Some([("app".to_owned(), app.to_owned())].into());
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

/// The status is Running with `selected` nodes, all running.
fn running(status: &TracepointStatus, selected: u32) -> bool {
    status.phase == Some(Phase::Running)
        && status
            .nodes
            .as_ref()
            .is_some_and(|n| n.selected == selected && n.running == selected)
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

/// Waits until `node`'s agent has accounted for all `CALLS` of a load in
/// Tracepoint `calls` (captured + counted lost), then until every captured
/// row is in the table it serves at `url` (rows are sealed within a second).
async fn accounted(
    probe_nodes: &Api<ProbeNode>,
    node: &str,
    url: &str,
) -> (AssignmentStatus, Vec<RecordBatch>) {
    let done = until(
        "captured + lost = made",
        Duration::from_secs(15),
        || async {
            report(probe_nodes, node, "calls")
                .await
                .filter(|r| r.events + r.lost == CALLS)
        },
    )
    .await;
    let batches = until(
        "every captured row served",
        Duration::from_secs(5),
        || async {
            let batches = rows(url, "shop.calls").await;
            (count(&batches) == done.events).then_some(batches)
        },
    )
    .await;
    (done, batches)
}

/// Waits until a pod's load generator printed its summary.
async fn load_done(cluster: &Cluster, pod: &str) {
    until(pod, Duration::from_secs(30), || async {
        cluster
            .pod_log("shop", pod, "main")
            .ok()
            .filter(|log| log.contains("ns/call"))
    })
    .await;
}

fn line(agent: &AgentProcess, what: &str) -> String {
    tokio::task::block_in_place(|| agent.expect(what, Duration::from_secs(30)).0)
}

fn tracepoint(name: &str, probe: &str, extra: &str) -> String {
    format!(
        "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: {name}
  namespace: shop
spec:
  selector:
    matchLabels: {{app: web}}
  probe:
    {probe}
  table: {name}
{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_to_rows_on_the_right_nodes() -> anyhow::Result<()> {
    e2e::require_root()?;
    let test_start = Instant::now();
    let (cluster, operator_config, agent_config) = sonde_cluster().await?;
    cluster.add_node("node-a", &[]).await?;
    cluster.add_node("node-b", &[]).await?;
    let work = tempfile::tempdir()?;
    let go = |name: &str| work.path().join(name);

    // Node-a runs the selected web pod, a pod of the same namespace that is
    // not selected, and a process outside any pod: all wait for `go-a`.
    cluster
        .run_pod("shop", loadgen_pod("web-a", "node-a", &go("go-a")))
        .await?;
    cluster
        .run_pod("shop", loadgen_pod("other-a", "node-a", &go("go-a")))
        .await?;
    let mut host = Host(
        Command::new(loadgen())
            .args(["getppid", &CALLS.to_string(), "--wait-file"])
            .arg(go("go-a"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );

    let mut operator = Operator::start(&operator_config, NAMESPACE);
    let agent_a = agent(&agent_config, "node-a");
    let mut agent_b = agent(&agent_config, "node-b");
    let url_a = tokio::task::block_in_place(|| agent_a.flight_url(Duration::from_secs(30)));
    let mut url_b = tokio::task::block_in_place(|| agent_b.flight_url(Duration::from_secs(30)));
    let probe_nodes: Api<ProbeNode> = Api::all(cluster.client());
    let tracepoints: Api<Tracepoint> = Api::namespaced(cluster.client(), "shop");
    // Both agents report before the clock starts.
    for node in ["node-a", "node-b"] {
        until("agent heartbeat", Duration::from_secs(30), || async {
            probe_nodes
                .get_opt(node)
                .await
                .ok()??
                .status?
                .heartbeat_time
        })
        .await;
    }

    // Each heartbeats through a Lease named after its node.
    let leases: Api<Lease> = Api::namespaced(cluster.client(), NAMESPACE);
    for node in ["node-a", "node-b"] {
        let lease = until("heartbeat Lease", Duration::from_secs(10), || async {
            leases.get_opt(node).await.ok()?
        })
        .await;
        let spec = lease.spec.unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some(node));
        assert!(spec.renew_time.is_some());
        assert_eq!(
            lease
                .metadata
                .labels
                .unwrap_or_default()
                .get(HEARTBEAT_LEASE_LABEL),
            Some(&"true".to_owned())
        );
        assert_eq!(spec.lease_duration_seconds, Some(6));
    }
    // Renewals move the renew time on; a Lease deleted under its agent is
    // applied again, whole.
    let renew_time = |lease: Lease| lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let first = renew_time(leases.get("node-b").await?);
    until(
        "node-b's Lease renewed",
        Duration::from_secs(10),
        || async {
            let now = renew_time(leases.get_opt("node-b").await.ok()??);
            (now > first).then_some(())
        },
    )
    .await;
    leases.delete("node-b", &DeleteParams::default()).await?;
    let lease = until("node-b's Lease back", Duration::from_secs(10), || async {
        leases.get_opt("node-b").await.ok()?
    })
    .await;
    let spec = lease.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-b"));
    assert_eq!(spec.lease_duration_seconds, Some(6));
    assert!(
        lease
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(HEARTBEAT_LEASE_LABEL)
    );

    // kubectl apply: the getppid Tracepoint, and one on the nap the waiting
    // load generators take, which gives rows at once.
    let applied = Instant::now();
    cluster
        .apply(&tracepoint(
            "calls",
            "tracepoint: {group: syscalls, name: sys_enter_getppid}",
            "",
        ))
        .await?;
    cluster
        .apply(&tracepoint(
            "naps",
            "tracepoint: {group: syscalls, name: sys_enter_clock_nanosleep}",
            "",
        ))
        .await?;
    until(
        "calls Running on 1 node",
        Duration::from_secs(5),
        || async {
            status(&tracepoints, "calls")
                .await
                .filter(|s| running(s, 1))
        },
    )
    .await;
    let to_running = applied.elapsed();
    until("a first row", Duration::from_secs(10), || async {
        (count(&rows(&url_a, "shop.naps").await) > 0).then_some(())
    })
    .await;
    let to_first_row = applied.elapsed();
    eprintln!("kubectl apply → Running: {to_running:?}; → first row: {to_first_row:?}");
    let programs_a = program_ids(&line(&agent_a, "programs=["));

    // The same load from all three; rows only from the web pod, labelled.
    std::fs::write(go("go-a"), "")?;
    assert!(tokio::task::block_in_place(|| host.0.wait())?.success());
    load_done(&cluster, "web-a").await;
    load_done(&cluster, "other-a").await;
    let web_a = cluster.pod_processes("shop", "web-a")[0].pid;
    let (done, batches) = accounted(&probe_nodes, "node-a", &url_a).await;
    assert_eq!(count(&batches) + done.lost, CALLS);
    assert!(pids(&batches).iter().all(|&pid| pid == web_a));
    for (column, value) in [
        ("namespace", "shop"),
        ("pod", "web-a"),
        ("container", "main"),
    ] {
        assert!(
            strings(&batches, column)
                .iter()
                .all(|v| v.as_deref() == Some(value)),
            "every row's {column} is {value}"
        );
    }
    assert_eq!(
        count(&rows(&url_b, "shop.calls").await),
        0,
        "node-b runs no web pod"
    );
    assert_eq!(
        report(&probe_nodes, "node-b", "calls")
            .await
            .map(|r| r.state),
        Some(AssignmentState::Idle)
    );

    // Scale onto node-b: its agent attaches, two nodes run.
    cluster
        .run_pod("shop", loadgen_pod("web-b", "node-b", &go("go-b")))
        .await?;
    until(
        "calls Running on 2 nodes",
        Duration::from_secs(10),
        || async {
            status(&tracepoints, "calls")
                .await
                .filter(|s| running(s, 2))
        },
    )
    .await;
    // Its first attach names its programs, checked for links at the end.
    let programs_b = program_ids(&line(&agent_b, "programs=["));
    std::fs::write(go("go-b"), "")?;
    load_done(&cluster, "web-b").await;
    let web_b = cluster.pod_processes("shop", "web-b")[0].pid;
    let (_, batches) = accounted(&probe_nodes, "node-b", &url_b).await;
    assert!(pids(&batches).iter().all(|&pid| pid == web_b));

    // The pod on node-a goes: node-a reports idle, one node runs.
    cluster.delete_pod("shop", "web-a").await?;
    until("node-a idle", Duration::from_secs(10), || async {
        report(&probe_nodes, "node-a", "calls")
            .await
            .filter(|r| r.state == AssignmentState::Idle)
    })
    .await;
    until(
        "calls Running on 1 node",
        Duration::from_secs(10),
        || async {
            status(&tracepoints, "calls")
                .await
                .filter(|s| running(s, 1))
        },
    )
    .await;

    // An edit (a filter): the agents reconfigure, observedGeneration follows.
    cluster
        .apply(&tracepoint(
            "calls",
            "tracepoint: {group: syscalls, name: sys_enter_getppid}",
            "  filters:\n    - {field: comm, op: eq, value: sonde-loadgen}\n",
        ))
        .await?;
    until("generation 2 running", Duration::from_secs(10), || async {
        status(&tracepoints, "calls")
            .await
            .filter(|s| s.observed_generation == Some(2) && running(s, 1))
    })
    .await;
    assert_eq!(
        report(&probe_nodes, "node-b", "calls")
            .await
            .map(|r| r.generation),
        Some(2)
    );

    // A missing binary: Failed on the node that runs a selected pod, with
    // the agent's reason; the others are unaffected.
    cluster
        .apply(&tracepoint(
            "traced",
            &format!("uprobe: {{binary: {MISSING_BINARY}, symbol: main}}"),
            "",
        ))
        .await?;
    let failed = until("traced Failed", Duration::from_secs(10), || async {
        status(&tracepoints, "traced")
            .await
            .filter(|s| s.phase == Some(Phase::Failed))
    })
    .await;
    assert_eq!(failed.node_errors.len(), 1, "{failed:?}");
    assert_eq!(failed.node_errors[0].node, "node-b");
    assert_eq!(failed.node_errors[0].reason, "BinaryNotFound");
    assert!(failed.node_errors[0].message.contains(MISSING_BINARY));
    assert!(running(&status(&tracepoints, "calls").await.unwrap(), 1));

    // Kill node-b's agent mid-capture: after the grace period its node is
    // unknown; restarted, it re-attaches and the status recovers.
    agent_b.kill();
    until("node-b unknown", Duration::from_secs(15), || async {
        status(&tracepoints, "calls")
            .await
            .filter(|s| s.nodes.as_ref().is_some_and(|n| n.unknown == 1))
    })
    .await;
    agent_b = agent(&agent_config, "node-b");
    url_b = tokio::task::block_in_place(|| agent_b.flight_url(Duration::from_secs(30)));
    let programs_b_again = program_ids(&line(&agent_b, "programs=["));
    until("recovered", Duration::from_secs(15), || async {
        status(&tracepoints, "calls")
            .await
            .filter(|s| running(s, 1))
    })
    .await;

    // The operator stops for 30 s; a new selected pod starts on node-b and
    // makes its load meanwhile: the agent picks it up alone, and counts it
    // all (captured + counted lost).
    let _ = kill(Pid::from_raw(operator.0.id() as i32), Signal::SIGKILL);
    let _ = operator.0.wait();
    let stopped = Instant::now();
    cluster
        .run_pod("shop", loadgen_pod("web-c", "node-b", &go("go-c")))
        .await?;
    line(&agent_b, "targets changed tracepoint=shop/calls");
    std::fs::write(go("go-c"), "")?;
    load_done(&cluster, "web-c").await;
    let web_c = cluster.pod_processes("shop", "web-c")[0].pid;
    // The restarted agent counts from zero and only web-c makes calls.
    let (done_c, batches) = accounted(&probe_nodes, "node-b", &url_b).await;
    let from_c = pids(&batches).iter().filter(|&&pid| pid == web_c).count() as u64;
    assert_eq!(
        from_c + done_c.lost,
        CALLS,
        "captured + counted lost = made"
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    let _operator = Operator::start(&operator_config, NAMESPACE);
    until(
        "status after the operator's return",
        Duration::from_secs(15),
        || async {
            status(&tracepoints, "calls")
                .await
                .filter(|s| running(s, 1) && s.node_errors.is_empty())
        },
    )
    .await;

    // Deleting: detached on both nodes (no link of node-b's programs left),
    // then the finalizer goes.
    for name in ["calls", "naps", "traced"] {
        tracepoints.delete(name, &DeleteParams::default()).await?;
    }
    until("deleted", Duration::from_secs(15), || async {
        let list = tracepoints.list(&Default::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    let linked = linked_programs();
    for id in &programs_a {
        assert!(!linked.contains(id), "program {id} of node-a still linked");
    }
    for id in programs_b.iter().chain(&programs_b_again) {
        assert!(!linked.contains(id), "program {id} of node-b still linked");
    }
    for node in ["node-a", "node-b"] {
        let pn = probe_nodes.get(node).await?;
        assert!(pn.spec.assignments.is_empty(), "{node}: {:?}", pn.spec);
    }
    // A clean stop takes the heartbeat Lease away with it.
    assert!(agent_a.stop().success());
    assert!(leases.get_opt("node-a").await?.is_none());
    drop(agent_b);
    eprintln!("test took {:?}", test_start.elapsed());
    Ok(())
}

/// `(pid, tid)` attribute of an OTLP/JSON log record.
fn attribute_int(record: &serde_json::Value, key: &str) -> Option<i64> {
    let value = record["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let int = &value["value"]["intValue"];
    int.as_str().and_then(|s| s.parse().ok()).or(int.as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_run_on_the_nodes_and_report_back() -> anyhow::Result<()> {
    e2e::require_root()?;
    let collector = e2e::Collector::start().await?;
    let (cluster, operator_config, agent_config) = sonde_cluster().await?;
    cluster.add_node("node-a", &[]).await?;
    let work = tempfile::tempdir()?;
    let go = work.path().join("go");
    cluster
        .run_pod("shop", loadgen_pod("web-a", "node-a", &go))
        .await?;
    let _operator = Operator::start(&operator_config, NAMESPACE);
    let agent_a = agent(&agent_config, "node-a");
    let url = tokio::task::block_in_place(|| agent_a.flight_url(Duration::from_secs(30)));

    // The Secret is read by the agent with the rights the chart gives it.
    cluster
        .apply(
            "apiVersion: v1
kind: Secret
metadata: {name: otlp-headers, namespace: shop}
stringData: {x-team: shop}
",
        )
        .await?;
    cluster
        .apply(&tracepoint(
            "calls",
            "tracepoint: {group: syscalls, name: sys_enter_getppid}",
            "",
        ))
        .await?;
    let endpoint = collector.otlp_grpc_endpoint();
    cluster
        .apply(&format!(
            "apiVersion: sonde.dev/v1alpha1
kind: Export
metadata: {{name: calls-logs, namespace: shop}}
spec:
  tables: [calls]
  destination:
    otlp:
      endpoint: http://{endpoint}
      protocol: grpc
      signal: logs
      headersFrom: {{name: otlp-headers}}
  mapping:
    body: comm
    attributes: [pid, tid, pod]
  interval: 500ms
---
apiVersion: sonde.dev/v1alpha1
kind: Export
metadata: {{name: no-secret, namespace: shop}}
spec:
  tables: [calls]
  destination:
    otlp:
      endpoint: http://{endpoint}
      protocol: grpc
      signal: logs
      headersFrom: {{name: missing}}
"
        ))
        .await?;
    let tracepoints: Api<Tracepoint> = Api::namespaced(cluster.client(), "shop");
    until("calls Running", Duration::from_secs(10), || async {
        status(&tracepoints, "calls")
            .await
            .filter(|s| running(s, 1))
    })
    .await;
    let exports: Api<crds::Export> = Api::namespaced(cluster.client(), "shop");
    let missing = until("no-secret reported", Duration::from_secs(20), || async {
        exports
            .get("no-secret")
            .await
            .ok()?
            .status
            .filter(|s| s.last_error.is_some())
    })
    .await;
    assert_eq!(
        missing.last_error.as_deref(),
        Some("node-a: Secret shop/missing does not exist")
    );

    std::fs::write(&go, "")?;
    load_done(&cluster, "web-a").await;
    let web = i64::from(cluster.pod_processes("shop", "web-a")[0].pid);
    let probe_nodes: Api<ProbeNode> = Api::all(cluster.client());
    let done = until("counts", Duration::from_secs(15), || async {
        report(&probe_nodes, "node-a", "calls")
            .await
            .filter(|r| r.events + r.lost == CALLS)
    })
    .await;
    // Every captured row arrives once, as a log record with its attributes.
    let records = until("every row exported", Duration::from_secs(30), || async {
        let records: Vec<serde_json::Value> = collector
            .log_records()
            .ok()?
            .into_iter()
            .filter(|r| attribute_int(r, "pid") == Some(web))
            .collect();
        (records.len() as u64 >= done.events).then_some(records)
    })
    .await;
    assert_eq!(records.len() as u64, done.events, "each row exactly once");
    assert_eq!(count(&rows(&url, "shop.calls").await), done.events);
    assert!(
        records
            .iter()
            .all(|r| r["body"]["stringValue"] == "sonde-loadgen")
    );
    // The Export's status sums the node's report.
    let status = until("rowsExported", Duration::from_secs(20), || async {
        exports
            .get("calls-logs")
            .await
            .ok()?
            .status
            .filter(|s| s.rows_exported == done.events)
    })
    .await;
    assert_eq!(status.rows_dropped, 0);
    assert!(status.last_success_time.is_some());
    drop(agent_a);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_status_shows_each_tables_window_and_bytes() -> anyhow::Result<()> {
    e2e::require_root()?;
    let (cluster, operator_config, agent_config) = sonde_cluster().await?;
    let work = tempfile::tempdir()?;
    let go = work.path().join("go");
    for node in ["node-a", "node-b"] {
        cluster.add_node(node, &[]).await?;
        let pod = format!("web-{}", &node[5..]);
        cluster
            .run_pod("shop", loadgen_pod(&pod, node, &go))
            .await?;
    }
    let _operator = Operator::start(&operator_config, NAMESPACE);
    // Batches go cold (compacted and compressed) at the first upkeep.
    let agents: Vec<AgentProcess> = ["node-a", "node-b"]
        .into_iter()
        .map(|node| {
            AgentProcess::start_cluster(
                Path::new(common::AGENT),
                &agent_config,
                node,
                &["--heartbeat-interval", "2s", "--cold-after", "1ms"],
            )
        })
        .collect();
    let url_a = tokio::task::block_in_place(|| agents[0].flight_url(Duration::from_secs(30)));
    cluster
        .apply(&tracepoint(
            "calls",
            "tracepoint: {group: syscalls, name: sys_enter_getppid}",
            "",
        ))
        .await?;
    cluster
        .apply(
            "apiVersion: sonde.dev/v1alpha1
kind: Retention
metadata: {name: calls-window, namespace: shop}
spec:
  tables: [calls]
  maxBytes: 4Mi
  maxAge: 1h
",
        )
        .await?;
    let tracepoints: Api<Tracepoint> = Api::namespaced(cluster.client(), "shop");
    until(
        "calls Running on 2 nodes",
        Duration::from_secs(15),
        || async {
            status(&tracepoints, "calls")
                .await
                .filter(|s| running(s, 2))
        },
    )
    .await;
    std::fs::write(&go, "")?;
    load_done(&cluster, "web-a").await;
    load_done(&cluster, "web-b").await;
    let probe_nodes: Api<ProbeNode> = Api::all(cluster.client());
    let mut captured = Vec::new();
    for node in ["node-a", "node-b"] {
        let done = until("counts", Duration::from_secs(15), || async {
            report(&probe_nodes, node, "calls")
                .await
                .filter(|r| r.events + r.lost == CALLS)
        })
        .await;
        captured.push(done.events);
    }

    // Each agent reports the table under its Retention; the operator sums
    // the nodes into the Retention's status.
    // Every row, compacted by the upkeep after the last batch was sealed.
    let held_a = until(
        "node-a reports its table compressed",
        Duration::from_secs(20),
        || async {
            report(&probe_nodes, "node-a", "calls-window")
                .await?
                .tables
                .into_iter()
                .find(|t| {
                    t.table == "calls"
                        && t.rows == captured[0]
                        && t.bytes > 0
                        && t.bytes * 2 < t.uncompressed_bytes
                })
        },
    )
    .await;
    assert_eq!(
        count(&rows(&url_a, "shop.calls").await),
        held_a.rows,
        "what node-a serves is what it reports"
    );
    let retentions: Api<crds::Retention> = Api::namespaced(cluster.client(), "shop");
    let total = captured.iter().sum::<u64>();
    let table = until("status.tables", Duration::from_secs(30), || async {
        retentions
            .get("calls-window")
            .await
            .ok()?
            .status?
            .tables
            .into_iter()
            .find(|t| {
                let ratio = t
                    .compression_ratio
                    .as_deref()
                    .and_then(|r| r.parse::<f64>().ok());
                t.table == "calls"
                    && t.nodes == Some(2)
                    && t.rows == Some(total)
                    && ratio.is_some_and(|r| r > 2.0)
            })
    })
    .await;
    eprintln!("Retention status.tables: {table:?}");
    let bytes = table.bytes.unwrap();
    let total_bytes = table.total_bytes.unwrap();
    assert!(bytes > 0 && bytes <= 4 << 20, "{table:?}");
    assert!(
        total_bytes >= bytes && total_bytes <= 2 * bytes,
        "{table:?}"
    );
    let window = crds::units::parse_duration(table.window.as_deref().unwrap())?;
    assert!(window < Duration::from_secs(300), "{table:?}");
    assert_eq!(
        table.limited_by,
        Some(crds::v1alpha1::RetentionLimit::None),
        "nothing evicted"
    );
    drop(agents);
    Ok(())
}
