//! `sonde.dns_events`: one row per DNS query over UDP and its response, as
//! the resolver that sent it saw them (a connected UDP socket: glibc's
//! resolver, dig, Go's and c-ares' resolvers). `time_` is the response's
//! time, or for a query never answered the moment the agent gave up on it
//! (`answered` false, after [`UNANSWERED_AFTER`]).

use std::{sync::Arc, time::Duration};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{BooleanBuilder, StringBuilder, UInt16Builder, UInt64Builder},
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use probe_capture::rows::standard_fields;
use probe_protocols::dns::DnsExchange;

use super::{
    columns::{Columns, RowSource},
    http_events::{ExchangeSide, append_addr},
};

/// How long a query waits for its response before it is a row of its own.
pub const UNANSWERED_AFTER: Duration = Duration::from_secs(5);

/// The schema of `sonde.dns_events`.
pub fn schema() -> SchemaRef {
    let mut fields = standard_fields();
    fields.extend([
        Field::new("local_addr", DataType::Utf8, true),
        Field::new("local_port", DataType::UInt16, true),
        Field::new("remote_addr", DataType::Utf8, true),
        Field::new("remote_port", DataType::UInt16, true),
        Field::new("trace_role", DataType::Utf8, false),
        Field::new("query_id", DataType::UInt16, false),
        Field::new("query_name", DataType::Utf8, false),
        Field::new("query_type", DataType::Utf8, false),
        Field::new("answered", DataType::Boolean, false),
        Field::new("rcode", DataType::Utf8, false),
        Field::new("answers", DataType::Utf8, false),
        Field::new("truncated", DataType::Boolean, false),
        Field::new("latency", DataType::UInt64, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// `sonde.dns_events` rows being built.
pub struct DnsRows {
    schema: SchemaRef,
    standard: Columns<0>,
    local_addr: StringBuilder,
    local_port: UInt16Builder,
    remote_addr: StringBuilder,
    remote_port: UInt16Builder,
    trace_role: StringBuilder,
    query_id: UInt16Builder,
    query_name: StringBuilder,
    query_type: StringBuilder,
    answered: BooleanBuilder,
    rcode: StringBuilder,
    answers: StringBuilder,
    truncated: BooleanBuilder,
    latency: UInt64Builder,
}

impl Default for DnsRows {
    fn default() -> Self {
        Self {
            schema: schema(),
            standard: Columns::default(),
            local_addr: StringBuilder::new(),
            local_port: UInt16Builder::new(),
            remote_addr: StringBuilder::new(),
            remote_port: UInt16Builder::new(),
            trace_role: StringBuilder::new(),
            query_id: UInt16Builder::new(),
            query_name: StringBuilder::new(),
            query_type: StringBuilder::new(),
            answered: BooleanBuilder::new(),
            rcode: StringBuilder::new(),
            answers: StringBuilder::new(),
            truncated: BooleanBuilder::new(),
            latency: UInt64Builder::new(),
        }
    }
}

impl DnsRows {
    pub fn len(&self) -> usize {
        self.standard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.standard.is_empty()
    }

    pub fn append(&mut self, source: &RowSource<'_>, side: &ExchangeSide<'_>, x: &DnsExchange) {
        self.standard.append_source(source);
        append_addr(&mut self.local_addr, &mut self.local_port, side.local);
        append_addr(&mut self.remote_addr, &mut self.remote_port, side.remote);
        self.trace_role.append_value(side.role);
        self.query_id.append_value(x.id);
        self.query_name.append_value(&x.query_name);
        self.query_type.append_value(&x.query_type);
        self.answered.append_value(x.answered);
        self.rcode.append_value(&x.rcode);
        self.answers.append_value(x.answers.join("\n"));
        self.truncated.append_value(x.truncated);
        self.latency.append_value(x.latency_ns);
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
                Arc::new(self.query_id.finish()),
                Arc::new(self.query_name.finish()),
                Arc::new(self.query_type.finish()),
                Arc::new(self.answered.finish()),
                Arc::new(self.rcode.finish()),
                Arc::new(self.answers.finish()),
                Arc::new(self.truncated.finish()),
                Arc::new(self.latency.finish()),
            ],
        )
    }
}
