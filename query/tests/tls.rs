//! sonde-query reaching agents that serve TLS: the worker calls and the
//! catalogue's Flight calls verify the agents' certificate against the CA
//! it is given, and a CA that did not sign it fails the query naming the
//! node.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod support;

use std::{collections::BTreeMap, sync::Arc};

use probe_serve::flight::{FlightConfig, fixture::MemorySource};
use sonde_query::{AgentAuth, AgentDirectory, QueryConfig};
use tokio::sync::oneshot;
use url::Url;

use support::*;

fn certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_serving_tls_are_verified_against_the_ca() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let (cert, key) = certificate();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert)?;
    std::fs::write(&key_path, &key)?;

    let mut agents = BTreeMap::new();
    let mut stops = Vec::new();
    let mut expected = BTreeMap::new();
    for (i, node) in NODES.iter().take(2).enumerate() {
        let rows = NodeRows::generate(i, 2_000);
        let source = Arc::new(MemorySource::new());
        source.add_table(table(), schema());
        for batch in rows.batches(500) {
            assert!(source.append(&table(), batch));
        }
        for pod in &rows.pod {
            *expected.entry(pod.clone()).or_insert(0i64) += 1;
        }
        let mut config = FlightConfig::new("127.0.0.1:0".parse()?);
        config.token = Some(AGENT_TOKEN.to_owned());
        config.tls = Some((cert_path.clone(), key_path.clone()));
        config.worker_node = Some((*node).to_owned());
        let server = probe_serve::flight::bind(source, config).await?;
        let url = Url::parse(&format!("https://localhost:{}", server.local_addr().port()))?;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        stops.push(tx);
        agents.insert((*node).to_owned(), url);
    }

    for (ca, works) in [(cert.clone(), true), (certificate().0, false)] {
        let mut config = QueryConfig::new("127.0.0.1:0".parse()?);
        config.token = Some(CLIENT_TOKEN.to_owned());
        config.agent_auth = AgentAuth {
            token: Some(AGENT_TOKEN.to_owned()),
            ca: Some(ca.into_bytes()),
        };
        let server = sonde_query::bind(AgentDirectory::new(agents.clone()), config).await?;
        let port = server.local_addr().port();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let mut client = sql_client(port, CLIENT_TOKEN).await?;
        let answer = query(
            &mut client,
            "SELECT pod, count(*), sum(latency) FROM shop.request_latency GROUP BY pod",
        )
        .await;
        if works {
            let (batches, _) = answer?;
            let counts: BTreeMap<String, i64> = groups(&batches)
                .into_iter()
                .map(|(pod, (n, _))| (pod, n))
                .collect();
            assert_eq!(counts, expected);
        } else {
            let status = status_of(&answer.expect_err("an unknown CA")).unwrap();
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().contains("node-a"), "{status:?}");
        }
        let _ = tx.send(());
    }
    drop(stops);
    Ok(())
}
