//! `Retention`: how much of which tables each node keeps, and which rollups
//! (summarized history) it computes from them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    common::{NAME_PATTERN, byte_size_schema, duration_schema, is_valid_name},
    error::{ValidationError, at, check_duration, check_name},
};
use crate::units::parse_bytes;

/// The grammar of a table name or glob pattern.
pub const TABLE_PATTERN_PATTERN: &str = r"^[a-z0-9_*?]+$";
/// The most tables or patterns one Retention or Export lists.
pub const MAX_TABLES: usize = 32;
/// The most rollups one Retention defines.
pub const MAX_ROLLUPS: usize = 8;

/// Bounds the tables of its namespace on every node and defines rollups:
/// summarized history kept much longer than raw rows.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "Retention",
    namespaced,
    status = "RetentionStatus",
    shortname = "ret",
    category = "sonde",
    derive = "PartialEq",
    doc = "Bounds the tables of its namespace on every node, and defines rollups: summarized history kept much longer than raw rows.",
    printcolumn(
        name = "Max-Bytes",
        type_ = "string",
        json_path = ".spec.maxBytes",
        description = "Per table and node"
    ),
    printcolumn(
        name = "Max-Age",
        type_ = "string",
        json_path = ".spec.maxAge",
        description = "Per table and node"
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
        "has(self.maxBytes) || has(self.maxAge) || has(self.rollups)",
        "set at least one of maxBytes, maxAge and rollups"
    ),
    validation = (
        "!has(self.rollups) || (size(self.tables) == 1 && !self.tables[0].contains('*') && !self.tables[0].contains('?'))",
        "rollups need tables to hold exactly one table name without wildcards"
    ),
    validation = (
        "!has(self.rollups) || self.rollups.all(r, !(r.name in self.tables))",
        "a rollup must not write into the table it reads"
    )
)]
pub struct RetentionSpec {
    /// Tables of this namespace to bound: names, or glob patterns with * and
    /// ? (such as opens* or *). When several Retentions match a table, the
    /// smallest limits win.
    #[schemars(
        length(min = 1, max = 32),
        inner(length(min = 1, max = 63), regex(pattern = TABLE_PATTERN_PATTERN))
    )]
    pub tables: Vec<String>,

    /// Most bytes each matched table may hold on each node: a number of
    /// bytes or a quantity such as 64Mi. The oldest rows go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "byte_size_schema")]
    #[x_kube(validation = (
        "type(self) == int ? self > 0 : self.matches('^[0-9]+([.][0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')",
        "maxBytes must be a positive number of bytes or a quantity such as 64Mi"
    ))]
    pub max_bytes: Option<Quantity>,

    /// Oldest rows to keep, as a Go-style duration such as 30m or 6h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = (
        "duration(self) > duration('0s')",
        "maxAge must be a positive duration such as 30m or 6h"
    ))]
    pub max_age: Option<String>,

    /// Summaries computed from the table at a fixed interval and kept in
    /// tables of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = (
        "self.all(r, self.exists_one(s, s.name == r.name))",
        "rollup names must be unique"
    ))]
    pub rollups: Vec<Rollup>,
}

/// A summary of a table per time interval, written to its own table.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = (
        "!has(self.detect) || self.detect.all(d, self.aggregates.exists(a, (has(a.name) ? a.name : (has(a.column) ? a.fn + '_' + a.column : a.fn)) == d.column))",
        "detect columns must be output columns of the rollup"
    ),
    validation = (
        "!has(self.detect) || self.detect.all(d, !has(d.across) || (has(self.groupBy) && d.across in self.groupBy))",
        "across must be one of the rollup's groupBy columns"
    ),
    validation = (
        "!has(self.keepRaw) || (has(self.detect) && size(self.detect) > 0)",
        "keepRaw keeps raw rows around anomalies, so it needs detect"
    )
)]
pub struct Rollup {
    /// Output table (in this namespace), such as file_opens_1m. Its columns
    /// are time_ (interval start), node, the groupBy columns, and one column
    /// per aggregate.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub name: String,

    /// Length of each summarized interval, such as 1m.
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = (
        "duration(self) > duration('0s')",
        "interval must be a positive duration such as 1m"
    ))]
    pub interval: String,

    /// Columns to group by, such as pod; empty: one row per interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 63), regex(pattern = NAME_PATTERN)))]
    #[x_kube(validation = (
        "self.all(c, self.exists_one(d, d == c))",
        "groupBy columns must be unique"
    ))]
    pub group_by: Vec<String>,

    /// What to compute per group and interval.
    #[schemars(length(min = 1, max = 16))]
    pub aggregates: Vec<Aggregate>,

    /// How long to keep rollup rows, such as 24h; at least interval.
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = (
        "duration(self) > duration('0s')",
        "keep must be a positive duration such as 24h"
    ))]
    pub keep: String,

    /// Anomaly detection on this rollup's output columns, per group, after
    /// every interval. Anomalies are written to the table
    /// `<name>_anomalies`, counted in metrics and reported in status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub detect: Vec<Detection>,

    /// Raw rows of a group kept around each of its anomalies, past the
    /// source table's maxAge and maxBytes, in the table `<name>_kept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_raw: Option<KeepRaw>,
}

/// The most detections one rollup declares.
pub const MAX_DETECTIONS: usize = 4;
/// Sensitivity when a detection sets none: a percentage, higher flags more.
pub const DEFAULT_SENSITIVITY: u8 = 25;
/// Intervals of history a series needs before it is judged, by default.
pub const DEFAULT_WARM_UP: u32 = 10;
/// Bounds of `warmUp`, in intervals.
pub const WARM_UP_RANGE: (u32, u32) = (3, 1000);
/// Longest season, in intervals: the history kept per series is two seasons.
pub const MAX_SEASON_INTERVALS: u64 = 1440;

/// Anomaly detection on one column of a rollup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = (
        "self.method == 'siblings' ? has(self.across) : !has(self.across)",
        "across is required by the siblings method and allowed only there"
    ),
    validation = (
        "!has(self.season) || self.method == 'forecastBand'",
        "season applies only to the forecastBand method"
    )
)]
pub struct Detection {
    /// Output column of this rollup to watch, such as p99_latency or count.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub column: String,

    /// How a value is judged anomalous.
    pub method: DetectionMethod,

    /// How readily values are flagged, as a percentage from 1 to 99
    /// (default 25): higher flags smaller deviations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub sensitivity: Option<u8>,

    /// Intervals of history a series needs before it is judged (default
    /// 10, from 3 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3, max = 1000))]
    pub warm_up: Option<u32>,

    /// siblings only: the groupBy column that tells siblings apart, such as
    /// pod. Groups equal in every other groupBy column (such as workload)
    /// are compared with each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub across: Option<String>,

    /// forecastBand only: the length of a season, such as 1h, a whole
    /// number of intervals; once a series holds two seasons the forecast is
    /// seasonal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = (
        "duration(self) > duration('0s')",
        "season must be a positive duration such as 1h"
    ))]
    pub season: Option<String>,
}

impl Detection {
    /// The sensitivity in force, as a fraction in (0, 1).
    pub fn sensitivity_fraction(&self) -> f64 {
        f64::from(self.sensitivity.unwrap_or(DEFAULT_SENSITIVITY)) / 100.0
    }

    /// The warm-up in force, in intervals.
    pub fn warm_up_intervals(&self) -> u32 {
        self.warm_up.unwrap_or(DEFAULT_WARM_UP)
    }
}

/// How a detection judges a value.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum DetectionMethod {
    /// A lasting change of level in the group's series (Bayesian online
    /// changepoint detection), such as a pod's p99 latency doubling and
    /// staying there.
    LevelShift,
    /// A value outside the band forecast from the group's own history
    /// (exponential smoothing; seasonal once two seasons are held).
    ForecastBand,
    /// A group whose recent values differ from its siblings' (median
    /// absolute deviation across the siblings), such as one slow replica.
    Siblings,
}

impl DetectionMethod {
    /// The name used in YAML and in the anomalies table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LevelShift => "levelShift",
            Self::ForecastBand => "forecastBand",
            Self::Siblings => "siblings",
        }
    }
}

impl std::fmt::Display for DetectionMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Raw rows kept around anomalies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeepRaw {
    /// How far before the anomalous interval's start and after its end the
    /// group's raw rows are kept, such as 5m.
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = (
        "duration(self) > duration('0s')",
        "around must be a positive duration such as 5m"
    ))]
    pub around: String,

    /// Most bytes of kept rows per node for this rollup: beyond it, the
    /// oldest kept window is dropped first (and counted). Checked by
    /// validate() only: a pattern rule here, inside the list of rollups,
    /// would exceed the apiserver's cost budget for CEL.
    #[schemars(schema_with = "byte_size_schema")]
    pub max_bytes: Quantity,
}

// A Quantity compares as its text, which is reflexive: rollups compare
// their specs to keep their progress when a Retention is re-applied.
impl Eq for KeepRaw {}

/// One aggregate column of a rollup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "self.fn == 'count' || has(self.column)",
    "every aggregate except count needs a column"
))]
pub struct Aggregate {
    /// Aggregate function.
    #[serde(rename = "fn")]
    pub function: AggregateFn,
    /// Numeric column to aggregate (all but count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub column: Option<String>,
    /// Output column name. Absent: count, or `<fn>_<column>` such as p99_latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub name: Option<String>,
}

impl Aggregate {
    /// The output column name.
    pub fn output_name(&self) -> String {
        match (&self.name, &self.column) {
            (Some(name), _) => name.clone(),
            (None, Some(column)) => format!("{}_{column}", self.function),
            (None, None) => self.function.to_string(),
        }
    }
}

/// Aggregate functions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregateFn {
    /// Number of rows.
    Count,
    /// Sum of the column.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Median (approximate).
    P50,
    /// 90th percentile (approximate).
    P90,
    /// 99th percentile (approximate).
    P99,
}

impl AggregateFn {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
            Self::P50 => "p50",
            Self::P90 => "p90",
            Self::P99 => "p99",
        }
    }
}

impl std::fmt::Display for AggregateFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a Retention, written by the operator from the nodes' reports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What each matched table actually keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableRetention>,
    /// The latest anomalies its rollups detected, newest first, all nodes
    /// together (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<RecentAnomaly>,
    /// Standard conditions: Ready, Accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The most anomalies a status lists.
pub const MAX_RECENT_ANOMALIES: usize = 10;

/// One anomaly a rollup's detection flagged on a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentAnomaly {
    /// Start of the anomalous interval (RFC 3339).
    pub time: String,
    /// Node that detected it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Rollup table whose column was flagged.
    pub rollup: String,
    /// The group, as column=value pairs joined by commas, such as pod=web-1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Column flagged.
    pub column: String,
    /// Method that flagged it: levelShift, forecastBand or siblings.
    pub method: String,
    /// Value seen (decimal text, as the other numbers).
    pub value: String,
    /// Value expected.
    pub expected: String,
    /// Lower bound of the expected band.
    pub lower: String,
    /// Upper bound of the expected band.
    pub upper: String,
}

/// The retention a table actually gets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableRetention {
    /// Table name (in this namespace).
    pub table: String,
    /// Age of the oldest row still kept, on the node that keeps the least
    /// (a Go-style duration such as 2h13m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Bytes held, on the node that holds the most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What limits the window on that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<RetentionLimit>,
    /// Rows held, all nodes together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes held, all nodes together (compressed cold batches count as
    /// compressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// What the rows held took as captured ÷ what they take held, all
    /// nodes together, such as "7.9".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<String>,
    /// Nodes that reported this table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
}

// Documented for rustdoc only: kube hoists an optional enum's own schema
// over the member's, and the member's description is the useful one.
#[cfg_attr(doc, doc = "What bounds a table's window.")]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RetentionLimit {
    /// The maxBytes limit.
    MaxBytes,
    /// The maxAge limit (or the Tracepoint's ttl).
    MaxAge,
    /// The agent's global memory budget.
    MemoryBudget,
    /// Nothing yet: the table holds everything it ever captured.
    None,
}

impl RetentionSpec {
    /// Checks everything the schema checks, plus byte sizes, durations and
    /// the output columns of rollups.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.tables.is_empty() {
            return Err(ValidationError::Empty {
                path: "spec.tables".into(),
            });
        }
        check_table_patterns("spec.tables", &self.tables)?;
        if self.max_bytes.is_none() && self.max_age.is_none() && self.rollups.is_empty() {
            return Err(ValidationError::NoRetentionLimit {
                path: "spec".into(),
            });
        }
        if let Some(max_bytes) = &self.max_bytes {
            parse_bytes(max_bytes).map_err(|reason| ValidationError::InvalidByteSize {
                path: "spec.maxBytes".into(),
                value: max_bytes.0.clone(),
                reason,
            })?;
        }
        if let Some(max_age) = &self.max_age {
            check_duration("spec.maxAge", max_age)?;
        }
        if self.rollups.is_empty() {
            return Ok(());
        }
        if self.rollups.len() > MAX_ROLLUPS {
            return Err(ValidationError::TooMany {
                path: "spec.rollups".into(),
                count: self.rollups.len(),
                max: MAX_ROLLUPS,
            });
        }
        let source = match self.tables.as_slice() {
            [table] if !table.contains(['*', '?']) => table,
            _ => {
                return Err(ValidationError::RollupSource {
                    path: "spec.tables".into(),
                });
            }
        };
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for (i, rollup) in self.rollups.iter().enumerate() {
            rollup.validate(i, source)?;
            // Each rollup's tables: its output, and those derived from it.
            for table in rollup.tables() {
                let path = if table == rollup.name {
                    at!("spec.rollups[{i}].name")
                } else {
                    at!("spec.rollups[{i}].name (table {table})")
                };
                if table == *source {
                    return Err(ValidationError::RollupIntoSource { path, name: table });
                }
                if let Some(first) = names.insert(table.clone(), path.clone()) {
                    return Err(ValidationError::Duplicate {
                        path,
                        value: table,
                        first,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Suffix of the table a rollup's anomalies are written to.
pub const ANOMALIES_SUFFIX: &str = "_anomalies";
/// Suffix of the table raw rows kept around a rollup's anomalies go to.
pub const KEPT_SUFFIX: &str = "_kept";

impl Rollup {
    /// The table its anomalies are written to, when it detects any.
    pub fn anomalies_table(&self) -> Option<String> {
        (!self.detect.is_empty()).then(|| format!("{}{ANOMALIES_SUFFIX}", self.name))
    }

    /// The table raw rows kept around its anomalies go to, when it keeps any.
    pub fn kept_table(&self) -> Option<String> {
        self.keep_raw
            .as_ref()
            .map(|_| format!("{}{KEPT_SUFFIX}", self.name))
    }

    /// Every table the rollup writes: its output, then its anomalies and
    /// kept rows.
    pub fn tables(&self) -> Vec<String> {
        let mut tables = vec![self.name.clone()];
        tables.extend(self.anomalies_table());
        tables.extend(self.kept_table());
        tables
    }

    fn validate(&self, i: usize, source: &str) -> Result<(), ValidationError> {
        let base = at!("spec.rollups[{i}]");
        check_name(&at!("{base}.name"), &self.name, "table")?;
        if self.name == source {
            return Err(ValidationError::RollupIntoSource {
                path: at!("{base}.name"),
                name: self.name.clone(),
            });
        }
        let interval = check_duration(&at!("{base}.interval"), &self.interval)?;
        let keep = check_duration(&at!("{base}.keep"), &self.keep)?;
        if keep < interval {
            return Err(ValidationError::DurationTooShort {
                path: at!("{base}.keep"),
                value: self.keep.clone(),
                other_path: at!("{base}.interval"),
                other: self.interval.clone(),
            });
        }
        if self.group_by.len() > 8 {
            return Err(ValidationError::TooMany {
                path: at!("{base}.groupBy"),
                count: self.group_by.len(),
                max: 8,
            });
        }
        if self.aggregates.is_empty() {
            return Err(ValidationError::Empty {
                path: at!("{base}.aggregates"),
            });
        }
        if self.aggregates.len() > 16 {
            return Err(ValidationError::TooMany {
                path: at!("{base}.aggregates"),
                count: self.aggregates.len(),
                max: 16,
            });
        }
        // Output columns: time_ and node come first, then groupBy, then aggregates.
        let mut outputs: BTreeMap<String, String> = BTreeMap::new();
        outputs.insert("time_".into(), "the interval start time_".into());
        outputs.insert("node".into(), "the node column".into());
        for (j, column) in self.group_by.iter().enumerate() {
            let column_path = at!("{base}.groupBy[{j}]");
            check_name(&column_path, column, "column")?;
            if let Some(first) = outputs.insert(column.clone(), column_path.clone()) {
                return Err(ValidationError::Duplicate {
                    path: column_path,
                    value: column.clone(),
                    first,
                });
            }
        }
        for (j, aggregate) in self.aggregates.iter().enumerate() {
            let aggregate_path = at!("{base}.aggregates[{j}]");
            match (&aggregate.column, aggregate.function) {
                (None, AggregateFn::Count) => {}
                (None, function) => {
                    return Err(ValidationError::AggregateColumn {
                        path: at!("{aggregate_path}.column"),
                        function,
                    });
                }
                (Some(column), _) => check_name(&at!("{aggregate_path}.column"), column, "column")?,
            }
            let output = aggregate.output_name();
            let output_path = if aggregate.name.is_some() {
                at!("{aggregate_path}.name")
            } else {
                aggregate_path.clone()
            };
            if !is_valid_name(&output) {
                return Err(ValidationError::InvalidName {
                    path: output_path,
                    value: output,
                    what: "column",
                });
            }
            if let Some(first) = outputs.insert(output.clone(), output_path.clone()) {
                return Err(ValidationError::Duplicate {
                    path: output_path,
                    value: output,
                    first,
                });
            }
        }
        self.validate_detection(&base, interval)
    }

    /// Checks `detect` and `keepRaw` (after the outputs they refer to).
    fn validate_detection(
        &self,
        base: &str,
        interval: std::time::Duration,
    ) -> Result<(), ValidationError> {
        if self.detect.len() > MAX_DETECTIONS {
            return Err(ValidationError::TooMany {
                path: at!("{base}.detect"),
                count: self.detect.len(),
                max: MAX_DETECTIONS,
            });
        }
        for derived in [self.anomalies_table(), self.kept_table()]
            .into_iter()
            .flatten()
        {
            if derived.len() > 63 {
                return Err(ValidationError::DerivedNameTooLong {
                    path: at!("{base}.name"),
                    name: self.name.clone(),
                    derived,
                });
            }
        }
        let outputs: Vec<String> = self.aggregates.iter().map(Aggregate::output_name).collect();
        for (j, detection) in self.detect.iter().enumerate() {
            let path = at!("{base}.detect[{j}]");
            if !outputs.contains(&detection.column) {
                return Err(ValidationError::DetectColumn {
                    path: at!("{path}.column"),
                    column: detection.column.clone(),
                    outputs: outputs.join(", "),
                });
            }
            if let Some(sensitivity) = detection.sensitivity
                && !(1..=99).contains(&sensitivity)
            {
                return Err(ValidationError::OutOfRange {
                    path: at!("{path}.sensitivity"),
                    value: u64::from(sensitivity),
                    min: 1,
                    max: 99,
                });
            }
            if let Some(warm_up) = detection.warm_up
                && !(WARM_UP_RANGE.0..=WARM_UP_RANGE.1).contains(&warm_up)
            {
                return Err(ValidationError::OutOfRange {
                    path: at!("{path}.warmUp"),
                    value: u64::from(warm_up),
                    min: u64::from(WARM_UP_RANGE.0),
                    max: u64::from(WARM_UP_RANGE.1),
                });
            }
            match (&detection.across, detection.method) {
                (None, DetectionMethod::Siblings) => {
                    return Err(ValidationError::DetectAcross {
                        path: at!("{path}.across"),
                        required: true,
                    });
                }
                (Some(_), method) if method != DetectionMethod::Siblings => {
                    return Err(ValidationError::DetectAcross {
                        path: at!("{path}.across"),
                        required: false,
                    });
                }
                (Some(across), _) if !self.group_by.contains(across) => {
                    return Err(ValidationError::AcrossNotGrouped {
                        path: at!("{path}.across"),
                        column: across.clone(),
                    });
                }
                _ => {}
            }
            if let Some(season) = &detection.season {
                let season_path = at!("{path}.season");
                let invalid = |reason| ValidationError::InvalidSeason {
                    path: season_path.clone(),
                    value: season.clone(),
                    reason,
                };
                if detection.method != DetectionMethod::ForecastBand {
                    return Err(invalid("applies only to the forecastBand method"));
                }
                let length = check_duration(&season_path, season)?;
                let intervals = length.as_nanos() / interval.as_nanos().max(1);
                if length.as_nanos() % interval.as_nanos().max(1) != 0 || intervals < 2 {
                    return Err(invalid("must be a whole number of intervals, at least two"));
                }
                if intervals > u128::from(MAX_SEASON_INTERVALS) {
                    return Err(invalid("is longer than 1440 intervals"));
                }
            }
        }
        if let Some(keep_raw) = &self.keep_raw {
            let path = at!("{base}.keepRaw");
            if self.detect.is_empty() {
                return Err(ValidationError::KeepRawWithoutDetect { path });
            }
            check_duration(&at!("{path}.around"), &keep_raw.around)?;
            parse_bytes(&keep_raw.max_bytes).map_err(|reason| {
                ValidationError::InvalidByteSize {
                    path: at!("{path}.maxBytes"),
                    value: keep_raw.max_bytes.0.clone(),
                    reason,
                }
            })?;
        }
        Ok(())
    }
}

/// Checks a list of table names or glob patterns.
pub(crate) fn check_table_patterns(list: &str, tables: &[String]) -> Result<(), ValidationError> {
    if tables.len() > MAX_TABLES {
        return Err(ValidationError::TooMany {
            path: list.to_owned(),
            count: tables.len(),
            max: MAX_TABLES,
        });
    }
    for (i, table) in tables.iter().enumerate() {
        let valid = !table.is_empty()
            && table.len() <= 63
            && table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_*?".contains(&b));
        if !valid {
            return Err(ValidationError::InvalidTablePattern {
                path: at!("{list}[{i}]"),
                value: table.clone(),
            });
        }
    }
    super::error::check_unique(list, tables.iter().map(String::as_str))
}

/// Whether a table name matches a glob pattern with `*` (any run of
/// characters) and `?` (one character).
pub fn table_matches(pattern: &str, table: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), table.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and how much text it has swallowed so far:
    // on a mismatch, let it swallow one more byte and retry.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns_match_table_names() {
        assert!(table_matches("opens*", "opens"));
        assert!(table_matches("opens*", "opens_1m"));
        assert!(table_matches("*", "anything"));
        assert!(table_matches("exec?", "exec2"));
        assert!(!table_matches("exec?", "exec"));
        assert!(!table_matches("opens", "opens_1m"));
    }

    #[test]
    fn aggregate_output_names() {
        let p99 = Aggregate {
            function: AggregateFn::P99,
            column: Some("latency".into()),
            name: None,
        };
        assert_eq!(p99.output_name(), "p99_latency");
        let count = Aggregate {
            function: AggregateFn::Count,
            column: None,
            name: None,
        };
        assert_eq!(count.output_name(), "count");
    }
}
