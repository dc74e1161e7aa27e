//! `sonde.conn_stats`: one row per TCP connection per sample, for every
//! connection a process opened (`connect`) or accepted (`accept`) since the
//! agent started: its ends, the protocol its first bytes showed, and the
//! bytes sent and received so far. A connection closed since the last
//! sample has one last row with `open` false and its final totals.

use std::{net::SocketAddr, sync::Arc};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{BooleanBuilder, StringBuilder, UInt16Builder, UInt64Builder},
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use probe_capture::rows::standard_fields;
use probe_common::sock;

use super::{
    columns::{Columns, RowSource},
    http_events::append_addr,
};

/// The schema of `sonde.conn_stats`.
pub fn schema() -> SchemaRef {
    let mut fields = standard_fields();
    fields.extend([
        Field::new("local_addr", DataType::Utf8, true),
        Field::new("local_port", DataType::UInt16, true),
        Field::new("remote_addr", DataType::Utf8, true),
        Field::new("remote_port", DataType::UInt16, true),
        Field::new("trace_role", DataType::Utf8, false),
        Field::new("protocol", DataType::Utf8, false),
        Field::new("bytes_sent", DataType::UInt64, false),
        Field::new("bytes_recv", DataType::UInt64, false),
        Field::new("open", DataType::Boolean, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// The name of a `sock::PROTO_*` value, as the `protocol` column has it.
pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        sock::PROTO_HTTP => "http",
        sock::PROTO_TLS => "tls",
        sock::PROTO_OTHER => "other",
        _ => "unknown",
    }
}

/// The name of a `sock::ROLE_*` value.
pub fn role_name(role: u8) -> &'static str {
    match role {
        sock::ROLE_CLIENT => "client",
        sock::ROLE_SERVER => "server",
        _ => "unknown",
    }
}

/// One connection as a sample sees it.
pub struct ConnSample {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub role: u8,
    pub protocol: u8,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub open: bool,
}

/// `sonde.conn_stats` rows being built.
pub struct ConnRows {
    schema: SchemaRef,
    standard: Columns<0>,
    local_addr: StringBuilder,
    local_port: UInt16Builder,
    remote_addr: StringBuilder,
    remote_port: UInt16Builder,
    trace_role: StringBuilder,
    protocol: StringBuilder,
    bytes_sent: UInt64Builder,
    bytes_recv: UInt64Builder,
    open: BooleanBuilder,
}

impl Default for ConnRows {
    fn default() -> Self {
        Self {
            schema: schema(),
            standard: Columns::default(),
            local_addr: StringBuilder::new(),
            local_port: UInt16Builder::new(),
            remote_addr: StringBuilder::new(),
            remote_port: UInt16Builder::new(),
            trace_role: StringBuilder::new(),
            protocol: StringBuilder::new(),
            bytes_sent: UInt64Builder::new(),
            bytes_recv: UInt64Builder::new(),
            open: BooleanBuilder::new(),
        }
    }
}

impl ConnRows {
    pub fn len(&self) -> usize {
        self.standard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.standard.is_empty()
    }

    pub fn append(&mut self, source: &RowSource<'_>, conn: &ConnSample) {
        self.standard.append_source(source);
        append_addr(&mut self.local_addr, &mut self.local_port, conn.local);
        append_addr(&mut self.remote_addr, &mut self.remote_port, conn.remote);
        self.trace_role.append_value(role_name(conn.role));
        self.protocol.append_value(protocol_name(conn.protocol));
        self.bytes_sent.append_value(conn.bytes_sent);
        self.bytes_recv.append_value(conn.bytes_recv);
        self.open.append_value(conn.open);
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
                Arc::new(self.protocol.finish()),
                Arc::new(self.bytes_sent.finish()),
                Arc::new(self.bytes_recv.finish()),
                Arc::new(self.open.finish()),
            ],
        )
    }
}
