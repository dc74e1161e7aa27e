//! The agent's view of the cluster: its own `ProbeNode` and the pods on its
//! node, each kept in a reflector store by a watcher that backs off and
//! retries while the apiserver is away (the stores keep the last state
//! they saw, so what is attached stays attached).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crds::v1alpha1::ProbeNode;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource, ResourceExt as _,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use probe_capture::drive::Waker;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The stores the drive loop reads, and a flag (with a wake-up of the
/// loop) when either changes.
#[derive(Clone)]
pub struct ClusterView {
    probe_nodes: Store<ProbeNode>,
    pods: Store<Pod>,
    changes: Changes,
    probe_nodes_ready: Arc<AtomicBool>,
    pods_ready: Arc<AtomicBool>,
}

impl ClusterView {
    /// Starts watching `node`'s `ProbeNode` (a `metadata.name` field
    /// selector) and its pods (`spec.nodeName`). The tasks run until
    /// aborted.
    pub fn start(client: &Client, node: &str, waker: Waker) -> (Self, Vec<JoinHandle<()>>) {
        let changes = Changes {
            changed: Arc::new(AtomicBool::new(true)),
            waker,
        };
        let (probe_nodes, probe_node_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let view = Self {
            probe_nodes,
            pods,
            changes: changes.clone(),
            probe_nodes_ready: Arc::default(),
            pods_ready: Arc::default(),
        };
        let tasks = vec![
            tokio::spawn(watch(
                Api::<ProbeNode>::all(client.clone()),
                watch_config().fields(&format!("metadata.name={node}")),
                probe_node_writer,
                view.probe_nodes_ready.clone(),
                changes.clone(),
                "ProbeNode",
            )),
            tokio::spawn(watch(
                Api::<Pod>::all(client.clone()),
                watch_config().fields(&format!("spec.nodeName={node}")),
                pod_writer,
                view.pods_ready.clone(),
                changes,
                "pods",
            )),
        ];
        (view, tasks)
    }

    /// Whether both stores have been listed once: before that an empty
    /// store says nothing about what should run.
    pub fn ready(&self) -> bool {
        self.probe_nodes_ready.load(Ordering::Acquire) && self.pods_ready.load(Ordering::Acquire)
    }

    /// Whether either store changed (or [`Self::mark_changed`] was called)
    /// since the last call.
    pub fn take_changed(&self) -> bool {
        self.changes.changed.swap(false, Ordering::AcqRel)
    }

    /// Makes the drive loop reconcile soon, as if a store had changed.
    pub fn mark_changed(&self) {
        self.changes.notify();
    }

    /// The node's `ProbeNode`, if it exists.
    pub fn probe_node(&self) -> Option<Arc<ProbeNode>> {
        self.probe_nodes.state().into_iter().next()
    }

    /// The pods on the node.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }
}

/// A change flag and the loop to wake when it is set.
#[derive(Clone)]
struct Changes {
    changed: Arc<AtomicBool>,
    waker: Waker,
}

impl Changes {
    fn notify(&self) {
        self.changed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Lists are served from the apiserver's watch cache (any resource
/// version): a consistent list from etcd can be ahead of that cache, and
/// the watch that follows then waits seconds for the cache to catch up.
/// Each agent restarting at once also spares etcd.
fn watch_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    ready: Arc<AtomicBool>,
    changes: Changes,
    what: &'static str,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let stream = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            // Managed fields are large and of no use here.
            .modify(|o| o.managed_fields_mut().clear()),
    );
    futures::pin_mut!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if failing {
                    info!(watch = what, "watch restored");
                    failing = false;
                }
                match event {
                    watcher::Event::InitDone => ready.store(true, Ordering::Release),
                    // The store swaps its contents only at InitDone.
                    watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
                }
                changes.notify();
            }
            Err(e) => {
                // The watcher backs off and retries; say so once per outage.
                if !failing {
                    warn!(
                        watch = what,
                        "watch failed, retrying with backoff; what is applied stays applied: {}",
                        sonde_daemon::chain(&e)
                    );
                    failing = true;
                }
            }
        }
    }
}
