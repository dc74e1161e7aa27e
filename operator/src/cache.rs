//! The operator's view of the cluster: one watch per kind, each filling a
//! reflector store, and the indexes the controllers need, kept up to date
//! from the same events. Each event is also turned into the reconciles it
//! calls for, and only those: a pod queues the Tracepoints whose set of
//! selected nodes it changes, a Tracepoint queues the nodes whose
//! assignment of it changes, an agent's heartbeat queues nothing unless a
//! report or the agent's liveness changed.
//!
//! Cached objects keep only what the operator reads: pods their labels,
//! node and phase; nodes their labels; `ProbeNode`s their assignments
//! without the copied specs (a digest of the full spec stands for them, see
//! [`SPEC_DIGEST`]); nothing keeps its managed fields.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use crds::{
    Export, Retention, Tracepoint,
    v1alpha1::{AssignmentKind, AssignmentStatus, ProbeNode},
};
use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::core::v1::{Node, Pod, PodSpec, PodStatus},
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
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::{
    queue::WorkQueue,
    state::{self, Liveness},
};

/// Annotation, on cached `ProbeNode`s only, holding the digest
/// ([`state::spec_digest`]) of the spec as the apiserver sent it, before the
/// copies of the resources' specs were dropped from the cache.
pub const SPEC_DIGEST: &str = "sonde.dev/spec-digest";

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
    pub pods: Store<Pod>,
    pub tracepoints: Store<Tracepoint>,
    pub retentions: Store<Retention>,
    pub exports: Store<Export>,
    probe_nodes: Store<ProbeNode>,
    pub queues: Queues,
    index: Arc<Mutex<Index>>,
    /// `ProbeNode`s as the operator last wrote them, until the watch
    /// delivers them: deciding from the older cached object would write
    /// the same spec twice.
    written: Arc<Mutex<HashMap<String, Arc<ProbeNode>>>>,
    grace: Duration,
}

/// Indexes over the pods.
#[derive(Default)]
struct Index {
    /// Pod names by namespace.
    pods_by_namespace: HashMap<String, HashSet<String>>,
    /// Per Tracepoint, the nodes where live pods it selects run, each with
    /// how many: the pod index by node that a Tracepoint's status needs.
    selections: HashMap<ObjectRef<Tracepoint>, BTreeMap<String, u32>>,
}

struct Writers {
    nodes: Writer<Node>,
    pods: Writer<Pod>,
    tracepoints: Writer<Tracepoint>,
    retentions: Writer<Retention>,
    exports: Writer<Export>,
    probe_nodes: Writer<ProbeNode>,
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
}

impl Cache {
    /// Starts the watches (one per kind), filling the caches for as long as
    /// the runtime runs and retrying with backoff while the apiserver is
    /// away. `grace` is the agents' heartbeat grace period.
    pub fn start(client: &Client, grace: Duration) -> Self {
        let (nodes, node_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (tracepoints, tracepoint_writer) = reflector::store();
        let (retentions, retention_writer) = reflector::store();
        let (exports, export_writer) = reflector::store();
        let (probe_nodes, probe_node_writer) = reflector::store();
        let cache = Self {
            nodes,
            pods,
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
            written: Arc::default(),
            grace,
        };
        let writers = Writers {
            nodes: node_writer,
            pods: pod_writer,
            tracepoints: tracepoint_writer,
            retentions: retention_writer,
            exports: export_writer,
            probe_nodes: probe_node_writer,
        };
        let events = futures::stream::select_all([
            watch(client, slim_node).map(Observed::Node).boxed(),
            watch(client, slim_pod).map(Observed::Pod).boxed(),
            watch(client, slim_resource)
                .map(Observed::Tracepoint)
                .boxed(),
            watch(client, slim_resource)
                .map(Observed::Retention)
                .boxed(),
            watch(client, slim_resource).map(Observed::Export).boxed(),
            watch(client, slim_probe_node)
                .map(Observed::ProbeNode)
                .boxed(),
        ]);
        tokio::spawn(cache.clone().follow(events, writers));
        cache
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

    /// Objects in each cache, by kind.
    pub fn sizes(&self) -> [(&'static str, usize); 6] {
        [
            ("Node", self.nodes.len()),
            ("Pod", self.pods.len()),
            ("Tracepoint", self.tracepoints.len()),
            ("Retention", self.retentions.len()),
            ("Export", self.exports.len()),
            ("ProbeNode", self.probe_nodes.len()),
        ]
    }

    /// Every cached `ProbeNode` (status as last reported).
    pub fn probe_nodes(&self) -> Vec<Arc<ProbeNode>> {
        self.probe_nodes.state()
    }

    /// A node's `ProbeNode`: the cached one, or the one the operator wrote
    /// if the watch has not delivered that yet. Assignments carry no spec
    /// copies; [`SPEC_DIGEST`] stands for them.
    pub fn probe_node(&self, node: &str) -> Option<Arc<ProbeNode>> {
        let cached = self.probe_nodes.get(&ObjectRef::new(node));
        let written = self.written().get(node).cloned();
        match (cached, written) {
            (Some(cached), Some(written))
                if cached.uid() == written.uid()
                    && written.metadata.generation > cached.metadata.generation =>
            {
                Some(written)
            }
            (None, Some(written)) => Some(written),
            (cached, _) => cached,
        }
    }

    /// Records a `ProbeNode` the apiserver returned from a write.
    pub fn wrote(&self, mut probe_node: ProbeNode) {
        slim_probe_node(&mut probe_node);
        let name = probe_node.name_any();
        self.written().insert(name, Arc::new(probe_node));
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
            let current = self.probe_node(&node_name).and_then(|pn| {
                pn.spec
                    .assignments
                    .iter()
                    .find(|a| a.kind == kind && a.namespace == namespace && a.name == name)
                    .map(|a| (a.uid.clone(), a.generation))
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

    fn written(&self) -> MutexGuard<'_, HashMap<String, Arc<ProbeNode>>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn follow(self, events: impl Stream<Item = Observed>, mut writers: Writers) {
        let mut events = std::pin::pin!(events);
        while let Some(observed) = events.next().await {
            match observed {
                Observed::Node(event) => {
                    if let Some(event) = ok(event) {
                        self.on_node(&mut writers.nodes, event);
                    }
                }
                Observed::Pod(event) => {
                    if let Some(event) = ok(event) {
                        self.on_pod(&mut writers.pods, event);
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

    fn on_pod(&self, writer: &mut Writer<Pod>, event: Event<Pod>) {
        let Some((old, new)) = apply(&self.pods, writer, &event) else {
            if matches!(event, Event::InitDone) {
                self.rebuild_index();
                self.queue_everything();
            }
            return;
        };
        let Some(pod) = new.as_ref().or(old.as_ref()) else {
            return;
        };
        let namespace = pod.namespace().unwrap_or_default();
        let tracepoints = self
            .tracepoints
            .state_filter(|tp| tp.metadata.namespace.as_ref() == Some(&namespace));
        let mut index = self.index();
        let names = index
            .pods_by_namespace
            .entry(namespace.clone())
            .or_default();
        if new.is_some() {
            names.insert(pod.name_any());
        } else {
            names.remove(&pod.name_any());
            if names.is_empty() {
                index.pods_by_namespace.remove(&namespace);
            }
        }
        let mut touched = Vec::new();
        for tp in &tracepoints {
            let was = old.as_deref().and_then(|p| state::selecting_node(tp, p));
            let is = new.as_deref().and_then(|p| state::selecting_node(tp, p));
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
                self.rebuild_index();
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
                    let nodes = self.selected_nodes(new);
                    self.index().selections.insert(tp_ref.clone(), nodes);
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

    fn on_probe_node(&self, writer: &mut Writer<ProbeNode>, event: Event<ProbeNode>) {
        let Some((old, new)) = apply(&self.probe_nodes, writer, &event) else {
            if matches!(event, Event::InitDone) {
                self.queue_everything();
            }
            return;
        };
        let Some(pn) = new.as_ref().or(old.as_ref()) else {
            return;
        };
        let node = pn.name_any();

        // The node controller: a spec it did not write, or none at all.
        let ours = {
            let mut written = self.written();
            match (&new, written.get(&node)) {
                (Some(new), Some(w)) => {
                    let ours =
                        new.uid() == w.uid() && new.metadata.generation == w.metadata.generation;
                    if new.uid() != w.uid() || new.metadata.generation >= w.metadata.generation {
                        written.remove(&node);
                    }
                    ours
                }
                (None, Some(_)) => {
                    written.remove(&node);
                    false
                }
                (_, None) => false,
            }
        };
        let spec_changed = match (&old, &new) {
            (Some(old), Some(new)) => {
                old.annotations().get(SPEC_DIGEST) != new.annotations().get(SPEC_DIGEST)
                    || old.owner_references() != new.owner_references()
            }
            _ => true,
        };
        if spec_changed && !ours && self.nodes.get(&ObjectRef::new(&node)).is_some() {
            self.queues.nodes.push(ObjectRef::new(&node));
        }

        // The status controllers: reports that changed, or the agent came
        // back or went silent. Counters alone wait for the periodic resync.
        let now = Timestamp::now();
        let live = |pn: &Option<Arc<ProbeNode>>| {
            state::liveness(pn.as_deref(), now, self.grace) == Liveness::Reporting
        };
        if live(&old) != live(&new) {
            let touched: Vec<_> = self
                .index()
                .selections
                .iter()
                .filter(|(_, nodes)| nodes.contains_key(&node))
                .map(|(tp, _)| tp.clone())
                .collect();
            self.queues.tracepoints.push_all(touched);
            self.queues.retentions.push_all(
                self.retentions
                    .state()
                    .iter()
                    .map(|r| ObjectRef::from_obj(&**r)),
            );
            self.queues.exports.push_all(
                self.exports
                    .state()
                    .iter()
                    .map(|e| ObjectRef::from_obj(&**e)),
            );
        }
        for (kind, namespace, name) in changed_reports(old.as_deref(), new.as_deref()) {
            match kind {
                AssignmentKind::Tracepoint => self
                    .queues
                    .tracepoints
                    .push(ObjectRef::new(name).within(namespace)),
                AssignmentKind::Retention => self
                    .queues
                    .retentions
                    .push(ObjectRef::new(name).within(namespace)),
                AssignmentKind::Export => self
                    .queues
                    .exports
                    .push(ObjectRef::new(name).within(namespace)),
            }
        }
    }

    /// The nodes of the Tracepoint's selected pods, from the namespace index.
    fn selected_nodes(&self, tp: &Tracepoint) -> BTreeMap<String, u32> {
        let namespace = tp.namespace().unwrap_or_default();
        let names: Vec<String> = self
            .index()
            .pods_by_namespace
            .get(&namespace)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default();
        let mut nodes = BTreeMap::new();
        for name in names {
            let Some(pod) = self.pods.get(&ObjectRef::new(&name).within(&namespace)) else {
                continue;
            };
            if let Some(node) = state::selecting_node(tp, &pod) {
                *nodes.entry(node.to_owned()).or_insert(0) += 1;
            }
        }
        nodes
    }

    /// Rebuilds the pod index from the caches, after a (re)list.
    fn rebuild_index(&self) {
        let mut pods_by_namespace: HashMap<String, HashSet<String>> = HashMap::new();
        for pod in self.pods.state() {
            pods_by_namespace
                .entry(pod.namespace().unwrap_or_default())
                .or_default()
                .insert(pod.name_any());
        }
        self.index().pods_by_namespace = pods_by_namespace;
        let selections = self
            .tracepoints
            .state()
            .iter()
            .map(|tp| (ObjectRef::from_obj(&**tp), self.selected_nodes(tp)))
            .collect();
        self.index().selections = selections;
    }
}

/// The resources whose report on a node changed in what a status shows
/// (state, generation, reason, message), or whose assignment to it did.
fn changed_reports<'a>(
    old: Option<&'a ProbeNode>,
    new: Option<&'a ProbeNode>,
) -> Vec<(AssignmentKind, &'a str, &'a str)> {
    type Key<'a> = (AssignmentKind, &'a str, &'a str);
    fn reports(pn: Option<&ProbeNode>) -> BTreeMap<Key<'_>, &AssignmentStatus> {
        pn.and_then(|pn| pn.status.as_ref())
            .map(|s| {
                s.assignments
                    .iter()
                    .map(|a| ((a.kind, a.namespace.as_str(), a.name.as_str()), a))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn assigned(pn: Option<&ProbeNode>) -> HashSet<Key<'_>> {
        pn.map(|pn| {
            pn.spec
                .assignments
                .iter()
                .map(|a| (a.kind, a.namespace.as_str(), a.name.as_str()))
                .collect()
        })
        .unwrap_or_default()
    }
    let shown = |a: &AssignmentStatus| (a.generation, a.state, a.reason.clone(), a.message.clone());
    let (old_reports, new_reports) = (reports(old), reports(new));
    let mut changed: Vec<Key<'a>> = Vec::new();
    for (key, report) in &new_reports {
        if old_reports.get(key).map(|r| shown(r)) != Some(shown(report)) {
            changed.push(*key);
        }
    }
    changed.extend(
        old_reports
            .keys()
            .filter(|key| !new_reports.contains_key(*key)),
    );
    let (old_assigned, new_assigned) = (assigned(old), assigned(new));
    changed.extend(old_assigned.symmetric_difference(&new_assigned));
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

fn slim_pod(pod: &mut Pod) {
    slim_resource(pod);
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    let node_name = pod.spec.take().and_then(|s| s.node_name);
    pod.spec = Some(PodSpec {
        node_name,
        ..PodSpec::default()
    });
    let phase = pod.status.take().and_then(|s| s.phase);
    pod.status = Some(PodStatus {
        phase,
        ..PodStatus::default()
    });
}

/// Replaces the copies of the resources' specs by the spec's digest: a
/// node with a hundred Tracepoints would otherwise keep a hundred specs.
fn slim_probe_node(pn: &mut ProbeNode) {
    slim_resource(pn);
    let digest = state::spec_digest(&pn.spec).to_string();
    pn.metadata
        .annotations
        .get_or_insert_default()
        .insert(SPEC_DIGEST.to_owned(), digest);
    for assignment in &mut pn.spec.assignments {
        assignment.tracepoint = None;
        assignment.retention = None;
        assignment.export = None;
    }
}

/// The digest of a cached `ProbeNode`'s spec.
pub fn cached_digest(pn: &ProbeNode) -> Option<u64> {
    pn.annotations().get(SPEC_DIGEST)?.parse().ok()
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
                       "uid": "u", "generation": 1})
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeNode",
            "metadata": {"name": "node-a"},
            "spec": {"node": "node-a", "assignments": assignments},
            "status": {"heartbeatTime": "2026-11-28T12:00:00Z", "assignments": reports},
        }))
        .expect("valid ProbeNode")
    }

    fn report(name: &str, state: AssignmentState, events: u64) -> serde_json::Value {
        json!({"kind": "Tracepoint", "namespace": "shop", "name": name, "generation": 1,
               "state": state, "events": events})
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
        let mut new = probe_node(
            json!([
                report("a", AssignmentState::Attached, 500),
                report("b", AssignmentState::Idle, 0)
            ]),
            &["a", "b"],
        );
        assert!(changed_reports(Some(&old), Some(&new)).is_empty());
        new = probe_node(
            json!([
                report("a", AssignmentState::Attached, 9),
                report("b", AssignmentState::Attached, 1)
            ]),
            &["a"],
        );
        let changed: Vec<&str> = changed_reports(Some(&old), Some(&new))
            .into_iter()
            .map(|(_, _, name)| name)
            .collect();
        assert_eq!(changed, ["b"]);
        let gone: Vec<&str> = changed_reports(Some(&old), None)
            .into_iter()
            .map(|(_, _, name)| name)
            .collect();
        assert_eq!(gone, ["a", "b"]);
    }

    #[test]
    fn a_slim_probe_node_keeps_the_digest_of_its_full_spec() {
        let mut full = probe_node(json!([]), &["a"]);
        full.spec.assignments[0].tracepoint = Some(
            serde_json::from_value(json!({
                "probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}},
                "table": "calls",
            }))
            .expect("valid spec"),
        );
        let digest = state::spec_digest(&full.spec);
        let mut slim = full.clone();
        slim_probe_node(&mut slim);
        assert!(slim.spec.assignments[0].tracepoint.is_none());
        assert_eq!(cached_digest(&slim), Some(digest));
        assert_ne!(state::spec_digest(&slim.spec), digest);
    }
}
