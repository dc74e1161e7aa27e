//! What the operator decides, as pure functions of the cluster's state: which
//! assignments each node's `ProbeNode` gets, and what each resource's status
//! says given its agents' reports. The controllers only feed these from
//! their caches and write the results; the tests drive them directly.

use std::{collections::BTreeMap, time::Duration};

use crds::{
    Export, Retention, Tracepoint,
    v1alpha1::{
        Assignment, AssignmentKind, AssignmentState, AssignmentStatus, ColumnStatus, NodeCounts,
        NodeError, Phase, ProbeNode, ProbeNodeSpec, TracepointStatus,
    },
};
use k8s_openapi::{
    api::core::v1::{Node, Pod},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::ResourceExt;

/// Most per-node errors a status lists; `nodes.failed` counts them all.
pub const MAX_NODE_ERRORS: usize = 20;

/// Why a Tracepoint runs nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inactive {
    /// Its deletion has begun.
    Deleting,
    /// `validate()` refused it; the message says why.
    Invalid(String),
    /// Its ttl ran out at this time.
    Expired(Timestamp),
}

/// When a Tracepoint's ttl runs out; `None` without a ttl (or a creation
/// time, which only objects not yet stored lack).
pub fn expiry(tp: &Tracepoint) -> Option<Timestamp> {
    let ttl = crds::units::parse_duration(tp.spec.ttl.as_deref()?).ok()?;
    let created = tp.metadata.creation_timestamp.as_ref()?.0;
    let ttl = SignedDuration::try_from(ttl).ok()?;
    created.checked_add(ttl).ok()
}

/// Whether a Tracepoint should run on nodes now.
pub fn activity(tp: &Tracepoint, now: Timestamp) -> Result<(), Inactive> {
    if tp.metadata.deletion_timestamp.is_some() {
        return Err(Inactive::Deleting);
    }
    if let Err(e) = tp.spec.validate() {
        return Err(Inactive::Invalid(e.to_string()));
    }
    match expiry(tp) {
        Some(at) if at <= now => Err(Inactive::Expired(at)),
        _ => Ok(()),
    }
}

/// What the operator keeps of a pod: what decides whether a Tracepoint
/// selects it, and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`, once scheduled.
    pub node: Option<String>,
    /// Not finished: still runs, or is about to.
    pub live: bool,
}

impl PodFacts {
    pub fn of(pod: &Pod) -> Self {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        Self {
            labels: pod.labels().clone(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            live: !matches!(phase, Some("Succeeded" | "Failed")),
        }
    }
}

/// The node a pod of the Tracepoint's namespace puts under it: the pod's
/// node if the pod is live, bound to a node and selected.
pub fn selecting_node<'p>(tp: &Tracepoint, pod: &'p PodFacts) -> Option<&'p str> {
    let node = pod.node.as_deref()?;
    (pod.live && tp.spec.selects_pod(&pod.labels)).then_some(node)
}

/// The nodes where live pods a Tracepoint selects run (its own namespace
/// only), sorted. The operator keeps this set up to date incrementally
/// (see `cache`); this is its definition.
pub fn nodes_with_selected_pods(
    tp: &Tracepoint,
    pods: &[impl AsRef<Pod>],
) -> std::collections::BTreeSet<String> {
    pods.iter()
        .map(AsRef::as_ref)
        .filter(|pod| pod.metadata.namespace == tp.metadata.namespace)
        .filter_map(|pod| selecting_node(tp, &PodFacts::of(pod)).map(str::to_owned))
        .collect()
}

/// Everything a node must run, in a stable order: valid, live Tracepoints
/// whose nodeSelector matches the node, and every valid Retention and
/// Export. Pods play no part: the agent selects them itself, so pod churn
/// never rewrites a `ProbeNode`.
pub fn assignments_for_node(
    node: &Node,
    tracepoints: &[impl AsRef<Tracepoint>],
    retentions: &[impl AsRef<Retention>],
    exports: &[impl AsRef<Export>],
    now: Timestamp,
) -> Vec<Assignment> {
    let mut assignments = Vec::new();
    for tp in tracepoints.iter().map(AsRef::as_ref) {
        if !runs_on(tp, node, now) {
            continue;
        }
        assignments.push(Assignment {
            tracepoint: Some(tp.spec.clone()),
            ..assignment(AssignmentKind::Tracepoint, tp)
        });
    }
    for retention in retentions.iter().map(AsRef::as_ref) {
        if retention_runs(retention) {
            assignments.push(Assignment {
                retention: Some(retention.spec.clone()),
                ..assignment(AssignmentKind::Retention, retention)
            });
        }
    }
    for export in exports.iter().map(AsRef::as_ref) {
        if export_runs(export) {
            assignments.push(Assignment {
                export: Some(export.spec.clone()),
                ..assignment(AssignmentKind::Export, export)
            });
        }
    }
    assignments
        .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    assignments
}

fn assignment(kind: AssignmentKind, resource: &impl ResourceExt) -> Assignment {
    Assignment {
        kind,
        namespace: resource.namespace().unwrap_or_default(),
        name: resource.name_any(),
        uid: resource.uid().unwrap_or_default(),
        generation: resource.meta().generation.unwrap_or_default(),
        tracepoint: None,
        retention: None,
        export: None,
    }
}

/// Whether a Tracepoint is assigned to a node now.
pub fn runs_on(tp: &Tracepoint, node: &Node, now: Timestamp) -> bool {
    activity(tp, now).is_ok() && tp.spec.selects_node(node.labels())
}

/// Whether a Retention or Export is assigned (to every node) now.
pub fn retention_runs(retention: &Retention) -> bool {
    retention.metadata.deletion_timestamp.is_none() && retention.spec.validate().is_ok()
}

/// Whether an Export is assigned (to every node) now.
pub fn export_runs(export: &Export) -> bool {
    export.metadata.deletion_timestamp.is_none() && export.spec.validate().is_ok()
}

/// A digest of a `ProbeNode` spec, to tell whether the cached object (whose
/// spec copies are dropped to save memory, see `cache`) is what the
/// operator would write. Equal specs give equal digests.
pub fn spec_digest(spec: &ProbeNodeSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same spec gives the same digest in every process.
    let mut hasher = std::hash::DefaultHasher::new();
    // Serializing typed specs cannot fail (no maps with non-string keys).
    serde_json::to_vec(spec)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// Time from `now` to `at`, plus a little so that `at` has passed by then.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    let wait = at.duration_since(now);
    Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(100)
}

/// How a node's agent stands, from its ProbeNode's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    Reporting,
    /// Never reported, or not for longer than the grace period.
    Silent(String),
}

pub fn liveness(probe_node: Option<&ProbeNode>, now: Timestamp, grace: Duration) -> Liveness {
    let heartbeat = probe_node
        .and_then(|pn| pn.status.as_ref())
        .and_then(|s| s.heartbeat_time.as_ref());
    let Some(Time(at)) = heartbeat else {
        return Liveness::Silent("its agent has not reported yet".to_owned());
    };
    let age = now.duration_since(*at);
    if age > SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX) {
        Liveness::Silent(format!("its agent last reported {}s ago", age.as_secs()))
    } else {
        Liveness::Reporting
    }
}

/// When a node's agent counts as silent unless it reports again.
pub fn silent_at(probe_node: &ProbeNode, grace: Duration) -> Option<Timestamp> {
    let Time(at) = probe_node.status.as_ref()?.heartbeat_time.as_ref()?;
    at.checked_add(SignedDuration::try_from(grace).ok()?).ok()
}

/// The agent's report of one resource on one node.
pub fn reported<'a>(
    probe_node: Option<&'a ProbeNode>,
    kind: AssignmentKind,
    namespace: &str,
    name: &str,
) -> Option<&'a AssignmentStatus> {
    probe_node?
        .status
        .as_ref()?
        .assignments
        .iter()
        .find(|a| a.kind == kind && a.namespace == namespace && a.name == name)
}

/// Whether a node still runs (or may still run) a resource: `assigned` in
/// its spec, or reported attached by its agent. A node whose agent is
/// silent is not waited for.
pub fn still_on_node(
    probe_node: &ProbeNode,
    assigned: bool,
    kind: AssignmentKind,
    namespace: &str,
    name: &str,
    now: Timestamp,
    grace: Duration,
) -> bool {
    if liveness(Some(probe_node), now, grace) != Liveness::Reporting {
        return false;
    }
    let reported = reported(Some(probe_node), kind, namespace, name)
        .is_some_and(|s| s.state == AssignmentState::Attached);
    assigned || reported
}

/// Inputs of a Tracepoint's status besides the Tracepoint.
pub struct Cluster<'a, N, F>
where
    N: Fn(&str) -> Option<std::sync::Arc<Node>>,
    F: Fn(&str) -> Option<std::sync::Arc<ProbeNode>>,
{
    /// The nodes where live pods the Tracepoint selects run
    /// ([`nodes_with_selected_pods`]), sorted.
    pub nodes_with_pods: &'a [String],
    pub node: N,
    pub probe_node: F,
    pub now: Timestamp,
    pub grace: Duration,
}

/// A Tracepoint's status: phase, node counts and errors, columns and
/// conditions. `previous` keeps conditions' transition times stable.
pub fn tracepoint_status<N, F>(
    tp: &Tracepoint,
    cluster: &Cluster<'_, N, F>,
    previous: Option<&TracepointStatus>,
) -> TracepointStatus
where
    N: Fn(&str) -> Option<std::sync::Arc<Node>>,
    F: Fn(&str) -> Option<std::sync::Arc<ProbeNode>>,
{
    let namespace = tp.namespace().unwrap_or_default();
    let name = tp.name_any();
    let generation = tp.metadata.generation.unwrap_or_default();
    let mut status = TracepointStatus {
        phase: None,
        observed_generation: tp.metadata.generation,
        table: Some(format!("{namespace}.{}", tp.spec.table)),
        columns: tp
            .spec
            .columns()
            .into_iter()
            .filter_map(|(name, column_type)| {
                Some(ColumnStatus {
                    name: name.to_owned(),
                    column_type: column_type?,
                })
            })
            .collect(),
        nodes: None,
        node_errors: Vec::new(),
        conditions: Vec::new(),
    };
    let inactive = activity(tp, cluster.now).err();
    if let Some(Inactive::Invalid(message)) = &inactive {
        status.phase = Some(Phase::Failed);
        status.conditions = vec![
            condition("Accepted", false, "InvalidSpec", message),
            condition("Ready", false, "InvalidSpec", "the spec is invalid"),
        ];
        return keep_transition_times(status, previous);
    }
    let accepted = condition("Accepted", true, "Valid", "the spec is valid");
    match inactive {
        Some(Inactive::Deleting) => {
            status.phase = Some(Phase::Terminated);
            status.conditions = vec![
                accepted,
                condition("Ready", false, "Deleting", "detaching from every node"),
            ];
            return keep_transition_times(status, previous);
        }
        Some(Inactive::Expired(at)) => {
            status.phase = Some(Phase::Terminated);
            status.conditions = vec![
                accepted,
                condition(
                    "Ready",
                    false,
                    "Expired",
                    &format!("its ttl ran out at {at}; detached from every node"),
                ),
            ];
            return keep_transition_times(status, previous);
        }
        Some(Inactive::Invalid(_)) | None => {}
    }

    let mut counts = NodeCounts::default();
    let mut pending = 0u32;
    let mut errors = Vec::new();
    for node_name in cluster.nodes_with_pods {
        let Some(node) = (cluster.node)(node_name) else {
            continue;
        };
        if !tp.spec.selects_node(node.labels()) {
            continue;
        }
        let node_name = node_name.clone();
        counts.selected += 1;
        let probe_node = (cluster.probe_node)(&node_name);
        if let Liveness::Silent(why) = liveness(probe_node.as_deref(), cluster.now, cluster.grace) {
            counts.unknown += 1;
            errors.push(NodeError {
                node: node_name,
                reason: "AgentNotReporting".to_owned(),
                message: why,
            });
            continue;
        }
        let report = reported(
            probe_node.as_deref(),
            AssignmentKind::Tracepoint,
            &namespace,
            &name,
        )
        .filter(|r| r.generation == generation);
        match report.map(|r| r.state) {
            Some(AssignmentState::Attached) => counts.running += 1,
            Some(AssignmentState::Failed | AssignmentState::Unsupported) => {
                counts.failed += 1;
                let report = report.expect("matched a report");
                errors.push(NodeError {
                    node: node_name,
                    reason: report.reason.clone().unwrap_or_else(|| "Failed".to_owned()),
                    message: report.message.clone().unwrap_or_default(),
                });
            }
            Some(AssignmentState::Idle) | None => pending += 1,
        }
    }
    errors.truncate(MAX_NODE_ERRORS);
    let phase = if counts.selected == counts.running {
        Phase::Running
    } else if pending > 0 {
        Phase::Pending
    } else if counts.running == 0 && counts.unknown == 0 {
        Phase::Failed
    } else {
        Phase::Degraded
    };
    let ready = match phase {
        Phase::Running if counts.selected == 0 => condition(
            "Ready",
            true,
            "NoPodsSelected",
            "no selected pod runs yet; nodes attach as soon as one starts",
        ),
        Phase::Running => condition(
            "Ready",
            true,
            "Attached",
            &format!("attached on all {} selected nodes", counts.selected),
        ),
        Phase::Pending => condition(
            "Ready",
            false,
            "Attaching",
            &format!(
                "attached on {} of {} selected nodes, waiting for {pending}",
                counts.running, counts.selected
            ),
        ),
        _ => condition(
            "Ready",
            false,
            if phase == Phase::Failed {
                "Failed"
            } else {
                "Degraded"
            },
            &format!(
                "attached on {} of {} selected nodes; failed on {}, no report from {}",
                counts.running, counts.selected, counts.failed, counts.unknown
            ),
        ),
    };
    status.phase = Some(phase);
    status.nodes = Some(counts);
    status.node_errors = errors;
    status.conditions = vec![accepted, ready];
    keep_transition_times(status, previous)
}

/// A condition, its transition time now (see [`keep_transition_times`]).
pub fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: None,
    }
}

/// Keeps a condition's previous transition time while its status holds.
fn keep_transition_times(
    mut status: TracepointStatus,
    previous: Option<&TracepointStatus>,
) -> TracepointStatus {
    carry_transition_times(
        &mut status.conditions,
        previous
            .map(|p| p.conditions.as_slice())
            .unwrap_or_default(),
    );
    status
}

/// Gives each condition the transition time of the previous condition of
/// its type if the status did not change, so a status only moves when
/// something did.
pub fn carry_transition_times(conditions: &mut [Condition], previous: &[Condition]) {
    for condition in conditions {
        if let Some(old) = previous
            .iter()
            .find(|c| c.type_ == condition.type_ && c.status == condition.status)
        {
            condition.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// A status without transition times, to compare two statuses for change.
pub fn without_times(status: &TracepointStatus) -> TracepointStatus {
    let mut status = status.clone();
    for c in &mut status.conditions {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    status
}

/// What happened between two statuses that a user should see in
/// `kubectl describe`: (warning?, reason, message).
pub fn transitions(
    previous: Option<&TracepointStatus>,
    next: &TracepointStatus,
) -> Vec<(bool, &'static str, String)> {
    let mut events = Vec::new();
    let old_phase = previous.and_then(|p| p.phase);
    if old_phase != next.phase {
        let accepted = next.conditions.iter().find(|c| c.type_ == "Accepted");
        let ready = next.conditions.iter().find(|c| c.type_ == "Ready");
        let message = |c: Option<&Condition>| c.map(|c| c.message.clone()).unwrap_or_default();
        match next.phase {
            Some(Phase::Failed) if accepted.is_some_and(|c| c.status == "False") => {
                events.push((true, "InvalidSpec", message(accepted)));
            }
            Some(Phase::Failed) => events.push((true, "Failed", message(ready))),
            Some(Phase::Degraded) => events.push((true, "Degraded", message(ready))),
            Some(Phase::Running) => events.push((false, "Running", message(ready))),
            Some(Phase::Terminated) => events.push((false, "Terminated", message(ready))),
            Some(Phase::Pending) | None => {}
        }
    }
    let old_errors: BTreeMap<&str, &NodeError> = previous
        .map(|p| p.node_errors.iter().map(|e| (e.node.as_str(), e)).collect())
        .unwrap_or_default();
    for error in &next.node_errors {
        if old_errors.get(error.node.as_str()) != Some(&error) {
            events.push((
                true,
                "NodeFailed",
                format!("{}: {}: {}", error.node, error.reason, error.message),
            ));
        }
    }
    events
}

#[cfg(test)]
mod tests;
