//! The operator binary against a real control plane, running as its
//! ServiceAccount with the chart's RBAC: ProbeNodes per node, Tracepoint
//! status for specs the schema accepts but `validate()` refuses, ttl,
//! finalizers with no agent, Events, `/metrics` checked by promtool, and
//! leader election between two replicas.
//!
//! Agents take part in `probe-agent/tests/cluster.rs`; here no agent runs,
//! so selected nodes are reported as not reporting, which is checked too.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use crds::{
    Tracepoint,
    testdata::{Apiserver, INVALID_SPECS},
    v1alpha1::{Phase, ProbeNode},
};
use e2e::Cluster;
use kube::{Api, ResourceExt, api::DeleteParams};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const OPERATOR: &str = env!("CARGO_BIN_EXE_sonde-operator");
const NAMESPACE: &str = "sonde-system";

/// A running operator; killed on drop.
struct Operator {
    child: Child,
    lines: Receiver<String>,
    name: String,
}

impl Operator {
    fn start(name: &str, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(OPERATOR)
            .args(["--identity", name, "--namespace", NAMESPACE])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sonde-operator")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (tx, lines) = mpsc::channel();
        let prefix = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{prefix}: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            name: name.to_owned(),
        })
    }

    /// Waits for a log line containing `what`.
    fn expect(&self, what: &str, within: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return Ok(start.elapsed()),
                Ok(_) => {}
                Err(_) => bail!("{} did not log {what:?} within {within:?}", self.name),
            }
        }
    }

    /// Whether a line containing `what` comes within `within`.
    fn logs_within(&self, what: &str, within: Duration) -> bool {
        self.expect(what, within).is_ok()
    }

    fn kill(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.kill();
        }
    }
}

/// A control plane with the CRDs, the chart's RBAC in `sonde-system`, a
/// `shop` namespace, and a kubeconfig of the operator's ServiceAccount.
async fn cluster() -> anyhow::Result<(Cluster, PathBuf)> {
    e2e::require_root()?;
    let cluster = Cluster::start_with_sonde(NAMESPACE).await?;
    let kubeconfig = cluster
        .service_account_kubeconfig(NAMESPACE, "sonde-operator")
        .await?;
    Ok((cluster, kubeconfig))
}

/// Polls `check` every 100 ms until it returns `Some`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tracepoint_yaml(name: &str, extra: &str) -> String {
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
    tracepoint: {{group: syscalls, name: sys_enter_getppid}}
  table: {name}
{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracepoints_get_nodes_status_events_and_a_clean_end() -> anyhow::Result<()> {
    let (cluster, kubeconfig) = cluster().await?;
    cluster.add_node("node-a", &[("pool", "a")]).await?;
    cluster.add_node("node-b", &[("pool", "b")]).await?;
    let metrics_port = e2e::free_port()?;
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let operator = Operator::start(
        "operator-0",
        &kubeconfig,
        &["--metrics-addr", &metrics_addr, "--heartbeat-grace", "5s"],
    )?;
    operator.expect("reconciling", Duration::from_secs(30))?;

    let client = cluster.client();
    let probe_nodes: Api<ProbeNode> = Api::all(client.clone());
    let tracepoints: Api<Tracepoint> = Api::namespaced(client.clone(), "shop");

    // One ProbeNode per Node, owned by it.
    for node in ["node-a", "node-b"] {
        let pn = wait_for("ProbeNode", Duration::from_secs(10), || async {
            Ok(probe_nodes.get_opt(node).await?)
        })
        .await?;
        let owner = &pn.metadata.owner_references.as_ref().context("owner")?[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", node));
    }

    // A valid Tracepoint limited to pool a: only node-a gets it; with no
    // selected pod yet it is Running with nothing to run.
    let applied = Instant::now();
    cluster
        .apply(&tracepoint_yaml("calls", "  nodeSelector: {pool: a}\n"))
        .await?;
    let tp = wait_for("Running", Duration::from_secs(10), || async {
        let tp = tracepoints.get("calls").await?;
        let running = tp.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running);
        Ok(running.then_some(tp))
    })
    .await?;
    eprintln!("apply → Running (no pods): {:?}", applied.elapsed());
    let status = tp.status.as_ref().context("status")?;
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.table.as_deref(), Some("shop.calls"));
    assert_eq!(status.nodes.as_ref().map(|n| n.selected), Some(0));
    assert!(tp.finalizers().iter().any(|f| f == "sonde.dev/detach"));
    let assigned = |pn: &ProbeNode| {
        pn.spec
            .assignments
            .iter()
            .any(|a| a.namespace == "shop" && a.name == "calls")
    };
    wait_for("node-a assigned", Duration::from_secs(10), || async {
        Ok(assigned(&probe_nodes.get("node-a").await?).then_some(()))
    })
    .await?;
    assert!(!assigned(&probe_nodes.get("node-b").await?));

    // A selected pod on node-a: no agent reports there, and the status says
    // so. The agent selects pods itself: the ProbeNode does not change.
    let before = probe_nodes.get("node-a").await?;
    let mut web = e2e::pod("web", "node-a", &["sleep", "300"]);
    web.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    cluster.run_pod("shop", web).await?;
    let tp = wait_for("AgentNotReporting", Duration::from_secs(10), || async {
        let tp = tracepoints.get("calls").await?;
        let silent = tp.status.as_ref().is_some_and(|s| {
            s.node_errors
                .iter()
                .any(|e| e.node == "node-a" && e.reason == "AgentNotReporting")
        });
        Ok(silent.then_some(tp))
    })
    .await?;
    let status = tp.status.as_ref().context("status")?;
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(
        status.nodes.as_ref().map(|n| (n.selected, n.unknown)),
        Some((1, 1))
    );
    let after = probe_nodes.get("node-a").await?;
    assert_eq!(
        (after.metadata.generation, &after.spec),
        (before.metadata.generation, &before.spec),
        "a pod rewrote its node's ProbeNode"
    );

    // Specs the schema accepts but validate() refuses: Failed, with the
    // exact message, assigned nowhere, and an Event.
    let invalid: Vec<_> = INVALID_SPECS
        .iter()
        .filter(|spec| {
            spec.apiserver == Apiserver::Accepts && spec.manifest.contains("kind: Tracepoint")
        })
        .collect();
    assert!(
        !invalid.is_empty(),
        "the test data has validate()-only Tracepoints"
    );
    for spec in &invalid {
        let manifest = spec
            .manifest
            .replacen("metadata:\n", "metadata:\n  namespace: shop\n", 1);
        cluster.apply(&manifest).await?;
    }
    for spec in &invalid {
        let tp = wait_for(spec.name, Duration::from_secs(10), || async {
            let tp = tracepoints.get(spec.name).await?;
            let failed = tp.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed);
            Ok(failed.then_some(tp))
        })
        .await?;
        let accepted = tp
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
            .context("Accepted condition")?;
        assert_eq!(accepted.status, "False");
        assert_eq!(accepted.message, spec.error, "{}", spec.name);
        for node in ["node-a", "node-b"] {
            let pn = probe_nodes.get(node).await?;
            assert!(!pn.spec.assignments.iter().any(|a| a.name == spec.name));
        }
    }
    let events = cluster
        .kubectl(&["get", "events", "-n", "shop", "-o", "json"])
        .await?;
    let events: serde_json::Value = serde_json::from_str(&events)?;
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"InvalidSpec"), "{reasons:?}");
    assert!(reasons.contains(&"Running"), "{reasons:?}");

    // A ttl ends a Tracepoint: Terminated, taken off every node.
    cluster
        .apply(&tracepoint_yaml("short", "  ttl: 3s\n"))
        .await?;
    wait_for("short assigned", Duration::from_secs(10), || async {
        let pn = probe_nodes.get("node-a").await?;
        Ok(pn
            .spec
            .assignments
            .iter()
            .any(|a| a.name == "short")
            .then_some(()))
    })
    .await?;
    let expired_at = Instant::now();
    wait_for("Terminated", Duration::from_secs(15), || async {
        let tp = tracepoints.get("short").await?;
        Ok((tp.status.as_ref().and_then(|s| s.phase) == Some(Phase::Terminated)).then_some(()))
    })
    .await?;
    wait_for("short unassigned", Duration::from_secs(10), || async {
        let pn = probe_nodes.get("node-a").await?;
        Ok((!pn.spec.assignments.iter().any(|a| a.name == "short")).then_some(()))
    })
    .await?;
    eprintln!(
        "ttl 3s → Terminated and unassigned after {:?}",
        expired_at.elapsed()
    );

    // Deleting: with no agent reporting, nothing holds the finalizer.
    tracepoints
        .delete("calls", &DeleteParams::default())
        .await?;
    wait_for("calls deleted", Duration::from_secs(10), || async {
        Ok(tracepoints.get_opt("calls").await?.is_none().then_some(()))
    })
    .await?;
    let pn = probe_nodes.get("node-a").await?;
    assert!(!pn.spec.assignments.iter().any(|a| a.name == "calls"));

    // Metrics: promtool accepts them, and they count what happened.
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    e2e::promtool_check(&body)?;
    let value = |series: &str| e2e::sample_value(&body, series);
    assert!(
        value("sonde_operator_reconciles_total{controller=\"tracepoint\",result=\"success\"}")
            .is_some_and(|v| v > 0.0),
        "{body}"
    );
    assert_eq!(
        value("sonde_operator_tracepoints{phase=\"Failed\"}"),
        Some(invalid.len() as f64),
        "{body}"
    );
    assert_eq!(
        value("sonde_operator_tracepoints{phase=\"Terminated\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value("sonde_operator_nodes{agent=\"silent\"}"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        value("sonde_operator_cache_objects{kind=\"Node\"}"),
        Some(2.0),
        "{body}"
    );
    assert!(
        value("sonde_operator_probe_node_writes_total").is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert!(
        value("sonde_operator_reconcile_duration_seconds_count{controller=\"node\"}")
            .is_some_and(|v| v > 0.0),
        "{body}"
    );
    assert!(
        value("sonde_operator_queue_depth{controller=\"node\"}").is_some(),
        "{body}"
    );
    // Both nodes were queued by the watches before their first write.
    assert!(
        value("sonde_operator_queue_wait_seconds_count{controller=\"node\"}")
            .is_some_and(|v| v >= 2.0),
        "{body}"
    );
    // The watches delivered both nodes; no agent wrote a status, so the
    // operator's own ProbeNode writes count as no report.
    assert!(
        value("sonde_operator_watch_events_total{kind=\"Node\"}").is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert_eq!(
        value("sonde_operator_report_delay_seconds_count"),
        Some(0.0),
        "{body}"
    );
    drop(operator);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    let (cluster, kubeconfig) = cluster().await?;
    cluster.add_node("node-a", &[]).await?;
    let args = |port: u16| {
        vec![
            "--metrics-addr".to_owned(),
            format!("127.0.0.1:{port}"),
            "--lease-seconds".to_owned(),
            "3".to_owned(),
        ]
    };
    let first_args = args(e2e::free_port()?);
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = Operator::start("replica-a", &kubeconfig, &first_args)?;
    first.expect("leading", Duration::from_secs(30))?;
    let second_args = args(e2e::free_port()?);
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let second = Operator::start("replica-b", &kubeconfig, &second_args)?;
    second.expect("waiting to lead", Duration::from_secs(30))?;
    assert!(
        !second.logs_within("leading", Duration::from_secs(5)),
        "two replicas lead at once"
    );

    first.kill();
    let killed = Instant::now();
    second.expect("leading", Duration::from_secs(20))?;
    let takeover = killed.elapsed();
    eprintln!("leader killed → replica-b leads after {takeover:?} (lease 3s)");

    // The new leader reconciles.
    cluster.apply(&tracepoint_yaml("calls", "")).await?;
    let tracepoints: Api<Tracepoint> = Api::namespaced(cluster.client(), "shop");
    // No pod is selected: Running, with nothing to run.
    let status = wait_for(
        "Running from the new leader",
        Duration::from_secs(15),
        || async {
            let tp = tracepoints.get("calls").await?;
            let status = tp.status.filter(|s| s.phase == Some(Phase::Running));
            Ok(status)
        },
    )
    .await?;
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.nodes.map(|n| n.selected), Some(0));
    Ok(())
}

/// An anomaly as a node's agent reports it.
fn reported_anomaly(time: &str, pod: &str, value: &str) -> crds::v1alpha1::RecentAnomaly {
    crds::v1alpha1::RecentAnomaly {
        time: time.to_owned(),
        node: "node-a".to_owned(),
        rollup: "request_latency_1m".to_owned(),
        group: format!("pod={pod}"),
        column: "p99_latency".to_owned(),
        method: "levelShift".to_owned(),
        value: value.to_owned(),
        expected: "1004.5".to_owned(),
        lower: "880.25".to_owned(),
        upper: "1128.75".to_owned(),
    }
}

/// Writes node-a's status as its agent would: heartbeat now, the Retention
/// attached, with `anomalies`.
async fn report_anomalies(
    probe_nodes: &Api<ProbeNode>,
    generation: i64,
    anomalies: Vec<crds::v1alpha1::RecentAnomaly>,
) -> anyhow::Result<()> {
    use crds::v1alpha1::{AssignmentKind, AssignmentState, AssignmentStatus, ProbeNodeStatus};
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    let status = ProbeNodeStatus {
        heartbeat_time: Some(Time(Timestamp::now())),
        agent_version: Some("test".to_owned()),
        attached: 1,
        assignments: vec![AssignmentStatus {
            kind: AssignmentKind::Retention,
            namespace: "shop".to_owned(),
            name: "request-latency".to_owned(),
            generation,
            state: AssignmentState::Attached,
            reason: None,
            message: None,
            events: 0,
            lost: 0,
            tables: Vec::new(),
            anomalies,
        }],
        ..ProbeNodeStatus::default()
    };
    probe_nodes
        .patch_status(
            "node-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await?;
    Ok(())
}

/// The notes of the AnomalyDetected Events on the Retention.
async fn anomaly_events(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let events = cluster
        .kubectl(&["get", "events", "-n", "shop", "-o", "json"])
        .await?;
    let events: serde_json::Value = serde_json::from_str(&events)?;
    Ok(events["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|e| {
            e["reason"] == "AnomalyDetected"
                && e["involvedObject"]["kind"] == "Retention"
                && e["involvedObject"]["name"] == "request-latency"
        })
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_reported_by_nodes_reach_retention_status_and_events() -> anyhow::Result<()> {
    let (cluster, kubeconfig) = cluster().await?;
    cluster.add_node("node-a", &[]).await?;
    let operator = Operator::start("operator-0", &kubeconfig, &["--heartbeat-grace", "30s"])?;
    operator.expect("reconciling", Duration::from_secs(30))?;
    let client = cluster.client();
    let probe_nodes: Api<ProbeNode> = Api::all(client.clone());
    let retentions: Api<crds::Retention> = Api::namespaced(client.clone(), "shop");

    // The example Retention, whose rollup detects anomalies.
    let (_, example) = crds::testdata::EXAMPLES
        .iter()
        .find(|(file, _)| *file == "retention.yaml")
        .context("the Retention example")?;
    cluster
        .apply(&example.replacen("metadata:\n", "metadata:\n  namespace: shop\n", 1))
        .await?;
    let generation = wait_for("assigned to node-a", Duration::from_secs(15), || async {
        let pn = probe_nodes.get_opt("node-a").await?;
        Ok(pn.and_then(|pn| {
            pn.spec
                .assignments
                .iter()
                .find(|a| a.name == "request-latency")
                .map(|a| a.generation)
        }))
    })
    .await?;

    // The agent reports two anomalies, the newer first.
    let older = reported_anomaly("2026-11-30T10:01:00Z", "web-2", "2950.125");
    let newer = reported_anomaly("2026-11-30T10:05:00Z", "web-1", "3012.5");
    report_anomalies(&probe_nodes, generation, vec![newer.clone(), older.clone()]).await?;
    let status = wait_for("anomalies in status", Duration::from_secs(30), || async {
        let r = retentions.get("request-latency").await?;
        Ok(r.status.filter(|s| s.anomalies.len() == 2))
    })
    .await?;
    assert_eq!(status.anomalies, [newer.clone(), older.clone()]);
    let notes = wait_for("two Events", Duration::from_secs(30), || async {
        let notes = anomaly_events(&cluster).await?;
        Ok((notes.len() >= 2).then_some(notes))
    })
    .await?;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes.iter().any(|n| n
            == "levelShift on p99_latency of pod=web-1 in request_latency_1m on node node-a at \
                2026-11-30T10:05:00Z: 3012.5 (expected 1004.5, band 880.25 to 1128.75)"),
        "{notes:?}"
    );

    // One more: status has all three, and only the new one gets an Event.
    let newest = reported_anomaly("2026-11-30T10:09:00Z", "web-3", "3100");
    report_anomalies(
        &probe_nodes,
        generation,
        vec![newest.clone(), newer.clone(), older.clone()],
    )
    .await?;
    wait_for(
        "three anomalies in status",
        Duration::from_secs(30),
        || async {
            let r = retentions.get("request-latency").await?;
            Ok(r.status
                .filter(|s| s.anomalies.len() == 3 && s.anomalies[0] == newest))
        },
    )
    .await?;
    let notes = wait_for("a third Event", Duration::from_secs(30), || async {
        let notes = anomaly_events(&cluster).await?;
        Ok((notes.len() >= 3).then_some(notes))
    })
    .await?;
    assert_eq!(notes.len(), 3, "one Event per anomaly: {notes:?}");
    assert!(
        notes.iter().any(|n| n.contains("of pod=web-3")),
        "{notes:?}"
    );
    Ok(())
}
