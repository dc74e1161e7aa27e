//! Standalone mode: the agent without a cluster. Resources come from the YAML
//! files in a folder (the same files users `kubectl apply`), and the folder
//! is watched: adding, changing or deleting a file attaches, reconfigures or
//! detaches without a restart. Tracepoints capture host-wide, or only from
//! the pids or cgroups given on the command line.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use arrow_cast::display::{ArrayFormatter, FormatOptions};
use crds::{
    Retention, TableName, Tracepoint,
    manifest::{self, Resource},
    v1alpha1::TracepointSpec,
};
use probe_capture::{
    capture::ProbeTotals,
    drive::Driven,
    engine::{AttachedProbe, Engine},
    loader::{ProbeId, Targets},
};
use probe_serve::{
    export::{Exports, ManifestExports},
    metrics::{ProbeReport, ProbeSample, ProbeState, ReportRequests},
};
use sonde_daemon::chain;
use tracing::{error, info, warn};

use crate::storage::Storage;

/// State of one Tracepoint from the manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracepointState {
    Attached,
    /// The spec is wrong or names something this node does not have.
    Failed(String),
    /// The node's kernel lacks the probe kind.
    Unsupported(String),
}

/// A Tracepoint as the standalone agent applied it.
#[derive(Debug)]
pub struct Applied {
    /// `namespace/name`.
    pub resource: String,
    pub namespace: String,
    pub file: PathBuf,
    pub table: String,
    pub spec: TracepointSpec,
    pub state: TracepointState,
    pub probe: Option<AttachedProbe>,
}

/// The standalone agent: the engine and what the manifests asked of it.
pub struct Standalone {
    engine: Engine,
    storage: Option<Storage>,
    dir: PathBuf,
    targets: Targets,
    applied: BTreeMap<String, Applied>,
    /// Contents of the files last read, to notice changes cheaply.
    seen: BTreeMap<PathBuf, String>,
    /// Scrapes waiting for the engine's counters (see [`Self::answer_reports`]).
    reports: Option<ReportRequests>,
    intervals: Intervals,
    next_rescan: Instant,
    next_report: Instant,
    /// Export resources, once [`Self::run_exports`] is called.
    exports: Option<ManifestExports>,
}

impl Standalone {
    /// Applies every resource in `dir`. Invalid or unsupported resources are
    /// logged with their file and kept in [`Self::applied`] with the reason:
    /// the others keep running.
    pub fn start(
        engine: Engine,
        storage: Option<Storage>,
        dir: &Path,
        targets: Targets,
        intervals: Intervals,
    ) -> Self {
        let engine = match &storage {
            Some(storage) => engine.with_sink(storage.sink()),
            None => engine,
        };
        let now = Instant::now();
        let mut agent = Self {
            engine,
            storage,
            dir: dir.to_path_buf(),
            targets,
            applied: BTreeMap::new(),
            seen: BTreeMap::new(),
            reports: None,
            intervals,
            next_rescan: now + intervals.rescan,
            next_report: now + intervals.report,
            exports: None,
        };
        agent.rescan();
        agent
    }

    /// Runs the Export resources of the folder from now on (and the
    /// Secrets they refer to), rereading it at once.
    pub fn run_exports(&mut self, exports: Exports) {
        self.exports = Some(ManifestExports::new(exports));
        self.seen.clear();
        self.rescan();
    }

    pub fn applied(&self) -> impl Iterator<Item = &Applied> {
        self.applied.values()
    }

    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn program_ids(&self) -> Vec<u32> {
        self.engine.program_ids()
    }

    /// Rereads the folder and applies what changed. Returns true if anything did.
    pub fn rescan(&mut self) -> bool {
        let files = match manifest_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                error!(folder = %self.dir.display(), "cannot read manifests: {e}");
                return false;
            }
        };
        let mut contents = BTreeMap::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    contents.insert(file, text);
                }
                // A file deleted between listing and reading is simply gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => error!(file = %file.display(), "cannot read: {e}"),
            }
        }
        if contents == self.seen {
            return false;
        }
        let mut desired: BTreeMap<String, (PathBuf, Tracepoint)> = BTreeMap::new();
        let mut retentions: Vec<Retention> = Vec::new();
        let mut exports = Vec::new();
        let mut secrets = Vec::new();
        for (file, text) in &contents {
            // Each document on its own: one refused document (a misspelled
            // field, bad YAML) leaves the others of the file applied.
            for parsed in manifest::parse_documents(file, text) {
                let resource = match parsed {
                    Ok(resource) => resource,
                    Err(e) => {
                        let kept = self.keep_refused(&e, file, &mut desired);
                        error!(
                            file = %file.display(),
                            "refused: {}{}",
                            chain(&e),
                            if kept { "; the version applied before keeps running" } else { "" }
                        );
                        continue;
                    }
                };
                match resource {
                    Resource::Tracepoint(tp) => {
                        let key = key(&tp);
                        if let Some((other, _)) = desired.get(&key) {
                            warn!(
                                tracepoint = %key,
                                file = %file.display(),
                                "also defined in {}; the later file wins",
                                other.display()
                            );
                        }
                        desired.insert(key, (file.clone(), tp));
                    }
                    Resource::Retention(retention) => match retention.spec.validate() {
                        Ok(()) => retentions.push(retention),
                        Err(e) => error!(
                            file = %file.display(),
                            retention = %retention.metadata.name.as_deref().unwrap_or_default(),
                            "not applied: {e}"
                        ),
                    },
                    Resource::Export(export) if self.exports.is_some() => {
                        exports.push((file.clone(), export));
                    }
                    Resource::Secret(secret) => secrets.push(secret),
                    // Applied once `run_exports` hands over the export module.
                    Resource::Export(_) => {}
                }
            }
        }
        self.seen = contents;
        self.apply_retentions(retentions);

        let gone: Vec<String> = self
            .applied
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(applied) = self.applied.remove(&key) {
                self.release(&applied);
                info!(tracepoint = %key, "removed; detached");
            }
        }
        for (key, (file, tp)) in desired {
            let unchanged = self
                .applied
                .get(&key)
                .is_some_and(|a| a.spec == tp.spec && a.file == file);
            if unchanged {
                continue;
            }
            if let Some(previous) = self.applied.remove(&key) {
                self.release(&previous);
                info!(tracepoint = %key, "changed; reattaching");
            }
            let applied = self.apply(key.clone(), file, tp);
            self.applied.insert(key, applied);
        }
        // After the Tracepoints, so the tables they create exist.
        if let Some(manifest_exports) = &mut self.exports {
            manifest_exports.reconcile(exports, &secrets);
        }
        true
    }

    /// A Tracepoint whose new document is refused for unknown fields keeps
    /// running as applied before, as a refused `kubectl apply` leaves the
    /// object as it was. Returns whether one was kept.
    fn keep_refused(
        &self,
        error: &manifest::ManifestError,
        file: &Path,
        desired: &mut BTreeMap<String, (PathBuf, Tracepoint)>,
    ) -> bool {
        let manifest::ManifestError::UnknownFields {
            kind: "Tracepoint",
            namespace,
            name,
            ..
        } = error
        else {
            return false;
        };
        let key = format!("{namespace}/{name}");
        let Some(applied) = self.applied.get(&key).filter(|a| a.file == file) else {
            return false;
        };
        let mut tracepoint = Tracepoint::new(name, applied.spec.clone());
        tracepoint.metadata.namespace = Some(namespace.clone());
        desired.insert(key, (file.to_path_buf(), tracepoint));
        true
    }

    /// Applies the Retentions found in the folder: table limits at once,
    /// rollups from the next tick.
    fn apply_retentions(&mut self, retentions: Vec<Retention>) {
        let Some(storage) = &self.storage else {
            if !retentions.is_empty() {
                warn!("Retention resources need the table store, which is off");
            }
            return;
        };
        storage.set_retentions(retentions);
    }

    /// Detaches a Tracepoint and drops its table: a changed spec may change
    /// the columns, and a deleted one has nothing left to serve.
    fn release(&mut self, applied: &Applied) {
        if let Some(probe) = &applied.probe
            && let Err(e) = self.engine.detach(probe.id)
        {
            warn!(tracepoint = %applied.resource, "detach failed: {}", chain(&e));
        }
        if let Some(storage) = &self.storage {
            storage
                .store
                .drop_table(&TableName::new(&applied.namespace, &applied.table));
        }
    }

    fn apply(&mut self, resource: String, file: PathBuf, tp: Tracepoint) -> Applied {
        let mut applied = Applied {
            resource,
            namespace: tp
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| manifest::DEFAULT_NAMESPACE.to_owned()),
            file,
            table: tp.spec.table.clone(),
            spec: tp.spec,
            state: TracepointState::Attached,
            probe: None,
        };
        match self
            .engine
            .attach_in(&applied.namespace, &applied.spec, self.targets.clone())
        {
            Ok(probe) => {
                info!(
                    tracepoint = %applied.resource,
                    hook = %probe.hook,
                    table = %applied.table,
                    columns = probe.schema.columns.len() + crds::v1alpha1::STANDARD_COLUMNS.len(),
                    "attached"
                );
                applied.probe = Some(probe);
            }
            Err(e) => {
                let message = chain(&e);
                error!(
                    tracepoint = %applied.resource,
                    file = %applied.file.display(),
                    "not attached: {message}"
                );
                applied.state = if e.is_unsupported() {
                    TracepointState::Unsupported(message)
                } else {
                    TracepointState::Failed(message)
                };
            }
        }
        applied
    }

    /// Totals of an attached Tracepoint, by `namespace/name`.
    pub fn totals(&self, resource: &str) -> Option<ProbeTotals> {
        let probe = self.applied.get(resource)?.probe.as_ref()?;
        self.engine.totals(probe.id).ok()
    }

    /// Lets the drive loop answer these requests with a [`ProbeReport`] read
    /// from the kernel's counters right then: the engine has one owner, so
    /// scrapes ask it rather than share it.
    pub fn answer_reports(&mut self, requests: ReportRequests) {
        self.reports = Some(requests);
    }

    /// Every Tracepoint's state and, for attached ones, its totals now.
    pub fn probe_report(&self) -> ProbeReport {
        let probes = self
            .applied
            .values()
            .map(|applied| {
                let totals = applied.probe.as_ref().and_then(|probe| {
                    self.engine
                        .totals(probe.id)
                        .map_err(|e| {
                            warn!(tracepoint = %applied.resource, "cannot read counters: {}", chain(&e));
                        })
                        .ok()
                });
                let tracepoint = applied
                    .resource
                    .split_once('/')
                    .map_or(applied.resource.as_str(), |(_, name)| name);
                ProbeSample {
                    namespace: applied.namespace.clone(),
                    tracepoint: tracepoint.to_owned(),
                    table: applied.table.clone(),
                    state: match applied.state {
                        TracepointState::Attached => ProbeState::Attached,
                        TracepointState::Failed(_) => ProbeState::Failed,
                        TracepointState::Unsupported(_) => ProbeState::Unsupported,
                    },
                    totals,
                    metrics: applied
                        .probe
                        .as_ref()
                        .map(|probe| self.engine.metrics(probe.id))
                        .unwrap_or_default(),
                }
            })
            .collect();
        ProbeReport {
            probes,
            unattributed: self.engine.unattributed_errors(),
            ring: self.engine.ring_usage(),
        }
    }

    /// The probe id of an attached Tracepoint, by `namespace/name`.
    pub fn probe(&self, resource: &str) -> Option<ProbeId> {
        Some(self.applied.get(resource)?.probe.as_ref()?.id)
    }

    fn report(&mut self) {
        let keys: Vec<String> = self.applied.keys().cloned().collect();
        for key in keys {
            let Some(applied) = self.applied.get(&key) else {
                continue;
            };
            let Some(probe) = applied.probe.clone() else {
                continue;
            };
            let totals = match self.engine.totals(probe.id) {
                Ok(t) => t,
                Err(e) => {
                    warn!(tracepoint = %key, "cannot read counters: {}", chain(&e));
                    continue;
                }
            };
            let table = applied.table.clone();
            let sample = self.last_row(probe.id);
            info!(
                tracepoint = %key,
                table = %table,
                captured = totals.captured,
                filtered = totals.filtered,
                sampled_out = totals.sampled_out,
                lost_rate_limited = totals.rate_limited,
                lost_ring_full = totals.ringbuf_full,
                lost_decode = totals.decode_errors,
                lost_missing_entry = totals.missing_entry,
                "{sample}"
            );
        }
        let orphans = self.engine.unattributed_errors();
        if orphans > 0 {
            warn!(
                records = orphans,
                "records could not be attributed to a probe"
            );
        }
    }

    /// The last captured row, formatted for the log.
    fn last_row(&mut self, probe: ProbeId) -> String {
        let batches = self.engine.batches(probe);
        let Some(batch) = batches.iter().rev().find(|b| b.num_rows() > 0) else {
            return "no rows yet".to_owned();
        };
        let row = batch.num_rows() - 1;
        let mut line = String::from("last:");
        let options = FormatOptions::default();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()).skip(2) {
            let Ok(formatter) = ArrayFormatter::try_new(column.as_ref(), &options) else {
                continue;
            };
            let value = formatter.value(row).to_string();
            // Strings are quoted, so an empty or spaced value stays readable.
            let _ = if column.data_type() == &arrow_schema::DataType::Utf8 {
                write!(line, " {}={value:?}", field.name())
            } else {
                write!(line, " {}={value}", field.name())
            };
        }
        line
    }
}

/// How often the standalone agent does each of its jobs (draining is the
/// drive loop's).
#[derive(Clone, Copy, Debug)]
pub struct Intervals {
    pub rescan: Duration,
    pub report: Duration,
}

impl Driven for Standalone {
    fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    fn after_drain(&mut self, now: Instant) {
        // After the drain, so that what the kernel counted and what was
        // decoded are read together.
        if let Some(reports) = &self.reports {
            reports.answer(|| self.probe_report());
        }
        if now >= self.next_rescan {
            self.rescan();
            self.next_rescan = now + self.intervals.rescan;
        }
        if now >= self.next_report {
            self.report();
            self.next_report = now + self.intervals.report;
        }
    }

    fn stopped(&mut self) {
        self.report();
        // Scrapes from now on go without probe metrics instead of waiting.
        self.reports = None;
    }
}

/// The `.yaml` and `.yml` files directly in `dir`, in name order.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        // Editors' hidden swap and backup files are not manifests.
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if yaml && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn key(tp: &Tracepoint) -> String {
    format!(
        "{}/{}",
        tp.metadata
            .namespace
            .as_deref()
            .unwrap_or(manifest::DEFAULT_NAMESPACE),
        tp.metadata.name.as_deref().unwrap_or("<unnamed>")
    )
}
