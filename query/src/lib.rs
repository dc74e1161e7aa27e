//! sonde-query: one Flight SQL endpoint for the whole cluster.
//!
//! Queries are planned by DataFusion with datafusion-distributed's
//! planner. Every agent is a worker: the stage over a node's table
//! (scan, filters, projection, limit, partial aggregate) runs on that
//! node's agent, one task per node that holds the table; the stages
//! without a leaf (final aggregates, merges, sorts) run here, in this
//! process's own worker.
//!
//! - [`agents`]: where the agents are (a fixed list or discovery from the
//!   ProbeNodes' status) and how to call them (bearer token, TLS, worker
//!   version check).
//! - `catalog`: tables resolved by asking every agent; missing nodes fail
//!   the query unless the client allows partial results.
//! - `distribute`: the planner's hooks that place the stages.
//! - `service`: the Flight SQL service.

pub mod agents;
mod catalog;
pub mod discovery;
mod distribute;
mod service;

use std::{future::Future, net::SocketAddr, path::PathBuf};

use arrow_flight::flight_service_server::FlightServiceServer;
use probe_serve::flight::BearerAuth;
use tokio::net::TcpListener;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming},
};

pub use self::{
    agents::{AgentAuth, AgentDirectory, Connections},
    service::{ClusterSqlService, MISSING_HEADER, PARTIAL_HEADER},
};

/// The default memory budget of the merge side of one query: 512 MiB.
pub const DEFAULT_QUERY_MEMORY_LIMIT: usize = 512 << 20;

/// Everything that goes wrong in sonde-query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node {node}: its agent at {url} cannot be reached: {reason}")]
    NodeUnreachable {
        node: String,
        url: String,
        reason: String,
    },
    #[error(
        "node {node}: its agent speaks plan dialect {found:?}, this sonde-query {expected:?}; \
         no plan is sent to it (upgrade one of them)"
    )]
    IncompatibleWorker {
        node: String,
        found: String,
        expected: String,
    },
    #[error("node {node}: table {table} has columns {found:?}, other nodes {expected:?}")]
    SchemaDiffers {
        node: String,
        table: String,
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error("agent URL {url} is not valid: {source}")]
    AgentUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the agents' token must be printable ASCII")]
    TokenNotAscii,
    #[error("the token must not be empty")]
    EmptyToken,
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration rejected: {source}")]
    Tls {
        #[source]
        source: tonic::transport::Error,
    },
    #[error("serving on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

impl Error {
    /// The gRPC status a client sees for this error.
    pub fn status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Self::NodeUnreachable { .. } => tonic::Status::unavailable(message),
            Self::IncompatibleWorker { .. } | Self::SchemaDiffers { .. } => {
                tonic::Status::failed_precondition(message)
            }
            _ => tonic::Status::internal(message),
        }
    }
}

/// How sonde-query listens, whom it lets in and how it reaches agents.
#[derive(Clone, Debug)]
pub struct QueryConfig {
    pub addr: SocketAddr,
    /// Clients must send `authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// PEM certificate chain and key: the port speaks TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub agent_auth: AgentAuth,
    pub query_memory_limit: usize,
}

impl QueryConfig {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            token: None,
            tls: None,
            agent_auth: AgentAuth::default(),
            query_memory_limit: DEFAULT_QUERY_MEMORY_LIMIT,
        }
    }
}

/// A bound, not yet serving, sonde-query endpoint.
pub struct QueryServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<ServerTlsConfig>,
    token: Option<String>,
    service: ClusterSqlService,
}

impl std::fmt::Debug for QueryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

async fn read(path: &PathBuf) -> Result<Vec<u8>, Error> {
    tokio::fs::read(path)
        .await
        .map_err(|source| Error::ReadFile {
            path: path.clone(),
            source,
        })
}

/// Validates `config` (TLS files are read here), then binds its address.
pub async fn bind(directory: AgentDirectory, config: QueryConfig) -> Result<QueryServer, Error> {
    if config.token.as_deref().is_some_and(str::is_empty)
        || config
            .agent_auth
            .token
            .as_deref()
            .is_some_and(str::is_empty)
    {
        return Err(Error::EmptyToken);
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(read(cert).await?, read(key).await?)),
        ),
        None => None,
    };
    let connections = Connections::new(config.agent_auth.clone())?;
    let local = distribute::local_worker(connections.clone());
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.addr,
        source,
    })?;
    Ok(QueryServer {
        listener,
        local_addr,
        tls,
        token: config.token,
        service: ClusterSqlService {
            directory,
            connections,
            local,
            memory_limit: config.query_memory_limit,
        },
    })
}

impl QueryServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let auth = BearerAuth::new(self.token.as_deref());
        let service = InterceptedService::new(
            FlightServiceServer::new(service::ClusterFlightService(self.service))
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            move |request| auth.check(request),
        );
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|source| Error::Tls { source })?;
        }
        let addr = self.local_addr;
        builder
            .add_service(service)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
            .map_err(|source| Error::Serve { addr, source })
    }
}
