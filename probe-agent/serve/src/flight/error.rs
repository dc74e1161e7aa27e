//! Errors of the Flight endpoint: [`FlightError`] for starting and running
//! the server, [`RequestError`] for one bad call. A `RequestError` becomes a
//! `tonic::Status` in exactly one place, the `From` impl below.

use std::{net::SocketAddr, path::PathBuf};

use arrow_schema::ArrowError;
use datafusion::error::DataFusionError;
use tonic::Status;

/// Why the Flight endpoint could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlightError {
    #[error("the Flight bearer token is empty")]
    EmptyToken,
    #[error("cannot read the Flight TLS file {path}")]
    ReadTls {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Flight TLS configuration")]
    Tls {
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot set up the SQL engine")]
    SqlEngine {
        #[source]
        source: DataFusionError,
    },
    #[error("cannot listen for Arrow Flight on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the Arrow Flight server on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// What was wrong with one request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("ticket is not valid JSON for a table read: {source}")]
    TicketJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("command is neither a Flight SQL command nor JSON for a table read: {source}")]
    CommandJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("table name {name:?} is not of the form schema.table")]
    TableName { name: String },
    #[error(
        "descriptor path {path:?} does not name a table: use [schema, table] or [\"schema.table\"]"
    )]
    DescriptorPath { path: Vec<String> },
    #[error("descriptor has neither a path nor a command")]
    EmptyDescriptor,
    #[error("no table {table}")]
    UnknownTable { table: String },
    #[error("table {table} has no column {column:?} (columns: {available})")]
    UnknownColumn {
        table: String,
        column: String,
        available: String,
    },
    #[error("column {column:?} is requested twice")]
    DuplicateColumn { column: String },
    #[error("table {table} has no time_ column to filter `since`/`until` on")]
    NoTimeColumn { table: String },
    #[error(
        "`{field}`: {value:?} is neither Unix-epoch nanoseconds nor an RFC 3339 time: {source}"
    )]
    Time {
        field: &'static str,
        value: String,
        #[source]
        source: ArrowError,
    },
    #[error("`since` ({since} ns) is after `until` ({until} ns)")]
    EmptyRange { since: i64, until: i64 },
    #[error("`limit` must be at least 1")]
    ZeroLimit,
    #[error("`until` cannot be combined with `follow`: followed rows are newer than any bound")]
    FollowWithUntil,
    #[error(
        "follow of {table} fell {missed} batches behind and skipped them; \
         read again with `since` set to the last time_ received"
    )]
    Lagged { table: String, missed: u64 },
    #[error("SQL: {source}")]
    Sql {
        #[source]
        source: DataFusionError,
    },
    #[error("SQL: no table {table}")]
    SqlUnknownTable { table: String },
    #[error("SQL: expected exactly one statement, got {count}")]
    StatementCount { count: usize },
    #[error("only queries (SELECT, WITH, EXPLAIN) run here: Sonde's tables are read-only")]
    NotAQuery,
    #[error("query exceeded its memory budget of {limit} bytes: {source}")]
    MemoryBudget {
        limit: usize,
        #[source]
        source: DataFusionError,
    },
    #[error("query failed: {source}")]
    Execution {
        #[source]
        source: DataFusionError,
    },
    #[error("prepared statement handle is not valid UTF-8 SQL")]
    PreparedHandle,
    #[error("{what} is not supported: Sonde's tables are read-only")]
    ReadOnly { what: &'static str },
    #[error("cannot build the metadata answer: {source}")]
    Metadata {
        #[source]
        source: arrow_flight::error::FlightError,
    },
    #[error("cannot encode the result: {source}")]
    Arrow {
        #[source]
        source: ArrowError,
    },
    #[error("cannot read {table}: {source}")]
    Read {
        table: String,
        #[source]
        source: ArrowError,
    },
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Self {
        use RequestError as E;
        let message = error.to_string();
        match error {
            E::UnknownTable { .. } | E::SqlUnknownTable { .. } => Status::not_found(message),
            E::TicketJson { .. }
            | E::CommandJson { .. }
            | E::TableName { .. }
            | E::DescriptorPath { .. }
            | E::EmptyDescriptor
            | E::UnknownColumn { .. }
            | E::DuplicateColumn { .. }
            | E::NoTimeColumn { .. }
            | E::Time { .. }
            | E::EmptyRange { .. }
            | E::ZeroLimit
            | E::FollowWithUntil
            | E::Sql { .. }
            | E::StatementCount { .. }
            | E::NotAQuery
            | E::PreparedHandle => Status::invalid_argument(message),
            E::MemoryBudget { .. } => Status::resource_exhausted(message),
            E::Lagged { .. } => Status::data_loss(message),
            E::ReadOnly { .. } => Status::unimplemented(message),
            E::Execution { .. } | E::Arrow { .. } | E::Read { .. } | E::Metadata { .. } => {
                Status::internal(message)
            }
        }
    }
}

impl RequestError {
    /// Classifies an error from running a query: the memory pool refusing a
    /// reservation is the client's budget, anything else is ours.
    pub(crate) fn execution(source: DataFusionError, limit: usize) -> Self {
        if matches!(source.find_root(), DataFusionError::ResourcesExhausted(_)) {
            Self::MemoryBudget { limit, source }
        } else {
            Self::Execution { source }
        }
    }
}
