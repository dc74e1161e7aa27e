//! sonde-query finds the agents from the ProbeNodes' status on a real
//! kube-apiserver, and keeps the list current by a watch: three agents
//! serving in-memory rows report their Flight endpoints in their
//! ProbeNodes' status; a query covers all three; when one endpoint goes
//! away from its status the next query covers the other two.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod support;

use std::time::Duration;

use anyhow::Context;
use crds::{ProbeNode, ProbeNodeSpec};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sonde_query::AgentDirectory;

use support::*;

/// Waits, bounded, until the directory lists exactly `nodes`.
async fn wait_for_agents(directory: &AgentDirectory, nodes: &[&str]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let known: Vec<String> = directory.snapshot().into_keys().collect();
        if known == nodes {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "agents {known:?}, expected {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_discovered_from_probe_node_status() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let control_plane = e2e::Cluster::builder()
        .controller_manager(false)
        .manifests(include_str!("../../crds/sonde.dev.yaml"))
        .start()
        .await?;
    let client = control_plane.client();
    let rows: Vec<NodeRows> = (0..NODES.len())
        .map(|i| NodeRows::generate(i, 1_000 * (i + 1)))
        .collect();
    let mut agents = Vec::new();
    for node_rows in &rows {
        agents.push(Agent::start(node_rows, 256).await?);
    }
    let api: Api<ProbeNode> = Api::all(client.clone());
    for agent in &agents {
        api.create(
            &PostParams::default(),
            &ProbeNode::new(
                agent.node,
                ProbeNodeSpec {
                    node: agent.node.to_owned(),
                    assignments: Vec::new(),
                },
            ),
        )
        .await?;
        api.patch_status(
            agent.node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"flightEndpoint": agent.url().to_string()}})),
        )
        .await?;
    }

    let directory = AgentDirectory::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watch = tokio::spawn(sonde_query::discovery::watch(
        client.clone(),
        directory.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    wait_for_agents(&directory, &NODES).await?;
    assert_eq!(directory.url("node-b"), Some(agents[1].url()));

    let (port, _query) = start_query(directory.clone()).await?;
    let mut client_sql = sql_client(port, CLIENT_TOKEN).await?;
    let (batches, _) = query(&mut client_sql, "SELECT count(*) FROM shop.request_latency").await?;
    assert_eq!(count_of(&batches), 6_000);

    // node-b's agent no longer reports an endpoint: it leaves the list.
    api.patch_status(
        "node-b",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"flightEndpoint": null}})),
    )
    .await?;
    wait_for_agents(&directory, &["node-a", "node-c"]).await?;
    let (batches, metadata) =
        query(&mut client_sql, "SELECT count(*) FROM shop.request_latency").await?;
    assert_eq!(count_of(&batches), 1_000 + 3_000);
    assert!(metadata.is_empty(), "no node is missing");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .context("the watch did not stop")??;
    Ok(())
}
