//! The sonde-query binary: configuration, telemetry, the server.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use sonde_query::{AgentAuth, AgentDirectory, QueryConfig};
use url::Url;

/// One Flight SQL endpoint for the whole cluster.
#[derive(Debug, Parser)]
#[command(name = "sonde-query", version)]
struct Args {
    /// Where clients connect (Flight SQL).
    #[arg(long, env = "SONDE_QUERY_ADDR", default_value = "0.0.0.0:50052")]
    addr: SocketAddr,
    /// Clients must send `authorization: Bearer <token>`.
    #[arg(long, env = "SONDE_QUERY_TOKEN")]
    token: Option<String>,
    /// PEM certificate chain of the client port (with --tls-key).
    #[arg(long, env = "SONDE_QUERY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the client port (with --tls-cert).
    #[arg(long, env = "SONDE_QUERY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// An agent, `node=url` (repeatable); with none, agents are discovered.
    #[arg(long = "agent", value_parser = parse_agent)]
    agents: Vec<(String, Url)>,
    /// The agents' bearer token (their Flight and worker port).
    #[arg(long, env = "SONDE_AGENT_TOKEN")]
    agent_token: Option<String>,
    /// PEM CA certificate of the agents' TLS port.
    #[arg(long, env = "SONDE_AGENT_CA")]
    agent_ca: Option<PathBuf>,
    /// Bytes the merge side of one query may hold.
    #[arg(long, env = "SONDE_QUERY_MEMORY", default_value_t = sonde_query::DEFAULT_QUERY_MEMORY_LIMIT)]
    query_memory: usize,
}

fn parse_agent(text: &str) -> Result<(String, Url), String> {
    let (node, url) = text
        .split_once('=')
        .ok_or_else(|| format!("expected node=url, got {text:?}"))?;
    let url = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if node.is_empty() {
        return Err(format!("empty node name in {text:?}"));
    }
    Ok((node.to_owned(), url))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // The one crypto provider; a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sonde-query: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde-query: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ca = match &args.agent_ca {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let mut config = QueryConfig::new(args.addr);
    config.token = args.token;
    config.tls = args.tls_cert.zip(args.tls_key);
    config.agent_auth = AgentAuth {
        token: args.agent_token,
        ca,
    };
    config.query_memory_limit = args.query_memory;
    let directory = AgentDirectory::new(args.agents.iter().cloned().collect::<BTreeMap<_, _>>());
    let server = sonde_query::bind(directory.clone(), config).await?;
    if args.agents.is_empty() {
        let client = kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!("no --agent given and no cluster to discover them: {e}")
        })?;
        tokio::spawn(sonde_query::discovery::watch(
            client,
            directory,
            std::future::pending(),
        ));
        tracing::info!("discovering agents from the ProbeNodes' status");
    }
    tracing::info!(addr = %server.local_addr(), "serving cluster Flight SQL");
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
