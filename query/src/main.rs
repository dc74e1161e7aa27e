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
    /// An agent, `node=url` (repeatable, or comma-separated in the
    /// variable); with none, agents are discovered from the ProbeNodes.
    #[arg(long = "agent", env = "SONDE_QUERY_AGENTS", value_delimiter = ',', value_parser = parse_agent)]
    agents: Vec<(String, Url)>,
    /// The agents' bearer token (their Flight and worker port).
    #[arg(long, env = "SONDE_AGENT_TOKEN")]
    agent_token: Option<String>,
    /// PEM CA certificate of the agents' TLS port.
    #[arg(long, env = "SONDE_AGENT_CA")]
    agent_ca: Option<PathBuf>,
    /// Bytes the merge side of one query may hold (or a quantity: 512Mi).
    #[arg(long, env = "SONDE_QUERY_MEMORY", default_value = "512Mi", value_parser = parse_bytes)]
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

/// Bytes, or a Kubernetes-style quantity (`512Mi`, `1Gi`, `500M`).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let units: [(&str, usize); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (digits, scale) = units
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|d| (d, *scale)))
        .unwrap_or((text, 1));
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a positive number of bytes (such as 512Mi)"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_agents_parse() {
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        let (node, url) =
            parse_agent("node-a=http://10.0.0.5:50051").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (node.as_str(), url.as_str()),
            ("node-a", "http://10.0.0.5:50051/")
        );
        assert!(parse_agent("http://10.0.0.5:50051").is_err());
        assert!(parse_agent("=http://x").is_err());
    }

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
        for arg in Args::command().get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            assert!(
                arg.get_env().is_some(),
                "--{id} has no environment variable"
            );
        }
    }
}
