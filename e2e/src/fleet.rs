//! A fleet made of API objects only, for scale tests of the operator: Node
//! objects with no kubelet behind them, pods bound to them that never run,
//! all created with bounded concurrency, and simulated agents that write
//! their node's `ProbeNode` status (heartbeat and one report per
//! assignment) the way the agent does.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use crds::v1alpha1::{AssignmentState, AssignmentStatus, ProbeNode, ProbeNodeStatus};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    ClusterResourceScope, NamespaceResourceScope,
    api::core::v1::{Container, Node, Pod, PodSpec},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokio::task::JoinHandle;

/// A Node object with these labels (and the hostname label), no kubelet.
pub fn api_node(name: &str, labels: &BTreeMap<String, String>) -> Node {
    let mut labels = labels.clone();
    labels.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

/// A pod bound to `node` that no kubelet runs: it stays Pending.
pub fn api_pod(namespace: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            containers: vec![Container {
                name: "main".to_owned(),
                image: Some("none".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// Creates every namespaced object in its namespace, at most
/// `concurrency` requests at a time.
pub async fn create_all<K>(
    client: &Client,
    objects: Vec<K>,
    concurrency: usize,
) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    create(objects, concurrency, |object: &K| {
        Api::namespaced(client.clone(), &object.namespace().unwrap_or_default())
    })
    .await
}

/// Creates every cluster-scoped object, at most `concurrency` requests at
/// a time.
pub async fn create_all_cluster_scoped<K>(
    client: &Client,
    objects: Vec<K>,
    concurrency: usize,
) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = ClusterResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    create(objects, concurrency, |_: &K| Api::all(client.clone())).await
}

async fn create<K>(
    objects: Vec<K>,
    concurrency: usize,
    api: impl Fn(&K) -> Api<K>,
) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .map(|object| {
            let api = api(&object);
            async move {
                api.create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("creating {} {}", K::kind(&()), object.name_any()))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_for_each(|_| std::future::ready(Ok(())))
        .await
}

/// Agents for a set of nodes, simulated: each writes its `ProbeNode`'s
/// status every `interval` (spread evenly over the interval), reporting
/// every assignment of the spec Attached at its generation unless
/// [`SimulatedAgents::report`] said otherwise. Stops on drop.
pub struct SimulatedAgents {
    overrides: Overrides,
    heartbeats: Arc<AtomicU64>,
    client: Client,
    store: reflector::Store<ProbeNode>,
    tasks: Vec<JoinHandle<()>>,
}

/// Report overrides: (node, namespace, name) → (state, reason).
type Overrides = Arc<Mutex<HashMap<(String, String, String), (AssignmentState, String)>>>;

impl SimulatedAgents {
    pub async fn start(
        client: &Client,
        nodes: Vec<String>,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let (store, writer) = reflector::store();
        let watch = watcher(
            Api::<ProbeNode>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .for_each(|_| std::future::ready(()));
        let mut tasks = vec![tokio::spawn(watch)];
        store
            .wait_until_ready()
            .await
            .context("watching ProbeNodes")?;
        let overrides = Overrides::default();
        let heartbeats = Arc::<AtomicU64>::default();
        let every = interval / u32::try_from(nodes.len().max(1)).unwrap_or(u32::MAX);
        let agents = (
            client.clone(),
            store.clone(),
            overrides.clone(),
            heartbeats.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (client, store, overrides, heartbeats) = agents;
            let mut tick = tokio::time::interval(every.max(Duration::from_micros(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Slow writes overlap rather than delaying every agent behind them.
            let limit = Arc::new(tokio::sync::Semaphore::new(64));
            for node in nodes.iter().cycle() {
                tick.tick().await;
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let (client, store, overrides, heartbeats, node) = (
                    client.clone(),
                    store.clone(),
                    overrides.clone(),
                    heartbeats.clone(),
                    node.clone(),
                );
                tokio::spawn(async move {
                    if heartbeat(&client, &store, &overrides, &node).await.is_ok() {
                        heartbeats.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
        }));
        Ok(Self {
            overrides,
            heartbeats,
            client: client.clone(),
            store,
            tasks,
        })
    }

    /// From now on, `node` reports the Tracepoint `namespace/name` in
    /// `state` (with `reason`); the status is written at once.
    pub async fn report(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        state: AssignmentState,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (node.to_owned(), namespace.to_owned(), name.to_owned()),
                (state, reason.to_owned()),
            );
        heartbeat(&self.client, &self.store, &self.overrides, node).await
    }

    /// Status writes that succeeded so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }
}

impl Drop for SimulatedAgents {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn heartbeat(
    client: &Client,
    store: &reflector::Store<ProbeNode>,
    overrides: &Overrides,
    node: &str,
) -> anyhow::Result<()> {
    let Some(pn) = store.get(&reflector::ObjectRef::new(node)) else {
        anyhow::bail!("{node} has no ProbeNode yet");
    };
    let assignments: Vec<AssignmentStatus> = {
        let overrides = overrides.lock().unwrap_or_else(|e| e.into_inner());
        pn.spec
            .assignments
            .iter()
            .map(|a| {
                let key = (node.to_owned(), a.namespace.clone(), a.name.clone());
                let (state, reason) = overrides
                    .get(&key)
                    .cloned()
                    .unwrap_or((AssignmentState::Attached, String::new()));
                AssignmentStatus {
                    kind: a.kind,
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    generation: a.generation,
                    state,
                    reason: (!reason.is_empty()).then(|| reason.clone()),
                    message: (!reason.is_empty()).then(|| format!("simulated: {reason}")),
                    events: 0,
                    lost: 0,
                    tables: Vec::new(),
                }
            })
            .collect()
    };
    let status = ProbeNodeStatus {
        heartbeat_time: Some(Time(Timestamp::now())),
        agent_version: Some("simulated".to_owned()),
        attached: assignments
            .iter()
            .filter(|a| a.state == AssignmentState::Attached)
            .count() as u32,
        assignments,
        ..ProbeNodeStatus::default()
    };
    Api::<ProbeNode>::all(client.clone())
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .with_context(|| format!("writing the status of ProbeNode {node}"))?;
    Ok(())
}
