//! `sonde --cluster`: the CLI against sonde-query over three agents.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod support;

use clap::Parser;

use support::*;

async fn sonde(args: &[&str]) -> Result<String, cli::CliError> {
    let cli =
        cli::Cli::try_parse_from(std::iter::once("sonde").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    cli::run(cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sonde_cluster_tables_and_query_cover_every_node() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(500, 100).await?;
    let addr = format!("http://127.0.0.1:{}", cluster.port);
    let base = [
        "--cluster",
        "--cluster-addr",
        addr.as_str(),
        "--token",
        CLIENT_TOKEN,
        "-o",
        "csv",
    ];

    // One line per table, rows summed over the nodes.
    let out = sonde(&[&base[..], &["tables"]].concat()).await?;
    let line = out
        .lines()
        .find(|l| l.starts_with("shop.request_latency,"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.starts_with("shop.request_latency,1500,"), "{out}");

    let sql = "SELECT count(*) AS n FROM shop.request_latency";
    let out = sonde(&[&base[..], &["query", sql]].concat()).await?;
    assert_eq!(out, "n\n1500\n");

    cluster.agents[2].kill().await?;
    let error = sonde(&[&base[..], &["query", sql]].concat())
        .await
        .expect_err("node-c is gone");
    let message = error.to_string();
    assert!(message.contains("node-c"), "{message}");
    assert!(message.contains("Unavailable"), "{message}");

    let out = sonde(&[&base[..], &["--partial", "query", sql]].concat()).await?;
    assert_eq!(out, "n\n1000\n");
    Ok(())
}
