//! The operator against a fleet of 100 Node objects, 1,000 pods in 10
//! namespaces, 10 Tracepoints, 2 Retentions and an Export (API objects
//! only, agents simulated): it writes a `ProbeNode` exactly when that
//! node's assignments change, counted both by the operator's
//! `sonde_operator_probe_node_writes_total` and by the `ProbeNode`s'
//! generations, against what the test itself expects each node to run.
//! The same scenario at 1,000 nodes is the scale bench (`benches/scale.rs`).

mod support;

use std::{collections::BTreeSet, time::Duration};

use crds::{
    Tracepoint,
    v1alpha1::{AssignmentState, Phase},
};
use e2e::fleet::{SimulatedAgents, create_all};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use support::fleet::{self, Fleet, Operator, Size};

const SIZE: Size = Size {
    nodes: 100,
    pods: 1_000,
    namespaces: 10,
    tracepoints: 10,
    retentions: 2,
    exports: 1,
};
const SETTLE: Duration = Duration::from_secs(60);
/// The operator's `--heartbeat-grace`.
const GRACE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_nodes_are_written_exactly_when_their_assignments_change() -> anyhow::Result<()> {
    let mut fleet = Fleet::create(SIZE, 32).await?;
    let client = fleet.client.clone();
    let operator = Operator::start(
        &fleet.kubeconfig,
        fleet.cluster.dir(),
        &format!("{}s", GRACE.as_secs()),
    )?;

    // Initial sync: one write per node.
    let mut expected = fleet.expected().await?;
    let mut generations = fleet
        .wait_current(&expected, SETTLE)
        .await
        .inspect_err(|_| {
            eprintln!("{}", operator.log_tail());
        })?;
    operator.wait_idle(SETTLE).await?;
    assert_eq!(operator.probe_node_writes().await?, SIZE.nodes as u64);
    assert!(generations.values().all(|g| *g == 1), "{generations:?}");
    let mut writes = SIZE.nodes as u64;

    // Agents report every assignment attached: every Tracepoint Running.
    // They write their status only when it changes: Leases keep them live.
    let agents = SimulatedAgents::start(
        &client,
        fleet::NAMESPACE,
        fleet.nodes(),
        Duration::from_secs(2),
        Duration::from_secs(3600),
    )
    .await?;
    let running = fleet::wait_phase(&client, Phase::Running, SETTLE).await?;
    assert_eq!(running.len(), SIZE.tracepoints);
    assert!(
        running
            .values()
            .any(|s| s.nodes.as_ref().is_some_and(|n| n.selected > 0)),
        "some Tracepoint selects pods: {running:?}"
    );

    // Pod churn: selected nodes come and go in the Tracepoints' status, no
    // ProbeNode is written. tp-000 (no nodeSelector) selects app-0 pods of
    // team-00: pods 0, 20, 40, ... on nodes 0, 20, 40, ...; a new app-0
    // pod on node 1 adds a selected node.
    let tracepoints: Api<Tracepoint> = Api::namespaced(client.clone(), "team-00");
    let selected = |tp: &Tracepoint| {
        tp.status
            .as_ref()
            .and_then(|s| s.nodes.as_ref())
            .map(|n| n.selected)
    };
    let before = selected(&tracepoints.get("tp-000").await?);
    let churn: Vec<Pod> = (0..50)
        .map(|i| {
            e2e::fleet::api_pod(
                "team-00",
                &format!("churn-{i}"),
                &fleet::node_name(1 + 2 * i),
                &[("app", "app-0")],
            )
        })
        .collect();
    create_all(&client, churn, 16).await?;
    let grown = wait_selected(&tracepoints, "tp-000", |n| {
        Some(n) == before.map(|b| b + 50)
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-00");
    for i in 0..50 {
        pods.delete(
            &format!("churn-{i}"),
            &DeleteParams::default().grace_period(0),
        )
        .await?;
    }
    wait_selected(&tracepoints, "tp-000", |n| Some(n) == before).await?;
    eprintln!("tp-000 selected nodes: {before:?} → {grown} → back");
    operator.wait_idle(SETTLE).await?;
    assert_eq!(
        operator.probe_node_writes().await?,
        writes,
        "pod churn wrote ProbeNodes"
    );
    let after = fleet.wait_current(&expected, SETTLE).await?;
    assert_eq!(fleet::rewritten(&generations, &after), BTreeSet::new());

    // A Tracepoint on one rack (tp-002: rack r2, nodes 20-29) changes:
    // exactly its ten nodes are written.
    let team = fleet::namespace_name(2 % SIZE.namespaces);
    Api::<Tracepoint>::namespaced(client.clone(), &team)
        .patch(
            "tp-002",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sampling": {"oneIn": 10}}})),
        )
        .await?;
    let next = fleet.expected().await?;
    let changed = fleet::changed(&expected, &next);
    assert_eq!(changed.len(), 10, "{changed:?}");
    let after = fleet.wait_current(&next, SETTLE).await?;
    operator.wait_idle(SETTLE).await?;
    writes += 10;
    assert_eq!(operator.probe_node_writes().await?, writes);
    assert_eq!(fleet::rewritten(&generations, &after), changed);
    (expected, generations) = (next, after);

    // A node moves to another rack and zone: only that node changes.
    let node = fleet::node_name(25);
    fleet
        .label_node(
            &node,
            [
                ("zone".to_owned(), "z9".to_owned()),
                ("rack".to_owned(), "r9".to_owned()),
            ]
            .into(),
        )
        .await?;
    let next = fleet.expected().await?;
    assert_eq!(
        fleet::changed(&expected, &next),
        BTreeSet::from([node.clone()])
    );
    let after = fleet.wait_current(&next, SETTLE).await?;
    operator.wait_idle(SETTLE).await?;
    writes += 1;
    assert_eq!(operator.probe_node_writes().await?, writes);
    assert_eq!(
        fleet::rewritten(&generations, &after),
        BTreeSet::from([node])
    );
    (expected, generations) = (next, after);

    // A report of failure reaches the Tracepoint's status; the status
    // write is no ProbeNode write.
    // tp-002 selects app-2 pods of team-02: on its rack, node 22 has one.
    let failing = fleet::node_name(22);
    agents
        .report(
            &failing,
            &team,
            "tp-002",
            AssignmentState::Failed,
            "BinaryNotFound",
        )
        .await?;
    let tp = wait_for_status(&Api::namespaced(client.clone(), &team), "tp-002", |s| {
        s.phase == Some(Phase::Degraded) || s.phase == Some(Phase::Failed)
    })
    .await?;
    let status = tp.status.unwrap_or_default();
    assert!(
        status
            .node_errors
            .iter()
            .any(|e| e.node == failing && e.reason == "BinaryNotFound"),
        "{status:?}"
    );

    // A new Retention runs everywhere: every node is written once.
    create_all(&client, vec![fleet::retention(SIZE.retentions, &SIZE)], 1).await?;
    let next = fleet.expected().await?;
    assert_eq!(fleet::changed(&expected, &next).len(), SIZE.nodes);
    let after = fleet.wait_current(&next, SETTLE).await?;
    operator.wait_idle(SETTLE).await?;
    writes += SIZE.nodes as u64;
    assert_eq!(operator.probe_node_writes().await?, writes);
    assert_eq!(fleet::rewritten(&generations, &after).len(), SIZE.nodes);

    // Heartbeats are Leases: once no status has been written for longer
    // than the grace period, every agent still counts as reporting.
    let quiet = GRACE + Duration::from_secs(2);
    let waited = std::time::Instant::now();
    while agents.since_last_status().is_none_or(|d| d < quiet) {
        anyhow::ensure!(
            waited.elapsed() < SETTLE,
            "the simulated agents kept writing their status"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = operator.metrics().await?;
    assert_eq!(
        e2e::sample_value(&body, "sonde_operator_nodes{agent=\"reporting\"}"),
        Some(SIZE.nodes as f64),
        "{body}"
    );
    assert_eq!(
        e2e::sample_value(&body, "sonde_operator_cache_objects{kind=\"Lease\"}"),
        Some(SIZE.nodes as f64),
        "{body}"
    );
    let tp = tracepoints.get("tp-000").await?;
    let nodes = tp.status.and_then(|s| s.nodes).unwrap_or_default();
    assert_eq!((nodes.unknown, nodes.running), (0, nodes.selected));

    // An agent that stops renewing its Lease is not reporting after the
    // grace period. tp-000 selects a pod on node 0.
    let silent = fleet::node_name(0);
    agents.silence(&silent);
    let silenced = std::time::Instant::now();
    let tp = wait_for_status(&tracepoints, "tp-000", |s| {
        s.nodes.as_ref().is_some_and(|n| n.unknown == 1)
    })
    .await?;
    let status = tp.status.unwrap_or_default();
    assert!(
        status
            .node_errors
            .iter()
            .any(|e| e.node == silent && e.reason == "AgentNotReporting"),
        "{status:?}"
    );
    eprintln!(
        "{} Lease heartbeats, {} status writes; a silenced agent counted not reporting after {:?}",
        agents.heartbeats(),
        agents.status_writes(),
        silenced.elapsed()
    );
    Ok(())
}

async fn wait_selected(
    api: &Api<Tracepoint>,
    name: &str,
    done: impl Fn(u32) -> bool,
) -> anyhow::Result<u32> {
    let tp = wait_for_status(api, name, |s| {
        s.nodes.as_ref().is_some_and(|n| done(n.selected))
    })
    .await?;
    Ok(tp
        .status
        .and_then(|s| s.nodes)
        .map(|n| n.selected)
        .unwrap_or_default())
}

async fn wait_for_status(
    api: &Api<Tracepoint>,
    name: &str,
    done: impl Fn(&crds::v1alpha1::TracepointStatus) -> bool,
) -> anyhow::Result<Tracepoint> {
    let start = std::time::Instant::now();
    loop {
        let tp = api.get(name).await?;
        if tp.status.as_ref().is_some_and(&done) {
            return Ok(tp);
        }
        if start.elapsed() > SETTLE {
            anyhow::bail!(
                "status of {name} not as expected within {SETTLE:?}: {:?}",
                tp.status
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
