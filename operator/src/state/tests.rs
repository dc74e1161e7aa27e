use std::sync::Arc;

use crds::v1alpha1::{ProbeNodeSpec, ProbeNodeStatus};
use serde_json::json;

use super::*;

const GRACE: Duration = Duration::from_secs(30);

fn now() -> Timestamp {
    "2026-11-28T12:00:00Z".parse().expect("valid timestamp")
}

fn node(name: &str, pool: &str) -> Arc<Node> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"pool": pool}}
        }))
        .expect("valid node"),
    )
}

fn pod(namespace: &str, name: &str, node: &str, app: &str, phase: &str) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name, "uid": format!("uid-{name}"),
                         "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "main"}, {"name": "sidecar"}]},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "main", "containerID": format!("containerd://{name}-main"),
                 "image": "x", "imageID": "", "ready": true, "restartCount": 0},
            ]}
        }))
        .expect("valid pod"),
    )
}

fn tracepoint(extra: serde_json::Value) -> Arc<Tracepoint> {
    let mut spec = json!({
        "probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}},
        "table": "calls",
        "selector": {"matchLabels": {"app": "web"}},
        "containers": ["main"],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "sonde.dev/v1alpha1",
            "kind": "Tracepoint",
            "metadata": {"namespace": "shop", "name": "calls", "uid": "uid-tp", "generation": 2,
                         "creationTimestamp": "2026-11-28T11:50:00Z"},
            "spec": spec,
        }))
        .expect("valid tracepoint"),
    )
}

fn probe_node(name: &str, heartbeat: &str, reports: Vec<AssignmentStatus>) -> Arc<ProbeNode> {
    let mut pn = ProbeNode::new(
        name,
        ProbeNodeSpec {
            node: name.to_owned(),
            assignments: Vec::new(),
        },
    );
    pn.status = Some(ProbeNodeStatus {
        heartbeat_time: Some(Time(heartbeat.parse().expect("valid timestamp"))),
        assignments: reports,
        ..ProbeNodeStatus::default()
    });
    Arc::new(pn)
}

fn report(state: AssignmentState, generation: i64) -> AssignmentStatus {
    AssignmentStatus {
        kind: AssignmentKind::Tracepoint,
        namespace: "shop".to_owned(),
        name: "calls".to_owned(),
        generation,
        state,
        reason: (state == AssignmentState::Failed).then(|| "BinaryNotFound".to_owned()),
        message: (state == AssignmentState::Failed).then(|| "no /bin/app in web-1".to_owned()),
        events: 0,
        lost: 0,
        tables: Vec::new(),
        anomalies: Vec::new(),
    }
}

#[test]
fn a_tracepoint_selects_the_nodes_of_its_live_pods_in_its_namespace() {
    let tp = tracepoint(json!({}));
    let pods = vec![
        pod("shop", "web-1", "node-a", "web", "Running"),
        pod("shop", "web-2", "node-b", "web", "Pending"),
        pod("shop", "db-1", "node-c", "db", "Running"),
        pod("other", "web-9", "node-d", "web", "Running"),
        pod("shop", "web-old", "node-e", "web", "Succeeded"),
    ];
    let nodes: Vec<String> = nodes_with_selected_pods(&tp, &pods).into_iter().collect();
    assert_eq!(nodes, ["node-a", "node-b"]);
}

#[test]
fn a_node_gets_the_tracepoint_whatever_its_pods() {
    let none: [Arc<Retention>; 0] = [];
    let no_exports: [Arc<Export>; 0] = [];
    let assignments = assignments_for_node(
        &node("node-a", "a"),
        &[tracepoint(json!({}))],
        &none,
        &no_exports,
        now(),
    );
    assert_eq!(assignments.len(), 1);
    let a = &assignments[0];
    assert_eq!(
        (a.kind, a.namespace.as_str(), a.name.as_str(), a.generation),
        (AssignmentKind::Tracepoint, "shop", "calls", 2)
    );
    assert_eq!(
        a.tracepoint.as_ref().map(|s| s.table.as_str()),
        Some("calls")
    );
}

#[test]
fn node_selector_invalid_and_expired_tracepoints_are_not_assigned() {
    let none: [Arc<Retention>; 0] = [];
    let no_exports: [Arc<Export>; 0] = [];
    let other_pool = tracepoint(json!({"nodeSelector": {"pool": "b"}}));
    let invalid = tracepoint(json!({"rateLimit": {"eventsPerSecond": 0}}));
    let expired = tracepoint(json!({"ttl": "5m"}));
    let live = tracepoint(json!({"ttl": "30m"}));
    let node = node("node-a", "a");
    for tp in [other_pool, invalid, expired] {
        assert!(
            assignments_for_node(&node, std::slice::from_ref(&tp), &none, &no_exports, now())
                .is_empty(),
            "{:?}",
            tp.spec
        );
    }
    assert_eq!(
        assignments_for_node(&node, &[live], &none, &no_exports, now()).len(),
        1
    );
}

#[test]
fn equal_specs_have_equal_digests() {
    let none: [Arc<Retention>; 0] = [];
    let no_exports: [Arc<Export>; 0] = [];
    let spec = |tp: Arc<Tracepoint>| ProbeNodeSpec {
        node: "node-a".to_owned(),
        assignments: assignments_for_node(&node("node-a", "a"), &[tp], &none, &no_exports, now()),
    };
    let digest = spec_digest(&spec(tracepoint(json!({}))));
    assert_eq!(spec_digest(&spec(tracepoint(json!({})))), digest);
    assert_ne!(
        spec_digest(&spec(tracepoint(json!({"table": "other"})))),
        digest
    );
}

fn status_with(
    reports: &[(&str, Option<Arc<ProbeNode>>)],
    tp: &Arc<Tracepoint>,
) -> TracepointStatus {
    let nodes = [node("node-a", "a"), node("node-b", "b")];
    let pods = vec![
        pod("shop", "web-1", "node-a", "web", "Running"),
        pod("shop", "web-2", "node-b", "web", "Running"),
    ];
    let nodes_with_pods: Vec<String> = nodes_with_selected_pods(tp, &pods).into_iter().collect();
    let cluster = Cluster {
        nodes_with_pods: &nodes_with_pods,
        node: |name: &str| nodes.iter().find(|n| n.name_any() == name).cloned(),
        probe_node: |name: &str| {
            reports
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, pn)| pn.clone())
        },
        now: now(),
        grace: GRACE,
    };
    tracepoint_status(tp, &cluster, None)
}

#[test]
fn phases_follow_the_reports_of_the_current_generation() {
    let tp = tracepoint(json!({}));
    let fresh = "2026-11-28T11:59:55Z";
    fn attached(n: &str, generation: i64) -> (&str, Option<Arc<ProbeNode>>) {
        let fresh = "2026-11-28T11:59:55Z";
        (
            n,
            Some(probe_node(
                n,
                fresh,
                vec![report(AssignmentState::Attached, generation)],
            )),
        )
    }
    let both = status_with(&[attached("node-a", 2), attached("node-b", 2)], &tp);
    assert_eq!(both.phase, Some(Phase::Running));
    assert_eq!(
        both.nodes,
        Some(NodeCounts {
            selected: 2,
            running: 2,
            failed: 0,
            unknown: 0
        })
    );
    assert_eq!(both.table.as_deref(), Some("shop.calls"));

    // A report for the previous generation is not yet the new spec.
    let stale = status_with(&[attached("node-a", 2), attached("node-b", 1)], &tp);
    assert_eq!(stale.phase, Some(Phase::Pending));

    let failed = status_with(
        &[
            attached("node-a", 2),
            (
                "node-b",
                Some(probe_node(
                    "node-b",
                    fresh,
                    vec![report(AssignmentState::Failed, 2)],
                )),
            ),
        ],
        &tp,
    );
    assert_eq!(failed.phase, Some(Phase::Degraded));
    assert_eq!(failed.node_errors.len(), 1);
    assert_eq!(failed.node_errors[0].node, "node-b");
    assert_eq!(failed.node_errors[0].reason, "BinaryNotFound");
}

#[test]
fn a_silent_agent_makes_its_node_unknown() {
    let tp = tracepoint(json!({}));
    let status = status_with(
        &[
            (
                "node-a",
                Some(probe_node(
                    "node-a",
                    "2026-11-28T11:59:55Z",
                    vec![report(AssignmentState::Attached, 2)],
                )),
            ),
            (
                "node-b",
                Some(probe_node(
                    "node-b",
                    "2026-11-28T11:58:00Z",
                    vec![report(AssignmentState::Attached, 2)],
                )),
            ),
        ],
        &tp,
    );
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(status.nodes.as_ref().map(|n| n.unknown), Some(1));
    assert_eq!(status.node_errors[0].reason, "AgentNotReporting");
    assert_eq!(
        status.node_errors[0].message,
        "its agent last reported 120s ago"
    );
}

#[test]
fn invalid_and_expired_tracepoints_say_why() {
    let invalid = status_with(
        &[],
        &tracepoint(json!({"rateLimit": {"eventsPerSecond": 0}})),
    );
    assert_eq!(invalid.phase, Some(Phase::Failed));
    let accepted = &invalid.conditions[0];
    assert_eq!(
        (accepted.type_.as_str(), accepted.status.as_str()),
        ("Accepted", "False")
    );
    assert!(
        accepted.message.contains("spec.rateLimit.eventsPerSecond"),
        "{}",
        accepted.message
    );
    assert_eq!(
        transitions(None, &invalid)
            .iter()
            .map(|(warning, reason, _)| (*warning, *reason))
            .collect::<Vec<_>>(),
        vec![(true, "InvalidSpec")]
    );

    let expired = status_with(&[], &tracepoint(json!({"ttl": "5m"})));
    assert_eq!(expired.phase, Some(Phase::Terminated));
    assert!(
        expired.conditions[1]
            .message
            .contains("ttl ran out at 2026-11-28T11:55:00Z")
    );
}

#[test]
fn deletion_waits_for_reporting_nodes_only() {
    let fresh = probe_node(
        "node-a",
        "2026-11-28T11:59:55Z",
        vec![report(AssignmentState::Attached, 2)],
    );
    let silent = probe_node(
        "node-b",
        "2026-11-28T11:50:00Z",
        vec![report(AssignmentState::Attached, 2)],
    );
    let idle = probe_node(
        "node-c",
        "2026-11-28T11:59:55Z",
        vec![report(AssignmentState::Idle, 2)],
    );
    let on = |pn: &ProbeNode| {
        still_on_node(
            pn,
            false,
            AssignmentKind::Tracepoint,
            "shop",
            "calls",
            now(),
            GRACE,
        )
    };
    assert!(on(&fresh));
    assert!(!on(&silent));
    assert!(!on(&idle));
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let tp = tracepoint(json!({}));
    let cluster = Cluster {
        nodes_with_pods: &[],
        node: |_: &str| None,
        probe_node: |_: &str| None,
        now: now(),
        grace: GRACE,
    };
    let mut aged = tracepoint_status(&tp, &cluster, None);
    for c in &mut aged.conditions {
        c.last_transition_time = Time("2026-11-28T10:00:00Z".parse().expect("valid"));
    }
    let next = tracepoint_status(&tp, &cluster, Some(&aged));
    assert_eq!(next.conditions, aged.conditions);
    assert!(transitions(Some(&aged), &next).is_empty());
}
