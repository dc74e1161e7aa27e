//! `ProbeNode`: the per-node object. Its spec, written by the operator, holds
//! copies of every resource assigned to the node, so the node's agent never
//! reads user resources; its status, written by that agent, reports each one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{ValidationError, at};
use super::{
    ExportSpec, ProbeKind, RecentAnomaly, RetentionLimit, RetentionSpec, TracepointSpec,
    common::preserved_object_schema,
};

/// What one node must run, written by the operator. The object is
/// cluster-scoped and named after the node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "ProbeNode",
    status = "ProbeNodeStatus",
    shortname = "pn",
    category = "sonde",
    derive = "PartialEq",
    doc = "Desired (spec, written by the operator) and observed (status, written by the node's agent) state of Sonde on one node; named after the node.",
    printcolumn(
        name = "Assignments",
        type_ = "integer",
        json_path = ".status.attached",
        description = "Attached assignments"
    ),
    printcolumn(name = "Kernel", type_ = "string", json_path = ".status.kernelVersion"),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.heartbeatTime"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProbeNodeSpec {
    /// The node this object is for (also its name). Always set, so the
    /// operator's server-side apply owns a field even with no assignment.
    #[serde(default)]
    pub node: String,
    /// Everything this node must run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["kind".into(), "namespace".into(), "name".into()]))]
    pub assignments: Vec<Assignment>,
}

/// One resource assigned to a node, with a copy of its spec.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Kind of the resource.
    pub kind: AssignmentKind,
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// UID of the resource, to tell a re-created resource from the old one.
    pub uid: String,
    /// metadata.generation of the resource the copy was taken from.
    pub generation: i64,
    /// Copy of a Tracepoint's spec (kind Tracepoint only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object_schema")]
    pub tracepoint: Option<TracepointSpec>,
    /// Copy of a Retention's spec (kind Retention only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object_schema")]
    pub retention: Option<RetentionSpec>,
    /// Copy of an Export's spec (kind Export only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object_schema")]
    pub export: Option<ExportSpec>,
}

/// The spec an [`Assignment`] carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AssignedSpec<'a> {
    /// A Tracepoint's spec.
    Tracepoint(&'a TracepointSpec),
    /// A Retention's spec.
    Retention(&'a RetentionSpec),
    /// An Export's spec.
    Export(&'a ExportSpec),
}

impl Assignment {
    /// The spec, checked to be the one `kind` names and the only one set.
    pub fn spec(&self) -> Result<AssignedSpec<'_>, ValidationError> {
        let spec = match (self.kind, &self.tracepoint, &self.retention, &self.export) {
            (AssignmentKind::Tracepoint, Some(spec), None, None) => AssignedSpec::Tracepoint(spec),
            (AssignmentKind::Retention, None, Some(spec), None) => AssignedSpec::Retention(spec),
            (AssignmentKind::Export, None, None, Some(spec)) => AssignedSpec::Export(spec),
            _ => {
                return Err(ValidationError::AssignmentSpec {
                    path: at!("assignment {}/{}", self.namespace, self.name),
                    kind: self.kind,
                });
            }
        };
        Ok(spec)
    }

    /// Validates the copied spec as if it were the resource itself.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self.spec()? {
            AssignedSpec::Tracepoint(spec) => spec.validate(),
            AssignedSpec::Retention(spec) => spec.validate(),
            AssignedSpec::Export(spec) => spec.validate(),
        }
    }
}

/// Kinds of assignment.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum AssignmentKind {
    /// A Tracepoint.
    Tracepoint,
    /// A Retention.
    Retention,
    /// An Export.
    Export,
}

impl AssignmentKind {
    /// The kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "Tracepoint",
            Self::Retention => "Retention",
            Self::Export => "Export",
        }
    }
}

impl std::fmt::Display for AssignmentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the node's agent reports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeNodeStatus {
    /// When the agent last wrote this status. The operator treats a node
    /// whose agent has neither written its status nor renewed its heartbeat
    /// Lease (labelled `sonde.dev/agent-heartbeat`) for its grace period as
    /// not reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Where the agent serves Arrow Flight, Flight SQL and the worker of
    /// cluster queries (`http://10.0.0.5:50051`, `https://...` with TLS);
    /// sonde-query finds the agents here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight_endpoint: Option<String>,
    /// Kernel release, as uname -r prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// Probe kinds this node's kernel supports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_probes: Vec<ProbeKind>,
    /// Number of assignments in state Attached.
    #[serde(default)]
    pub attached: u32,
    /// One entry per assignment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["kind".into(), "namespace".into(), "name".into()]))]
    pub assignments: Vec<AssignmentStatus>,
    /// Standard conditions: Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The baseline tables (schema `sonde`) the agent fills with no
    /// resource: each collecting, switched off, or unavailable on this node
    /// with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["table".into()]))]
    pub baseline_tables: Vec<BaselineTableStatus>,
}

/// One baseline table on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineTableStatus {
    /// The table's name in schema `sonde`, such as `process_stats`.
    pub table: String,
    pub state: BaselineTableState,
    /// Why an unavailable table cannot be collected here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// States of a baseline table on a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BaselineTableState {
    /// Sampled on its interval.
    Collecting,
    /// Switched off by the agent's configuration.
    Off,
    /// Switched on, but this node cannot provide it; message says why.
    Unavailable,
}

/// State of one assignment on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentStatus {
    /// Kind of the resource.
    pub kind: AssignmentKind,
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// Generation of the spec copy this state is for.
    pub generation: i64,
    /// Current state.
    pub state: AssignmentState,
    /// Machine-readable reason in CamelCase, such as SymbolNotFound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What is going on, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Events captured (Tracepoint) or rows exported (Export) since attach.
    #[serde(default)]
    pub events: u64,
    /// Events lost on the way, all stages together (see the agent's
    /// metrics for the split by stage).
    #[serde(default)]
    pub lost: u64,
    /// Retention: what each table it bounds holds on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableHeld>,
    /// Retention: the latest anomalies its rollups flagged on this node,
    /// newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<RecentAnomaly>,
}

/// What one table holds on a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableHeld {
    /// Table name (in the Retention's namespace).
    pub table: String,
    /// Rows held.
    pub rows: u64,
    /// Bytes held: compressed cold batches count as compressed.
    pub bytes: u64,
    /// What the same rows took as captured, before compaction.
    pub uncompressed_bytes: u64,
    /// Age of the oldest row held (a Go-style duration such as 2h13m5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// What limits the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<RetentionLimit>,
}

/// States of an assignment on a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AssignmentState {
    /// Running: probes attached, retention applied or export running.
    Attached,
    /// Nothing to do here now: no selected pod runs on the node.
    Idle,
    /// Could not be applied; reason and message say why.
    Failed,
    /// The node cannot run it, such as a probe kind its kernel lacks.
    Unsupported,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSIGNMENT: &str = r#"{
        "kind": "Tracepoint",
        "namespace": "shop",
        "name": "opens",
        "uid": "6f1c2a9e-0000-4000-8000-000000000001",
        "generation": 3,
        "tracepoint": {
            "probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_openat"}},
            "fields": [{"name": "filename", "type": "string"}],
            "table": "opens"
        }
    }"#;

    #[test]
    fn assignment_yields_the_spec_its_kind_names() {
        let assignment: Assignment = serde_json::from_str(ASSIGNMENT).expect("valid assignment");
        assert!(matches!(assignment.spec(), Ok(AssignedSpec::Tracepoint(_))));
        assert_eq!(assignment.validate(), Ok(()));
    }

    #[test]
    fn assignment_with_the_wrong_spec_is_refused() {
        let mut assignment: Assignment =
            serde_json::from_str(ASSIGNMENT).expect("valid assignment");
        assignment.kind = AssignmentKind::Export;
        assert_eq!(
            assignment
                .spec()
                .expect_err("kind and spec disagree")
                .to_string(),
            "assignment shop/opens must hold exactly the Export spec, the member named by kind"
        );
    }
}
