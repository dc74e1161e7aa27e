//! `sonde.http_events`: one row per HTTP/1.x request and its response, as
//! the traced process saw them on its socket (or, for TLS, through
//! OpenSSL). Column names are Pixie's where the meaning is the same.
//!
//! `time_` is when the exchange ended: the last response byte, or for an
//! exchange without a response the moment the agent gave up on it (the
//! connection closed or lost sync). `latency` is nanoseconds from the call
//! that carried the request's first byte to the call that carried the
//! response's last byte; 0 without a response. Rows whose request or
//! response was not seen whole have `complete` false and say why in
//! `incomplete_reason`.

use std::{net::SocketAddr, sync::Arc};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{BooleanBuilder, StringBuilder, UInt8Builder, UInt16Builder, UInt64Builder},
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use probe_capture::rows::standard_fields;
use probe_protocols::http::HttpExchange;

use super::columns::{Columns, RowSource};

/// The schema of `sonde.http_events`.
pub fn schema() -> SchemaRef {
    let mut fields = standard_fields();
    fields.extend([
        Field::new("local_addr", DataType::Utf8, true),
        Field::new("local_port", DataType::UInt16, true),
        Field::new("remote_addr", DataType::Utf8, true),
        Field::new("remote_port", DataType::UInt16, true),
        Field::new("trace_role", DataType::Utf8, false),
        Field::new("encrypted", DataType::Boolean, false),
        Field::new("major_version", DataType::UInt8, false),
        Field::new("minor_version", DataType::UInt8, false),
        Field::new("req_method", DataType::Utf8, false),
        Field::new("req_path", DataType::Utf8, false),
        Field::new("req_headers", DataType::Utf8, true),
        Field::new("req_body_size", DataType::UInt64, false),
        Field::new("req_body", DataType::Utf8, false),
        Field::new("resp_status", DataType::UInt16, false),
        Field::new("resp_message", DataType::Utf8, false),
        Field::new("resp_headers", DataType::Utf8, true),
        Field::new("resp_body_size", DataType::UInt64, false),
        Field::new("resp_body", DataType::Utf8, false),
        Field::new("latency", DataType::UInt64, false),
        Field::new("complete", DataType::Boolean, false),
        Field::new("incomplete_reason", DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// Where an exchange happened: the connection's side of it.
pub struct ExchangeSide<'a> {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// "client" or "server".
    pub role: &'a str,
    pub encrypted: bool,
}

/// `sonde.http_events` rows being built.
pub struct HttpRows {
    schema: SchemaRef,
    standard: Columns<0>,
    local_addr: StringBuilder,
    local_port: UInt16Builder,
    remote_addr: StringBuilder,
    remote_port: UInt16Builder,
    trace_role: StringBuilder,
    encrypted: BooleanBuilder,
    major_version: UInt8Builder,
    minor_version: UInt8Builder,
    req_method: StringBuilder,
    req_path: StringBuilder,
    req_headers: StringBuilder,
    req_body_size: UInt64Builder,
    req_body: StringBuilder,
    resp_status: UInt16Builder,
    resp_message: StringBuilder,
    resp_headers: StringBuilder,
    resp_body_size: UInt64Builder,
    resp_body: StringBuilder,
    latency: UInt64Builder,
    complete: BooleanBuilder,
    incomplete_reason: StringBuilder,
}

impl Default for HttpRows {
    fn default() -> Self {
        Self {
            schema: schema(),
            standard: Columns::default(),
            local_addr: StringBuilder::new(),
            local_port: UInt16Builder::new(),
            remote_addr: StringBuilder::new(),
            remote_port: UInt16Builder::new(),
            trace_role: StringBuilder::new(),
            encrypted: BooleanBuilder::new(),
            major_version: UInt8Builder::new(),
            minor_version: UInt8Builder::new(),
            req_method: StringBuilder::new(),
            req_path: StringBuilder::new(),
            req_headers: StringBuilder::new(),
            req_body_size: UInt64Builder::new(),
            req_body: StringBuilder::new(),
            resp_status: UInt16Builder::new(),
            resp_message: StringBuilder::new(),
            resp_headers: StringBuilder::new(),
            resp_body_size: UInt64Builder::new(),
            resp_body: StringBuilder::new(),
            latency: UInt64Builder::new(),
            complete: BooleanBuilder::new(),
            incomplete_reason: StringBuilder::new(),
        }
    }
}

impl HttpRows {
    pub fn len(&self) -> usize {
        self.standard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.standard.is_empty()
    }

    pub fn append(&mut self, source: &RowSource<'_>, side: &ExchangeSide<'_>, x: &HttpExchange) {
        self.standard.append_source(source);
        append_addr(&mut self.local_addr, &mut self.local_port, side.local);
        append_addr(&mut self.remote_addr, &mut self.remote_port, side.remote);
        self.trace_role.append_value(side.role);
        self.encrypted.append_value(side.encrypted);
        self.major_version.append_value(x.major_version);
        self.minor_version.append_value(x.minor_version);
        self.req_method.append_value(&x.req_method);
        self.req_path.append_value(&x.req_path);
        self.req_headers.append_option(x.req_headers.as_deref());
        self.req_body_size.append_value(x.req_body_size);
        self.req_body
            .append_value(String::from_utf8_lossy(&x.req_body));
        self.resp_status.append_value(x.resp_status);
        self.resp_message.append_value(&x.resp_message);
        self.resp_headers.append_option(x.resp_headers.as_deref());
        self.resp_body_size.append_value(x.resp_body_size);
        self.resp_body
            .append_value(String::from_utf8_lossy(&x.resp_body));
        self.latency.append_value(x.latency_ns);
        self.complete.append_value(x.complete);
        self.incomplete_reason
            .append_option(x.incomplete_reason.map(|r| r.as_str()));
    }

    /// The rows appended since the last call; the builders start over.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.standard.finish_with(
            &self.schema,
            [
                Arc::new(self.local_addr.finish()) as ArrayRef,
                Arc::new(self.local_port.finish()),
                Arc::new(self.remote_addr.finish()),
                Arc::new(self.remote_port.finish()),
                Arc::new(self.trace_role.finish()),
                Arc::new(self.encrypted.finish()),
                Arc::new(self.major_version.finish()),
                Arc::new(self.minor_version.finish()),
                Arc::new(self.req_method.finish()),
                Arc::new(self.req_path.finish()),
                Arc::new(self.req_headers.finish()),
                Arc::new(self.req_body_size.finish()),
                Arc::new(self.req_body.finish()),
                Arc::new(self.resp_status.finish()),
                Arc::new(self.resp_message.finish()),
                Arc::new(self.resp_headers.finish()),
                Arc::new(self.resp_body_size.finish()),
                Arc::new(self.resp_body.finish()),
                Arc::new(self.latency.finish()),
                Arc::new(self.complete.finish()),
                Arc::new(self.incomplete_reason.finish()),
            ],
        )
    }
}

/// An address as text and its port, or two nulls.
pub fn append_addr(addr: &mut StringBuilder, port: &mut UInt16Builder, value: Option<SocketAddr>) {
    match value {
        Some(value) => {
            addr.append_value(value.ip().to_string());
            port.append_value(value.port());
        }
        None => {
            addr.append_null();
            port.append_null();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_batch_of_its_schema() {
        let mut rows = HttpRows::default();
        let exchange = HttpExchange {
            req_method: "GET".into(),
            req_path: "/x".into(),
            resp_status: 404,
            resp_message: "Not Found".into(),
            major_version: 1,
            minor_version: 1,
            latency_ns: 5,
            complete: true,
            ..HttpExchange::default()
        };
        rows.append(
            &RowSource {
                time_ns: 1,
                node: "n",
                pid: 2,
                tid: 3,
                comm: "curl",
                cgroup_id: 4,
                identity: None,
            },
            &ExchangeSide {
                local: Some("127.0.0.1:5000".parse().expect("address")),
                remote: None,
                role: "client",
                encrypted: false,
            },
            &exchange,
        );
        assert_eq!(rows.len(), 1);
        let batch = rows.finish().expect("a batch");
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), schema());
        assert!(rows.is_empty());
    }
}
