//! The operator's view of the cluster: one watch per kind, each filling a
//! reflector store, and the indexes the controllers need, kept up to date
//! from the same events. Each event is also turned into the reconciles it
//! calls for, and only those: a pod queues the Tracepoints whose set of
//! selected nodes it changes, a Tracepoint queues the nodes whose
//! assignment of it changes, an agent's heartbeat queues nothing unless a
//! report or the agent's liveness changed.
//!
//! Agents heartbeat by renewing a Lease each (see
//! [`crds::v1alpha1::HEARTBEAT_LEASE_LABEL`]), watched in the operator's
//! namespace. The cached `ProbeNode`'s `status.heartbeatTime` is the
//! agent's latest sign of life, its status write or its Lease renewal,
//! whichever is newer: liveness is decided from that one field.
//!
//! The caches keep only what the operator reads: of pods their labels,
//! node and liveness ([`PodFacts`], not `Pod` objects: 20,000 of those
//! would be ~50 MiB); of nodes their labels; of `ProbeNode`s the status,
//! and of their spec a [`SpecView`]: which resources it assigns and a
//! digest of the whole, not the copies of every resource's spec (a
//! thousand nodes with sixty assignments each would otherwise keep sixty
//! thousand specs); nothing keeps its managed fields.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crds::{
    Export, Retention, Tracepoint,
    v1alpha1::{
        AssignmentKind, AssignmentStatus, HEARTBEAT_LEASE_LABEL, ProbeNode, ProbeNodeStatus,
    },
};
use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher::{self, Event},
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::{
    queue::WorkQueue,
    state::{self, Liveness, PodFacts},
};

/// What the operator keeps of a `ProbeNode`'s spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecView {
    pub uid: Option<String>,
    pub generation: Option<i64>,
    /// [`state::spec_digest`] of the spec.
    pub digest: u64,
    /// UIDs of the owners (the Node).
    pub owners: Vec<String>,
    /// (kind, namespace, name) → (uid, generation) of each assignment.
    pub assigned: BTreeMap<(AssignmentKind, String, String), (String, i64)>,
}

impl SpecView {
    pub fn of(pn: &ProbeNode) -> Self {
        Self {
            uid: pn.uid(),
            generation: pn.metadata.generation,
            digest: state::spec_digest(&pn.spec),
            owners: pn
                .owner_references()
                .iter()
                .map(|o| o.uid.clone())
                .collect(),
            assigned: pn
                .spec
                .assignments
                .iter()
                .map(|a| {
                    (
                        (a.kind, a.namespace.clone(), a.name.clone()),
                        (a.uid.clone(), a.generation),
                    )
                })
                .collect(),
        }
    }

    /// Whether the spec assigns the resource.
    pub fn assigns(&self, kind: AssignmentKind, namespace: &str, name: &str) -> bool {
        self.assigned
            .contains_key(&(kind, namespace.to_owned(), name.to_owned()))
    }

    /// Whether this view is at least as recent as `other`: another object
    /// (recreated), or a generation not older.
    fn supersedes(&self, other: &Self) -> bool {
        self.uid != other.uid || self.generation >= other.generation
    }
}

/// A watch stopped before delivering its first list.
#[derive(Debug, thiserror::Error)]
#[error("the {0} watch stopped before its first list")]
pub struct WatchStopped(&'static str);

/// What each controller has to reconcile.
#[derive(Clone)]
pub struct Queues {
    pub nodes: Arc<WorkQueue<Node>>,
    pub tracepoints: Arc<WorkQueue<Tracepoint>>,
    pub retentions: Arc<WorkQueue<Retention>>,
    pub exports: Arc<WorkQueue<Export>>,
}

/// The caches and indexes, shared by every reconciler; filled by one task.
#[derive(Clone)]
pub struct Cache {
    pub nodes: Store<Node>,
    pub tracepoints: Store<Tracepoint>,
    pub retentions: Store<Retention>,
    pub exports: Store<Export>,
    /// `ProbeNode`s with their status; their spec is in `specs`.
    probe_nodes: Store<ProbeNode>,
    pub queues: Queues,
    index: Arc<Mutex<Index>>,
    /// Each `ProbeNode`'s spec, from the watch or from the operator's own
    /// write, whichever is newer: deciding from an older one than the
    /// operator just wrote would write the same spec twice.
    specs: Arc<Mutex<HashMap<String, Arc<SpecView>>>>,
    pods_ready: tokio::sync::watch::Receiver<bool>,
    /// Each node's latest heartbeat Lease renewal.
    leases: Arc<Mutex<HashMap<String, Timestamp>>>,
    grace: Duration,
    watch_stats: Arc<WatchStats>,
}

/// What the watches delivered, for `/metrics`.
#[derive(Debug)]
pub struct WatchStats {
    /// Events by kind, listed objects included.
    pub events: Family<KindLabel, Counter>,
    /// Full lists after the first, by kind.
    pub relists: Family<KindLabel, Counter>,
    /// From an agent writing its `ProbeNode` status to the watch
    /// delivering it, in seconds.
    pub report_delay: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    kind: &'static str,
}

impl Default for WatchStats {
    fn default() -> Self {
        Self {
            events: Family::default(),
            relists: Family::default(),
            // Whole seconds (a heartbeatTime has no fraction): 1 s to 64 s.
            report_delay: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
        }
    }
}

impl WatchStats {
    fn watch_event(&self, kind: &'static str) {
        self.events.get_or_create(&KindLabel { kind }).inc();
    }

    fn relisted(&self, kind: &'static str) {
        self.relists.get_or_create(&KindLabel { kind }).inc();
    }

    fn report_seen(&self, delay: Duration) {
        self.report_delay.observe(delay.as_secs_f64());
    }
}

/// The pods, indexed.
#[derive(Default)]
struct Index {
    /// Pods by namespace and name.
    pods: HashMap<String, HashMap<String, PodFacts>>,
    /// Pods of a list in progress (after a watch lost events), replacing
    /// `pods` once complete.
    relisted: Option<HashMap<String, HashMap<String, PodFacts>>>,
    /// Per Tracepoint, the nodes where live pods it selects run, each with
    /// how many: the pod index by node that a Tracepoint's status needs.
    selections: HashMap<ObjectRef<Tracepoint>, BTreeMap<String, u32>>,
}

struct Writers {
    nodes: Writer<Node>,
    pods_ready: tokio::sync::watch::Sender<bool>,
    tracepoints: Writer<Tracepoint>,
    retentions: Writer<Retention>,
    exports: Writer<Export>,
    probe_nodes: Writer<ProbeNode>,
    /// Each `ProbeNode`'s status time as its agent wrote it (before the
    /// Lease's renewals are folded in): a new one is a new report.
    reported: HashMap<String, Timestamp>,
    /// Kinds listed at least once: a later list is a relist.
    listed: HashSet<&'static str>,
}

/// One event of any watch.
// Each lives for one turn of the loop; boxing would allocate per event.
#[allow(clippy::large_enum_variant)]
enum Observed {
    Node(Result<Event<Node>, watcher::Error>),
    Pod(Result<Event<Pod>, watcher::Error>),
    Tracepoint(Result<Event<Tracepoint>, watcher::Error>),
    Retention(Result<Event<Retention>, watcher::Error>),
    Export(Result<Event<Export>, watcher::Error>),
    ProbeNode(Result<Event<ProbeNode>, watcher::Error>),
    Lease(Result<Event<Lease>, watcher::Error>),
}

impl Observed {
    fn kind(&self) -> &'static str {
        match self {
            Self::Node(_) => "Node",
            Self::Pod(_) => "Pod",
            Self::Tracepoint(_) => "Tracepoint",
            Self::Retention(_) => "Retention",
            Self::Export(_) => "Export",
            Self::ProbeNode(_) => "ProbeNode",
            Self::Lease(_) => "Lease",
        }
    }

    /// Whether this event starts a full list of its kind.
    fn starts_list(&self) -> bool {
        matches!(
            self,
            Self::Node(Ok(Event::Init))
                | Self::Pod(Ok(Event::Init))
                | Self::Tracepoint(Ok(Event::Init))
                | Self::Retention(Ok(Event::Init))
                | Self::Export(Ok(Event::Init))
                | Self::ProbeNode(Ok(Event::Init))
                | Self::Lease(Ok(Event::Init))
        )
    }
}

/// How long handling one event may take before it is logged: the loop
/// handles every kind's events in turn.
const SLOW_EVENT: Duration = Duration::from_millis(100);

impl Cache {
    /// Starts the watches (one per kind), filling the caches for as long as
    /// the runtime runs and retrying with backoff while the apiserver is
    /// away. `grace` is the agents' heartbeat grace period; their Leases
    /// are watched in `lease_namespace`.
    pub fn start(client: &Client, grace: Duration, lease_namespace: &str) -> Self {
        let (nodes, node_writer) = reflector::store();
        let (pods_ready_sender, pods_ready) = tokio::sync::watch::channel(false);
        let (tracepoints, tracepoint_writer) = reflector::store();
        let (retentions, retention_writer) = reflector::store();
        let (exports, export_writer) = reflector::store();
        let (probe_nodes, probe_node_writer) = reflector::store();
        let cache = Self {
            nodes,
            tracepoints,
            retentions,
            exports,
            probe_nodes,
            queues: Queues {
                nodes: WorkQueue::new(),
                tracepoints: WorkQueue::new(),
                retentions: WorkQueue::new(),
                exports: WorkQueue::new(),
            },
            index: Arc::default(),
            specs: Arc::default(),
            pods_ready,
            leases: Arc::default(),
            grace,
            watch_stats: Arc::default(),
        };
        let writers = Writers {
            nodes: node_writer,
            pods_ready: pods_ready_sender,
            tracepoints: tracepoint_writer,
            retentions: retention_writer,
            exports: export_writer,
            probe_nodes: probe_node_writer,
            reported: HashMap::new(),
            listed: HashSet::new(),
        };
        let events = futures::stream::select_all([
            watch(client, slim_node).map(Observed::Node).boxed(),
            watch(client, slim_resource).map(Observed::Pod).boxed(),
            watch(client, slim_resource)
                .map(Observed::Tracepoint)
                .boxed(),
            watch(client, slim_resource)
                .map(Observed::Retention)
                .boxed(),
            watch(client, slim_resource).map(Observed::Export).boxed(),
            watch(client, slim_resource)
                .map(Observed::ProbeNode)
                .boxed(),
            watcher::watcher(
                Api::<Lease>::namespaced(client.clone(), lease_namespace),
                watcher::Config::default().labels(&format!("{HEARTBEAT_LEASE_LABEL}=true")),
            )
            .default_backoff()
            .map(Observed::Lease)
            .boxed(),
        ]);
        tokio::spawn(cache.clone().follow(events, writers));
        cache
    }

    /// Waits until every cache holds its first full list: deciding on a
    /// partial view would take assignments away from nodes.
    pub async fn ready(&self) -> Result<(), WatchStopped> {
        fn stopped<E>(kind: &'static str) -> impl FnOnce(E) -> WatchStopped {
            move |_| WatchStopped(kind)
        }
        self.nodes
            .wait_until_ready()
            .await
            .map_err(stopped("Node"))?;
        self.pods_ready
            .clone()
            .wait_for(|ready| *ready)
            .await
            .map_err(stopped("Pod"))?;
        self.tracepoints
            .wait_until_ready()
            .await
            .map_err(stopped("Tracepoint"))?;
        self.retentions
            .wait_until_ready()
            .await
            .map_err(stopped("Retention"))?;
        self.exports
            .wait_until_ready()
            .await
            .map_err(stopped("Export"))?;
        self.probe_nodes
            .wait_until_ready()
            .await
            .map_err(stopped("ProbeNode"))
    }

    /// What the watches delivered so far.
    pub fn watch_stats(&self) -> &WatchStats {
        &self.watch_stats
    }

    /// Objects in each cache, by kind.
    pub fn sizes(&self) -> [(&'static str, usize); 7] {
        [
            ("Node", self.nodes.len()),
            ("Pod", self.index().pods.values().map(HashMap::len).sum()),
            ("Tracepoint", self.tracepoints.len()),
            ("Retention", self.retentions.len()),
            ("Export", self.exports.len()),
            ("ProbeNode", self.probe_nodes.len()),
            ("Lease", self.leases().len()),
        ]
    }

    /// Every cached `ProbeNode` (status as last reported).
    pub fn probe_nodes(&self) -> Vec<Arc<ProbeNode>> {
        self.probe_nodes.state()
    }

    /// A node's `ProbeNode`, with its status as last reported; its spec is
    /// [`Cache::spec`].
    pub fn probe_node(&self, node: &str) -> Option<Arc<ProbeNode>> {
        self.probe_nodes.get(&ObjectRef::new(node))
    }

    /// What a node's `ProbeNode` spec assigns now, as far as the operator
    /// knows (its own writes included).
    pub fn spec(&self, node: &str) -> Option<Arc<SpecView>> {
        self.specs().get(node).cloned()
    }

    /// Records a `ProbeNode` the apiserver returned from a write.
    pub fn wrote(&self, probe_node: &ProbeNode) {
        let view = SpecView::of(probe_node);
        let mut specs = self.specs();
        let node = probe_node.name_any();
        if specs.get(&node).is_none_or(|old| view.supersedes(old)) {
            specs.insert(node, Arc::new(view));
        }
    }

    /// The nodes where live pods the Tracepoint selects run, sorted.
    pub fn nodes_with_pods(&self, tp: &ObjectRef<Tracepoint>) -> Vec<String> {
        self.index()
            .selections
            .get(tp)
            .map(|nodes| nodes.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Queues every node whose `ProbeNode` does not assign the resource
    /// `kind`/`namespace`/`name` as `desired` says it should: `desired(node)`
    /// is the (uid, generation) the node should run, or `None`.
    pub fn queue_nodes_to_update(
        &self,
        kind: AssignmentKind,
        namespace: &str,
        name: &str,
        desired: impl Fn(&Node) -> Option<(String, i64)>,
    ) -> usize {
        let mut queued = 0;
        for node in self.nodes.state() {
            let node_name = node.name_any();
            let current = self.spec(&node_name).and_then(|spec| {
                spec.assigned
                    .get(&(kind, namespace.to_owned(), name.to_owned()))
                    .cloned()
            });
            if desired(&node) != current {
                self.queues.nodes.push(ObjectRef::from_obj(&*node));
                queued += 1;
            }
        }
        queued
    }

    /// Queues the nodes whose assignment of this Tracepoint is not what it
    /// should be now.
    pub fn queue_nodes_for_tracepoint(&self, tp: &Tracepoint, now: Timestamp) -> usize {
        let identity = (
            tp.uid().unwrap_or_default(),
            tp.meta().generation.unwrap_or_default(),
        );
        // Validated once, not once per node.
        let active = state::activity(tp, now).is_ok();
        self.queue_nodes_to_update(
            AssignmentKind::Tracepoint,
            &tp.namespace().unwrap_or_default(),
            &tp.name_any(),
            |node| (active && tp.spec.selects_node(node.labels())).then(|| identity.clone()),
        )
    }

    /// Queues everything, as after a (re)list: the first reconcile of each
    /// object, or a check of all of them after a watch lost events.
    fn queue_everything(&self) {
        fn refs<K: Resource<DynamicType = ()>>(objects: Vec<Arc<K>>) -> Vec<ObjectRef<K>> {
            objects.iter().map(|o| ObjectRef::from_obj(&**o)).collect()
        }
        self.queues.nodes.push_all(refs(self.nodes.state()));
        self.queues
            .tracepoints
            .push_all(refs(self.tracepoints.state()));
        self.queues
            .retentions
            .push_all(refs(self.retentions.state()));
        self.queues.exports.push_all(refs(self.exports.state()));
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Every update leaves the index whole before it could panic.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<String, Timestamp>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn specs(&self) -> MutexGuard<'_, HashMap<String, Arc<SpecView>>> {
        self.specs.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn follow(self, events: impl Stream<Item = Observed>, mut writers: Writers) {
        let metrics = self.watch_stats.clone();
        let mut events = std::pin::pin!(events);
        while let Some(observed) = events.next().await {
            let kind = observed.kind();
            let started = Instant::now();
            if observed.starts_list() && !writers.listed.insert(kind) {
                info!(kind, "watch lost its place; listing every object again");
                metrics.relisted(kind);
            }
            if let Observed::ProbeNode(Ok(event)) = &observed {
                reported(&mut writers.reported, event, &metrics);
            }
            metrics.watch_event(kind);
            match observed {
                Observed::Node(event) => {
                    if let Some(event) = ok(event) {
                        self.on_node(&mut writers.nodes, event);
                    }
                }
                Observed::Pod(event) => {
                    if let Some(event) = ok(event) {
                        self.on_pod(&writers.pods_ready, event);
                    }
                }
                Observed::Tracepoint(event) => {
                    if let Some(event) = ok(event) {
                        self.on_tracepoint(&mut writers.tracepoints, event);
                    }
                }
                Observed::Retention(event) => {
                    if let Some(event) = ok(event) {
                        self.on_everywhere(
                            &mut writers.retentions,
                            &self.retentions,
                            &self.queues.retentions,
                            AssignmentKind::Retention,
                            state::retention_runs,
                            event,
                        );
                    }
                }
                Observed::Export(event) => {
                    if let Some(event) = ok(event) {
                        self.on_everywhere(
                            &mut writers.exports,
                            &self.exports,
                            &self.queues.exports,
                            AssignmentKind::Export,
                            state::export_runs,
                            event,
                        );
                    }
                }
                Observed::ProbeNode(event) => {
                    if let Some(event) = ok(event) {
                        self.on_probe_node(&mut writers.probe_nodes, event);
                    }
                }
                Observed::Lease(event) => {
                    if let Some(event) = ok(event) {
                        self.on_lease(&mut writers.probe_nodes, event);
                    }
                }
            }
            let took = started.elapsed();
            if took > SLOW_EVENT {
                debug!(kind, ?took, "slow watch event");
            }
        }
    }

    fn on_node(&self, writer: &mut Writer<Node>, event: Event<Node>) {
        let Some((old, new)) = apply(&self.nodes, writer, &event) else {
            if matches!(event, Event::InitDone) {
                self.queue_everything();
            }
            return;
        };
        let node = new.as_ref().or(old.as_ref()).map(|n| n.name_any());
        let Some(node) = node else { return };
        let changed = match (&old, &new) {
            (Some(old), Some(new)) => old.labels() != new.labels() || old.uid() != new.uid(),
            _ => true,
        };
        if !changed {
            // Status and heartbeats: nothing the operator decides on.
            return;
        }
        match &new {
            Some(new) => self.queues.nodes.push(ObjectRef::from_obj(&**new)),
            None => self.queues.nodes.forget(&ObjectRef::new(&node)),
        }
        // A nodeSelector may now match it or not, or it is gone.
        let touched: Vec<_> = self
            .index()
            .selections
            .iter()
            .filter(|(_, nodes)| nodes.contains_key(&node))
            .map(|(tp, _)| tp.clone())
            .collect();
        self.queues.tracepoints.push_all(touched);
    }

    fn on_pod(&self, ready: &tokio::sync::watch::Sender<bool>, event: Event<Pod>) {
        let (pod, deleted) = match event {
            Event::Apply(pod) => (pod, false),
            Event::Delete(pod) => (pod, true),
            Event::Init => {
                self.index().relisted = Some(HashMap::new());
                return;
            }
            Event::InitApply(pod) => {
                self.index()
                    .relisted
                    .get_or_insert_default()
                    .entry(pod.namespace().unwrap_or_default())
                    .or_default()
                    .insert(pod.name_any(), PodFacts::of(&pod));
                return;
            }
            Event::InitDone => {
                {
                    let mut index = self.index();
                    index.pods = index.relisted.take().unwrap_or_default();
                }
                self.rebuild_selections();
                ready.send_replace(true);
                self.queue_everything();
                return;
            }
        };
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let new = (!deleted).then(|| PodFacts::of(&pod));
        let tracepoints = self
            .tracepoints
            .state_filter(|tp| tp.metadata.namespace.as_ref() == Some(&namespace));
        let mut index = self.index();
        let pods = index.pods.entry(namespace.clone()).or_default();
        let old = match &new {
            Some(new) => pods.insert(name, new.clone()),
            None => pods.remove(&name),
        };
        if pods.is_empty() {
            index.pods.remove(&namespace);
        }
        if old == new {
            // Status, annotations, containers: nothing a Tracepoint selects by.
            return;
        }
        let mut touched = Vec::new();
        for tp in &tracepoints {
            let was = old.as_ref().and_then(|p| state::selecting_node(tp, p));
            let is = new.as_ref().and_then(|p| state::selecting_node(tp, p));
            if was == is {
                continue;
            }
            let tp_ref = ObjectRef::from_obj(&**tp);
            let nodes = index.selections.entry(tp_ref.clone()).or_default();
            let mut changed = false;
            if let Some(node) = was
                && let Some(count) = nodes.get_mut(node)
            {
                *count -= 1;
                if *count == 0 {
                    nodes.remove(node);
                    changed = true;
                }
            }
            if let Some(node) = is {
                let count = nodes.entry(node.to_owned()).or_default();
                *count += 1;
                changed |= *count == 1;
            }
            if changed {
                touched.push(tp_ref);
            }
        }
        drop(index);
        self.queues.tracepoints.push_all(touched);
    }

    fn on_tracepoint(&self, writer: &mut Writer<Tracepoint>, event: Event<Tracepoint>) {
        let Some((old, new)) = apply(&self.tracepoints, writer, &event) else {
            if matches!(event, Event::InitDone) {
                self.rebuild_selections();
                self.queue_everything();
            }
            return;
        };
        let Some(tp) = new.as_ref().or(old.as_ref()) else {
            return;
        };
        let tp_ref = ObjectRef::from_obj(&**tp);
        match (&old, &new) {
            (_, None) => {
                self.index().selections.remove(&tp_ref);
                self.queues.tracepoints.forget(&tp_ref);
            }
            (old, Some(new)) => {
                let reselect = old
                    .as_ref()
                    .is_none_or(|old| old.spec.selector != new.spec.selector);
                if reselect {
                    let mut index = self.index();
                    let nodes = Self::selected_nodes(&index, new);
                    index.selections.insert(tp_ref.clone(), nodes);
                }
                // Its own status writes come back here too: not a change.
                let changed = old.as_ref().is_none_or(|old| {
                    old.metadata.generation != new.metadata.generation
                        || old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
                        || old.finalizers() != new.finalizers()
                        || old.uid() != new.uid()
                });
                if changed {
                    self.queues.tracepoints.push(tp_ref);
                }
            }
        }
        match &new {
            Some(new) => {
                self.queue_nodes_for_tracepoint(new, Timestamp::now());
            }
            None => {
                self.queue_nodes_to_update(
                    AssignmentKind::Tracepoint,
                    &tp.namespace().unwrap_or_default(),
                    &tp.name_any(),
                    |_| None,
                );
            }
        }
    }

    /// Retentions and Exports: assigned to every node while they run.
    fn on_everywhere<K>(
        &self,
        writer: &mut Writer<K>,
        store: &Store<K>,
        queue: &WorkQueue<K>,
        kind: AssignmentKind,
        runs: fn(&K) -> bool,
        event: Event<K>,
    ) where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let Some((old, new)) = apply(store, writer, &event) else {
            if matches!(event, Event::InitDone) {
                self.queue_everything();
            }
            return;
        };
        let Some(resource) = new.as_ref().or(old.as_ref()) else {
            return;
        };
        let resource_ref = ObjectRef::from_obj(&**resource);
        let desired = match &new {
            Some(new) => {
                let changed = old.as_ref().is_none_or(|old| {
                    old.meta().generation != new.meta().generation
                        || old.meta().deletion_timestamp != new.meta().deletion_timestamp
                        || old.uid() != new.uid()
                });
                if changed {
                    queue.push(resource_ref);
                }
                runs(new).then(|| {
                    (
                        new.uid().unwrap_or_default(),
                        new.meta().generation.unwrap_or_default(),
                    )
                })
            }
            None => {
                queue.forget(&resource_ref);
                None
            }
        };
        self.queue_nodes_to_update(
            kind,
            &resource.namespace().unwrap_or_default(),
            &resource.name_any(),
            |_| desired.clone(),
        );
    }

    /// An agent's heartbeat: its node's cached `ProbeNode` takes the
    /// renewal as its heartbeat time if newer, and the Tracepoints that
    /// select the node are queued if that makes its agent reporting again.
    fn on_lease(&self, writer: &mut Writer<ProbeNode>, event: Event<Lease>) {
        let (lease, deleted) = match event {
            Event::Apply(lease) | Event::InitApply(lease) => (lease, false),
            Event::Delete(lease) => (lease, true),
            // Leases a relist misses have expired by then or soon will.
            Event::Init | Event::InitDone => return,
        };
        let spec = lease.spec.unwrap_or_default();
        let node = spec
            .holder_identity
            .unwrap_or_else(|| lease.metadata.name.unwrap_or_default());
        let renewed = spec.renew_time.map(|t| t.0);
        let Some(renewed) = renewed.filter(|_| !deleted) else {
            self.leases().remove(&node);
            return;
        };
        self.leases().insert(node.clone(), renewed);
        let Some(old) = self.probe_nodes.get(&ObjectRef::new(&node)) else {
            return;
        };
        let mut new = (*old).clone();
        if !heard_from(&mut new, renewed) {
            return;
        }
        writer.apply_watcher_event(&Event::Apply(new));
        let new = self.probe_nodes.get(&ObjectRef::new(&node));
        let now = Timestamp::now();
        let live =
            |pn: Option<&ProbeNode>| state::liveness(pn, now, self.grace) == Liveness::Reporting;
        if !live(Some(&old)) && live(new.as_deref()) {
            self.queue_selecting(&node);
        }
    }

    /// Queues the Tracepoints selecting pods on `node`.
    fn queue_selecting(&self, node: &str) {
        let touched: Vec<_> = self
            .index()
            .selections
            .iter()
            .filter(|(_, nodes)| nodes.contains_key(node))
            .map(|(tp, _)| tp.clone())
            .collect();
        self.queues.tracepoints.push_all(touched);
    }

    fn on_probe_node(&self, writer: &mut Writer<ProbeNode>, mut event: Event<ProbeNode>) {
        // The spec goes to `specs`, the status to the store.
        let view = match &mut event {
            Event::Apply(pn) | Event::Delete(pn) | Event::InitApply(pn) => {
                let view = SpecView::of(pn);
                pn.spec.assignments = Vec::new();
                if let Some(renewed) = self.leases().get(&pn.name_any()) {
                    heard_from(pn, *renewed);
                }
                Some(view)
            }
            Event::Init | Event::InitDone => None,
        };
        let Some((old, new)) = apply(&self.probe_nodes, writer, &event) else {
            if let (Event::InitApply(pn), Some(view)) = (&event, view) {
                self.record_spec(&pn.name_any(), view);
            }
            if matches!(event, Event::InitDone) {
                let listed: HashSet<String> = self
                    .probe_nodes
                    .state()
                    .iter()
                    .map(|pn| pn.name_any())
                    .collect();
                self.specs().retain(|node, _| listed.contains(node));
                self.queue_everything();
            }
            return;
        };
        let Some(pn) = new.as_ref().or(old.as_ref()) else {
            return;
        };
        let node = pn.name_any();

        // The node controller: a spec it did not write, or none at all.
        let (old_spec, new_spec) = match (&new, view) {
            (Some(_), Some(view)) => {
                let old = self.spec(&node);
                // Its own write, seen again: nothing to do.
                let ours = old.as_deref() == Some(&view);
                let new = self.record_spec(&node, view);
                if !ours && self.nodes.get(&ObjectRef::new(&node)).is_some() {
                    let changed = old
                        .as_ref()
                        .is_none_or(|old| old.digest != new.digest || old.owners != new.owners);
                    if changed {
                        self.queues.nodes.push(ObjectRef::new(&node));
                    }
                }
                (old, Some(new))
            }
            _ => {
                let old = self.specs().remove(&node);
                if self.nodes.get(&ObjectRef::new(&node)).is_some() {
                    self.queues.nodes.push(ObjectRef::new(&node));
                }
                (old, None)
            }
        };

        // The status controllers: reports that changed, or (Tracepoints
        // selecting the node) the agent came back or went silent. Counters
        // alone wait for the periodic resync.
        let now = Timestamp::now();
        let live = |pn: &Option<Arc<ProbeNode>>| {
            state::liveness(pn.as_deref(), now, self.grace) == Liveness::Reporting
        };
        if live(&old) != live(&new) {
            self.queue_selecting(&node);
            // Retentions and Exports count reporting nodes too, but run on
            // every node: queueing all of them for every agent that comes
            // or goes would rewrite their status a thousand times while a
            // fleet starts. Their periodic resync picks the count up.
        }
        let status = |pn: &Option<Arc<ProbeNode>>| pn.as_ref().and_then(|pn| pn.status.clone());
        let assigned = |spec: &Option<Arc<SpecView>>| {
            spec.as_ref()
                .map(|s| s.assigned.keys().cloned().collect())
                .unwrap_or_default()
        };
        for (kind, namespace, name) in changed_reports(
            status(&old).as_ref(),
            status(&new).as_ref(),
            &assigned(&old_spec),
            &assigned(&new_spec),
        ) {
            tracing::debug!(%node, ?kind, %namespace, %name, "report changed");
            match kind {
                AssignmentKind::Tracepoint => self
                    .queues
                    .tracepoints
                    .push(ObjectRef::new(&name).within(&namespace)),
                AssignmentKind::Retention => self
                    .queues
                    .retentions
                    .push(ObjectRef::new(&name).within(&namespace)),
                AssignmentKind::Export => self
                    .queues
                    .exports
                    .push(ObjectRef::new(&name).within(&namespace)),
            }
        }
    }

    /// Keeps `view` as the node's spec unless the one known is newer;
    /// returns the one kept.
    fn record_spec(&self, node: &str, view: SpecView) -> Arc<SpecView> {
        let mut specs = self.specs();
        match specs.get(node) {
            Some(old) if !view.supersedes(old) => old.clone(),
            _ => {
                let view = Arc::new(view);
                specs.insert(node.to_owned(), view.clone());
                view
            }
        }
    }

    /// The nodes of the Tracepoint's selected pods, from the index.
    fn selected_nodes(index: &Index, tp: &Tracepoint) -> BTreeMap<String, u32> {
        let mut nodes = BTreeMap::new();
        let pods = tp
            .metadata
            .namespace
            .as_ref()
            .and_then(|namespace| index.pods.get(namespace));
        for pod in pods.into_iter().flat_map(HashMap::values) {
            if let Some(node) = state::selecting_node(tp, pod) {
                *nodes.entry(node.to_owned()).or_insert(0) += 1;
            }
        }
        nodes
    }

    /// Recomputes every Tracepoint's selected nodes, after a (re)list.
    fn rebuild_selections(&self) {
        let tracepoints = self.tracepoints.state();
        let mut index = self.index();
        let selections = tracepoints
            .iter()
            .map(|tp| (ObjectRef::from_obj(&**tp), Self::selected_nodes(&index, tp)))
            .collect();
        index.selections = selections;
    }
}

type ResourceKey = (AssignmentKind, String, String);

/// The resources whose report on a node changed in what a status shows
/// (state, generation, reason, message), or whose assignment to it did.
fn changed_reports(
    old: Option<&ProbeNodeStatus>,
    new: Option<&ProbeNodeStatus>,
    old_assigned: &HashSet<ResourceKey>,
    new_assigned: &HashSet<ResourceKey>,
) -> Vec<ResourceKey> {
    fn reports(status: Option<&ProbeNodeStatus>) -> BTreeMap<ResourceKey, &AssignmentStatus> {
        status
            .map(|s| {
                s.assignments
                    .iter()
                    .map(|a| ((a.kind, a.namespace.clone(), a.name.clone()), a))
                    .collect()
            })
            .unwrap_or_default()
    }
    let shown = |a: &AssignmentStatus| (a.generation, a.state, a.reason.clone(), a.message.clone());
    let (old_reports, new_reports) = (reports(old), reports(new));
    let mut changed: Vec<ResourceKey> = Vec::new();
    for (key, report) in &new_reports {
        if old_reports.get(key).map(|r| shown(r)) != Some(shown(report)) {
            changed.push(key.clone());
        }
    }
    changed.extend(
        old_reports
            .keys()
            .filter(|key| !new_reports.contains_key(*key))
            .cloned(),
    );
    changed.extend(old_assigned.symmetric_difference(new_assigned).cloned());
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// Applies a watch event to a store. For an object's change, returns the
/// object before and after it (`None`: absent); `None` for the events of
/// a (re)list, which the store buffers until it is complete.
#[allow(clippy::type_complexity)]
fn apply<K>(
    store: &Store<K>,
    writer: &mut Writer<K>,
    event: &Event<K>,
) -> Option<(Option<Arc<K>>, Option<Arc<K>>)>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let object = match event {
        Event::Apply(object) | Event::Delete(object) => object,
        Event::Init | Event::InitApply(_) | Event::InitDone => {
            writer.apply_watcher_event(event);
            return None;
        }
    };
    let key = ObjectRef::from_obj(object);
    let old = store.get(&key);
    writer.apply_watcher_event(event);
    let new = match event {
        Event::Apply(_) => store.get(&key),
        _ => None,
    };
    Some((old, new))
}

/// Notes the status time of a `ProbeNode` event and, for a new report
/// seen by the watch, how long after its agent wrote it.
fn reported(
    reported: &mut HashMap<String, Timestamp>,
    event: &Event<ProbeNode>,
    metrics: &WatchStats,
) {
    let (pn, new) = match event {
        Event::Apply(pn) => (pn, true),
        Event::InitApply(pn) => (pn, false),
        Event::Delete(pn) => {
            reported.remove(&pn.name_any());
            return;
        }
        Event::Init | Event::InitDone => return,
    };
    let Some(at) = pn.status.as_ref().and_then(|s| s.heartbeat_time.as_ref()) else {
        return;
    };
    let node = pn.name_any();
    if reported.get(&node) == Some(&at.0) {
        // The operator's own spec write, or an edit of another field.
        return;
    }
    reported.insert(node, at.0);
    if new {
        let delay = Timestamp::now().duration_since(at.0);
        let delay = Duration::try_from(delay).unwrap_or_default();
        metrics.report_seen(delay);
        if delay > Duration::from_secs(2) {
            debug!(node = %pn.name_any(), ?delay, "agent report seen late");
        }
    }
}

/// Takes `at` as the `ProbeNode`'s heartbeat time if it is newer; returns
/// whether it was.
fn heard_from(pn: &mut ProbeNode, at: Timestamp) -> bool {
    let status = pn.status.get_or_insert_with(ProbeNodeStatus::default);
    if status.heartbeat_time.as_ref().is_some_and(|t| t.0 >= at) {
        return false;
    }
    status.heartbeat_time = Some(Time(at));
    true
}

fn ok<K: Resource<DynamicType = ()>>(event: Result<Event<K>, watcher::Error>) -> Option<Event<K>> {
    match event {
        Ok(event) => Some(event),
        Err(e) => {
            warn!(kind = %K::kind(&()), "watch failed, retrying: {}", sonde_daemon::chain(&e));
            None
        }
    }
}

/// The watch of all objects of one kind, each slimmed by `slim`.
fn watch<K>(
    client: &Client,
    slim: fn(&mut K),
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .modify(slim)
        .default_backoff()
}

/// What every cached object drops: managed fields and kubectl's copy of
/// the last applied manifest.
fn slim_resource<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn slim_node(node: &mut Node) {
    slim_resource(node);
    node.metadata.annotations = None;
    // Images, conditions, addresses: large, and never read here.
    node.spec = None;
    node.status = None;
}

#[cfg(test)]
mod tests {
    use crds::v1alpha1::AssignmentState;
    use serde_json::json;

    use super::*;

    fn probe_node(reports: serde_json::Value, assigned: &[&str]) -> ProbeNode {
        let assignments: Vec<_> = assigned
            .iter()
            .map(|name| {
                json!({"kind": "Tracepoint", "namespace": "shop", "name": name,
                "uid": "u", "generation": 1,
                "tracepoint": {
                    "probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}},
                    "table": name,
                }})
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeNode",
            "metadata": {"name": "node-a", "uid": "pn", "generation": 1},
            "spec": {"node": "node-a", "assignments": assignments},
            "status": {"heartbeatTime": "2026-11-28T12:00:00Z", "assignments": reports},
        }))
        .expect("valid ProbeNode")
    }

    fn report(name: &str, state: AssignmentState, events: u64) -> serde_json::Value {
        json!({"kind": "Tracepoint", "namespace": "shop", "name": name, "generation": 1,
               "state": state, "events": events})
    }

    fn changed(old: &ProbeNode, new: Option<&ProbeNode>) -> Vec<String> {
        let assigned = |pn: Option<&ProbeNode>| {
            pn.map(|pn| SpecView::of(pn).assigned.into_keys().collect())
                .unwrap_or_default()
        };
        changed_reports(
            old.status.as_ref(),
            new.and_then(|pn| pn.status.as_ref()),
            &assigned(Some(old)),
            &assigned(new),
        )
        .into_iter()
        .map(|(_, _, name)| name)
        .collect()
    }

    #[test]
    fn counters_alone_are_no_change_of_report() {
        let old = probe_node(
            json!([
                report("a", AssignmentState::Attached, 1),
                report("b", AssignmentState::Idle, 0)
            ]),
            &["a", "b"],
        );
        let counted = probe_node(
            json!([
                report("a", AssignmentState::Attached, 500),
                report("b", AssignmentState::Idle, 0)
            ]),
            &["a", "b"],
        );
        assert!(changed(&old, Some(&counted)).is_empty());
        let attached = probe_node(
            json!([
                report("a", AssignmentState::Attached, 9),
                report("b", AssignmentState::Attached, 1)
            ]),
            &["a", "b"],
        );
        assert_eq!(changed(&old, Some(&attached)), ["b"]);
        let unassigned = probe_node(
            json!([
                report("a", AssignmentState::Attached, 1),
                report("b", AssignmentState::Idle, 0)
            ]),
            &["a"],
        );
        assert_eq!(changed(&old, Some(&unassigned)), ["b"]);
        assert_eq!(changed(&old, None), ["a", "b"]);
    }

    #[test]
    fn a_spec_view_tells_specs_apart_by_their_copies() {
        let pn = probe_node(json!([]), &["a"]);
        let view = SpecView::of(&pn);
        assert!(view.assigns(AssignmentKind::Tracepoint, "shop", "a"));
        assert_eq!(
            view.assigned[&(
                AssignmentKind::Tracepoint,
                "shop".to_owned(),
                "a".to_owned()
            )],
            ("u".to_owned(), 1)
        );
        // The same assignment with another copy of the spec: another digest.
        let mut edited = pn.clone();
        if let Some(spec) = &mut edited.spec.assignments[0].tracepoint {
            spec.table = "other".to_owned();
        }
        assert_ne!(SpecView::of(&edited).digest, view.digest);
        assert_eq!(SpecView::of(&pn.clone()).digest, view.digest);
        // A later generation of the same object supersedes; an older does not.
        let mut later = pn.clone();
        later.metadata.generation = Some(2);
        assert!(SpecView::of(&later).supersedes(&view));
        assert!(!view.supersedes(&SpecView::of(&later)));
    }

    #[test]
    fn a_lease_renewal_is_a_heartbeat_only_when_newer() {
        let at = |s: &str| s.parse::<Timestamp>().expect("a timestamp");
        let mut pn = probe_node(json!([]), &[]);
        // The status was written at 12:00:00.
        assert!(!heard_from(&mut pn, at("2026-11-28T11:59:50Z")));
        assert!(!heard_from(&mut pn, at("2026-11-28T12:00:00Z")));
        assert!(heard_from(&mut pn, at("2026-11-28T12:00:10Z")));
        let heartbeat = |pn: &ProbeNode| pn.status.as_ref()?.heartbeat_time.clone();
        assert_eq!(heartbeat(&pn), Some(Time(at("2026-11-28T12:00:10Z"))));
        // An agent's liveness follows its Lease once its status is old.
        let grace = Duration::from_secs(30);
        let now = at("2026-11-28T12:00:35Z");
        assert_eq!(state::liveness(Some(&pn), now, grace), Liveness::Reporting);
        let mut silent = probe_node(json!([]), &[]);
        assert!(matches!(
            state::liveness(Some(&silent), now, grace),
            Liveness::Silent(_)
        ));
        // A ProbeNode with no status yet takes the Lease's time.
        silent.status = None;
        assert!(heard_from(&mut silent, at("2026-11-28T12:00:30Z")));
        assert_eq!(
            state::liveness(Some(&silent), now, grace),
            Liveness::Reporting
        );
    }
}
