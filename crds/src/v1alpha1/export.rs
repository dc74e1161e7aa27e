//! `Export`: pushes the rows of chosen tables to an OpenTelemetry (OTLP)
//! back end as logs, metrics or traces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{ValidationError, at, check_duration, check_name};
use super::{
    common::{NAME_PATTERN, SecretKeyRef, SecretRef, duration_schema},
    retention::check_table_patterns,
};

/// The default export interval.
pub const DEFAULT_INTERVAL: &str = "10s";
/// The default rows per OTLP request.
pub const DEFAULT_BATCH_SIZE: u32 = 1000;
/// The default buffer size per node, in rows.
pub const DEFAULT_BUFFER_ROWS: u32 = 100_000;

/// Pushes the rows of tables of its namespace from every node to an
/// OpenTelemetry (OTLP) back end.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "Export",
    namespaced,
    status = "ExportStatus",
    shortname = "exp",
    category = "sonde",
    derive = "PartialEq",
    doc = "Pushes the rows of tables of its namespace from every node to an OpenTelemetry (OTLP) back end as logs, metrics or traces.",
    printcolumn(
        name = "Signal",
        type_ = "string",
        json_path = ".spec.destination.otlp.signal"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.destination.otlp.endpoint",
        priority = 1
    ),
    printcolumn(
        name = "Exported",
        type_ = "integer",
        json_path = ".status.rowsExported",
        description = "Rows delivered"
    ),
    printcolumn(
        name = "Dropped",
        type_ = "integer",
        json_path = ".status.rowsDropped",
        description = "Rows given up on"
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
        "self.destination.otlp.signal != 'metrics' || (has(self.mapping) && has(self.mapping.metricName) && has(self.mapping.value))",
        "metrics exports need mapping.metricName and mapping.value"
    ),
    validation = (
        "self.destination.otlp.signal != 'traces' || (has(self.mapping) && has(self.mapping.spanName) && has(self.mapping.duration))",
        "traces exports need mapping.spanName and mapping.duration"
    ),
    validation = (
        "!has(self.mapping) || ((self.destination.otlp.signal == 'logs' || !has(self.mapping.body)) && (self.destination.otlp.signal == 'metrics' || (!has(self.mapping.metricName) && !has(self.mapping.value))) && (self.destination.otlp.signal == 'traces' || (!has(self.mapping.spanName) && !has(self.mapping.duration))))",
        "mapping.body is for logs, metricName and value for metrics, spanName and duration for traces"
    ),
    validation = (
        "self.batchSize <= self.bufferRows",
        "batchSize must not be larger than bufferRows"
    )
)]
pub struct ExportSpec {
    /// Tables of this namespace to export: names, or glob patterns with *
    /// and ?.
    #[schemars(
        length(min = 1, max = 32),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9_*?]+$"))
    )]
    pub tables: Vec<String>,

    /// Where to send the rows.
    pub destination: Destination,

    /// How rows become OTLP records.
    #[serde(default)]
    pub mapping: Mapping,

    /// How often each node sends what it has, as a Go-style duration.
    #[serde(default = "default_interval")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = (
        "duration(self) > duration('0s')",
        "interval must be a positive duration such as 10s"
    ))]
    pub interval: String,

    /// Most rows per OTLP request.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 100_000))]
    pub batch_size: u32,

    /// Most rows each node holds while the back end is slow or down; when
    /// full, the oldest rows are dropped and counted in rowsDropped.
    #[serde(default = "default_buffer_rows")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub buffer_rows: u32,
}

fn default_interval() -> String {
    DEFAULT_INTERVAL.to_owned()
}

fn default_batch_size() -> u32 {
    DEFAULT_BATCH_SIZE
}

fn default_buffer_rows() -> u32 {
    DEFAULT_BUFFER_ROWS
}

/// Where an Export sends rows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// An OTLP receiver, such as an OpenTelemetry Collector.
    pub otlp: OtlpDestination,
}

/// An OTLP receiver.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "!has(self.tls) || self.endpoint.startsWith('https://')",
    "tls applies only to https:// endpoints"
))]
pub struct OtlpDestination {
    /// Receiver URL, such as `http://otel-collector.observability:4317`
    /// (gRPC) or `https://otlp.example.com:4318` (HTTP; the signal's path,
    /// such as /v1/logs, is appended).
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = (
        "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",
        "endpoint must be an http:// or https:// URL with a host"
    ))]
    pub endpoint: String,
    /// OTLP transport.
    pub protocol: OtlpProtocol,
    /// What the rows become.
    pub signal: Signal,
    /// Secret whose keys and values are sent as request headers, such as
    /// an authorization token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_from: Option<SecretRef>,
    /// TLS settings for https:// endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// OTLP transports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OtlpProtocol {
    /// OTLP over gRPC (usually port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (usually port 4318).
    Http,
}

/// OpenTelemetry signals.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Signal {
    /// Each row becomes a log record.
    Logs,
    /// Each row becomes a gauge data point.
    Metrics,
    /// Each row becomes a span that ends at time_.
    Traces,
}

impl Signal {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logs => "logs",
            Self::Metrics => "metrics",
            Self::Traces => "traces",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "has(self.certFrom) == has(self.keyFrom)",
    "certFrom and keyFrom go together: a client certificate needs its key"
))]
pub struct Tls {
    /// Accept any server certificate. For testing only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Secret key holding PEM CA certificates to trust instead of the
    /// system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_from: Option<SecretKeyRef>,
    /// Secret key holding the PEM client certificate (chain) to present,
    /// for receivers that require mutual TLS. Needs keyFrom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_from: Option<SecretKeyRef>,
    /// Secret key holding the PEM private key of certFrom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_from: Option<SecretKeyRef>,
}

/// How rows become OTLP records. Every record carries the row's time_ as its
/// timestamp and node, namespace, pod and container as resource attributes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mapping {
    /// Columns to send as attributes. Empty: every column not mapped
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63), regex(pattern = NAME_PATTERN)))]
    pub attributes: Vec<String>,
    /// Logs: column to use as the log body. Absent: no body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub body: Option<String>,
    /// Metrics: name of the metric, such as sonde.file_opens.count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_./-]*$")
    )]
    pub metric_name: Option<String>,
    /// Metrics: numeric column holding the data point value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub value: Option<String>,
    /// Traces: name of every span, such as handle_request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub span_name: Option<String>,
    /// Traces: column holding the span duration in nanoseconds, such as
    /// latency; the span starts at time_ minus it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub duration: Option<String>,
}

/// Observed state of an Export, summed over nodes by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Rows delivered to the back end.
    #[serde(default)]
    pub rows_exported: u64,
    /// Rows given up on (buffer overflow, or rejected by the back end).
    #[serde(default)]
    pub rows_dropped: u64,
    /// The most recent failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the most recent failure happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_time: Option<Time>,
    /// When a batch was last delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    /// Standard conditions: Ready, Accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl ExportSpec {
    /// Checks everything the schema checks.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.tables.is_empty() {
            return Err(ValidationError::Empty {
                path: "spec.tables".into(),
            });
        }
        check_table_patterns("spec.tables", &self.tables)?;
        let otlp = &self.destination.otlp;
        let scheme_is_https = check_endpoint("spec.destination.otlp.endpoint", &otlp.endpoint)?;
        if otlp.tls.is_some() && !scheme_is_https {
            return Err(ValidationError::TlsWithoutHttps {
                path: "spec.destination.otlp.tls".into(),
            });
        }
        if let Some(tls) = &otlp.tls {
            match (&tls.cert_from, &tls.key_from) {
                (Some(_), None) => {
                    return Err(ValidationError::Required {
                        path: "spec.destination.otlp.tls.keyFrom".into(),
                        why: "a client certificate (certFrom) needs its key",
                    });
                }
                (None, Some(_)) => {
                    return Err(ValidationError::Required {
                        path: "spec.destination.otlp.tls.certFrom".into(),
                        why: "a client key (keyFrom) needs its certificate",
                    });
                }
                _ => {}
            }
        }
        self.validate_mapping()?;
        check_duration("spec.interval", &self.interval)?;
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(ValidationError::OutOfRange {
                path: "spec.batchSize".into(),
                value: self.batch_size.into(),
                min: 1,
                max: 100_000,
            });
        }
        if !(1..=10_000_000).contains(&self.buffer_rows) {
            return Err(ValidationError::OutOfRange {
                path: "spec.bufferRows".into(),
                value: self.buffer_rows.into(),
                min: 1,
                max: 10_000_000,
            });
        }
        if self.batch_size > self.buffer_rows {
            return Err(ValidationError::BatchOverBuffer {
                path: "spec.batchSize".into(),
                batch_size: self.batch_size,
                buffer_rows: self.buffer_rows,
            });
        }
        Ok(())
    }

    fn validate_mapping(&self) -> Result<(), ValidationError> {
        let signal = self.destination.otlp.signal;
        let mapping = &self.mapping;
        let members = [
            ("body", mapping.body.as_deref(), Signal::Logs, true),
            (
                "metricName",
                mapping.metric_name.as_deref(),
                Signal::Metrics,
                false,
            ),
            ("value", mapping.value.as_deref(), Signal::Metrics, true),
            (
                "spanName",
                mapping.span_name.as_deref(),
                Signal::Traces,
                false,
            ),
            (
                "duration",
                mapping.duration.as_deref(),
                Signal::Traces,
                true,
            ),
        ];
        for (member, value, for_signal, is_column) in members {
            let member_path = at!("spec.mapping.{member}");
            match value {
                Some(_) if for_signal != signal => {
                    return Err(ValidationError::MappingNotForSignal {
                        path: member_path,
                        signal,
                    });
                }
                Some(column) if is_column => check_name(&member_path, column, "column")?,
                Some(_) => {}
                // A logs body is optional; everything else a signal maps is required.
                None if for_signal == signal && member != "body" => {
                    return Err(ValidationError::MappingRequired {
                        path: member_path,
                        signal,
                    });
                }
                None => {}
            }
        }
        if let Some(name) = &mapping.metric_name {
            let mut chars = name.chars();
            let valid = name.len() <= 255
                && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c));
            if !valid {
                return Err(ValidationError::InvalidName {
                    path: "spec.mapping.metricName".into(),
                    value: name.clone(),
                    what: "OTLP metric",
                });
            }
        }
        if mapping.attributes.len() > 64 {
            return Err(ValidationError::TooMany {
                path: "spec.mapping.attributes".into(),
                count: mapping.attributes.len(),
                max: 64,
            });
        }
        for (i, column) in mapping.attributes.iter().enumerate() {
            check_name(&at!("spec.mapping.attributes[{i}]"), column, "column")?;
        }
        super::error::check_unique(
            "spec.mapping.attributes",
            mapping.attributes.iter().map(String::as_str),
        )
    }
}

/// Checks an http(s) URL with a host; returns whether it is https.
fn check_endpoint(path: &str, endpoint: &str) -> Result<bool, ValidationError> {
    let invalid = || ValidationError::InvalidEndpoint {
        path: path.to_owned(),
        value: endpoint.to_owned(),
    };
    let (https, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(invalid());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Bracketed IPv6 literals carry colons of their own.
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err(invalid()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && !host.contains('@')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !host_ok || !port_ok || endpoint.len() > 2048 || endpoint.contains(char::is_whitespace) {
        return Err(invalid());
    }
    Ok(https)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(check_endpoint("e", "http://otel:4317"), Ok(false));
        assert_eq!(check_endpoint("e", "https://otlp.example.com/v1"), Ok(true));
        assert_eq!(check_endpoint("e", "http://[::1]:4317"), Ok(false));
        for bad in [
            "otel:4317",
            "grpc://otel:4317",
            "http://",
            "http://:4317",
            "http://otel:port",
            "http://otel:0",
            "http://user@otel",
        ] {
            assert!(check_endpoint("e", bad).is_err(), "{bad}");
        }
    }
}
