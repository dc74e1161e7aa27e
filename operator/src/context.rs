//! What every reconciler shares: the client, caches of everything the
//! decisions read, the event recorder, settings and metrics.

use std::{sync::Arc, time::Duration};

use crds::{Export, Retention, Tracepoint, v1alpha1::ProbeNode};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        events::{Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;

/// The operator's field manager for everything it writes.
pub const MANAGER: &str = "sonde-operator";

/// The finalizer that holds a Tracepoint until every node detached it.
pub const FINALIZER: &str = "sonde.dev/detach";

/// Settings the reconcilers need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A node whose agent has not reported for this long counts as unknown.
    pub heartbeat_grace: Duration,
}

/// Caches of the cluster, filled by their own watches.
#[derive(Clone, Debug)]
pub struct Caches {
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub tracepoints: Store<Tracepoint>,
    pub retentions: Store<Retention>,
    pub exports: Store<Export>,
    pub probe_nodes: Store<ProbeNode>,
}

impl Caches {
    /// Starts one watch per kind, each filling its cache for as long as the
    /// runtime runs, retrying with backoff while the apiserver is away.
    pub fn start(client: &Client) -> Self {
        Self {
            nodes: cache(Api::all(client.clone())),
            pods: cache(Api::all(client.clone())),
            tracepoints: cache(Api::all(client.clone())),
            retentions: cache(Api::all(client.clone())),
            exports: cache(Api::all(client.clone())),
            probe_nodes: cache(Api::all(client.clone())),
        }
    }

    /// Waits until every cache holds its first full list: deciding on a
    /// partial view would take assignments away from nodes.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.nodes.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.tracepoints.wait_until_ready().await?;
        self.retentions.wait_until_ready().await?;
        self.exports.wait_until_ready().await?;
        self.probe_nodes.wait_until_ready().await
    }
}

fn cache<K>(api: Api<K>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::warn!(kind = %K::kind(&Default::default()), "watch failed, retrying: {e}");
            }
        }
    });
    reader
}

/// Shared by every reconciler.
pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, caches: Caches, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            caches,
            settings,
            metrics,
        }
    }
}
