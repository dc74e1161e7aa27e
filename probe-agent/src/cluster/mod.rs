//! Cluster mode: the agent driven by its node's `ProbeNode`.
//!
//! The operator writes the node's assignments into the `ProbeNode`'s spec;
//! the agent watches that one object and the pods on its node
//! ([`watch`]), selects the pods of each Tracepoint itself
//! ([`selection`]), resolves their containers to cgroup ids ([`cgroups`]),
//! and keeps each probe's in-kernel target set equal to them
//! ([`reconcile`]): attached while a selected container runs, detached
//! (idle) while none does. The drive loop owns the [`Engine`], as in
//! standalone mode: it drains the ring, answers metric scrapes, applies
//! changes, and publishes the status ([`status`]) that [`report`] writes
//! from the async runtime. Secrets are read there too ([`secrets`]): the
//! drive thread never waits on the apiserver.
//!
//! Rows are labelled with their pod's namespace, name and container from
//! the cgroup id, through the engine's identity map kept current here.

pub mod cgroups;
pub mod heartbeat;
pub mod reconcile;
pub mod report;
pub mod secrets;
pub mod selection;
pub mod status;
pub mod watch;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use crds::{
    Retention, TableName,
    v1alpha1::{
        AssignedSpec, Assignment, AssignmentKind, AssignmentState, AssignmentStatus, Probe,
        ProbeNodeStatus, TracepointSpec,
    },
};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use probe_capture::{
    capture::ProbeTotals,
    drive::Driven,
    engine::{AttachedProbe, Engine},
    identity::ContainerIdentity,
    loader::Targets,
    plan::{BinaryResolver, PlanError},
};
use probe_serve::{
    export::Exports,
    metrics::{ProbeReport, ProbeSample, ProbeState, ReportRequests},
};
use sonde_daemon::chain;
use tokio::sync::watch as channel;
use tracing::{error, info, warn};

use self::{
    cgroups::{CgroupResolver, ContainerCgroup, ContainerId},
    heartbeat::Pulse,
    reconcile::{AppliedProbe, AppliedState, Decision, DesiredProbe},
    secrets::SecretValues,
    selection::SelectedContainer,
    status::{NodeFacts, reason},
    watch::ClusterView,
};
use crate::storage::Storage;

/// How often the assignments are re-evaluated without a watch event: a
/// container's cgroup may appear after its pod reported it.
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How often the cluster agent does each of its jobs (draining is the
/// drive loop's).
#[derive(Clone, Copy, Debug)]
pub struct Intervals {
    /// How often the agent shows it is alive: its heartbeat Lease is
    /// renewed, or without one its status written.
    pub heartbeat: Duration,
    /// With a heartbeat Lease: how often the status is written when no
    /// state changes, for its counters.
    pub status: Duration,
}

/// `(kind, namespace, name)` of an assignment.
type AssignmentKey = (AssignmentKind, String, String);

/// Events and losses of earlier attachments of the same spec, so the
/// status counts everything since the assignment was first attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    events: u64,
    lost: u64,
}

/// A Tracepoint assignment as this node runs it.
#[derive(Debug)]
struct AppliedTracepoint {
    uid: String,
    generation: i64,
    /// `None` when the assignment held no Tracepoint spec.
    spec: Option<TracepointSpec>,
    state: AppliedState,
    probe: Option<AttachedProbe>,
    reason: Option<String>,
    message: Option<String>,
    carried: Counts,
    /// Totals of this generation's earlier attachments (the Tracepoint went
    /// idle in between), so its counters on /metrics never go back.
    carried_totals: Option<ProbeTotals>,
}

/// A container a probe targets, resolved to its cgroup.
#[derive(Clone, Debug)]
struct TargetContainer {
    selected: SelectedContainer,
    cgroup: ContainerCgroup,
}

/// What one Tracepoint assignment should run now.
struct Wanted<'a> {
    assignment: &'a Assignment,
    spec: Result<&'a TracepointSpec, String>,
    targets: BTreeMap<u64, TargetContainer>,
    /// Selected containers whose cgroups were not found, with why.
    unresolved: Vec<String>,
}

/// The agent in cluster mode.
pub struct ClusterAgent {
    engine: Engine,
    storage: Storage,
    node: String,
    cgroups: Result<CgroupResolver, String>,
    tracepoints: BTreeMap<AssignmentKey, AppliedTracepoint>,
    /// Retention and Export states from the last reconcile.
    other_states: Vec<AssignmentStatus>,
    /// `(namespace, name, uid, generation)` of the Retentions applied.
    retentions_applied: Option<Vec<(String, String, String, i64)>>,
    /// Each applied Retention's table patterns and rollup tables, by
    /// `(namespace, name)`, for the tables its status reports.
    retention_tables: HashMap<(String, String), Vec<String>>,
    exports_logged: HashSet<(String, String, i64)>,
    /// The Exports this node runs, and the Secrets they read (see
    /// [`Self::run_exports`]); without them Exports are Unsupported.
    exports: Option<(Exports, SecretValues)>,
    /// Cgroup ids labelled in the engine's identity map.
    labelled: HashSet<u64>,
    facts: NodeFacts,
    reports: Option<ReportRequests>,
    /// Where the status is published, and the states last published
    /// (counts zeroed).
    statuses: Option<channel::Sender<Option<ProbeNodeStatus>>>,
    published: Option<Vec<AssignmentStatus>>,
    /// What the drive loop reads the cluster from; `None` until
    /// [`Self::follow`].
    view: Option<ClusterView>,
    intervals: Intervals,
    /// Shared with the heartbeat Lease's task, if there is one.
    pulse: Option<Arc<Pulse>>,
    next_resync: Instant,
    /// When the status is written next although no state changed.
    next_status: Instant,
}

impl ClusterAgent {
    /// An agent with nothing applied yet; `cgroups` is where pods'
    /// containers are found (an error: this node cannot target pods).
    pub fn new(
        engine: Engine,
        storage: Storage,
        node: &str,
        cgroups: Result<CgroupResolver, cgroups::CgroupError>,
        facts: NodeFacts,
    ) -> Self {
        let engine = engine.with_sink(storage.sink());
        let now = Instant::now();
        Self {
            engine,
            storage,
            node: node.to_owned(),
            cgroups: cgroups.map_err(|e| chain(&e)),
            tracepoints: BTreeMap::new(),
            other_states: Vec::new(),
            retentions_applied: None,
            retention_tables: HashMap::new(),
            exports_logged: HashSet::new(),
            exports: None,
            labelled: HashSet::new(),
            facts,
            reports: None,
            statuses: None,
            published: None,
            view: None,
            intervals: Intervals {
                heartbeat: Duration::from_secs(10),
                status: Duration::from_secs(60),
            },
            pulse: None,
            next_resync: now,
            next_status: now,
        }
    }

    /// Runs the node's Export assignments on `exports`, with the Secrets
    /// they name as read into `secrets` (see [`secrets::SecretCache::run`]).
    pub fn run_exports(&mut self, exports: Exports, secrets: SecretValues) {
        self.exports = Some((exports, secrets));
    }

    /// Lets the drive loop answer scrapes with a [`ProbeReport`].
    pub fn answer_reports(&mut self, requests: ReportRequests) {
        self.reports = Some(requests);
    }

    /// From now on the drive loop applies `view`'s assignments and pods,
    /// publishing the status on `statuses` at each change and every status
    /// interval while `pulse` says the heartbeat Lease is renewed (every
    /// heartbeat interval otherwise, and without a `pulse`).
    pub fn follow(
        &mut self,
        view: ClusterView,
        statuses: channel::Sender<Option<ProbeNodeStatus>>,
        intervals: Intervals,
        pulse: Option<Arc<Pulse>>,
    ) {
        let now = Instant::now();
        self.view = Some(view);
        self.statuses = Some(statuses);
        self.intervals = intervals;
        self.pulse = pulse;
        self.next_resync = now;
        self.next_status = now + self.status_every();
    }

    /// How often the status is written when no state changes.
    fn status_every(&self) -> Duration {
        match &self.pulse {
            Some(pulse) if pulse.leased() => self.intervals.status,
            _ => self.intervals.heartbeat,
        }
    }

    pub fn program_ids(&self) -> Vec<u32> {
        self.engine.program_ids()
    }

    /// Brings what is attached in line with `assignments` and `pods`.
    pub fn reconcile<'p>(
        &mut self,
        assignments: &[Assignment],
        pods: impl IntoIterator<Item = &'p Pod> + Clone,
    ) {
        let mut retentions = Vec::new();
        let mut exports = Vec::new();
        let mut wanted: BTreeMap<AssignmentKey, Wanted<'_>> = BTreeMap::new();
        for assignment in assignments {
            let key = (
                assignment.kind,
                assignment.namespace.clone(),
                assignment.name.clone(),
            );
            match assignment.kind {
                AssignmentKind::Retention => retentions.push(assignment),
                AssignmentKind::Export => exports.push(assignment),
                AssignmentKind::Tracepoint => {
                    let spec = match assignment.spec() {
                        Ok(AssignedSpec::Tracepoint(spec)) => Ok(spec),
                        Ok(_) => Err("the assignment holds no Tracepoint spec".to_owned()),
                        Err(e) => Err(e.to_string()),
                    };
                    let (targets, unresolved) = match &spec {
                        Ok(spec) => self.resolve_targets(&assignment.namespace, spec, pods.clone()),
                        Err(_) => (BTreeMap::new(), Vec::new()),
                    };
                    wanted.insert(
                        key,
                        Wanted {
                            assignment,
                            spec,
                            targets,
                            unresolved,
                        },
                    );
                }
            }
        }
        let mut other_states = self.apply_retentions(&retentions);
        other_states.extend(self.apply_exports(&exports));
        self.other_states = other_states;

        let keys: BTreeSet<AssignmentKey> = wanted
            .keys()
            .chain(self.tracepoints.keys())
            .cloned()
            .collect();
        // Labels first: the drain that decodes a new target's first
        // records may come before this reconcile ends.
        let targeted = self.label_rows(wanted.values());
        for key in keys {
            if self.reconcile_tracepoint(&key, wanted.get(&key)) {
                // Each attach takes a while: report each as it lands.
                self.publish_changes();
            }
        }
        // Records of containers that went are decoded, with their labels,
        // before the labels go.
        self.engine.drain();
        self.unlabel_rows_except(&targeted);
    }

    /// Publishes the status if a state changed since the last one (counts
    /// wait for the periodic status). Returns whether it published.
    fn publish_changes(&mut self) -> bool {
        let Some(statuses) = &self.statuses else {
            return false;
        };
        let states = self.assignment_states();
        let shape = without_counts(&states);
        if self.published.as_ref() == Some(&shape) {
            return false;
        }
        statuses.send_replace(Some(self.node_status(states)));
        self.published = Some(shape);
        true
    }

    /// The selected containers of a Tracepoint, by cgroup id.
    fn resolve_targets<'p>(
        &self,
        namespace: &str,
        spec: &TracepointSpec,
        pods: impl IntoIterator<Item = &'p Pod>,
    ) -> (BTreeMap<u64, TargetContainer>, Vec<String>) {
        let mut targets = BTreeMap::new();
        let mut unresolved = Vec::new();
        let Ok(resolver) = &self.cgroups else {
            return (targets, unresolved);
        };
        for selected in selection::selected_containers(namespace, spec, pods) {
            let found = ContainerId::parse(&selected.container_id)
                .and_then(|id| resolver.resolve(&selected.pod_uid, &id));
            match found {
                Ok(cgroup) => {
                    targets.insert(cgroup.id, TargetContainer { selected, cgroup });
                }
                Err(e) => unresolved.push(format!(
                    "container {} of pod {}/{}: {}",
                    selected.container,
                    selected.namespace,
                    selected.pod,
                    chain(&e)
                )),
            }
        }
        (targets, unresolved)
    }

    /// Applies one Tracepoint's decision; returns whether it did anything.
    fn reconcile_tracepoint(&mut self, key: &AssignmentKey, wanted: Option<&Wanted<'_>>) -> bool {
        let label = format!("{}/{}", key.1, key.2);
        // A node that cannot target pods runs nothing, and says why.
        if let (Some(wanted), Err(why)) = (wanted, &self.cgroups) {
            let entry = self.tracepoints.get(key);
            if entry.is_none_or(|e| e.generation != wanted.assignment.generation) {
                let why = why.clone();
                self.record_without_probe(
                    key,
                    wanted,
                    AppliedState::Unsupported,
                    reason::CGROUP_V2_MISSING,
                    why,
                );
            }
            return true;
        }
        let desired = wanted.and_then(|w| {
            let spec = w.spec.as_ref().ok()?;
            Some(DesiredProbe {
                uid: &w.assignment.uid,
                generation: w.assignment.generation,
                spec,
                targets: w.targets.keys().copied().collect(),
            })
        });
        if let Some(wanted) = wanted
            && let Err(why) = &wanted.spec
        {
            // The copy does not even hold a Tracepoint spec.
            if self
                .tracepoints
                .get(key)
                .is_none_or(|e| e.generation != wanted.assignment.generation)
            {
                self.release(key);
                self.record_without_probe(
                    key,
                    wanted,
                    AppliedState::Failed(BTreeSet::new()),
                    reason::INVALID_SPEC,
                    why.clone(),
                );
            }
            return true;
        }
        let decision = {
            let applied = self.tracepoints.get(key).and_then(|a| {
                Some(AppliedProbe {
                    uid: &a.uid,
                    generation: a.generation,
                    spec: a.spec.as_ref()?,
                    state: &a.state,
                })
            });
            reconcile::decide(desired.as_ref(), applied.as_ref())
        };
        match decision {
            Decision::Keep => return false,
            Decision::Remove => {
                self.release(key);
                if let Some(spec) = self.tracepoints.remove(key).and_then(|gone| gone.spec) {
                    self.storage
                        .store
                        .drop_table(&TableName::new(&key.1, &spec.table));
                }
                info!(tracepoint = %label, "assignment removed; detached");
            }
            Decision::Retarget { add, remove } => {
                let Some(applied) = self.tracepoints.get_mut(key) else {
                    return true;
                };
                let Some(probe) = applied.probe.as_ref().map(|p| p.id) else {
                    return true;
                };
                for id in &add {
                    if let Err(e) = self.engine.add_target(probe, *id) {
                        warn!(tracepoint = %label, cgroup = id, "cannot add target: {}", chain(&e));
                    }
                }
                for id in &remove {
                    if let Err(e) = self.engine.remove_target(probe, *id) {
                        warn!(tracepoint = %label, cgroup = id, "cannot remove target: {}", chain(&e));
                    }
                }
                if let AppliedState::Attached(targets) = &mut applied.state {
                    targets.extend(add.iter().copied());
                    targets.retain(|id| !remove.contains(id));
                }
                info!(tracepoint = %label, added = ?add, removed = ?remove, "targets changed");
            }
            Decision::Detach => {
                self.release(key);
                let message = self.no_pods_message();
                if let Some(applied) = self.tracepoints.get_mut(key) {
                    applied.state = AppliedState::Idle;
                    applied.reason = Some(reason::NO_MATCHING_PODS.to_owned());
                    applied.message = Some(message);
                }
                info!(tracepoint = %label, "no selected pod left on this node; detached (idle)");
            }
            Decision::Idle | Decision::Attach | Decision::Reattach => {
                let Some(wanted) = wanted else {
                    return true;
                };
                let edited = decision == Decision::Reattach;
                let (carried, carried_totals) = match self.tracepoints.get(key) {
                    Some(a) if !edited => (a.carried, a.carried_totals),
                    _ => (Counts::default(), None),
                };
                if edited {
                    self.release(key);
                    info!(tracepoint = %label, generation = wanted.assignment.generation, "spec changed; reattaching");
                }
                let had_table = self
                    .tracepoints
                    .get(key)
                    .and_then(|a| Some(a.spec.as_ref()?.table.clone()));
                let Ok(spec) = wanted.spec else {
                    return true;
                };
                let mut applied = self.apply(&label, wanted, spec, edited);
                applied.carried = carried;
                applied.carried_totals = carried_totals;
                // A renamed table leaves the old one behind: drop it.
                if let Some(old) = had_table
                    && edited
                    && old != spec.table
                {
                    self.storage.store.drop_table(&TableName::new(&key.1, &old));
                }
                self.tracepoints.insert(key.clone(), applied);
            }
        }
        true
    }

    /// Attaches a Tracepoint to its targets, or records it idle or failed.
    fn apply(
        &mut self,
        label: &str,
        wanted: &Wanted<'_>,
        spec: &TracepointSpec,
        replace_table: bool,
    ) -> AppliedTracepoint {
        let assignment = wanted.assignment;
        let targets: BTreeSet<u64> = wanted.targets.keys().copied().collect();
        let mut applied = AppliedTracepoint {
            uid: assignment.uid.clone(),
            generation: assignment.generation,
            spec: Some(spec.clone()),
            state: AppliedState::Idle,
            probe: None,
            reason: None,
            message: None,
            carried: Counts::default(),
            carried_totals: None,
        };
        if let Err(e) = spec.validate() {
            applied.state = AppliedState::Failed(targets);
            applied.reason = Some(reason::INVALID_SPEC.to_owned());
            applied.message = Some(e.to_string());
            warn!(tracepoint = %label, "not attached: {e}");
            return applied;
        }
        if targets.is_empty() {
            if wanted.unresolved.is_empty() {
                applied.reason = Some(reason::NO_MATCHING_PODS.to_owned());
                applied.message = Some(self.no_pods_message());
            } else {
                applied.state = AppliedState::Failed(targets);
                applied.reason = Some(reason::CGROUP_NOT_FOUND.to_owned());
                applied.message = Some(wanted.unresolved.join("; "));
            }
            return applied;
        }
        // Binaries are looked up inside a selected container.
        let binary = needs_binary(spec);
        let container = wanted
            .targets
            .values()
            .find_map(|t| t.cgroup.processes().first().map(|&pid| (pid, t)));
        let resolver = match (binary, container) {
            (Some(_), None) => {
                applied.state = AppliedState::Failed(targets);
                applied.reason = Some(reason::NO_RUNNING_PROCESS.to_owned());
                applied.message = Some(
                    "no process runs in the selected containers to find the binary in".to_owned(),
                );
                return applied;
            }
            (_, Some((pid, _))) => ContainerRoot::of(pid),
            // Nothing to look up: a kernel probe.
            (None, None) => ContainerRoot::of(0),
        };
        let result = self.engine.attach_with(
            &assignment.namespace,
            spec,
            Targets::Cgroups(targets.iter().copied().collect()),
            &resolver,
            replace_table,
        );
        match result {
            Ok(probe) => {
                info!(
                    tracepoint = %label,
                    hook = %probe.hook,
                    table = %spec.table,
                    containers = targets.len(),
                    generation = applied.generation,
                    programs = ?self.engine.program_ids(),
                    "attached"
                );
                applied.probe = Some(probe);
                applied.state = AppliedState::Attached(targets);
            }
            Err(e) => {
                let (state, why) = status::classify(&e);
                let mut message = chain(&e);
                if let (
                    probe_capture::engine::AttachError::Plan(plan),
                    Some(binary),
                    Some((_, container)),
                ) = (&e, binary, container)
                    && matches!(**plan, PlanError::MissingBinary { .. })
                {
                    message = format!(
                        "binary {binary} not found in container {} of pod {}/{}: {message}",
                        container.selected.container,
                        container.selected.namespace,
                        container.selected.pod
                    );
                }
                error!(tracepoint = %label, reason = why, "not attached: {message}");
                applied.state = match state {
                    AssignmentState::Unsupported => AppliedState::Unsupported,
                    _ => AppliedState::Failed(targets),
                };
                applied.reason = Some(why.to_owned());
                applied.message = Some(message);
            }
        }
        applied
    }

    fn record_without_probe(
        &mut self,
        key: &AssignmentKey,
        wanted: &Wanted<'_>,
        state: AppliedState,
        why: &str,
        message: String,
    ) {
        warn!(tracepoint = %format!("{}/{}", key.1, key.2), reason = why, "not attached: {message}");
        let spec = wanted.spec.as_ref().ok().map(|s| (*s).clone());
        self.tracepoints.insert(
            key.clone(),
            AppliedTracepoint {
                uid: wanted.assignment.uid.clone(),
                generation: wanted.assignment.generation,
                spec,
                state,
                probe: None,
                reason: Some(why.to_owned()),
                message: Some(message),
                carried: Counts::default(),
                carried_totals: None,
            },
        );
    }

    /// Detaches the probe of an applied Tracepoint, keeping its counts.
    fn release(&mut self, key: &AssignmentKey) {
        let Some(applied) = self.tracepoints.get_mut(key) else {
            return;
        };
        let Some(probe) = applied.probe.take() else {
            return;
        };
        if let Ok(totals) = self.engine.totals(probe.id) {
            applied.carried.events += totals.captured;
            applied.carried.lost += totals.lost();
            *applied.carried_totals.get_or_insert_default() += totals;
        }
        if let Err(e) = self.engine.detach(probe.id) {
            warn!(tracepoint = %format!("{}/{}", key.1, key.2), "detach failed: {}", chain(&e));
        }
    }

    fn no_pods_message(&self) -> String {
        format!("no selected pod runs on node {}", self.node)
    }

    /// Labels every targeted container's cgroup in the engine's identity
    /// map, so rows get their pod's names. Returns the cgroups targeted.
    fn label_rows<'w>(&mut self, wanted: impl Iterator<Item = &'w Wanted<'w>>) -> HashSet<u64> {
        let mut now: HashMap<u64, &SelectedContainer> = HashMap::new();
        for w in wanted {
            for (id, target) in &w.targets {
                now.insert(*id, &target.selected);
            }
        }
        let identities = self.engine.identities_mut();
        for (id, selected) in &now {
            if self.labelled.insert(*id) {
                identities.insert(
                    *id,
                    ContainerIdentity::new(&selected.namespace, &selected.pod, &selected.container),
                );
            }
        }
        now.into_keys().collect()
    }

    /// Forgets the labels of cgroups no longer targeted.
    fn unlabel_rows_except(&mut self, targeted: &HashSet<u64>) {
        let identities = self.engine.identities_mut();
        self.labelled.retain(|id| {
            let keep = targeted.contains(id);
            if !keep {
                identities.remove(*id);
            }
            keep
        });
    }

    /// Applies the Retention assignments to the table store and rollups.
    fn apply_retentions(&mut self, assignments: &[&Assignment]) -> Vec<AssignmentStatus> {
        let mut states = Vec::new();
        let mut retentions = Vec::new();
        self.retention_tables.clear();
        for assignment in assignments {
            let checked = match assignment.spec() {
                Ok(AssignedSpec::Retention(spec)) => {
                    spec.validate().map(|()| spec).map_err(|e| e.to_string())
                }
                Ok(_) => Err("the assignment holds no Retention spec".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            match checked {
                Ok(spec) => {
                    let patterns = spec.tables.iter().cloned();
                    // Each rollup's table, and its anomalies and kept rows.
                    let rollups = spec.rollups.iter().flat_map(|r| r.tables());
                    self.retention_tables.insert(
                        (assignment.namespace.clone(), assignment.name.clone()),
                        patterns.chain(rollups).collect(),
                    );
                    let mut retention = Retention::new(&assignment.name, spec.clone());
                    retention.metadata.namespace = Some(assignment.namespace.clone());
                    retention.metadata.uid = Some(assignment.uid.clone());
                    retention.metadata.generation = Some(assignment.generation);
                    retentions.push(retention);
                    states.push(state_of(assignment, AssignmentState::Attached, None, None));
                }
                Err(e) => states.push(state_of(
                    assignment,
                    AssignmentState::Failed,
                    Some(reason::INVALID_SPEC),
                    Some(e),
                )),
            }
        }
        let applied: Vec<_> = retentions
            .iter()
            .map(|r| {
                (
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default(),
                    r.metadata.uid.clone().unwrap_or_default(),
                    r.metadata.generation.unwrap_or_default(),
                )
            })
            .collect();
        if self.retentions_applied.as_ref() != Some(&applied) {
            self.storage.set_retentions(retentions);
            if !applied.is_empty() {
                info!(retentions = applied.len(), "retention applied");
            }
            self.retentions_applied = Some(applied);
        }
        states
    }

    /// Export assignments: started, reconfigured or removed on the export
    /// module, with their Secrets' values; reported Attached with the rows
    /// exported and dropped (see [`Self::assignment_states`]), or Failed
    /// when the spec or its Secrets are wrong (the Export then holds its
    /// rows, up to bufferRows, until they are fixed).
    fn apply_exports(&mut self, assignments: &[&Assignment]) -> Vec<AssignmentStatus> {
        let Some((exports, secrets)) = &self.exports else {
            return assignments
                .iter()
                .map(|assignment| {
                    let id = (
                        assignment.namespace.clone(),
                        assignment.name.clone(),
                        assignment.generation,
                    );
                    if self.exports_logged.insert(id) {
                        info!(
                            export = %format!("{}/{}", assignment.namespace, assignment.name),
                            "Export assignment read; not applied: this agent runs no exports"
                        );
                    }
                    state_of(
                        assignment,
                        AssignmentState::Unsupported,
                        Some(reason::EXPORT_NOT_AVAILABLE),
                        Some("this agent does not run exports".to_owned()),
                    )
                })
                .collect();
        };
        let wanted: HashSet<(String, String)> = assignments
            .iter()
            .map(|a| (a.namespace.clone(), a.name.clone()))
            .collect();
        for (namespace, name) in exports.keys() {
            if !wanted.contains(&(namespace.clone(), name.clone()))
                && let Some(last) = exports.remove(&namespace, &name)
            {
                info!(
                    export = %format!("{namespace}/{name}"),
                    exported = last.rows_exported,
                    dropped = last.rows_dropped(),
                    "assignment removed; export stopped"
                );
            }
        }
        assignments
            .iter()
            .map(|assignment| {
                let Some(spec) = &assignment.export else {
                    return state_of(
                        assignment,
                        AssignmentState::Failed,
                        Some(reason::INVALID_SPEC),
                        Some("the assignment carries no Export spec".to_owned()),
                    );
                };
                let (namespace, name) = (&assignment.namespace, &assignment.name);
                let credentials =
                    probe_serve::export::resolve_credentials(namespace, spec, secrets);
                let secret_error = credentials.as_ref().err().map(|e| chain(e));
                let first = self.exports_logged.insert((
                    namespace.clone(),
                    name.clone(),
                    assignment.generation,
                ));
                match exports.apply(namespace, name, spec, credentials) {
                    Err(e) => state_of(
                        assignment,
                        AssignmentState::Failed,
                        Some(reason::INVALID_SPEC),
                        Some(chain(&e)),
                    ),
                    Ok(()) => {
                        if first {
                            info!(export = %format!("{namespace}/{name}"), "export running");
                        }
                        match secret_error {
                            Some(message) => state_of(
                                assignment,
                                AssignmentState::Failed,
                                Some(reason::SECRET_NOT_READABLE),
                                Some(message),
                            ),
                            None => state_of(assignment, AssignmentState::Attached, None, None),
                        }
                    }
                }
            })
            .collect()
    }

    /// Every assignment's state now, with the engine's counts.
    fn assignment_states(&self) -> Vec<AssignmentStatus> {
        let mut states: Vec<AssignmentStatus> = self
            .tracepoints
            .iter()
            .map(|((kind, namespace, name), applied)| {
                let mut counts = applied.carried;
                if let Some(probe) = &applied.probe
                    && let Ok(totals) = self.engine.totals(probe.id)
                {
                    counts.events += totals.captured;
                    counts.lost += totals.lost();
                }
                AssignmentStatus {
                    kind: *kind,
                    namespace: namespace.clone(),
                    name: name.clone(),
                    generation: applied.generation,
                    state: match applied.state {
                        AppliedState::Attached(_) => AssignmentState::Attached,
                        AppliedState::Idle => AssignmentState::Idle,
                        AppliedState::Failed(_) => AssignmentState::Failed,
                        AppliedState::Unsupported => AssignmentState::Unsupported,
                    },
                    reason: applied.reason.clone(),
                    message: applied.message.clone(),
                    events: counts.events,
                    lost: counts.lost,
                    tables: Vec::new(),
                    anomalies: Vec::new(),
                }
            })
            .collect();
        // Read once, only when some Retention reports its tables.
        let mut table_stats = None;
        let mut detections = None;
        states.extend(self.other_states.iter().cloned().map(|mut state| {
            if state.kind == AssignmentKind::Retention
                && state.state == AssignmentState::Attached
                && let Some(patterns) = self
                    .retention_tables
                    .get(&(state.namespace.clone(), state.name.clone()))
            {
                let stats = table_stats.get_or_insert_with(|| self.storage.store.stats());
                state.tables = status::tables_held(stats, &state.namespace, patterns);
                let detections =
                    detections.get_or_insert_with(|| self.storage.detections().reports());
                state.anomalies =
                    status::recent_anomalies(detections, &self.node, &state.namespace, patterns);
            }
            // An Export's counts and last error are live.
            if state.kind == AssignmentKind::Export
                && let Some((exports, _)) = &self.exports
                && let Some(report) = exports.status(&state.namespace, &state.name)
            {
                state.events = report.rows_exported;
                state.lost = report.rows_dropped();
                if state.state == AssignmentState::Attached {
                    state.message = report.last_error;
                }
            }
            state
        }));
        states
    }

    fn node_status(&self, states: Vec<AssignmentStatus>) -> ProbeNodeStatus {
        status::node_status(
            &self.facts,
            states,
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        )
    }

    /// Every Tracepoint's state and, for attached ones, its totals now.
    pub fn probe_report(&self) -> ProbeReport {
        let probes = self
            .tracepoints
            .iter()
            .map(|((_, namespace, name), applied)| ProbeSample {
                namespace: namespace.clone(),
                tracepoint: name.clone(),
                table: applied
                    .spec
                    .as_ref()
                    .map(|s| s.table.clone())
                    .unwrap_or_default(),
                state: match applied.state {
                    AppliedState::Attached(_) => ProbeState::Attached,
                    AppliedState::Idle => ProbeState::Idle,
                    AppliedState::Failed(_) => ProbeState::Failed,
                    AppliedState::Unsupported => ProbeState::Unsupported,
                },
                // An idle Tracepoint keeps serving what it captured before.
                totals: {
                    let live = applied
                        .probe
                        .as_ref()
                        .and_then(|p| self.engine.totals(p.id).ok());
                    match (applied.carried_totals, live) {
                        (Some(mut carried), Some(live)) => {
                            carried += live;
                            Some(carried)
                        }
                        (carried, live) => live.or(carried),
                    }
                },
                metrics: applied
                    .probe
                    .as_ref()
                    .map(|p| self.engine.metrics(p.id))
                    .unwrap_or_default(),
            })
            .collect();
        ProbeReport {
            probes,
            unattributed: self.engine.unattributed_errors(),
            ring: self.engine.ring_usage(),
        }
    }
}

fn state_of(
    assignment: &Assignment,
    state: AssignmentState,
    reason: Option<&str>,
    message: Option<String>,
) -> AssignmentStatus {
    AssignmentStatus {
        kind: assignment.kind,
        namespace: assignment.namespace.clone(),
        name: assignment.name.clone(),
        generation: assignment.generation,
        state,
        reason: reason.map(str::to_owned),
        message,
        events: 0,
        lost: 0,
        tables: Vec::new(),
        anomalies: Vec::new(),
    }
}

/// The states with their counts zeroed: what must be written at once
/// when it changes (counts wait for the periodic status).
fn without_counts(states: &[AssignmentStatus]) -> Vec<AssignmentStatus> {
    states
        .iter()
        .cloned()
        .map(|mut s| {
            s.events = 0;
            s.lost = 0;
            // Table sizes change all the time: they go out with the counts.
            s.tables.clear();
            s
        })
        .collect()
}

/// The binary a uprobe or USDT probe names, if any.
fn needs_binary(spec: &TracepointSpec) -> Option<&str> {
    match spec.probe.kind().ok()? {
        Probe::Uprobe(p) | Probe::Uretprobe(p) => Some(&p.binary),
        Probe::Usdt(p) => Some(&p.binary),
        _ => None,
    }
}

/// Paths inside a container, through a process's root: `/proc/<pid>/root`.
pub struct ContainerRoot {
    root: PathBuf,
}

impl ContainerRoot {
    pub fn of(pid: u32) -> Self {
        Self {
            root: PathBuf::from(format!("/proc/{pid}/root")),
        }
    }
}

impl BinaryResolver for ContainerRoot {
    fn host_path(&self, binary: &str) -> PathBuf {
        self.root.join(binary.trim_start_matches('/'))
    }
}

impl Driven for ClusterAgent {
    fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    fn after_drain(&mut self, now: Instant) {
        // After the drain, so that what the kernel counted and what was
        // decoded are read together.
        if let Some(reports) = &self.reports {
            reports.answer(|| self.probe_report());
        }
        if let Some(pulse) = &self.pulse {
            pulse.beat();
        }
        let Some(view) = self.view.clone() else {
            return;
        };
        let changed = view.take_changed();
        if (changed || now >= self.next_resync) && view.ready() {
            let pods = view.pods();
            let assignments = view
                .probe_node()
                .map(|pn| pn.spec.assignments.clone())
                .unwrap_or_default();
            tracing::debug!(
                assignments = assignments.len(),
                pods = pods.len(),
                woken = changed,
                "reconciling"
            );
            self.reconcile(&assignments, pods.iter().map(Arc::as_ref));
            self.next_resync = now + RESYNC_INTERVAL;
            if self.publish_changes() {
                self.next_status = now + self.status_every();
            }
        }
        // Before both stores are listed nothing is reconciled: the resync
        // stays due and runs on the first drain after they are.
        // The Lease may have failed since: the status takes the heartbeat over.
        self.next_status = self.next_status.min(now + self.status_every());
        if now >= self.next_status {
            // Counts only go out with the periodic status; nothing before
            // the first reconcile, which would report nothing applied.
            if self.published.is_some()
                && let Some(statuses) = &self.statuses
            {
                statuses.send_replace(Some(self.node_status(self.assignment_states())));
            }
            self.next_status = now + self.status_every();
        }
    }

    fn stopped(&mut self) {
        self.statuses = None;
        self.reports = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_resolve_inside_the_container_root() {
        let root = ContainerRoot::of(42);
        assert_eq!(
            root.host_path("/usr/bin/app"),
            PathBuf::from("/proc/42/root/usr/bin/app")
        );
    }

    #[test]
    fn counts_do_not_make_a_state_change() {
        let state = AssignmentStatus {
            kind: AssignmentKind::Tracepoint,
            namespace: "shop".into(),
            name: "calls".into(),
            generation: 1,
            state: AssignmentState::Attached,
            reason: None,
            message: None,
            events: 5,
            lost: 1,
            tables: Vec::new(),
            anomalies: Vec::new(),
        };
        let mut more = state.clone();
        more.events = 9;
        assert_eq!(
            without_counts(std::slice::from_ref(&state)),
            without_counts(&[more])
        );
        let mut idle = state.clone();
        idle.state = AssignmentState::Idle;
        assert_ne!(without_counts(&[state]), without_counts(&[idle]));
    }
}
