//! What the agent reports in its `ProbeNode`'s status: each assignment's
//! state with a CamelCase reason and the full error chain, what each
//! Retention's tables hold, the node's kernel and probe kinds, and the
//! Ready condition.

use crds::{
    table_matches,
    units::format_duration,
    v1alpha1::{
        AssignmentState, AssignmentStatus, BaselineTableStatus, MAX_RECENT_ANOMALIES, ProbeKind,
        ProbeNodeStatus, RecentAnomaly, RetentionLimit, TableHeld,
    },
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use probe_capture::{elf::ElfError, engine::AttachError, plan::PlanError};
use probe_store::{DetectionReport, EvictionReason, TableStats};

/// Reasons an assignment is not attached, beyond attach errors.
pub mod reason {
    /// No selected pod runs on the node (state Idle).
    pub const NO_MATCHING_PODS: &str = "NoMatchingPods";
    /// The copied spec does not validate.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The uprobe's or USDT probe's binary is not in the container.
    pub const BINARY_NOT_FOUND: &str = "BinaryNotFound";
    /// Selected containers whose cgroups could not be found.
    pub const CGROUP_NOT_FOUND: &str = "CgroupNotFound";
    /// The node has no cgroup v2 hierarchy.
    pub const CGROUP_V2_MISSING: &str = "CgroupV2Missing";
    /// No process runs in the selected containers to find the binary in.
    pub const NO_RUNNING_PROCESS: &str = "NoRunningProcess";
    /// The agent has no export module yet.
    pub const EXPORT_NOT_AVAILABLE: &str = "ExportNotAvailable";
    /// A Secret an Export names is missing or lacks a key.
    pub const SECRET_NOT_READABLE: &str = "SecretNotReadable";
}

/// The state and reason an attach error is reported with.
pub fn classify(error: &AttachError) -> (AssignmentState, &'static str) {
    let failed = |reason| (AssignmentState::Failed, reason);
    match error {
        AttachError::Invalid(_) => failed(reason::INVALID_SPEC),
        AttachError::Table(_) => failed("TableConflict"),
        AttachError::Metric(_) => failed("MetricInvalid"),
        AttachError::Attach { .. } => failed("AttachFailed"),
        AttachError::Plan(plan) => match plan.as_ref() {
            PlanError::Unsupported { .. } => (AssignmentState::Unsupported, "ProbeUnsupported"),
            PlanError::MissingBinary { .. } => failed(reason::BINARY_NOT_FOUND),
            PlanError::UnreachableBinary { .. } => failed("BinaryUnreachable"),
            PlanError::Tracefs(probe_capture::Error::UnknownTracepoint { .. })
            | PlanError::UnknownRawTracepoint { .. } => failed("TracepointNotFound"),
            PlanError::Tracefs(_) => failed("TracefsUnreadable"),
            PlanError::UnknownField { .. } => failed("FieldNotFound"),
            PlanError::Elf(elf) => failed(match elf {
                ElfError::SymbolNotFound { .. }
                | ElfError::SymbolUndefined { .. }
                | ElfError::AmbiguousSymbol { .. }
                | ElfError::NoCode { .. }
                | ElfError::NotInFile { .. } => "SymbolNotFound",
                ElfError::UsdtNotFound { .. } | ElfError::UsdtSeveralSites { .. } => {
                    "UsdtProbeNotFound"
                }
                _ => "BadBinary",
            }),
            PlanError::UnknownSource { .. }
            | PlanError::TypeMismatch { .. }
            | PlanError::MissingType { .. }
            | PlanError::RecordTooLarge { .. }
            | PlanError::TooMany { .. }
            | PlanError::BadFilter { .. } => failed(reason::INVALID_SPEC),
        },
    }
}

/// What does not change while the agent runs.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub agent_version: String,
    pub kernel_version: String,
    pub supported_probes: Vec<ProbeKind>,
    /// When the agent became ready: the Ready condition's transition time.
    pub ready_since: Time,
    /// The baseline tables' states.
    pub baseline_tables: Vec<BaselineTableStatus>,
    /// Where sonde-query reaches this agent.
    pub flight_endpoint: Option<String>,
}

impl NodeFacts {
    /// This node's facts; `kprobes` says whether its kernel has them.
    pub fn of_this_node(kprobes: bool, ready_since: Time) -> Self {
        // What `uname -r` prints.
        let kernel_version = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_owned())
            .unwrap_or_default();
        Self {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_version,
            supported_probes: ProbeKind::ALL
                .into_iter()
                .filter(|k| kprobes || !matches!(k, ProbeKind::Kprobe | ProbeKind::Kretprobe))
                .collect(),
            ready_since,
            baseline_tables: Vec::new(),
            flight_endpoint: None,
        }
    }
}

/// The status to write, with `heartbeat` as the heartbeat time.
pub fn node_status(
    facts: &NodeFacts,
    mut assignments: Vec<AssignmentStatus>,
    heartbeat: Time,
) -> ProbeNodeStatus {
    assignments
        .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    let attached = assignments
        .iter()
        .filter(|a| a.state == AssignmentState::Attached)
        .count();
    let count = |state| assignments.iter().filter(|a| a.state == state).count();
    let message = format!(
        "{attached} attached, {} idle, {} failed, {} unsupported of {} assignments",
        count(AssignmentState::Idle),
        count(AssignmentState::Failed),
        count(AssignmentState::Unsupported),
        assignments.len()
    );
    ProbeNodeStatus {
        heartbeat_time: Some(heartbeat),
        agent_version: Some(facts.agent_version.clone()),
        flight_endpoint: facts.flight_endpoint.clone(),
        kernel_version: Some(facts.kernel_version.clone()),
        supported_probes: facts.supported_probes.clone(),
        attached: u32::try_from(attached).unwrap_or(u32::MAX),
        assignments,
        conditions: vec![Condition {
            type_: "Ready".to_owned(),
            status: "True".to_owned(),
            reason: "AgentRunning".to_owned(),
            message,
            last_transition_time: facts.ready_since.clone(),
            observed_generation: None,
        }],
        baseline_tables: facts.baseline_tables.clone(),
    }
}

/// What the tables a Retention bounds hold on this node: the tables of its
/// namespace that one of `patterns` (its table patterns and rollup tables)
/// names, in name order.
pub fn tables_held(stats: &[TableStats], namespace: &str, patterns: &[String]) -> Vec<TableHeld> {
    stats
        .iter()
        .filter(|s| {
            s.name.schema == namespace && patterns.iter().any(|p| table_matches(p, &s.name.table))
        })
        .map(|s| TableHeld {
            table: s.name.table.clone(),
            rows: s.rows,
            bytes: s.bytes,
            uncompressed_bytes: s.plain_bytes,
            window: s.window.map(format_duration),
            limited_by: Some(match s.limited_by {
                None => RetentionLimit::None,
                Some(EvictionReason::MaxBytes) => RetentionLimit::MaxBytes,
                Some(EvictionReason::MaxAge) => RetentionLimit::MaxAge,
                Some(EvictionReason::Budget) => RetentionLimit::MemoryBudget,
            }),
        })
        .collect()
}

/// The latest anomalies of the rollups a Retention defines on this node
/// (those of its namespace that one of `patterns` names), newest first.
pub fn recent_anomalies(
    reports: &[DetectionReport],
    node: &str,
    namespace: &str,
    patterns: &[String],
) -> Vec<RecentAnomaly> {
    let mut found: Vec<(i64, RecentAnomaly)> = reports
        .iter()
        .filter(|r| {
            r.rollup.schema == namespace
                && patterns.iter().any(|p| table_matches(p, &r.rollup.table))
        })
        .flat_map(|r| {
            r.recent.iter().map(|a| {
                (
                    a.time_ns,
                    RecentAnomaly {
                        time: k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(a.time_ns))
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        node: node.to_owned(),
                        rollup: r.rollup.table.clone(),
                        group: a.group.clone(),
                        column: a.column.clone(),
                        method: a.method.as_str().to_owned(),
                        value: decimal(a.value),
                        expected: decimal(a.expected),
                        lower: decimal(a.lower),
                        upper: decimal(a.upper),
                    },
                )
            })
        })
        .collect();
    found.sort_by_key(|a| std::cmp::Reverse(a.0));
    found
        .into_iter()
        .take(MAX_RECENT_ANOMALIES)
        .map(|(_, a)| a)
        .collect()
}

/// A measurement as status shows it: at most three decimals.
fn decimal(value: f64) -> String {
    let rounded = (value * 1000.0).round() / 1000.0;
    format!("{rounded}")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crds::v1alpha1::AssignmentKind;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crds::v1alpha1::BaselineTableState;

    fn entry(name: &str, state: AssignmentState) -> AssignmentStatus {
        AssignmentStatus {
            kind: AssignmentKind::Tracepoint,
            namespace: "shop".into(),
            name: name.into(),
            generation: 1,
            state,
            reason: None,
            message: None,
            events: 0,
            lost: 0,
            tables: Vec::new(),
            anomalies: Vec::new(),
        }
    }

    #[test]
    fn classifies_attach_errors() {
        let missing = AttachError::Plan(Box::new(PlanError::MissingBinary {
            path: PathBuf::from("/proc/1/root/usr/bin/nope"),
        }));
        assert_eq!(
            classify(&missing),
            (AssignmentState::Failed, "BinaryNotFound")
        );
        let symbol = AttachError::Plan(Box::new(PlanError::Elf(ElfError::SymbolNotFound {
            binary: PathBuf::from("/bin/true"),
            symbol: "nope".into(),
            suggestions: Vec::new(),
            stripped: false,
        })));
        assert_eq!(
            classify(&symbol),
            (AssignmentState::Failed, "SymbolNotFound")
        );
        let unsupported = AttachError::Plan(Box::new(PlanError::Unsupported {
            kind: "kprobe",
            reason: "no kprobes",
        }));
        assert_eq!(
            classify(&unsupported),
            (AssignmentState::Unsupported, "ProbeUnsupported")
        );
        let tracepoint = AttachError::Plan(Box::new(PlanError::Tracefs(
            probe_capture::Error::UnknownTracepoint {
                group: "syscalls".into(),
                name: "nope".into(),
                path: PathBuf::from("/sys/kernel/tracing/events/syscalls/nope"),
            },
        )));
        assert_eq!(
            classify(&tracepoint),
            (AssignmentState::Failed, "TracepointNotFound")
        );
    }

    #[test]
    fn recent_anomalies_are_the_retentions_own_newest_first() {
        use probe_store::{AnomalyStats, DetectionReport, RecentAnomaly as Found, TableName};
        let found = |minute: i64, pod: &str| Found {
            time_ns: minute * 60_000_000_000,
            group: format!("pod={pod}"),
            column: "p99_latency".into(),
            method: crds::DetectionMethod::LevelShift,
            value: 3012.4567,
            expected: 1000.0,
            lower: 880.25,
            upper: 1128.75,
            score: 20.0,
        };
        let report = |namespace: &str, rollup: &str, recent: Vec<Found>| DetectionReport {
            rollup: TableName::new(namespace, rollup),
            stats: AnomalyStats::default(),
            kept: None,
            recent,
        };
        let reports = [
            report(
                "shop",
                "requests_1m",
                vec![found(2, "web-1"), found(1, "web-2")],
            ),
            report("shop", "other_1m", vec![found(3, "web-3")]),
            report("bank", "requests_1m", vec![found(4, "web-4")]),
        ];
        let anomalies = recent_anomalies(&reports, "node-a", "shop", &["requests_1m".to_owned()]);
        let groups: Vec<&str> = anomalies.iter().map(|a| a.group.as_str()).collect();
        assert_eq!(groups, ["pod=web-1", "pod=web-2"]);
        let first = &anomalies[0];
        assert_eq!(first.time, "1970-01-01T00:02:00Z");
        assert_eq!(
            (
                first.node.as_str(),
                first.rollup.as_str(),
                first.method.as_str()
            ),
            ("node-a", "requests_1m", "levelShift")
        );
        assert_eq!(
            (
                first.value.as_str(),
                first.lower.as_str(),
                first.upper.as_str()
            ),
            ("3012.457", "880.25", "1128.75")
        );
    }

    #[test]
    fn status_counts_states_and_is_ready() {
        let facts = NodeFacts {
            agent_version: "0.1.0".into(),
            kernel_version: "6.18.0".into(),
            supported_probes: vec![ProbeKind::Tracepoint],
            ready_since: Time(Timestamp::UNIX_EPOCH),
            baseline_tables: vec![BaselineTableStatus {
                table: "network_stats".into(),
                state: BaselineTableState::Unavailable,
                message: Some("no cgroup v2".into()),
            }],
            flight_endpoint: Some("http://10.0.0.5:50051".into()),
        };
        let status = node_status(
            &facts,
            vec![
                entry("b", AssignmentState::Idle),
                entry("a", AssignmentState::Attached),
                entry("c", AssignmentState::Failed),
            ],
            Time(Timestamp::UNIX_EPOCH),
        );
        assert_eq!(status.attached, 1);
        assert_eq!(
            status.flight_endpoint.as_deref(),
            Some("http://10.0.0.5:50051")
        );
        let names: Vec<&str> = status.assignments.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(
            ready.message,
            "1 attached, 1 idle, 1 failed, 0 unsupported of 3 assignments"
        );
        assert_eq!(status.kernel_version.as_deref(), Some("6.18.0"));
        let json = serde_json::to_value(&status).expect("serializes");
        assert_eq!(json["assignments"][0]["state"], "Attached");
        assert!(json["heartbeatTime"].is_string());
        assert_eq!(json["baselineTables"][0]["state"], "Unavailable");
        assert_eq!(json["baselineTables"][0]["message"], "no cgroup v2");
    }
}
