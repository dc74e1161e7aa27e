//! The `sonde` command: lists, queries and tails the tables a Sonde agent
//! serves over Arrow Flight.
//!
//! - `sonde tables`: one row per table (ListFlights).
//! - `sonde query SQL`: a Flight SQL statement.
//! - `sonde tail TABLE`: DoGet in follow mode, printing rows as they come.
//! - `sonde status`: the Tracepoints of a cluster with their phase and node
//!   counts, or (`--nodes`) each node's agent report, from the apiserver.
//!
//! Output is a pretty table by default, or CSV, JSON lines or an Arrow IPC
//! stream (`--output`).

mod output;
pub mod status;

use std::{path::PathBuf, time::Duration};

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_flight::{
    FlightClient, FlightDescriptor, FlightInfo, Ticket,
    error::FlightError,
    sql::{CommandStatementQuery, ProstMessageExt},
};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub use output::{OutputFormat, Sink};

/// Where agents listen unless told otherwise.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";
/// Where sonde-query listens unless told otherwise (port-forward its
/// Service: `kubectl port-forward svc/sonde-query 50052`).
pub const DEFAULT_CLUSTER_ADDR: &str = "http://127.0.0.1:50052";
/// The call header that lets sonde-query answer without some nodes.
const PARTIAL_HEADER: &str = "x-sonde-partial-results";

/// Query and follow the tables of a Sonde agent.
#[derive(Debug, Parser)]
#[command(name = "sonde", version, about)]
pub struct Cli {
    /// The agent's Arrow Flight endpoint (`https://` for TLS).
    #[arg(long, env = "SONDE_ADDR", default_value = DEFAULT_ADDR, global = true)]
    pub addr: String,
    /// Bearer token, when the endpoint requires one.
    #[arg(long, env = "SONDE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM certificate of the CA that signed the endpoint's certificate
    /// (for `https://` addresses; otherwise the built-in web roots).
    #[arg(long, env = "SONDE_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Ask sonde-query (every node of the cluster) instead of one agent.
    #[arg(long, env = "SONDE_CLUSTER", global = true)]
    pub cluster: bool,
    /// sonde-query's Flight SQL endpoint, used with --cluster.
    #[arg(long, env = "SONDE_CLUSTER_ADDR", default_value = DEFAULT_CLUSTER_ADDR, global = true)]
    pub cluster_addr: String,
    /// With --cluster: answer without the nodes whose agents cannot be
    /// reached, naming them on stderr, instead of failing.
    #[arg(long, env = "SONDE_PARTIAL", global = true)]
    pub partial: bool,
    /// Output format.
    #[arg(long, short, env = "SONDE_OUTPUT", value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the tables with their row counts and sizes.
    Tables,
    /// Run one SQL query, e.g. `SELECT comm, count(*) FROM shop.opens GROUP BY comm`.
    Query {
        /// The SQL statement.
        sql: String,
    },
    /// Print a table's rows, then new rows as they are captured.
    Tail {
        /// `schema.table`, e.g. `shop.opens`.
        table: String,
        /// Columns to print (comma-separated); all by default.
        #[arg(long, env = "SONDE_COLUMNS", value_delimiter = ',')]
        columns: Vec<String>,
        /// Start at this time: RFC 3339, Unix-epoch nanoseconds, or an age
        /// such as `30s`, `5m`, `2h`.
        #[arg(long, env = "SONDE_SINCE")]
        since: Option<String>,
        /// Stop after this many rows.
        #[arg(long, env = "SONDE_LIMIT")]
        limit: Option<u64>,
    },
    /// Show the cluster's Tracepoints (phase, nodes, problems), read from the
    /// apiserver with kubectl's kubeconfig; `--nodes`: each node's agent.
    Status {
        /// Only this namespace; all namespaces by default.
        #[arg(long, short, env = "SONDE_NAMESPACE")]
        namespace: Option<String>,
        /// One row per node instead: heartbeat, kernel, assignments by state.
        #[arg(long, env = "SONDE_STATUS_NODES")]
        nodes: bool,
    },
}

/// Why a command failed; each renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid address {addr:?}: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot read the CA certificate {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr}: {message} ({code:?})")]
    Server {
        addr: String,
        code: tonic::Code,
        message: String,
    },
    #[error("{addr}: {source}")]
    Flight {
        addr: String,
        #[source]
        source: FlightError,
    },
    #[error("invalid --since {value:?}: use RFC 3339, nanoseconds or an age like 5m")]
    Since { value: String },
    #[error("cannot write the output: {source}")]
    Output {
        #[source]
        source: ArrowError,
    },
    #[error("Kubernetes API: {source}")]
    Kube {
        #[source]
        source: kube::Error,
    },
    #[error("cannot write the output: {source}")]
    Io {
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// Whether the reader of our output went away (`sonde tail | head`).
    pub fn is_broken_pipe(&self) -> bool {
        let io = match self {
            Self::Io { source } => Some(source),
            Self::Output {
                source: ArrowError::IoError(_, source),
            } => Some(source),
            _ => None,
        };
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// A connection to one agent.
pub struct Connection {
    addr: String,
    client: FlightClient,
}

impl Connection {
    pub async fn open(
        addr: &str,
        token: Option<&str>,
        tls_ca: Option<&PathBuf>,
    ) -> Result<Self, CliError> {
        let invalid = |source| CliError::Address {
            addr: addr.to_owned(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(invalid)?
            .connect_timeout(Duration::from_secs(5));
        if addr.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match tls_ca {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| CliError::ReadCa {
                        path: path.clone(),
                        source,
                    })?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_webpki_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(invalid)?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| CliError::Connect {
                addr: addr.to_owned(),
                reason: root_cause(&error),
            })?;
        let mut client = FlightClient::new(channel);
        if let Some(token) = token {
            client
                .add_header("authorization", &format!("Bearer {token}"))
                .map_err(|source| CliError::Flight {
                    addr: addr.to_owned(),
                    source,
                })?;
        }
        Ok(Self {
            addr: addr.to_owned(),
            client,
        })
    }

    /// Asks sonde-query for an answer even when some nodes are missing.
    pub fn allow_partial(&mut self) -> Result<(), CliError> {
        self.client
            .add_header(PARTIAL_HEADER, "true")
            .map_err(|source| CliError::Flight {
                addr: self.addr.clone(),
                source,
            })
    }

    fn error(&self, error: FlightError) -> CliError {
        match error {
            FlightError::Tonic(status) => CliError::Server {
                addr: self.addr.clone(),
                code: status.code(),
                message: status.message().to_owned(),
            },
            source => CliError::Flight {
                addr: self.addr.clone(),
                source,
            },
        }
    }

    /// One row per table: name, rows, bytes, columns.
    pub async fn tables(&mut self) -> Result<RecordBatch, CliError> {
        let infos: Vec<FlightInfo> = self
            .client
            .list_flights(Vec::<u8>::new())
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        let mut names = Vec::with_capacity(infos.len());
        let mut columns = Vec::with_capacity(infos.len());
        for info in &infos {
            let path = info
                .flight_descriptor
                .as_ref()
                .map(|d| d.path.join("."))
                .unwrap_or_default();
            names.push(path);
            let schema = info
                .clone()
                .try_decode_schema()
                .map_err(|e| self.error(e.into()))?;
            let list: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            columns.push(list.join(", "));
        }
        let schema = Schema::new(vec![
            Field::new("table", DataType::Utf8, false),
            Field::new("rows", DataType::Int64, false),
            Field::new("bytes", DataType::Int64, false),
            Field::new("columns", DataType::Utf8, false),
        ]);
        let arrays: Vec<ArrayRef> = vec![
            std::sync::Arc::new(StringArray::from(names)),
            std::sync::Arc::new(Int64Array::from_iter_values(
                infos.iter().map(|i| i.total_records),
            )),
            std::sync::Arc::new(Int64Array::from_iter_values(
                infos.iter().map(|i| i.total_bytes),
            )),
            std::sync::Arc::new(StringArray::from(columns)),
        ];
        RecordBatch::try_new(std::sync::Arc::new(schema), arrays)
            .map_err(|source| CliError::Output { source })
    }

    /// Runs a Flight SQL statement and writes every batch of its result.
    pub async fn query<W: std::io::Write>(
        &mut self,
        sql: &str,
        sink: &mut Sink<W>,
    ) -> Result<(), CliError> {
        let command = CommandStatementQuery {
            query: sql.to_owned(),
            transaction_id: None,
        };
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        let info = self
            .client
            .get_flight_info(descriptor)
            .await
            .map_err(|e| self.error(e))?;
        let schema = info
            .clone()
            .try_decode_schema()
            .map_err(|e| self.error(e.into()))?;
        sink.set_schema(std::sync::Arc::new(schema));
        note_missing_nodes(&info.app_metadata);
        for endpoint in &info.endpoint {
            let Some(ticket) = endpoint.ticket.clone() else {
                continue;
            };
            self.read(ticket, sink).await?;
        }
        Ok(())
    }

    /// Follows a table, writing batches as they arrive, until the server
    /// ends the stream (the limit was reached) or the process is stopped.
    pub async fn tail<W: std::io::Write>(
        &mut self,
        ticket: &serde_json::Value,
        sink: &mut Sink<W>,
    ) -> Result<(), CliError> {
        self.read(Ticket::new(ticket.to_string()), sink).await
    }

    async fn read<W: std::io::Write>(
        &mut self,
        ticket: Ticket,
        sink: &mut Sink<W>,
    ) -> Result<(), CliError> {
        let mut stream = self
            .client
            .do_get(ticket)
            .await
            .map_err(|e| self.error(e))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| self.error(e))?;
            sink.write(&batch)?;
        }
        if let Some(schema) = stream.schema() {
            sink.set_schema(std::sync::Arc::clone(schema));
        }
        Ok(())
    }
}

/// The DoGet ticket of `sonde tail`.
pub fn tail_ticket(
    table: &str,
    columns: &[String],
    since: Option<&str>,
    limit: Option<u64>,
    now: std::time::SystemTime,
) -> Result<serde_json::Value, CliError> {
    let mut ticket = serde_json::json!({ "table": table, "follow": true });
    if !columns.is_empty() {
        ticket["columns"] = serde_json::json!(columns);
    }
    if let Some(since) = since {
        ticket["since"] = parse_since(since, now)?;
    }
    if let Some(limit) = limit {
        ticket["limit"] = serde_json::json!(limit);
    }
    Ok(ticket)
}

/// Nanoseconds and RFC 3339 go to the server as they are; an age becomes
/// nanoseconds before `now`.
fn parse_since(value: &str, now: std::time::SystemTime) -> Result<serde_json::Value, CliError> {
    let bad = || CliError::Since {
        value: value.to_owned(),
    };
    if let Ok(nanos) = value.parse::<i64>() {
        return Ok(serde_json::json!(nanos));
    }
    let unit = match value.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => 0,
    };
    let amount = value
        .get(..value.len().saturating_sub(1))
        .and_then(|n| n.parse::<u64>().ok());
    match amount {
        Some(amount) if unit > 0 => {
            let age = Duration::from_secs(amount.checked_mul(unit).ok_or_else(bad)?);
            let at = now
                .checked_sub(age)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .ok_or_else(bad)?;
            let nanos = i64::try_from(at.as_nanos()).map_err(|_| bad())?;
            Ok(serde_json::json!(nanos))
        }
        // Anything else should be an RFC 3339 time; the server says
        // precisely what is wrong with it if not.
        _ if value.contains('T') || value.contains('-') => Ok(serde_json::json!(value)),
        _ => Err(bad()),
    }
}

/// Says on stderr which nodes a partial cluster answer left out
/// (sonde-query's `{"missing_nodes": {node: why}}` app_metadata).
fn note_missing_nodes(app_metadata: &[u8]) {
    let Ok(metadata) = serde_json::from_slice::<serde_json::Value>(app_metadata) else {
        return;
    };
    if let Some(missing) = metadata["missing_nodes"].as_object() {
        for (node, why) in missing {
            eprintln!(
                "sonde: partial answer, node {node} missing: {}",
                why.as_str().unwrap_or_default()
            );
        }
    }
}

/// Runs a parsed command line, writing results to `out`.
pub async fn run<W: std::io::Write>(cli: Cli, out: W) -> Result<(), CliError> {
    let mut sink = Sink::new(cli.output, out);
    if let Command::Status { namespace, nodes } = &cli.command {
        let client = status::client().await?;
        let batch = if *nodes {
            status::nodes(client).await?
        } else {
            status::tracepoints(client, namespace.as_deref()).await?
        };
        sink.write(&batch)?;
        return sink.finish();
    }
    let addr = if cli.cluster {
        &cli.cluster_addr
    } else {
        &cli.addr
    };
    let mut connection = Connection::open(addr, cli.token.as_deref(), cli.tls_ca.as_ref()).await?;
    if cli.cluster && cli.partial {
        connection.allow_partial()?;
    }
    match &cli.command {
        Command::Tables => {
            let batch = connection.tables().await?;
            sink.write(&batch)?;
        }
        Command::Query { sql } => connection.query(sql, &mut sink).await?,
        Command::Tail {
            table,
            columns,
            since,
            limit,
        } => {
            // Rows as they come, not a table at the end.
            sink.stream_tables();
            let ticket = tail_ticket(
                table,
                columns,
                since.as_deref(),
                *limit,
                std::time::SystemTime::now(),
            )?;
            connection.tail(&ticket, &mut sink).await?;
        }
        Command::Status { .. } => {}
    }
    sink.finish()
}

/// The innermost error's message: "Connection refused (os error 111)"
/// rather than "transport error".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn tail_tickets_carry_what_was_asked() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let ticket = tail_ticket("shop.opens", &["comm".into()], Some("5m"), Some(3), now).unwrap();
        assert_eq!(
            ticket,
            serde_json::json!({"table": "shop.opens", "follow": true, "columns": ["comm"],
                               "since": 700_000_000_000i64, "limit": 3})
        );
        let ticket = tail_ticket("a.b", &[], Some("2025-01-01T00:00:00Z"), None, now).unwrap();
        assert_eq!(ticket["since"], "2025-01-01T00:00:00Z");
        assert_eq!(
            tail_ticket("a.b", &[], Some("12"), None, now).unwrap()["since"],
            12
        );
        assert!(tail_ticket("a.b", &[], Some("soon"), None, SystemTime::now()).is_err());
    }

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
        let command = Cli::command();
        for arg in command.get_arguments() {
            if arg.get_id() != "help" && arg.get_id() != "version" {
                assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
            }
        }
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.is_positional() || arg.get_id() == "help" {
                    continue;
                }
                assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
            }
        }
    }
}
