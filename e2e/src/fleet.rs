//! A fleet made of API objects only, for scale tests of the operator: Node
//! objects with no kubelet behind them, pods bound to them that never run,
//! all created with bounded concurrency, and simulated agents that renew
//! their node's heartbeat Lease and write its `ProbeNode` status (one
//! report per assignment) when it changes, the way the agent does.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crds::v1alpha1::{
    AssignmentKind, AssignmentState, AssignmentStatus, ProbeNode, ProbeNodeStatus, heartbeat_lease,
    heartbeat_renewal,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    ClusterResourceScope, NamespaceResourceScope,
    api::{
        coordination::v1::Lease,
        core::v1::{Container, Node, Pod, PodSpec},
    },
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

/// Agents for a set of nodes, simulated the way the agent runs with a
/// heartbeat Lease: each renews its node's Lease in `namespace` every
/// `interval` (spread evenly over the interval), and writes its
/// `ProbeNode`'s status when what it reports changes, and at least every
/// `status_interval` with its event counts grown (as the agent's
/// `--status-interval`): every assignment of the spec Attached at its
/// generation unless [`SimulatedAgents::report`] said otherwise. Stops on
/// drop.
pub struct SimulatedAgents {
    overrides: Overrides,
    heartbeats: Arc<AtomicU64>,
    status_writes: Arc<AtomicU64>,
    /// What each node last wrote, heartbeat time left out.
    written: Written,
    silenced: Arc<Mutex<HashSet<String>>>,
    client: Client,
    store: reflector::Store<ProbeNode>,
    status_interval: Duration,
    tasks: Vec<JoinHandle<()>>,
}

/// Report overrides: (node, namespace, name) → (state, reason).
type Overrides = Arc<Mutex<HashMap<(String, String, String), (AssignmentState, String)>>>;

/// Each node's last written status, and when it was written.
type Written = Arc<Mutex<HashMap<String, (ProbeNodeStatus, Instant)>>>;

impl SimulatedAgents {
    pub async fn start(
        client: &Client,
        namespace: &str,
        nodes: Vec<String>,
        interval: Duration,
        status_interval: Duration,
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
        let mut agents = Self {
            overrides: Overrides::default(),
            heartbeats: Arc::default(),
            status_writes: Arc::default(),
            written: Written::default(),
            silenced: Arc::default(),
            client: client.clone(),
            store,
            status_interval,
            tasks: Vec::new(),
        };
        let every = interval / u32::try_from(nodes.len().max(1)).unwrap_or(u32::MAX);
        let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let shared = agents.shared();
        let silenced = agents.silenced.clone();
        let heartbeats = agents.heartbeats.clone();
        // Nodes whose Lease is in place, renewed by a patch from then on.
        let applied: Arc<Mutex<HashSet<String>>> = Arc::default();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_micros(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Slow writes overlap rather than delaying every agent behind them.
            let limit = Arc::new(tokio::sync::Semaphore::new(64));
            for node in nodes.iter().cycle() {
                tick.tick().await;
                if silenced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(node)
                {
                    continue;
                }
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let (shared, leases, heartbeats, applied, node) = (
                    shared.clone(),
                    leases.clone(),
                    heartbeats.clone(),
                    applied.clone(),
                    node.clone(),
                );
                tokio::spawn(async move {
                    // A report that changed goes out first, as the agent's does.
                    let reported = shared.report_if_changed(&node).await;
                    let first = !applied
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&node);
                    if reported.is_ok() {
                        let renewed = renew(&leases, &node, interval, first).await.is_ok();
                        let mut applied = applied.lock().unwrap_or_else(|e| e.into_inner());
                        if renewed {
                            heartbeats.fetch_add(1, Ordering::Relaxed);
                            applied.insert(node);
                        } else {
                            // Applied whole again next time, as the agent does.
                            applied.remove(&node);
                        }
                    }
                    drop(permit);
                });
            }
        }));
        agents.tasks = tasks;
        Ok(agents)
    }

    fn shared(&self) -> Reporter {
        Reporter {
            client: self.client.clone(),
            store: self.store.clone(),
            overrides: self.overrides.clone(),
            written: self.written.clone(),
            status_writes: self.status_writes.clone(),
            status_interval: self.status_interval,
        }
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
        self.shared().report_if_changed(node).await
    }

    /// The state `node`'s ProbeNode status reports for the Tracepoint
    /// `namespace/name`, as this process's own watch of ProbeNodes last
    /// saw it: when a write shows up here, the apiserver has sent it to
    /// its watchers.
    pub fn watched_state(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
    ) -> Option<AssignmentState> {
        let pn = self.store.get(&reflector::ObjectRef::new(node))?;
        pn.status
            .as_ref()?
            .assignments
            .iter()
            .find(|a| {
                a.kind == AssignmentKind::Tracepoint && a.namespace == namespace && a.name == name
            })
            .map(|a| a.state)
    }

    /// From now on `node`'s agent neither renews its Lease nor writes its
    /// status, as when it dies.
    pub fn silence(&self, node: &str) {
        self.silenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_owned());
    }

    /// Lease renewals that succeeded so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// Status writes that succeeded so far.
    pub fn status_writes(&self) -> u64 {
        self.status_writes.load(Ordering::Relaxed)
    }

    /// How long ago the last status of any node was written (`None`:
    /// never).
    pub fn since_last_status(&self) -> Option<Duration> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(_, at)| at.elapsed())
            .min()
    }
}

impl Drop for SimulatedAgents {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What writes a simulated agent's status.
#[derive(Clone)]
struct Reporter {
    client: Client,
    store: reflector::Store<ProbeNode>,
    overrides: Overrides,
    written: Written,
    status_writes: Arc<AtomicU64>,
    status_interval: Duration,
}

impl Reporter {
    /// Writes `node`'s status if it differs from the one last written, or
    /// that one is `status_interval` old (with its counts grown).
    async fn report_if_changed(&self, node: &str) -> anyhow::Result<()> {
        let mut status = self.status(node)?;
        let last = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned();
        if let Some((last, at)) = last {
            let same = |a: &AssignmentStatus, b: &AssignmentStatus| {
                (
                    a.kind,
                    &a.namespace,
                    &a.name,
                    a.generation,
                    a.state,
                    &a.reason,
                ) == (
                    b.kind,
                    &b.namespace,
                    &b.name,
                    b.generation,
                    b.state,
                    &b.reason,
                )
            };
            let unchanged = last.assignments.len() == status.assignments.len()
                && last
                    .assignments
                    .iter()
                    .zip(&status.assignments)
                    .all(|(a, b)| same(a, b));
            if unchanged && at.elapsed() < self.status_interval {
                return Ok(());
            }
            // Counts carried over; a periodic write has them grown.
            for (now, before) in status.assignments.iter_mut().zip(&last.assignments) {
                if same(now, before) {
                    now.events = before.events + u64::from(unchanged) * 1_000;
                }
            }
        }
        let mut stamped = status.clone();
        stamped.heartbeat_time = Some(Time(Timestamp::now()));
        Api::<ProbeNode>::all(self.client.clone())
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": stamped })),
            )
            .await
            .with_context(|| format!("writing the status of ProbeNode {node}"))?;
        self.status_writes.fetch_add(1, Ordering::Relaxed);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_owned(), (status, Instant::now()));
        Ok(())
    }

    /// What `node`'s agent reports now, without a heartbeat time.
    fn status(&self, node: &str) -> anyhow::Result<ProbeNodeStatus> {
        let Some(pn) = self.store.get(&reflector::ObjectRef::new(node)) else {
            anyhow::bail!("{node} has no ProbeNode yet");
        };
        let assignments: Vec<AssignmentStatus> = {
            let overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
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
                        anomalies: Vec::new(),
                    }
                })
                .collect()
        };
        Ok(ProbeNodeStatus {
            heartbeat_time: None,
            agent_version: Some("simulated".to_owned()),
            attached: assignments
                .iter()
                .filter(|a| a.state == AssignmentState::Attached)
                .count() as u32,
            assignments,
            ..ProbeNodeStatus::default()
        })
    }
}

/// Renews `node`'s heartbeat Lease as the agent does: the `first` time by
/// applying the whole Lease, then by patching its renew time.
async fn renew(
    leases: &Api<Lease>,
    node: &str,
    interval: Duration,
    first: bool,
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    if first {
        let lease = heartbeat_lease(node, 3 * interval, now);
        leases
            .patch(
                node,
                &PatchParams::apply("sonde-agent").force(),
                &Patch::Apply(&lease),
            )
            .await
    } else {
        let params = PatchParams {
            field_manager: Some("sonde-agent".to_owned()),
            ..PatchParams::default()
        };
        leases
            .patch(node, &params, &Patch::Merge(heartbeat_renewal(now)))
            .await
    }
    .with_context(|| format!("renewing the heartbeat Lease of {node}"))?;
    Ok(())
}
