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
}

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
    /// Standard conditions: Ready, Accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
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
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, rollup) in self.rollups.iter().enumerate() {
            rollup.validate(i, source)?;
            if let Some(first) = names.insert(&rollup.name, i) {
                return Err(ValidationError::Duplicate {
                    path: at!("spec.rollups[{i}].name"),
                    value: rollup.name.clone(),
                    first: at!("spec.rollups[{first}].name"),
                });
            }
        }
        Ok(())
    }
}

impl Rollup {
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
