//! `Tracepoint`: what to capture (one probe, its fields, in-kernel filters),
//! from which pods, into which table, and which metrics to derive.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    ColumnType, FieldType, FilterValue, NAME_PATTERN, STANDARD_COLUMNS, duration_schema,
    is_dns_label, standard_column,
};
use super::error::{ValidationError, at, check_duration, check_name, check_unique};

/// The default `maxLength` of string fields.
pub const DEFAULT_STRING_LENGTH: u32 = 64;
/// The largest `maxLength` of a string field; keeps records within eBPF limits.
pub const MAX_STRING_LENGTH: u32 = 256;
/// The most fields a Tracepoint can capture.
pub const MAX_FIELDS: usize = 16;
/// The most filters a Tracepoint can have.
pub const MAX_FILTERS: usize = 8;
/// The most metrics a Tracepoint can derive.
pub const MAX_METRICS: usize = 8;
/// The most label columns a metric can have.
pub const MAX_METRIC_LABELS: usize = 8;
/// The most histogram buckets.
pub const MAX_BUCKETS: usize = 32;
/// The default cap on series per metric and node.
pub const DEFAULT_MAX_SERIES: u32 = 1000;
/// The largest cap on series per metric and node.
pub const MAX_SERIES: u32 = 100_000;

/// Captures events of one kernel or user-space probe from the selected pods
/// into a table on every node where they run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "Tracepoint",
    namespaced,
    status = "TracepointStatus",
    shortname = "tp",
    category = "sonde",
    derive = "PartialEq",
    doc = "Captures events of one kernel or user-space probe from the selected pods of its namespace into a table on every node where they run.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Overall state"
    ),
    printcolumn(
        name = "Table",
        type_ = "string",
        json_path = ".spec.table",
        description = "Output table"
    ),
    printcolumn(
        name = "Running",
        type_ = "integer",
        json_path = ".status.nodes.running",
        description = "Nodes capturing"
    ),
    printcolumn(
        name = "Selected",
        type_ = "integer",
        json_path = ".status.nodes.selected",
        description = "Nodes that should capture"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = (
        "!has(self.filters) || self.filters.all(f, f.field in ['pid', 'tid', 'comm', 'cgroup_id'] || (has(self.fields) && self.fields.exists(c, c.name == f.field)))",
        "every filter field must name one of the fields or an in-kernel standard column (pid, tid, comm, cgroup_id)"
    ),
    validation = (
        "!has(self.filters) || self.filters.all(f, (f.field != 'comm' || f.op in ['eq', 'ne', 'prefix']) && (!(f.field in ['pid', 'tid', 'cgroup_id']) || f.op != 'prefix') && (!has(self.fields) || self.fields.all(c, c.name != f.field || !has(c.type) || (c.type == 'string' ? f.op in ['eq', 'ne', 'prefix'] : (c.type == 'bool' ? f.op in ['eq', 'ne'] : f.op != 'prefix')))))",
        "filter op does not fit the field type: string fields take eq, ne or prefix, bool fields eq or ne, integer fields any op but prefix"
    ),
    validation = (
        "!has(self.filters) || self.filters.all(f, !has(f.value) || ((f.field == 'comm') == (type(f.value) == string) || !(f.field in ['pid', 'tid', 'comm', 'cgroup_id'])) && (!has(self.fields) || self.fields.all(c, c.name != f.field || !has(c.type) || ((c.type == 'string') == (type(f.value) == string)))))",
        "filter value must be a string for string fields and an integer for the others"
    ),
    validation = (
        "!has(self.fields) || self.fields.all(f, has(f.type) || has(self.probe.tracepoint) || (has(f.source) ? f.source : f.name) == 'latency')",
        "fields need a type unless the probe is a tracepoint (whose format describes its fields) or the field is latency"
    ),
    validation = (
        "!has(self.fields) || self.fields.all(f, has(self.probe.tracepoint) ? (has(f.source) ? f.source : f.name) != 'latency' : (has(self.probe.usdt) ? (has(f.source) ? f.source : f.name).matches('^arg([0-9]|1[01])$') : ((has(self.probe.uretprobe) || has(self.probe.kretprobe)) ? (has(f.source) ? f.source : f.name).matches('^(arg[0-5]|retval|latency)$') : (has(f.source) ? f.source : f.name).matches('^arg[0-5]$'))))",
        "field source does not fit the probe: tracepoints take format field names, usdt arg0..arg11, uretprobe and kretprobe arg0..arg5, retval or latency, the other probes arg0..arg5"
    ),
    validation = (
        "!has(self.metrics) || self.metrics.all(m, !has(m.labels) || m.labels.all(l, l in ['time_', 'node', 'pid', 'tid', 'comm', 'cgroup_id', 'namespace', 'pod', 'container'] || (has(self.fields) && self.fields.exists(c, c.name == l))))",
        "metric labels must name fields or standard columns"
    ),
    validation = (
        "!has(self.metrics) || self.metrics.all(m, !has(m.value) || (has(self.fields) && self.fields.exists(c, c.name == m.value)))",
        "metric value must name one of the fields"
    )
)]
pub struct TracepointSpec {
    /// Pods of this namespace to capture from. Absent or empty: every pod of
    /// the namespace. Events of other namespaces are never captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// Names of the containers to capture from. Empty: every container of
    /// the selected pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    pub containers: Vec<String>,

    /// Only nodes whose labels match all of these run the probe.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// The probe to attach: exactly one kind.
    pub probe: ProbeSpec,

    /// Columns to capture besides the standard ones (time_, node, pid, tid,
    /// comm, cgroup_id, namespace, pod, container).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = (
        "self.all(f, self.exists_one(g, g.name == f.name))",
        "field names must be unique"
    ))]
    pub fields: Vec<FieldSpec>,

    /// Conditions evaluated in the kernel before a record is emitted; a
    /// record is kept only if all of them hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub filters: Vec<FilterSpec>,

    /// Keep one event in N, decided in the kernel after filtering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,

    /// Cap on events per second on each node, enforced in the kernel after
    /// sampling. Events over the cap are counted as lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// Output table, in the schema named after this namespace (in SQL:
    /// `SELECT * FROM <namespace>.<table>`).
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub table: String,

    /// How long the Tracepoint runs, from its creation, as a Go-style
    /// duration (such as 30m or 1h30m). Then the operator detaches it from
    /// every node and its phase becomes Terminated; the resource and the
    /// rows already captured stay (rows under retention) until deleted.
    /// Absent: runs until deleted. Standalone agents, which have no
    /// operator, ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = (
        "duration(self) > duration('0s')",
        "ttl must be a positive duration such as 30m or 1h30m"
    ))]
    pub ttl: Option<String>,

    /// Prometheus metrics derived from the events, served on every agent's
    /// /metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = (
        "self.all(m, self.exists_one(n, n.name == m.name))",
        "metric names must be unique"
    ))]
    pub metrics: Vec<MetricSpec>,
}

/// The probe to attach. Set exactly one member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "[has(self.tracepoint), has(self.rawTracepoint), has(self.uprobe), has(self.uretprobe), has(self.usdt), has(self.kprobe), has(self.kretprobe)].exists_one(x, x)",
    "set exactly one probe kind: tracepoint, rawTracepoint, uprobe, uretprobe, usdt, kprobe or kretprobe"
))]
pub struct ProbeSpec {
    /// A kernel tracepoint, such as syscalls/sys_enter_openat. Its fields
    /// and their types come from the kernel's format description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracepoint: Option<KernelTracepoint>,

    /// A raw tracepoint, such as sched_process_exec: cheaper than a
    /// tracepoint, with the raw arguments arg0..arg5 of its prototype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_tracepoint: Option<RawTracepoint>,

    /// Entry of a function in a user-space binary; arguments are arg0..arg5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uprobe: Option<UserProbe>,

    /// Return of a function in a user-space binary; fields are retval,
    /// latency (nanoseconds since entry) and arg0..arg5 (read at entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uretprobe: Option<UserProbe>,

    /// A USDT (user statically defined tracing) probe; arguments are arg0..arg11.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usdt: Option<Usdt>,

    /// Entry of a kernel function, where the kernel allows kprobes;
    /// arguments are arg0..arg5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kprobe: Option<KernelProbe>,

    /// Return of a kernel function; fields are retval, latency and
    /// arg0..arg5 (read at entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kretprobe: Option<KernelProbe>,
}

/// A kernel tracepoint, named as in `/sys/kernel/tracing/events/<group>/<name>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelTracepoint {
    /// Tracepoint group (subsystem), such as syscalls or sched.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub group: String,
    /// Tracepoint name within the group, such as sys_enter_openat.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,
}

/// A raw tracepoint, named without its group, such as sched_process_exec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RawTracepoint {
    /// Tracepoint name, such as sched_process_exec.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,
}

/// A function in a user-space binary, by symbol or by offset.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "has(self.symbol) != has(self.offset)",
    "set exactly one of symbol and offset"
))]
pub struct UserProbe {
    /// Absolute path of the executable or library inside the container (on
    /// the host in standalone mode), such as /usr/local/bin/app or
    /// /usr/lib/x86_64-linux-gnu/libssl.so.3.
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/"))]
    #[x_kube(validation = (
        "!self.matches('(^|/)[.][.](/|$)')",
        "binary must not contain .. segments"
    ))]
    pub binary: String,
    /// Symbol of the function, as listed by `nm` (mangled for C++ and Rust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub symbol: Option<String>,
    /// File offset of the instruction to probe, for stripped binaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Container whose filesystem holds the binary. Absent: each selected
    /// container that has the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
}

/// A USDT probe compiled into a user-space binary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Usdt {
    /// Absolute path of the executable or library inside the container (on
    /// the host in standalone mode).
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/"))]
    #[x_kube(validation = (
        "!self.matches('(^|/)[.][.](/|$)')",
        "binary must not contain .. segments"
    ))]
    pub binary: String,
    /// Provider of the probe, as listed by `readelf -n` (stapsdt notes).
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub provider: String,
    /// Name of the probe within the provider.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// Container whose filesystem holds the binary. Absent: each selected
    /// container that has the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
}

/// A kernel function.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelProbe {
    /// Kernel function name, as listed in /proc/kallsyms, such as
    /// do_sys_openat2 or tcp_v4_connect.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]*$")
    )]
    pub function: String,
    /// Byte offset into the function (kprobe only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The probe of a [`ProbeSpec`], once exactly one kind is known to be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe<'a> {
    /// A kernel tracepoint.
    Tracepoint(&'a KernelTracepoint),
    /// A raw tracepoint.
    RawTracepoint(&'a RawTracepoint),
    /// A user-space function entry.
    Uprobe(&'a UserProbe),
    /// A user-space function return.
    Uretprobe(&'a UserProbe),
    /// A USDT probe.
    Usdt(&'a Usdt),
    /// A kernel function entry.
    Kprobe(&'a KernelProbe),
    /// A kernel function return.
    Kretprobe(&'a KernelProbe),
}

impl Probe<'_> {
    /// The kind of this probe.
    pub fn kind(&self) -> ProbeKind {
        match self {
            Self::Tracepoint(_) => ProbeKind::Tracepoint,
            Self::RawTracepoint(_) => ProbeKind::RawTracepoint,
            Self::Uprobe(_) => ProbeKind::Uprobe,
            Self::Uretprobe(_) => ProbeKind::Uretprobe,
            Self::Usdt(_) => ProbeKind::Usdt,
            Self::Kprobe(_) => ProbeKind::Kprobe,
            Self::Kretprobe(_) => ProbeKind::Kretprobe,
        }
    }
}

/// The kinds of probe Sonde can attach.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ProbeKind {
    /// Kernel tracepoint.
    Tracepoint,
    /// Raw kernel tracepoint.
    RawTracepoint,
    /// User-space function entry.
    Uprobe,
    /// User-space function return.
    Uretprobe,
    /// USDT probe.
    Usdt,
    /// Kernel function entry.
    Kprobe,
    /// Kernel function return.
    Kretprobe,
}

impl ProbeKind {
    /// Every kind, in the order of the `probe` members.
    pub const ALL: [ProbeKind; 7] = [
        Self::Tracepoint,
        Self::RawTracepoint,
        Self::Uprobe,
        Self::Uretprobe,
        Self::Usdt,
        Self::Kprobe,
        Self::Kretprobe,
    ];

    /// The member name in `spec.probe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::RawTracepoint => "rawTracepoint",
            Self::Uprobe => "uprobe",
            Self::Uretprobe => "uretprobe",
            Self::Usdt => "usdt",
            Self::Kprobe => "kprobe",
            Self::Kretprobe => "kretprobe",
        }
    }

    /// The field sources this kind offers, for error messages.
    pub fn sources(self) -> &'static str {
        match self {
            Self::Tracepoint => "field names of the tracepoint's format",
            Self::Usdt => "arg0..arg11",
            Self::Uretprobe | Self::Kretprobe => "arg0..arg5, retval or latency",
            Self::RawTracepoint | Self::Uprobe | Self::Kprobe => "arg0..arg5",
        }
    }

    /// Whether `source` names something this kind can capture.
    pub fn offers_source(self, source: &str) -> bool {
        let arg_index = source
            .strip_prefix("arg")
            .filter(|digits| !digits.is_empty() && !digits.starts_with('0') || *digits == "0")
            .and_then(|digits| digits.parse::<u8>().ok());
        match self {
            Self::Tracepoint => source != "latency",
            Self::Usdt => arg_index.is_some_and(|i| i <= 11),
            Self::Uretprobe | Self::Kretprobe => {
                arg_index.is_some_and(|i| i <= 5) || source == "retval" || source == "latency"
            }
            Self::RawTracepoint | Self::Uprobe | Self::Kprobe => arg_index.is_some_and(|i| i <= 5),
        }
    }
}

impl std::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ProbeSpec {
    /// The one probe that is set, or an error naming what is wrong.
    pub fn kind(&self) -> Result<Probe<'_>, ValidationError> {
        let mut set = Vec::new();
        if let Some(p) = &self.tracepoint {
            set.push(Probe::Tracepoint(p));
        }
        if let Some(p) = &self.raw_tracepoint {
            set.push(Probe::RawTracepoint(p));
        }
        if let Some(p) = &self.uprobe {
            set.push(Probe::Uprobe(p));
        }
        if let Some(p) = &self.uretprobe {
            set.push(Probe::Uretprobe(p));
        }
        if let Some(p) = &self.usdt {
            set.push(Probe::Usdt(p));
        }
        if let Some(p) = &self.kprobe {
            set.push(Probe::Kprobe(p));
        }
        if let Some(p) = &self.kretprobe {
            set.push(Probe::Kretprobe(p));
        }
        match set.as_slice() {
            [probe] => Ok(*probe),
            _ => Err(ValidationError::ProbeKindCount {
                path: "spec.probe".into(),
                set: set.iter().map(|p| p.kind().as_str()).collect(),
            }),
        }
    }
}

/// A column captured from the probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = (
        "!has(self.maxLength) || !has(self.type) || self.type == 'string'",
        "maxLength applies only to string fields"
    ),
    validation = (
        "(has(self.source) ? self.source : self.name) != 'latency' || !has(self.type) || self.type == 'u64'",
        "latency is a u64 count of nanoseconds"
    )
)]
pub struct FieldSpec {
    /// Column name: lowercase letters, digits and _, not one of the standard
    /// columns.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    #[x_kube(validation = (
        "!(self in ['time_', 'node', 'pid', 'tid', 'comm', 'cgroup_id', 'namespace', 'pod', 'container'])",
        "field name must not be a standard column (time_, node, pid, tid, comm, cgroup_id, namespace, pod, container)"
    ))]
    pub name: String,

    /// What to capture: a field of the tracepoint's format (such as
    /// filename), an argument arg0..arg5 (arg0..arg11 for usdt), retval, or
    /// latency (nanoseconds from entry to return). Absent: the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub source: Option<String>,

    /// Type of the value. Required except on tracepoints, whose format gives
    /// the type, and for latency (always u64).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub field_type: Option<FieldType>,

    /// Longest string to keep, in bytes; longer strings are cut. Strings
    /// only; default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_length: Option<u32>,
}

impl FieldSpec {
    /// What the field captures: `source`, or the name when it is absent.
    pub fn source(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.name)
    }

    /// The string length limit that applies to this field.
    pub fn max_length(&self) -> u32 {
        self.max_length.unwrap_or(DEFAULT_STRING_LENGTH)
    }

    /// The declared type; `latency` is always u64.
    pub fn declared_type(&self) -> Option<FieldType> {
        match self.field_type {
            Some(field_type) => Some(field_type),
            None if self.source() == "latency" => Some(FieldType::U64),
            None => None,
        }
    }
}

/// A comparison evaluated in the kernel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = (
        "self.op == 'range' ? (has(self.min) && has(self.max) && !has(self.value)) : (has(self.value) && !has(self.min) && !has(self.max))",
        "range filters take min and max, every other op takes value"
    ),
    validation = (
        "self.op != 'range' || !has(self.min) || !has(self.max) || self.min <= self.max",
        "range min must not be greater than max"
    ),
    validation = (
        "self.op != 'prefix' || !has(self.value) || type(self.value) == string",
        "prefix takes a string value"
    ),
    validation = (
        "!(self.op in ['lt', 'le', 'gt', 'ge', 'mask']) || !has(self.value) || type(self.value) == int",
        "lt, le, gt, ge and mask take an integer value"
    ),
    validation = (
        "!has(self.value) || type(self.value) != string || size(self.value) <= 256",
        "string filter values are at most 256 bytes"
    )
)]
pub struct FilterSpec {
    /// Column to test: one of the fields, or pid, tid, comm or cgroup_id.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub field: String,
    /// How to compare.
    pub op: FilterOp,
    /// Operand of every op but range. For mask, the bits to test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<FilterValue>,
    /// Smallest accepted value of a range (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Largest accepted value of a range (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

/// Filter operators.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FilterOp {
    /// field == value (strings and integers).
    Eq,
    /// field != value (strings and integers).
    Ne,
    /// The string field starts with value.
    Prefix,
    /// (field & value) != 0: any of the bits in value is set.
    Mask,
    /// field < value.
    Lt,
    /// field <= value.
    Le,
    /// field > value.
    Gt,
    /// field >= value.
    Ge,
    /// min <= field <= max.
    Range,
}

impl FilterOp {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Ne => "ne",
            Self::Prefix => "prefix",
            Self::Mask => "mask",
            Self::Lt => "lt",
            Self::Le => "le",
            Self::Gt => "gt",
            Self::Ge => "ge",
            Self::Range => "range",
        }
    }

    /// Whether the op can test a column of this type.
    pub fn fits(self, column_type: ColumnType) -> bool {
        match column_type {
            ColumnType::String => matches!(self, Self::Eq | Self::Ne | Self::Prefix),
            ColumnType::Bool => matches!(self, Self::Eq | Self::Ne),
            _ => self != Self::Prefix,
        }
    }
}

impl std::fmt::Display for FilterOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Keep one event in `oneIn`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sampling {
    /// Keep one event in this many (1 keeps every event).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub one_in: u32,
}

/// Per-node event rate cap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Most events per second each node emits; the rest are counted as lost.
    #[schemars(range(min = 1, max = 10_000_000))]
    pub events_per_second: u64,
}

/// A Prometheus metric derived from the events.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "self.kind == 'histogram' ? (has(self.value) && has(self.buckets)) : !has(self.buckets)",
    "histograms need value and buckets, counters take no buckets"
))]
pub struct MetricSpec {
    /// Metric name as exposed (counters get the _total suffix). Names
    /// starting with sonde_ are reserved.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    #[x_kube(validation = (
        "!self.startsWith('sonde_')",
        "metric names starting with sonde_ are reserved for Sonde's own metrics"
    ))]
    pub name: String,
    /// Counter or histogram.
    pub kind: MetricKind,
    /// Numeric field to observe (histograms) or to add (counters; absent:
    /// each event adds 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub value: Option<String>,
    /// Histogram bucket upper bounds, strictly increasing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = (
        "self.all(b, self.exists_one(c, c == b)) && self.isSorted()",
        "buckets must be strictly increasing"
    ))]
    pub buckets: Vec<f64>,
    /// Columns whose values become labels: fields or standard columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 63), regex(pattern = NAME_PATTERN)))]
    #[x_kube(validation = (
        "self.all(l, self.exists_one(m, m == l))",
        "metric labels must be unique"
    ))]
    pub labels: Vec<String>,
    /// Most series per node; events of further label combinations are
    /// counted as dropped, never silently lost.
    #[serde(default = "default_max_series")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_series: u32,
}

fn default_max_series() -> u32 {
    DEFAULT_MAX_SERIES
}

/// Metric kinds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MetricKind {
    /// Counts events (or sums value).
    Counter,
    /// Observes value into buckets.
    Histogram,
}

/// Observed state of a Tracepoint, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracepointStatus {
    /// Overall state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Qualified output table, `<namespace>.<table>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Columns of the table, standard ones first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnStatus>,
    /// Node counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,
    /// Why the probe failed on some nodes (at most 20 entries; nodes.failed
    /// counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_errors: Vec<NodeError>,
    /// Standard conditions: Ready, Accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

// Documented for rustdoc only: kube hoists an optional enum's own schema
// over the member's, and the member's description is the useful one.
#[cfg_attr(doc, doc = "Overall state of a Tracepoint.")]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted, not yet attached on any selected node.
    Pending,
    /// Attached on every selected node (or no node is selected yet).
    Running,
    /// Attached on some selected nodes, failed on others.
    Degraded,
    /// Invalid, or failed on every selected node.
    Failed,
    /// Its ttl expired, or it is being deleted: detached from every node.
    Terminated,
}

/// A column of the output table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ColumnStatus {
    /// Column name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

/// How many nodes are in which state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes that run a selected pod and match nodeSelector.
    pub selected: u32,
    /// Selected nodes where the probe is attached.
    pub running: u32,
    /// Selected nodes where the probe failed.
    pub failed: u32,
    /// Selected nodes whose agent has not reported for longer than the
    /// operator's grace period.
    #[serde(default)]
    pub unknown: u32,
}

/// Why a node could not run the probe.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeError {
    /// Node name.
    pub node: String,
    /// Machine-readable reason in CamelCase, such as SymbolNotFound.
    pub reason: String,
    /// What went wrong, for people.
    pub message: String,
}

impl TracepointSpec {
    /// Checks everything the schema checks and what it cannot: the probe
    /// against its fields, filter operands against field types, durations,
    /// label selector requirements. Standalone mode has no apiserver, so
    /// this is the only check there.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let probe = self.probe.kind()?;
        validate_probe(probe)?;
        validate_selector(self.selector.as_ref())?;
        if self.containers.len() > 16 {
            return Err(ValidationError::TooMany {
                path: "spec.containers".into(),
                count: self.containers.len(),
                max: 16,
            });
        }
        for (i, container) in self.containers.iter().enumerate() {
            if !is_dns_label(container) {
                return Err(ValidationError::InvalidContainerName {
                    path: at!("spec.containers[{i}]"),
                    value: container.clone(),
                });
            }
        }
        check_unique(
            "spec.containers",
            self.containers.iter().map(String::as_str),
        )?;
        if let Some(container) = probe_container(probe)
            && !self.containers.is_empty()
            && !self.containers.iter().any(|c| c == container)
        {
            return Err(ValidationError::ProbeContainerNotSelected {
                path: at!("spec.probe.{}.container", probe.kind()),
                container: container.to_owned(),
            });
        }

        let columns = self.validate_fields(probe)?;
        self.validate_filters(&columns)?;
        if let Some(sampling) = &self.sampling
            && !(1..=1_000_000).contains(&sampling.one_in)
        {
            return Err(ValidationError::OutOfRange {
                path: "spec.sampling.oneIn".into(),
                value: sampling.one_in.into(),
                min: 1,
                max: 1_000_000,
            });
        }
        if let Some(rate_limit) = &self.rate_limit
            && !(1..=10_000_000).contains(&rate_limit.events_per_second)
        {
            return Err(ValidationError::OutOfRange {
                path: "spec.rateLimit.eventsPerSecond".into(),
                value: rate_limit.events_per_second,
                min: 1,
                max: 10_000_000,
            });
        }
        check_name("spec.table", &self.table, "table")?;
        if let Some(ttl) = &self.ttl {
            check_duration("spec.ttl", ttl)?;
        }
        self.validate_metrics(&columns)
    }

    /// The columns of the output table (standard ones first) with their
    /// types where the spec declares them; tracepoint fields without a
    /// type get theirs from the kernel's format, so they are `None` here.
    pub fn columns(&self) -> Vec<(&str, Option<ColumnType>)> {
        STANDARD_COLUMNS
            .iter()
            .map(|c| (c.name, Some(c.column_type)))
            .chain(
                self.fields
                    .iter()
                    .map(|f| (f.name.as_str(), f.declared_type().map(ColumnType::from))),
            )
            .collect()
    }

    /// Checks the fields and returns the declared column types by name.
    fn validate_fields(
        &self,
        probe: Probe<'_>,
    ) -> Result<BTreeMap<&str, Option<ColumnType>>, ValidationError> {
        if self.fields.len() > MAX_FIELDS {
            return Err(ValidationError::TooMany {
                path: "spec.fields".into(),
                count: self.fields.len(),
                max: MAX_FIELDS,
            });
        }
        let mut columns: BTreeMap<&str, Option<ColumnType>> = STANDARD_COLUMNS
            .iter()
            .map(|c| (c.name, Some(c.column_type)))
            .collect();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, field) in self.fields.iter().enumerate() {
            let name_path = at!("spec.fields[{i}].name");
            if let Some(standard) = standard_column(&field.name) {
                return Err(ValidationError::StandardColumn {
                    path: name_path,
                    name: standard.name,
                });
            }
            check_name(&name_path, &field.name, "column")?;
            if let Some(first) = seen.insert(&field.name, i) {
                return Err(ValidationError::Duplicate {
                    path: name_path,
                    value: field.name.clone(),
                    first: at!("spec.fields[{first}].name"),
                });
            }
            let source = field.source();
            let source_path = if field.source.is_some() {
                at!("spec.fields[{i}].source")
            } else {
                name_path.clone()
            };
            if !is_identifier(source) || source.len() > 64 {
                return Err(ValidationError::InvalidSource {
                    path: source_path,
                    source_name: source.to_owned(),
                });
            }
            if !probe.kind().offers_source(source) {
                return Err(ValidationError::SourceNotOffered {
                    path: source_path,
                    source_name: source.to_owned(),
                    probe: probe.kind(),
                    offered: probe.kind().sources(),
                });
            }
            if source == "latency"
                && let Some(declared) = field.field_type
                && declared != FieldType::U64
            {
                return Err(ValidationError::LatencyType {
                    path: at!("spec.fields[{i}].type"),
                    declared,
                });
            }
            if field.declared_type().is_none() && probe.kind() != ProbeKind::Tracepoint {
                return Err(ValidationError::TypeRequired {
                    path: at!("spec.fields[{i}].type"),
                    source_name: source.to_owned(),
                    probe: probe.kind(),
                });
            }
            if let Some(max_length) = field.max_length {
                if let Some(declared) = field.field_type
                    && declared != FieldType::String
                {
                    return Err(ValidationError::MaxLengthOnNonString {
                        path: at!("spec.fields[{i}].maxLength"),
                        declared,
                    });
                }
                if !(1..=MAX_STRING_LENGTH).contains(&max_length) {
                    return Err(ValidationError::OutOfRange {
                        path: at!("spec.fields[{i}].maxLength"),
                        value: max_length.into(),
                        min: 1,
                        max: MAX_STRING_LENGTH.into(),
                    });
                }
            }
            columns.insert(&field.name, field.declared_type().map(ColumnType::from));
        }
        Ok(columns)
    }

    fn validate_filters(
        &self,
        columns: &BTreeMap<&str, Option<ColumnType>>,
    ) -> Result<(), ValidationError> {
        if self.filters.len() > MAX_FILTERS {
            return Err(ValidationError::TooMany {
                path: "spec.filters".into(),
                count: self.filters.len(),
                max: MAX_FILTERS,
            });
        }
        for (i, filter) in self.filters.iter().enumerate() {
            let in_kernel = match standard_column(&filter.field) {
                Some(standard) => standard.in_kernel,
                None => columns.contains_key(filter.field.as_str()),
            };
            if !in_kernel {
                return Err(ValidationError::UnknownFilterField {
                    path: at!("spec.filters[{i}].field"),
                    field: filter.field.clone(),
                });
            }
            let column_type = columns.get(filter.field.as_str()).copied().flatten();
            let field = self.fields.iter().find(|f| f.name == filter.field);
            check_filter_shape(i, filter)?;
            if let Some(column_type) = column_type
                && !filter.op.fits(column_type)
            {
                return Err(ValidationError::FilterOpType {
                    path: at!("spec.filters[{i}].op"),
                    op: filter.op,
                    field: filter.field.clone(),
                    column_type,
                });
            }
            let Some(value) = &filter.value else {
                continue;
            };
            let value_path = at!("spec.filters[{i}].value");
            match (value, column_type) {
                (FilterValue::String(_), Some(ColumnType::String) | None) => {}
                (FilterValue::Int(_), None) => {}
                (FilterValue::Int(n), Some(column_type)) if column_type != ColumnType::String => {
                    check_operand_fits(&value_path, &filter.field, column_type, *n)?;
                }
                (_, Some(column_type)) => {
                    return Err(ValidationError::FilterValueType {
                        path: value_path,
                        field: filter.field.clone(),
                        column_type,
                    });
                }
            }
            match (filter.op, value) {
                (FilterOp::Prefix, FilterValue::String(prefix)) if prefix.is_empty() => {
                    return Err(ValidationError::EmptyPrefix { path: value_path });
                }
                (FilterOp::Mask, FilterValue::Int(0)) => {
                    return Err(ValidationError::ZeroMask { path: value_path });
                }
                (_, FilterValue::String(text)) => {
                    let limit = match field {
                        Some(field) => field.max_length() as usize,
                        // comm is TASK_COMM_LEN (16) bytes including the NUL.
                        None => 15,
                    };
                    if text.len() > limit {
                        return Err(ValidationError::OperandTooLong {
                            path: value_path,
                            len: text.len(),
                            field: filter.field.clone(),
                            max_length: limit,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_metrics(
        &self,
        columns: &BTreeMap<&str, Option<ColumnType>>,
    ) -> Result<(), ValidationError> {
        if self.metrics.len() > MAX_METRICS {
            return Err(ValidationError::TooMany {
                path: "spec.metrics".into(),
                count: self.metrics.len(),
                max: MAX_METRICS,
            });
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, metric) in self.metrics.iter().enumerate() {
            let name_path = at!("spec.metrics[{i}].name");
            check_name(&name_path, &metric.name, "metric")?;
            if metric.name.starts_with("sonde_") {
                return Err(ValidationError::ReservedMetricName {
                    path: name_path,
                    name: metric.name.clone(),
                });
            }
            if let Some(first) = seen.insert(&metric.name, i) {
                return Err(ValidationError::Duplicate {
                    path: name_path,
                    value: metric.name.clone(),
                    first: at!("spec.metrics[{first}].name"),
                });
            }
            match metric.kind {
                MetricKind::Histogram => {
                    if metric.value.is_none() {
                        return Err(ValidationError::Required {
                            path: at!("spec.metrics[{i}].value"),
                            why: "a histogram observes the value of a field",
                        });
                    }
                    if metric.buckets.is_empty() {
                        return Err(ValidationError::Required {
                            path: at!("spec.metrics[{i}].buckets"),
                            why: "a histogram needs bucket upper bounds",
                        });
                    }
                }
                MetricKind::Counter => {
                    if !metric.buckets.is_empty() {
                        return Err(ValidationError::BucketsOnCounter {
                            path: at!("spec.metrics[{i}].buckets"),
                        });
                    }
                }
            }
            if metric.buckets.len() > MAX_BUCKETS {
                return Err(ValidationError::TooMany {
                    path: at!("spec.metrics[{i}].buckets"),
                    count: metric.buckets.len(),
                    max: MAX_BUCKETS,
                });
            }
            for (j, pair) in metric.buckets.windows(2).enumerate() {
                // NaN compares as not increasing, which is what we want to reject.
                if pair[0].partial_cmp(&pair[1]) != Some(std::cmp::Ordering::Less) {
                    return Err(ValidationError::BucketsNotIncreasing {
                        path: at!("spec.metrics[{i}].buckets[{}]", j + 1),
                        previous: pair[0],
                        bound: pair[1],
                    });
                }
            }
            if let Some(bound) = metric.buckets.iter().find(|b| !b.is_finite()) {
                return Err(ValidationError::BucketNotFinite {
                    path: at!("spec.metrics[{i}].buckets"),
                    bound: *bound,
                });
            }
            if let Some(value) = &metric.value {
                let value_path = at!("spec.metrics[{i}].value");
                if !self.fields.iter().any(|f| &f.name == value) {
                    return Err(ValidationError::UnknownMetricValue {
                        path: value_path,
                        column: value.clone(),
                    });
                }
                if let Some(Some(column_type)) = columns.get(value.as_str())
                    && matches!(column_type, ColumnType::String | ColumnType::Bool)
                {
                    return Err(ValidationError::MetricValueNotNumeric {
                        path: value_path,
                        column: value.clone(),
                        column_type: *column_type,
                    });
                }
            }
            if metric.labels.len() > MAX_METRIC_LABELS {
                return Err(ValidationError::TooMany {
                    path: at!("spec.metrics[{i}].labels"),
                    count: metric.labels.len(),
                    max: MAX_METRIC_LABELS,
                });
            }
            let mut labels = BTreeSet::new();
            for (j, label) in metric.labels.iter().enumerate() {
                let label_path = at!("spec.metrics[{i}].labels[{j}]");
                if !columns.contains_key(label.as_str()) {
                    return Err(ValidationError::UnknownMetricLabel {
                        path: label_path,
                        column: label.clone(),
                    });
                }
                if !labels.insert(label.as_str()) {
                    return Err(ValidationError::Duplicate {
                        path: label_path,
                        value: label.clone(),
                        first: at!("spec.metrics[{i}].labels"),
                    });
                }
            }
            if !(1..=MAX_SERIES).contains(&metric.max_series) {
                return Err(ValidationError::OutOfRange {
                    path: at!("spec.metrics[{i}].maxSeries"),
                    value: metric.max_series.into(),
                    min: 1,
                    max: MAX_SERIES.into(),
                });
            }
        }
        Ok(())
    }
}

/// The container a user-space probe names, if any.
fn probe_container<'a>(probe: Probe<'a>) -> Option<&'a str> {
    match probe {
        Probe::Uprobe(p) | Probe::Uretprobe(p) => p.container.as_deref(),
        Probe::Usdt(p) => p.container.as_deref(),
        _ => None,
    }
}

fn is_identifier(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_tracepoint_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn validate_probe(probe: Probe<'_>) -> Result<(), ValidationError> {
    let base = at!("spec.probe.{}", probe.kind());
    match probe {
        Probe::Tracepoint(tp) => {
            if !is_tracepoint_name(&tp.group) {
                return Err(ValidationError::InvalidProbeName {
                    path: at!("{base}.group"),
                    value: tp.group.clone(),
                });
            }
            if !is_tracepoint_name(&tp.name) {
                return Err(ValidationError::InvalidProbeName {
                    path: at!("{base}.name"),
                    value: tp.name.clone(),
                });
            }
        }
        Probe::RawTracepoint(tp) => {
            if !is_tracepoint_name(&tp.name) {
                return Err(ValidationError::InvalidProbeName {
                    path: at!("{base}.name"),
                    value: tp.name.clone(),
                });
            }
        }
        Probe::Uprobe(up) | Probe::Uretprobe(up) => {
            check_binary(&at!("{base}.binary"), &up.binary)?;
            match (&up.symbol, up.offset) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err(ValidationError::SymbolOrOffset { path: base }),
            }
            if let Some(symbol) = &up.symbol
                && (symbol.is_empty()
                    || symbol.len() > 1024
                    || symbol.contains(char::is_whitespace))
            {
                return Err(ValidationError::InvalidProbeName {
                    path: at!("{base}.symbol"),
                    value: symbol.clone(),
                });
            }
        }
        Probe::Usdt(usdt) => {
            check_binary(&at!("{base}.binary"), &usdt.binary)?;
            for (member, value) in [("provider", &usdt.provider), ("name", &usdt.name)] {
                if !is_identifier(value) || value.len() > 128 {
                    return Err(ValidationError::InvalidProbeName {
                        path: at!("{base}.{member}"),
                        value: value.clone(),
                    });
                }
            }
        }
        Probe::Kprobe(kp) | Probe::Kretprobe(kp) => {
            let valid = kp.function.len() <= 128
                && kp
                    .function
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && kp
                    .function
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            if !valid {
                return Err(ValidationError::InvalidProbeName {
                    path: at!("{base}.function"),
                    value: kp.function.clone(),
                });
            }
            if matches!(probe, Probe::Kretprobe(_)) && kp.offset.is_some() {
                return Err(ValidationError::OffsetOnReturnProbe {
                    path: at!("{base}.offset"),
                });
            }
        }
    }
    Ok(())
}

fn check_binary(path: &str, binary: &str) -> Result<(), ValidationError> {
    if !binary.starts_with('/') || binary.len() < 2 || binary.len() > 4096 {
        return Err(ValidationError::BinaryNotAbsolute {
            path: path.to_owned(),
            value: binary.to_owned(),
        });
    }
    if binary.split('/').any(|segment| segment == "..") {
        return Err(ValidationError::BinaryParentSegment {
            path: path.to_owned(),
            value: binary.to_owned(),
        });
    }
    Ok(())
}

fn validate_selector(selector: Option<&LabelSelector>) -> Result<(), ValidationError> {
    let Some(selector) = selector else {
        return Ok(());
    };
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let needs_values = match requirement.operator.as_str() {
            "In" | "NotIn" => true,
            "Exists" | "DoesNotExist" => false,
            _ => {
                return Err(ValidationError::SelectorOperator {
                    path: at!("spec.selector.matchExpressions[{i}].operator"),
                    operator: requirement.operator.clone(),
                });
            }
        };
        if needs_values == values.is_empty() {
            return Err(ValidationError::SelectorValues {
                path: at!("spec.selector.matchExpressions[{i}].values"),
                operator: requirement.operator.clone(),
            });
        }
    }
    Ok(())
}

/// Checks that a filter has the operands its op takes.
fn check_filter_shape(i: usize, filter: &FilterSpec) -> Result<(), ValidationError> {
    let shape_ok = if filter.op == FilterOp::Range {
        filter.value.is_none() && filter.min.is_some() && filter.max.is_some()
    } else {
        filter.value.is_some() && filter.min.is_none() && filter.max.is_none()
    };
    if !shape_ok {
        return Err(ValidationError::FilterOperands {
            path: at!("spec.filters[{i}]"),
            op: filter.op,
        });
    }
    if let (Some(min), Some(max)) = (filter.min, filter.max)
        && min > max
    {
        return Err(ValidationError::RangeOrder {
            path: at!("spec.filters[{i}]"),
            min,
            max,
        });
    }
    match (filter.op, &filter.value) {
        (FilterOp::Prefix, Some(FilterValue::Int(_))) => Err(ValidationError::FilterOperandKind {
            path: at!("spec.filters[{i}].value"),
            op: filter.op,
            expected: "a string",
        }),
        (
            FilterOp::Lt | FilterOp::Le | FilterOp::Gt | FilterOp::Ge | FilterOp::Mask,
            Some(FilterValue::String(_)),
        ) => Err(ValidationError::FilterOperandKind {
            path: at!("spec.filters[{i}].value"),
            op: filter.op,
            expected: "an integer",
        }),
        _ => Ok(()),
    }
}

fn check_operand_fits(
    path: &str,
    field: &str,
    column_type: ColumnType,
    value: i64,
) -> Result<(), ValidationError> {
    let range = match column_type {
        ColumnType::Bool => Some((0, 1)),
        ColumnType::U8 => FieldType::U8.integer_range(),
        ColumnType::U16 => FieldType::U16.integer_range(),
        ColumnType::U32 => FieldType::U32.integer_range(),
        ColumnType::U64 | ColumnType::Timestamp => FieldType::U64.integer_range(),
        ColumnType::I8 => FieldType::I8.integer_range(),
        ColumnType::I16 => FieldType::I16.integer_range(),
        ColumnType::I32 => FieldType::I32.integer_range(),
        ColumnType::I64 => FieldType::I64.integer_range(),
        ColumnType::String => None,
    };
    match range {
        Some((min, max)) if !(min..=max).contains(&i128::from(value)) => {
            Err(ValidationError::OperandOutOfType {
                path: path.to_owned(),
                value,
                field: field.to_owned(),
                column_type,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_kind_reports_what_is_set() {
        let mut probe = ProbeSpec::default();
        let err = probe.kind().expect_err("no probe kind is set");
        assert_eq!(
            err.to_string(),
            "spec.probe sets no probe kind; set exactly one of tracepoint, rawTracepoint, uprobe, uretprobe, usdt, kprobe or kretprobe"
        );
        probe.kprobe = Some(KernelProbe {
            function: "do_sys_openat2".into(),
            offset: None,
        });
        assert!(matches!(probe.kind(), Ok(Probe::Kprobe(_))));
        probe.tracepoint = Some(KernelTracepoint {
            group: "syscalls".into(),
            name: "sys_enter_openat".into(),
        });
        assert_eq!(
            probe
                .kind()
                .expect_err("two probe kinds are set")
                .to_string(),
            "spec.probe sets 2 probe kinds (tracepoint, kprobe); set exactly one"
        );
    }

    #[test]
    fn sources_per_probe_kind() {
        assert!(ProbeKind::Uprobe.offers_source("arg0"));
        assert!(ProbeKind::Uprobe.offers_source("arg5"));
        assert!(!ProbeKind::Uprobe.offers_source("arg6"));
        assert!(!ProbeKind::Uprobe.offers_source("arg01"));
        assert!(!ProbeKind::Uprobe.offers_source("retval"));
        assert!(ProbeKind::Uretprobe.offers_source("latency"));
        assert!(ProbeKind::Usdt.offers_source("arg11"));
        assert!(!ProbeKind::Usdt.offers_source("arg12"));
        assert!(ProbeKind::Tracepoint.offers_source("filename"));
        assert!(!ProbeKind::Tracepoint.offers_source("latency"));
    }
}
