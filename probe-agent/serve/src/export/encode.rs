//! Rows to OTLP: each row of a [`Chunk`] becomes one log record, one gauge
//! data point or one span, as the Export's mapping says.
//!
//! Resource attributes: `k8s.node.name` (this agent's node),
//! `k8s.namespace.name` (the table's namespace), `sonde.table`
//! (`namespace.table`), and `k8s.pod.name` / `k8s.container.name` from the
//! row's `pod` and `container` columns when they are set; rows of one chunk
//! are grouped by pod and container. Record attributes: the columns
//! `mapping.attributes` lists (those a table lacks are left out), or every
//! column not used otherwise. The timestamp is the row's `time_`.

use std::collections::HashMap;

use arrow_array::{
    Array, ArrayRef,
    cast::AsArray,
    types::{
        Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
        TimestampNanosecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
    },
};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, TimeUnit};
use crds::v1alpha1::{Mapping, Signal};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};

use super::buffer::Chunk;
use probe_store::TIME_COLUMN;

/// One OTLP export request and how many rows it carries.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum OtlpRequest {
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
}

/// Why a chunk's rows cannot become the Export's signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("table {table} has no column {column} (mapping.{member})")]
    MissingColumn {
        table: String,
        column: String,
        member: &'static str,
    },
    #[error("column {column} of {table} is {data_type}, not a number (mapping.{member})")]
    NotNumeric {
        table: String,
        column: String,
        data_type: DataType,
        member: &'static str,
    },
}

/// The standard columns that become resource attributes (or the timestamp),
/// never record attributes.
const RESOURCE_COLUMNS: [&str; 5] = [TIME_COLUMN, "node", "namespace", "pod", "container"];

/// Builds requests from chunks, with what every record shares.
pub(crate) struct Encoder<'a> {
    pub signal: Signal,
    pub mapping: &'a Mapping,
    pub node: &'a str,
    /// Now, Unix-epoch nanoseconds: log records' observed time, and the
    /// timestamp of rows without `time_`.
    pub now_ns: u64,
}

/// Rows of one chunk grouped by resource.
struct Group {
    resource: Resource,
    rows: Vec<usize>,
}

impl Encoder<'_> {
    /// One request for every chunk that maps, and why the others do not.
    /// Rows left out (a whole chunk that does not map, or a row whose value
    /// is null) are the chunks' rows minus [`record_count`] of the request.
    pub fn encode(&self, chunks: &[Chunk]) -> (OtlpRequest, Vec<(usize, MappingError)>) {
        let mut failed = Vec::new();
        let mut logs = Vec::new();
        let mut metrics = Vec::new();
        let mut spans = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            let result = match self.signal {
                Signal::Logs => self.logs(chunk).map(|r| logs.extend(r)),
                Signal::Metrics => self.metrics(chunk).map(|r| metrics.extend(r)),
                Signal::Traces => self.spans(chunk).map(|r| spans.extend(r)),
            };
            if let Err(e) = result {
                failed.push((index, e));
            }
        }
        let request = match self.signal {
            Signal::Logs => OtlpRequest::Logs(ExportLogsServiceRequest {
                resource_logs: logs,
            }),
            Signal::Metrics => OtlpRequest::Metrics(ExportMetricsServiceRequest {
                resource_metrics: metrics,
            }),
            Signal::Traces => OtlpRequest::Traces(ExportTraceServiceRequest {
                resource_spans: spans,
            }),
        };
        (request, failed)
    }

    fn logs(&self, chunk: &Chunk) -> Result<Vec<ResourceLogs>, MappingError> {
        let body = self
            .mapping
            .body
            .as_deref()
            .map(|c| column(chunk, c, "body"))
            .transpose()?;
        let rows = Rows::new(self, chunk);
        Ok(rows
            .groups()
            .into_iter()
            .map(|group| ResourceLogs {
                resource: Some(group.resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records: group
                        .rows
                        .iter()
                        .map(|&row| LogRecord {
                            time_unix_nano: rows.time(row),
                            observed_time_unix_nano: self.now_ns,
                            body: body.as_ref().and_then(|b| any_value(b, row)),
                            attributes: rows.attributes(row),
                            ..LogRecord::default()
                        })
                        .collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect())
    }

    fn metrics(&self, chunk: &Chunk) -> Result<Vec<ResourceMetrics>, MappingError> {
        let value_column = self.mapping.value.as_deref().unwrap_or_default();
        let values = column(chunk, value_column, "value")?;
        if !values.data_type().is_numeric() {
            return Err(MappingError::NotNumeric {
                table: chunk.table.to_string(),
                column: value_column.to_owned(),
                data_type: values.data_type().clone(),
                member: "value",
            });
        }
        let name = self.mapping.metric_name.clone().unwrap_or_default();
        let rows = Rows::new(self, chunk);
        Ok(rows
            .groups()
            .into_iter()
            .map(|group| ResourceMetrics {
                resource: Some(group.resource),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: vec![Metric {
                        name: name.clone(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: group
                                .rows
                                .iter()
                                .filter_map(|&row| {
                                    Some(NumberDataPoint {
                                        time_unix_nano: rows.time(row),
                                        value: Some(number(values, row)?),
                                        attributes: rows.attributes(row),
                                        ..NumberDataPoint::default()
                                    })
                                })
                                .collect(),
                        })),
                        ..Metric::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect())
    }

    fn spans(&self, chunk: &Chunk) -> Result<Vec<ResourceSpans>, MappingError> {
        let duration_column = self.mapping.duration.as_deref().unwrap_or_default();
        let durations = column(chunk, duration_column, "duration")?;
        if !durations.data_type().is_integer() {
            return Err(MappingError::NotNumeric {
                table: chunk.table.to_string(),
                column: duration_column.to_owned(),
                data_type: durations.data_type().clone(),
                member: "duration",
            });
        }
        let name = self.mapping.span_name.clone().unwrap_or_default();
        let rows = Rows::new(self, chunk);
        Ok(rows
            .groups()
            .into_iter()
            .map(|group| ResourceSpans {
                resource: Some(group.resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: group
                        .rows
                        .iter()
                        .map(|&row| {
                            let end = rows.time(row);
                            let duration = match number(durations, row) {
                                Some(number_data_point::Value::AsInt(ns)) => ns.max(0) as u64,
                                _ => 0,
                            };
                            Span {
                                trace_id: rand::random::<[u8; 16]>().to_vec(),
                                span_id: rand::random::<[u8; 8]>().to_vec(),
                                name: name.clone(),
                                kind: SpanKind::Internal as i32,
                                start_time_unix_nano: end.saturating_sub(duration),
                                end_time_unix_nano: end,
                                attributes: rows.attributes(row),
                                ..Span::default()
                            }
                        })
                        .collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect())
    }
}

/// A chunk's columns as the mapping uses them.
struct Rows<'a> {
    encoder: &'a Encoder<'a>,
    chunk: &'a Chunk,
    times: Option<&'a arrow_array::PrimitiveArray<TimestampNanosecondType>>,
    /// Attribute names and columns.
    attributes: Vec<(&'a str, &'a ArrayRef)>,
}

impl<'a> Rows<'a> {
    fn new(encoder: &'a Encoder<'a>, chunk: &'a Chunk) -> Self {
        let batch = &chunk.batch;
        let schema = batch.schema_ref();
        let times = schema
            .index_of(TIME_COLUMN)
            .ok()
            .map(|i| batch.column(i))
            .filter(|c| matches!(c.data_type(), DataType::Timestamp(TimeUnit::Nanosecond, _)))
            .map(|c| c.as_primitive::<TimestampNanosecondType>());
        let mapping = encoder.mapping;
        let used: Vec<&str> = [&mapping.body, &mapping.value, &mapping.duration]
            .into_iter()
            .filter_map(|c| c.as_deref())
            .collect();
        let attributes = if mapping.attributes.is_empty() {
            schema
                .fields()
                .iter()
                .zip(batch.columns())
                .filter(|(f, _)| {
                    !RESOURCE_COLUMNS.contains(&f.name().as_str())
                        && !used.contains(&f.name().as_str())
                })
                .map(|(f, c)| (f.name().as_str(), c))
                .collect()
        } else {
            mapping
                .attributes
                .iter()
                .filter_map(|name| {
                    let index = schema.index_of(name).ok()?;
                    Some((name.as_str(), batch.column(index)))
                })
                .collect()
        };
        Self {
            encoder,
            chunk,
            times,
            attributes,
        }
    }

    fn time(&self, row: usize) -> u64 {
        match self.times {
            Some(times) if times.is_valid(row) => times.value(row).max(0) as u64,
            _ => self.encoder.now_ns,
        }
    }

    fn attributes(&self, row: usize) -> Vec<KeyValue> {
        self.attributes
            .iter()
            .filter_map(|(name, column)| {
                Some(KeyValue {
                    key: (*name).to_owned(),
                    value: Some(any_value(column, row)?),
                })
            })
            .collect()
    }

    /// Rows grouped by their pod and container, in first-seen order.
    fn groups(&self) -> Vec<Group> {
        let batch = &self.chunk.batch;
        let text = |name: &str| {
            batch
                .schema_ref()
                .index_of(name)
                .ok()
                .and_then(|i| batch.column(i).as_string_opt::<i32>())
        };
        let pods = text("pod");
        let containers = text("container");
        let value = |column: Option<&'a arrow_array::StringArray>, row: usize| {
            column
                .filter(|c| c.is_valid(row))
                .map_or("", |c| c.value(row))
        };
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        let mut groups: Vec<Group> = Vec::new();
        for row in 0..batch.num_rows() {
            let key = (value(pods, row), value(containers, row));
            let at = *index.entry(key).or_insert_with(|| {
                groups.push(Group {
                    resource: self.resource(key.0, key.1),
                    rows: Vec::new(),
                });
                groups.len() - 1
            });
            groups[at].rows.push(row);
        }
        groups
    }

    fn resource(&self, pod: &str, container: &str) -> Resource {
        let table = &self.chunk.table;
        let mut attributes = vec![
            string_attribute("k8s.node.name", self.encoder.node),
            string_attribute("k8s.namespace.name", &table.schema),
            string_attribute("sonde.table", &table.to_string()),
        ];
        if !pod.is_empty() {
            attributes.push(string_attribute("k8s.pod.name", pod));
        }
        if !container.is_empty() {
            attributes.push(string_attribute("k8s.container.name", container));
        }
        Resource {
            attributes,
            ..Resource::default()
        }
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "sonde".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    }
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn column<'a>(
    chunk: &'a Chunk,
    name: &str,
    member: &'static str,
) -> Result<&'a ArrayRef, MappingError> {
    chunk
        .batch
        .column_by_name(name)
        .ok_or_else(|| MappingError::MissingColumn {
            table: chunk.table.to_string(),
            column: name.to_owned(),
            member,
        })
}

/// A cell as an OTLP value: integers as ints (u64 beyond i64 as text),
/// floats as doubles, strings, booleans and bytes as such, anything else as
/// arrow displays it. `None` for a null.
fn any_value(column: &ArrayRef, row: usize) -> Option<AnyValue> {
    use any_value::Value as V;
    if column.is_null(row) {
        return None;
    }
    let value = match column.data_type() {
        DataType::Boolean => V::BoolValue(column.as_boolean().value(row)),
        DataType::Utf8 => V::StringValue(column.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => V::StringValue(column.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => V::StringValue(column.as_string_view().value(row).to_owned()),
        DataType::Binary => V::BytesValue(column.as_binary::<i32>().value(row).to_vec()),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            V::IntValue(column.as_primitive::<TimestampNanosecondType>().value(row))
        }
        DataType::UInt64 => {
            let v = column.as_primitive::<UInt64Type>().value(row);
            i64::try_from(v).map_or_else(|_| V::StringValue(v.to_string()), V::IntValue)
        }
        _ => match number(column, row) {
            Some(number_data_point::Value::AsInt(v)) => V::IntValue(v),
            Some(number_data_point::Value::AsDouble(v)) => V::DoubleValue(v),
            None => {
                let formatter =
                    ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default()).ok()?;
                V::StringValue(formatter.value(row).to_string())
            }
        },
    };
    Some(AnyValue { value: Some(value) })
}

/// A numeric cell as a data point value; `None` for a null or a
/// non-number.
fn number(column: &ArrayRef, row: usize) -> Option<number_data_point::Value> {
    use number_data_point::Value as N;
    if column.is_null(row) {
        return None;
    }
    Some(match column.data_type() {
        DataType::Int8 => N::AsInt(column.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => N::AsInt(column.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => N::AsInt(column.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => N::AsInt(column.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => N::AsInt(column.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => N::AsInt(column.as_primitive::<UInt16Type>().value(row).into()),
        DataType::UInt32 => N::AsInt(column.as_primitive::<UInt32Type>().value(row).into()),
        DataType::UInt64 => {
            let v = column.as_primitive::<UInt64Type>().value(row);
            i64::try_from(v).map_or(N::AsDouble(v as f64), N::AsInt)
        }
        DataType::Float32 => N::AsDouble(column.as_primitive::<Float32Type>().value(row).into()),
        DataType::Float64 => N::AsDouble(column.as_primitive::<Float64Type>().value(row)),
        _ => return None,
    })
}

/// Rows a request carries.
pub(crate) fn record_count(request: &OtlpRequest) -> u64 {
    let count: usize = match request {
        OtlpRequest::Logs(r) => r
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum(),
        OtlpRequest::Metrics(r) => r
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                _ => 0,
            })
            .sum(),
        OtlpRequest::Traces(r) => r
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum(),
    };
    count as u64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array};
    use arrow_schema::{Field, Schema};

    use super::*;
    use probe_store::TableName;

    fn chunk() -> Chunk {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                TIME_COLUMN,
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new("pod", DataType::Utf8, false),
            Field::new("container", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, true),
            Field::new("latency", DataType::UInt64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![1_000, 2_000, 3_000])),
                Arc::new(StringArray::from(vec!["web", "db", "web"])),
                Arc::new(StringArray::from(vec!["app", "pg", "app"])),
                Arc::new(StringArray::from(vec![Some("/a"), None, Some("/c")])),
                Arc::new(UInt64Array::from(vec![Some(100), Some(200), None])),
            ],
        )
        .expect("columns match");
        Chunk {
            table: TableName::new("shop", "requests"),
            batch,
        }
    }

    fn encoder(signal: Signal, mapping: &Mapping) -> Encoder<'_> {
        Encoder {
            signal,
            mapping,
            node: "node-a",
            now_ns: 9_000,
        }
    }

    #[test]
    fn logs_group_rows_by_pod_with_body_and_attributes() {
        let mapping = Mapping {
            body: Some("path".into()),
            ..Mapping::default()
        };
        let (request, failed) = encoder(Signal::Logs, &mapping).encode(&[chunk()]);
        assert!(failed.is_empty());
        assert_eq!(record_count(&request), 3);
        let OtlpRequest::Logs(logs) = request else {
            panic!("a logs request");
        };
        assert_eq!(logs.resource_logs.len(), 2, "web/app and db/pg");
        let web = &logs.resource_logs[0];
        let keys: Vec<&str> = web
            .resource
            .as_ref()
            .map(|r| r.attributes.iter().map(|a| a.key.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "k8s.node.name",
                "k8s.namespace.name",
                "sonde.table",
                "k8s.pod.name",
                "k8s.container.name"
            ]
        );
        let records = &web.scope_logs[0].log_records;
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].time_unix_nano, 3_000);
        assert_eq!(
            records[0].body,
            Some(AnyValue {
                value: Some(any_value::Value::StringValue("/a".into()))
            })
        );
        // latency (not mapped otherwise) is an attribute; null ones are left out.
        assert_eq!(records[0].attributes.len(), 1);
        assert!(records[1].attributes.is_empty());
    }

    #[test]
    fn spans_end_at_time_and_last_the_duration() {
        let mapping = Mapping {
            span_name: Some("handle".into()),
            duration: Some("latency".into()),
            attributes: vec!["path".into(), "absent".into()],
            ..Mapping::default()
        };
        let (request, failed) = encoder(Signal::Traces, &mapping).encode(&[chunk()]);
        assert!(failed.is_empty());
        let OtlpRequest::Traces(traces) = request else {
            panic!("a traces request");
        };
        let span = &traces.resource_spans[1].scope_spans[0].spans[0];
        assert_eq!(span.name, "handle");
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (1_800, 2_000)
        );
        assert_eq!(span.trace_id.len(), 16);
        assert!(span.attributes.is_empty(), "path is null, absent is absent");
    }

    #[test]
    fn a_non_numeric_value_column_fails_the_chunk_with_a_reason() {
        let mapping = Mapping {
            metric_name: Some("sonde.requests".into()),
            value: Some("path".into()),
            ..Mapping::default()
        };
        let (request, failed) = encoder(Signal::Metrics, &mapping).encode(&[chunk()]);
        assert_eq!(record_count(&request), 0);
        assert_eq!(failed.len(), 1);
        assert_eq!(
            failed[0].1.to_string(),
            "column path of shop.requests is Utf8, not a number (mapping.value)"
        );
        let mapping = Mapping {
            metric_name: Some("sonde.requests".into()),
            value: Some("latency".into()),
            ..Mapping::default()
        };
        let (request, failed) = encoder(Signal::Metrics, &mapping).encode(&[chunk()]);
        assert!(failed.is_empty());
        // A null value makes no data point: the caller counts that row as
        // dropped (rows taken minus rows in the request).
        assert_eq!(record_count(&request), 2);
    }
}
