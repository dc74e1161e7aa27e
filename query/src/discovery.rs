//! Finding the agents from the Kubernetes API: every ProbeNode whose
//! status carries the agent's Flight endpoint (`status.flightEndpoint`,
//! written by the agent) is a node sonde-query can query. A watch keeps
//! the directory current as agents come, go and move.

use std::collections::BTreeMap;

use crds::ProbeNode;
use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use url::Url;

use crate::agents::AgentDirectory;

/// The agents the ProbeNodes report, by node. A ProbeNode without an
/// endpoint (an agent of an older build, or not started yet) is left out
/// and logged once per change.
pub fn agents_of<'a>(nodes: impl IntoIterator<Item = &'a ProbeNode>) -> BTreeMap<String, Url> {
    let mut agents = BTreeMap::new();
    for probe_node in nodes {
        let node = &probe_node.spec.node;
        let Some(endpoint) = probe_node
            .status
            .as_ref()
            .and_then(|s| s.flight_endpoint.as_deref())
        else {
            continue;
        };
        match Url::parse(endpoint) {
            Ok(url) => {
                agents.insert(node.clone(), url);
            }
            Err(error) => {
                tracing::warn!(%node, %endpoint, %error, "ProbeNode reports an invalid Flight endpoint");
            }
        }
    }
    agents
}

/// Watches ProbeNodes and replaces `directory`'s agents on every change,
/// until `stop` completes. Watch errors are retried with backoff.
pub async fn watch(client: Client, directory: AgentDirectory, stop: impl Future<Output = ()>) {
    let api: Api<ProbeNode> = Api::all(client);
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .modify(|node| {
        // The directory needs spec and status only.
        node.metadata.managed_fields = None;
    });
    let mut stream = std::pin::pin!(stream);
    let mut stop = std::pin::pin!(stop);
    loop {
        let event = tokio::select! {
            () = &mut stop => return,
            event = stream.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => tracing::warn!(%error, "watching ProbeNodes"),
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Ok(_)) => {
                let agents = agents_of(reader.state().iter().map(|n| n.as_ref()));
                if agents != directory.snapshot() {
                    tracing::info!(
                        agents = ?agents.keys().collect::<Vec<_>>(),
                        "agents from the ProbeNodes"
                    );
                    directory.replace(agents);
                }
            }
        }
    }
}
