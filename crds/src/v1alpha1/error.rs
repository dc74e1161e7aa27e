//! [`ValidationError`]: why a spec is invalid, with the path of the offending
//! member (as the apiserver would name it, such as `spec.fields[2].name`).
//!
//! The messages are meant for people reading `kubectl describe`: the operator
//! copies them into status conditions, and standalone mode prints them. So
//! each message is complete alone: a variant that has a cause (a duration or
//! size that does not parse) words it into the message and does not return it
//! again from `source()`, which would print it twice in an error chain.

use super::{
    AggregateFn, AssignmentKind, ColumnType, FieldType, FilterOp, ProbeKind, Signal, is_valid_name,
};
use crate::units::{ByteSizeError, DurationError, parse_duration};

/// Builds a member path with `format!` syntax.
macro_rules! at {
    ($($arg:tt)*) => { ::std::format!($($arg)*) };
}
pub(crate) use at;

/// Why a spec is invalid. Every variant names the member at fault in `path`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Not exactly one probe kind is set.
    #[error("{path} {}", describe_probe_kinds(set))]
    ProbeKindCount {
        /// Path of the probe member.
        path: String,
        /// The kinds that are set.
        set: Vec<&'static str>,
    },

    /// A required member is missing.
    #[error("{path} is required: {why}")]
    Required {
        /// Path of the missing member.
        path: String,
        /// Why it is needed.
        why: &'static str,
    },

    /// A list has too many entries.
    #[error("{path} has {count} entries; at most {max} are allowed")]
    TooMany {
        /// Path of the list.
        path: String,
        /// Entries present.
        count: usize,
        /// Entries allowed.
        max: usize,
    },

    /// A list that must not be empty is.
    #[error("{path} must have at least one entry")]
    Empty {
        /// Path of the list.
        path: String,
    },

    /// A number is outside its allowed range.
    #[error("{path} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        /// Path of the number.
        path: String,
        /// The value given.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },

    /// A column, table or metric name breaks the naming rule.
    #[error(
        "{path} {value:?} is not a valid {what} name: use 1 to 63 lowercase letters, digits \
         and _, not starting with a digit"
    )]
    InvalidName {
        /// Path of the name.
        path: String,
        /// The name given.
        value: String,
        /// What kind of name: column, table, metric, rollup.
        what: &'static str,
    },

    /// A field takes the name of a standard column.
    #[error("{path} {name:?} collides with the standard column {name}")]
    StandardColumn {
        /// Path of the field name.
        path: String,
        /// The standard column.
        name: &'static str,
    },

    /// A name appears twice where names must be unique.
    #[error("{path} {value:?} is already used by {first}")]
    Duplicate {
        /// Path of the second occurrence.
        path: String,
        /// The repeated value.
        value: String,
        /// Path of the first occurrence.
        first: String,
    },

    /// A container name is not an RFC 1123 label.
    #[error(
        "{path} {value:?} is not a container name (lowercase letters, digits and -, at most 63)"
    )]
    InvalidContainerName {
        /// Path of the container name.
        path: String,
        /// The name given.
        value: String,
    },

    /// A user-space probe names a container that `spec.containers` excludes.
    #[error("{path} {container:?} is not among spec.containers, so the probe would never fire")]
    ProbeContainerNotSelected {
        /// Path of the probe's container.
        path: String,
        /// The container named.
        container: String,
    },

    /// A tracepoint, function, symbol or USDT name has characters it cannot have.
    #[error("{path} {value:?} is not a valid name here")]
    InvalidProbeName {
        /// Path of the name.
        path: String,
        /// The name given.
        value: String,
    },

    /// A uprobe or uretprobe sets both or neither of symbol and offset.
    #[error("{path} must set exactly one of symbol and offset")]
    SymbolOrOffset {
        /// Path of the probe.
        path: String,
    },

    /// A kretprobe sets an offset, which only a function entry can have.
    #[error("{path} is not allowed on a kretprobe: return probes attach to the whole function")]
    OffsetOnReturnProbe {
        /// Path of the offset.
        path: String,
    },

    /// A binary path is not absolute.
    #[error("{path} {value:?} must be an absolute path such as /usr/local/bin/app")]
    BinaryNotAbsolute {
        /// Path of the binary member.
        path: String,
        /// The path given.
        value: String,
    },

    /// A binary path climbs out with `..`.
    #[error("{path} {value:?} must not contain .. segments")]
    BinaryParentSegment {
        /// Path of the binary member.
        path: String,
        /// The path given.
        value: String,
    },

    /// A label selector requirement has an unknown operator.
    #[error(
        "{path} {operator:?} is not a selector operator; use In, NotIn, Exists or DoesNotExist"
    )]
    SelectorOperator {
        /// Path of the operator.
        path: String,
        /// The operator given.
        operator: String,
    },

    /// A label selector requirement has values where it must not, or none where it needs some.
    #[error(
        "{path} does not fit operator {operator}: In and NotIn need values, Exists and \
         DoesNotExist take none"
    )]
    SelectorValues {
        /// Path of the values.
        path: String,
        /// The operator.
        operator: String,
    },

    /// A field source is not an identifier.
    #[error("{path} {source_name:?} is not a valid source name")]
    InvalidSource {
        /// Path of the source (or of the name, when the source defaults to it).
        path: String,
        /// The source.
        source_name: String,
    },

    /// A field source is something the probe kind does not offer.
    #[error("{path} {source_name:?} is not available on a {probe} probe, which offers {offered}")]
    SourceNotOffered {
        /// Path of the source (or of the name, when the source defaults to it).
        path: String,
        /// The source.
        source_name: String,
        /// The probe kind.
        probe: ProbeKind,
        /// What the kind offers.
        offered: &'static str,
    },

    /// A field needs a declared type because the kernel cannot describe it.
    #[error(
        "{path} is required for {source_name:?} on a {probe} probe: only tracepoint formats \
         describe their fields"
    )]
    TypeRequired {
        /// Path of the missing type.
        path: String,
        /// The source.
        source_name: String,
        /// The probe kind.
        probe: ProbeKind,
    },

    /// latency declared with a type other than u64.
    #[error("{path} is {declared}, but latency is a u64 count of nanoseconds")]
    LatencyType {
        /// Path of the type.
        path: String,
        /// The type declared.
        declared: FieldType,
    },

    /// maxLength on a field that is not a string.
    #[error("{path} applies only to string fields, and this field is {declared}")]
    MaxLengthOnNonString {
        /// Path of maxLength.
        path: String,
        /// The type declared.
        declared: FieldType,
    },

    /// A filter tests a column that is not available in the kernel.
    #[error(
        "{path} {field:?} is neither one of the fields nor a standard column known in the \
         kernel (pid, tid, comm, cgroup_id)"
    )]
    UnknownFilterField {
        /// Path of the filter's field.
        path: String,
        /// The column named.
        field: String,
    },

    /// A filter has the wrong operands for its op.
    #[error("{path}: op {op} {}", if *op == FilterOp::Range { "takes min and max and no value" } else { "takes value and neither min nor max" })]
    FilterOperands {
        /// Path of the filter.
        path: String,
        /// The op.
        op: FilterOp,
    },

    /// A range filter whose min exceeds its max.
    #[error("{path}: range min {min} is greater than max {max}, so nothing would match")]
    RangeOrder {
        /// Path of the filter.
        path: String,
        /// The min.
        min: i64,
        /// The max.
        max: i64,
    },

    /// A filter operand of the wrong kind for its op.
    #[error("{path}: op {op} takes {expected}")]
    FilterOperandKind {
        /// Path of the operand.
        path: String,
        /// The op.
        op: FilterOp,
        /// What it takes.
        expected: &'static str,
    },

    /// An op that cannot test the column's type.
    #[error("{path} {op} cannot test {field}, which is {column_type}: {}", ops_for(*column_type))]
    FilterOpType {
        /// Path of the op.
        path: String,
        /// The op.
        op: FilterOp,
        /// The column tested.
        field: String,
        /// Its type.
        column_type: ColumnType,
    },

    /// A filter operand whose kind does not match the column's type.
    #[error("{path} must be {} because {field} is {column_type}", if *column_type == ColumnType::String { "a string" } else { "an integer" })]
    FilterValueType {
        /// Path of the operand.
        path: String,
        /// The column tested.
        field: String,
        /// Its type.
        column_type: ColumnType,
    },

    /// An integer operand that the column's type cannot hold.
    #[error(
        "{path} {value} does not fit {field}, which is {column_type}, so the filter could never match as written"
    )]
    OperandOutOfType {
        /// Path of the operand.
        path: String,
        /// The operand.
        value: i64,
        /// The column tested.
        field: String,
        /// Its type.
        column_type: ColumnType,
    },

    /// A string operand longer than the captured string can be.
    #[error(
        "{path} is {len} bytes, longer than the {max_length} bytes captured of {field}, so it could never match"
    )]
    OperandTooLong {
        /// Path of the operand.
        path: String,
        /// Its length.
        len: usize,
        /// The column tested.
        field: String,
        /// How much of the column is captured.
        max_length: usize,
    },

    /// An empty prefix, which matches everything.
    #[error(
        "{path} is empty; a prefix filter on \"\" matches every event, drop the filter instead"
    )]
    EmptyPrefix {
        /// Path of the operand.
        path: String,
    },

    /// A zero mask, which matches nothing.
    #[error("{path} is 0; a mask filter tests (field & value) != 0, which never holds for 0")]
    ZeroMask {
        /// Path of the operand.
        path: String,
    },

    /// A metric name in the reserved `sonde_` prefix.
    #[error("{path} {name:?} starts with sonde_, which is reserved for Sonde's own metrics")]
    ReservedMetricName {
        /// Path of the name.
        path: String,
        /// The name.
        name: String,
    },

    /// Buckets on a counter.
    #[error("{path} applies only to histograms")]
    BucketsOnCounter {
        /// Path of the buckets.
        path: String,
    },

    /// Buckets that do not strictly increase.
    #[error(
        "{path} is {bound}, not greater than the bound before it ({previous}); buckets must strictly increase"
    )]
    BucketsNotIncreasing {
        /// Path of the offending bound.
        path: String,
        /// The bound before it.
        previous: f64,
        /// The offending bound.
        bound: f64,
    },

    /// A bucket that is infinite or NaN.
    #[error("{path} contains {bound}; bounds must be finite (the +Inf bucket is implied)")]
    BucketNotFinite {
        /// Path of the buckets.
        path: String,
        /// The bound.
        bound: f64,
    },

    /// A metric value that names no field.
    #[error("{path} {column:?} is not one of the fields")]
    UnknownMetricValue {
        /// Path of the value.
        path: String,
        /// The column named.
        column: String,
    },

    /// A metric value that is not numeric.
    #[error("{path} {column:?} is {column_type}; a metric value must be an integer field")]
    MetricValueNotNumeric {
        /// Path of the value.
        path: String,
        /// The column named.
        column: String,
        /// Its type.
        column_type: ColumnType,
    },

    /// A metric label that names no column.
    #[error("{path} {column:?} is neither one of the fields nor a standard column")]
    UnknownMetricLabel {
        /// Path of the label.
        path: String,
        /// The column named.
        column: String,
    },

    /// A duration that does not parse.
    #[error("{path} {value:?} {reason}")]
    InvalidDuration {
        /// Path of the duration.
        path: String,
        /// The text given.
        value: String,
        /// Why it does not parse. (part of the message, which status shows alone).
        reason: DurationError,
    },

    /// A duration of zero where a length of time is needed.
    #[error("{path} {value:?} is zero; it must be a positive duration such as 30s or 1h")]
    ZeroDuration {
        /// Path of the duration.
        path: String,
        /// The text given.
        value: String,
    },

    /// A duration that must not be shorter than another.
    #[error("{path} {value:?} is shorter than {other_path} {other:?}")]
    DurationTooShort {
        /// Path of the shorter duration.
        path: String,
        /// Its text.
        value: String,
        /// Path of the duration it must reach.
        other_path: String,
        /// Its text.
        other: String,
    },

    /// A byte size that does not parse.
    #[error("{path} {value:?} {reason}")]
    InvalidByteSize {
        /// Path of the size.
        path: String,
        /// The text given.
        value: String,
        /// Why it is invalid. (part of the message, which status shows alone).
        reason: ByteSizeError,
    },

    /// A table name or pattern that breaks the rules.
    #[error(
        "{path} {value:?} is not a table name or pattern: use lowercase letters, digits, _ \
         and the wildcards * and ?, at most 63 characters"
    )]
    InvalidTablePattern {
        /// Path of the pattern.
        path: String,
        /// The text given.
        value: String,
    },

    /// A Retention that limits nothing.
    #[error("{path} sets none of maxBytes, maxAge and rollups, so it would have no effect")]
    NoRetentionLimit {
        /// Path of the spec.
        path: String,
    },

    /// Rollups with more or other than one plain table.
    #[error(
        "{path} must name exactly one table without wildcards when rollups are set, so that \
         each rollup has one source"
    )]
    RollupSource {
        /// Path of the tables list.
        path: String,
    },

    /// A rollup writing into the table it reads.
    #[error("{path} {name:?} is the table the rollup reads; name the output differently")]
    RollupIntoSource {
        /// Path of the rollup name.
        path: String,
        /// The name.
        name: String,
    },

    /// An aggregate without the column it needs.
    #[error("{path} is required: {function} aggregates a column (only count does not)")]
    AggregateColumn {
        /// Path of the column member.
        path: String,
        /// The aggregate function.
        function: AggregateFn,
    },

    /// Detection on a column the rollup does not write.
    #[error("{path} {column:?} is not an output column of this rollup, which writes {outputs}")]
    DetectColumn {
        /// Path of the column member.
        path: String,
        /// The column named.
        column: String,
        /// The rollup's aggregate output columns, comma-separated.
        outputs: String,
    },

    /// `across` missing on siblings detection, or set on another method.
    #[error("{path} {}", if *required {
        "is required by the siblings method: name the groupBy column that tells siblings apart, such as pod"
    } else {
        "applies only to the siblings method"
    })]
    DetectAcross {
        /// Path of the across member.
        path: String,
        /// Whether it is missing (true) or not allowed (false).
        required: bool,
    },

    /// `across` naming a column the rollup does not group by.
    #[error("{path} {column:?} is not one of the rollup's groupBy columns")]
    AcrossNotGrouped {
        /// Path of the across member.
        path: String,
        /// The column named.
        column: String,
    },

    /// A season on a method that has none, or one that is not a whole
    /// number (at least two) of intervals.
    #[error("{path} {value:?} {reason}")]
    InvalidSeason {
        /// Path of the season member.
        path: String,
        /// The text given.
        value: String,
        /// Why.
        reason: &'static str,
    },

    /// Raw rows kept around anomalies without any detection.
    #[error("{path} keeps raw rows around anomalies, so it needs detect")]
    KeepRawWithoutDetect {
        /// Path of the keepRaw member.
        path: String,
    },

    /// A rollup name too long for the tables derived from it.
    #[error("{path} {name:?} is too long: its table {derived} would exceed 63 characters")]
    DerivedNameTooLong {
        /// Path of the rollup name.
        path: String,
        /// The rollup name.
        name: String,
        /// The derived table name.
        derived: String,
    },

    /// An export endpoint that is not an http(s) URL.
    #[error(
        "{path} {value:?} is not an http:// or https:// URL with a host, such as \
         http://otel-collector.observability:4317"
    )]
    InvalidEndpoint {
        /// Path of the endpoint.
        path: String,
        /// The text given.
        value: String,
    },

    /// TLS settings on a plain-text endpoint.
    #[error("{path} is set, but the endpoint uses http://; use https:// for TLS")]
    TlsWithoutHttps {
        /// Path of the tls member.
        path: String,
    },

    /// A mapping member required by the signal is missing.
    #[error("{path} is required for {signal} exports")]
    MappingRequired {
        /// Path of the missing member.
        path: String,
        /// The signal.
        signal: Signal,
    },

    /// A mapping member that the signal does not use.
    #[error("{path} does not apply to {signal} exports")]
    MappingNotForSignal {
        /// Path of the member.
        path: String,
        /// The signal.
        signal: Signal,
    },

    /// batchSize over bufferRows.
    #[error(
        "{path} {batch_size} is larger than bufferRows {buffer_rows}, so no batch could ever fill"
    )]
    BatchOverBuffer {
        /// Path of batchSize.
        path: String,
        /// The batch size.
        batch_size: u32,
        /// The buffer size.
        buffer_rows: u32,
    },

    /// An assignment whose spec member does not match its kind.
    #[error("{path} must hold exactly the {kind} spec, the member named by kind")]
    AssignmentSpec {
        /// Path of the assignment.
        path: String,
        /// The kind.
        kind: AssignmentKind,
    },
}

fn describe_probe_kinds(set: &[&str]) -> String {
    match set {
        [] => "sets no probe kind; set exactly one of tracepoint, rawTracepoint, uprobe, \
               uretprobe, usdt, kprobe or kretprobe"
            .to_owned(),
        [_] => "sets exactly one probe kind".to_owned(),
        _ => format!(
            "sets {} probe kinds ({}); set exactly one",
            set.len(),
            set.join(", ")
        ),
    }
}

fn ops_for(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::String => "string columns take eq, ne or prefix",
        ColumnType::Bool => "bool columns take eq or ne",
        _ => "integer columns take eq, ne, mask, lt, le, gt, ge or range",
    }
}

/// Checks a column, table or metric name.
pub(crate) fn check_name(
    path: &str,
    name: &str,
    what: &'static str,
) -> Result<(), ValidationError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ValidationError::InvalidName {
            path: path.to_owned(),
            value: name.to_owned(),
            what,
        })
    }
}

/// Checks that a duration parses and is positive.
pub(crate) fn check_duration(
    path: &str,
    text: &str,
) -> Result<std::time::Duration, ValidationError> {
    let duration = parse_duration(text).map_err(|reason| ValidationError::InvalidDuration {
        path: path.to_owned(),
        value: text.to_owned(),
        reason,
    })?;
    if duration.is_zero() {
        return Err(ValidationError::ZeroDuration {
            path: path.to_owned(),
            value: text.to_owned(),
        });
    }
    Ok(duration)
}

/// Checks that the values of a list are unique; `list` is the list's path.
pub(crate) fn check_unique<'a>(
    list: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<(), ValidationError> {
    let mut seen = std::collections::BTreeMap::new();
    for (i, value) in values.into_iter().enumerate() {
        if let Some(first) = seen.insert(value, i) {
            return Err(ValidationError::Duplicate {
                path: at!("{list}[{i}]"),
                value: value.to_owned(),
                first: at!("{list}[{first}]"),
            });
        }
    }
    Ok(())
}
