//! Arrow Flight and Flight SQL over the agent's tables.
//!
//! One gRPC port serves both protocols. Flight SQL commands arrive as
//! protobuf `Any` messages in descriptors, tickets and actions; everything
//! else is the plain table path: descriptors name a table by path
//! (`["shop", "opens"]`) and tickets are JSON ([`TableTicket`]).
//!
//! - [`TableTicket`] / `table`: DoGet of one table with a column subset, a
//!   `time_` range, a row limit and a follow mode fed by
//!   [`TableSource::subscribe`].
//! - `sql`: DataFusion over live snapshots, with a memory budget per query.
//! - Authentication: an optional bearer token checked by an interceptor on
//!   every call, and optional TLS.
//! - [`FlightMetrics`]: calls by method and status code, and their duration,
//!   counted around the whole service.
//!
//! Every stream is a `BoxStream<'static, Result<_, Status>>`; request
//! errors are [`RequestError`]s and become a `tonic::Status` in one place.

pub mod cluster;
mod error;
#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
mod metrics;
mod provider;
mod service;
mod sql;
mod table;
#[cfg(test)]
mod tests;
mod ticket;
mod wire;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::net::TcpListener;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming},
};

pub use self::{
    error::{FlightError, RequestError},
    metrics::FlightMetrics,
    provider::time_range,
    ticket::{TableTicket, TimeBound},
};
use self::{service::SondeFlightService, sql::SqlEngine};
use probe_store::TableSource;

/// The rows of a cluster scan on this node: `ticket` read from `source`,
/// which must produce exactly `schema` (the coordinator planned with it; a
/// table whose columns changed since is an error, not a silent mismatch).
pub(crate) fn read_for_worker(
    source: &dyn TableSource,
    ticket: &TableTicket,
    schema: &arrow_schema::SchemaRef,
) -> Result<Vec<arrow_array::RecordBatch>, datafusion::error::DataFusionError> {
    let external = |e: RequestError| datafusion::error::DataFusionError::External(Box::new(e));
    let name = ticket.table_name().map_err(external)?;
    let info = source.info(&name).ok_or_else(|| {
        external(RequestError::UnknownTable {
            table: name.to_string(),
        })
    })?;
    let read = ticket.validate(&info).map_err(external)?;
    if read.output_schema.fields() != schema.fields() {
        return Err(datafusion::error::DataFusionError::Execution(format!(
            "table {name} on this node has columns {:?}, the plan expects {:?}",
            read.output_schema
                .fields()
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>(),
            schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
        )));
    }
    table::read_snapshot(source, read).map_err(external)
}

/// The default memory budget of one SQL query: 256 MiB.
pub const DEFAULT_QUERY_MEMORY_LIMIT: usize = 256 << 20;

/// How the Flight endpoint listens and whom it lets in.
#[derive(Clone, Debug)]
pub struct FlightConfig {
    /// Where to listen; port 0 picks a free port (see [`FlightServer::local_addr`]).
    pub addr: SocketAddr,
    /// When set, every call must carry `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// PEM certificate chain and private key; when set the port speaks TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bytes one SQL query may hold in memory (hash tables, sorts) before it
    /// fails with `RESOURCE_EXHAUSTED`.
    pub query_memory_limit: usize,
    /// When set, the port also serves the distributed worker of cluster
    /// queries (sonde-query) as this node, behind the same token and TLS.
    pub worker_node: Option<String>,
}

impl FlightConfig {
    /// A plain-text, unauthenticated endpoint on `addr` with the default
    /// query memory budget.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            token: None,
            tls: None,
            query_memory_limit: DEFAULT_QUERY_MEMORY_LIMIT,
            worker_node: None,
        }
    }
}

/// A bound, not yet serving, Flight endpoint.
pub struct FlightServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<ServerTlsConfig>,
    service: SondeFlightService,
    token: Option<String>,
    metrics: FlightMetrics,
    worker: Option<datafusion_distributed::Worker>,
}

impl std::fmt::Debug for FlightServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightServer")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// Validates `config` (TLS files are read here), then binds its address.
pub async fn bind(
    source: Arc<dyn TableSource>,
    config: FlightConfig,
) -> Result<FlightServer, FlightError> {
    if config.token.as_deref().is_some_and(str::is_empty) {
        return Err(FlightError::EmptyToken);
    }
    let tls = match &config.tls {
        Some((cert, key)) => {
            let cert_pem = read_pem(cert).await?;
            let key_pem = read_pem(key).await?;
            Some(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)))
        }
        None => None,
    };
    let engine = SqlEngine::new(Arc::clone(&source), config.query_memory_limit)?;
    let worker = config
        .worker_node
        .clone()
        .map(|node| cluster::agent_worker(node, Arc::clone(&source), config.query_memory_limit));
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| FlightError::Bind {
            addr: config.addr,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| FlightError::Bind {
        addr: config.addr,
        source,
    })?;
    Ok(FlightServer {
        listener,
        local_addr,
        tls,
        service: SondeFlightService::new(source, engine),
        token: config.token,
        metrics: FlightMetrics::default(),
        worker,
    })
}

/// Binds and serves until `shutdown` completes.
pub async fn serve(
    source: Arc<dyn TableSource>,
    config: FlightConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), FlightError> {
    let server = bind(source, config).await?;
    tracing::info!(addr = %server.local_addr(), "serving Arrow Flight and Flight SQL");
    server.run(shutdown).await
}

impl FlightServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint's request metrics, to register with the agent's
    /// registry ([`FlightMetrics::register`]).
    pub fn metrics(&self) -> FlightMetrics {
        self.metrics.clone()
    }

    /// Serves until `shutdown` completes; in-flight calls are then drained.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), FlightError> {
        let auth = BearerAuth::new(self.token.as_deref());
        let worker = self.worker.map(|worker| {
            let auth = auth.clone();
            InterceptedService::new(worker.into_worker_server(), move |request| {
                auth.check(request)
            })
        });
        let service =
            InterceptedService::new(wire::ZeroCopyDoGet::new(self.service), move |request| {
                auth.check(request)
            });
        let mut builder = Server::builder().layer(self.metrics.layer());
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|source| FlightError::Tls { source })?;
        }
        let addr = self.local_addr;
        builder
            .add_service(service)
            .add_optional_service(worker)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
            .map_err(|source| FlightError::Serve { addr, source })
    }
}

async fn read_pem(path: &PathBuf) -> Result<Vec<u8>, FlightError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| FlightError::ReadTls {
            path: path.clone(),
            source,
        })
}

/// Checks `authorization: Bearer <token>` on every call when a token is set.
#[derive(Clone)]
pub struct BearerAuth {
    /// The whole expected header value, `Bearer <token>`.
    expected: Option<Arc<str>>,
}

impl BearerAuth {
    /// Lets every call in when `token` is `None`.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| Arc::<str>::from(format!("Bearer {t}"))),
        }
    }

    /// An interceptor's check: `UNAUTHENTICATED` without the right token.
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented: Option<&MetadataValue<_>> = request.metadata().get("authorization");
        match presented {
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` header",
            )),
            Some(value) if constant_time_eq(value.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
        }
    }
}

/// Compares without stopping at the first difference, so response timing
/// does not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
