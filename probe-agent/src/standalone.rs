//! Standalone mode: the agent without a cluster. Resources come from the YAML
//! files in a folder (the same files users `kubectl apply`) and Tracepoints
//! capture host-wide.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crds::{
    Tracepoint,
    manifest::{self, Resource},
    v1alpha1::Probe,
};
use tracing::{error, info, warn};

use crate::{
    capture::{CaptureStats, ProbeTotals},
    config::Config,
    error::Result,
    loader::{LoadOptions, ProbeId, ProbeSet, Targets},
    ring::AsyncRingReader,
    tracefs::Tracefs,
};

/// A Tracepoint that is attached, and where its rows go.
#[derive(Debug)]
pub struct Attachment {
    /// `namespace/name` of the resource.
    pub resource: String,
    /// Manifest file it came from.
    pub file: PathBuf,
    /// `group/name` of the kernel hook.
    pub hook: String,
    pub table: String,
    pub probe: ProbeId,
}

/// The standalone agent: loaded programs, what is attached, what it captured.
pub struct Standalone {
    probes: ProbeSet,
    ring: AsyncRingReader,
    stats: CaptureStats,
    attachments: Vec<Attachment>,
}

impl Standalone {
    /// Loads the eBPF object and attaches every valid Tracepoint in `dir`.
    /// Invalid or unsupported resources are logged with their file and
    /// skipped: the others keep running.
    pub fn start(config: &Config, tracefs: Tracefs, dir: &Path) -> Result<Self> {
        let mut probes = ProbeSet::load(
            tracefs,
            LoadOptions {
                ring_bytes: config.ring_bytes,
                wakeup_watermark: config.wakeup_bytes,
            },
        )?;
        let ring = probes
            .take_ring()
            .ok_or(crate::Error::MissingInObject {
                kind: "map",
                name: probe_common::maps::EVENTS.to_owned(),
            })?
            .into_async()
            .map_err(|source| crate::Error::Io {
                path: PathBuf::from("ring buffer"),
                source,
            })?;
        let mut agent = Self {
            probes,
            ring,
            stats: CaptureStats::default(),
            attachments: Vec::new(),
        };
        agent.apply_folder(dir);
        Ok(agent)
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    pub fn program_ids(&self) -> Vec<u32> {
        self.probes.program_ids()
    }

    fn apply_folder(&mut self, dir: &Path) {
        let files = match manifest_files(dir) {
            Ok(files) => files,
            Err(e) => {
                error!(folder = %dir.display(), "cannot read manifests: {e}");
                return;
            }
        };
        for file in files {
            // Each resource is validated on its own, so one bad resource does
            // not keep the rest of its file from running.
            let parsed = std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|text| manifest::parse(&file, &text).map_err(|e| chain(&e)));
            match parsed {
                Ok(resources) => {
                    for resource in resources {
                        self.apply(&file, resource);
                    }
                }
                Err(e) => error!(file = %file.display(), "skipped: {e}"),
            }
        }
    }

    fn apply(&mut self, file: &Path, resource: Resource) {
        match resource {
            Resource::Tracepoint(tp) => {
                if let Err(message) = self.attach(file, &tp) {
                    error!(file = %file.display(), tracepoint = %key(&tp), "not attached: {message}");
                }
            }
            other => info!(
                file = %file.display(),
                kind = other.kind(),
                "read; this agent does not apply {} resources yet", other.kind()
            ),
        }
    }

    fn attach(&mut self, file: &Path, tp: &Tracepoint) -> Result<(), String> {
        tp.spec.validate().map_err(|e| e.to_string())?;
        let probe = tp.spec.probe.kind().map_err(|e| e.to_string())?;
        let Probe::Tracepoint(hook) = probe else {
            return Err(format!(
                "probe kind {} is not supported by this agent yet",
                probe.kind().as_str()
            ));
        };
        let (id, _) = self
            .probes
            .attach_tracepoint(&hook.group, &hook.name, Targets::All)
            .map_err(|e| chain(&e))?;
        self.stats.reset(id.0);
        let spec = &tp.spec;
        let not_applied: Vec<&str> = [
            (!spec.fields.is_empty(), "fields"),
            (!spec.filters.is_empty(), "filters"),
            (spec.sampling.is_some(), "sampling"),
            (spec.rate_limit.is_some(), "rateLimit"),
            (!spec.metrics.is_empty(), "metrics"),
            (spec.ttl.is_some(), "ttl"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if !not_applied.is_empty() {
            // Say so rather than let a user believe a filter is in force.
            warn!(
                tracepoint = %key(tp),
                "attached with raw arguments only; not applied by this agent yet: {}",
                not_applied.join(", ")
            );
        }
        let attachment = Attachment {
            resource: key(tp),
            file: file.to_path_buf(),
            hook: format!("{}/{}", hook.group, hook.name),
            table: tp.spec.table.clone(),
            probe: id,
        };
        info!(
            tracepoint = %attachment.resource,
            hook = %attachment.hook,
            table = %attachment.table,
            "attached"
        );
        self.attachments.push(attachment);
        Ok(())
    }

    /// Drains the ring until `shutdown` resolves, logging a summary every
    /// `report_interval`. Then drains once more and logs the final totals.
    pub async fn run(
        &mut self,
        drain_interval: Duration,
        report_interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut next_report = Instant::now() + report_interval;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = self.ring.drain_next(drain_interval, &mut self.stats) => {}
            }
            if Instant::now() >= next_report {
                self.report();
                next_report += report_interval;
            }
        }
        self.ring.drain_now(&mut self.stats);
        self.report();
    }

    /// Totals of one attachment.
    pub fn totals(&self, attachment: &Attachment) -> Result<ProbeTotals> {
        let kernel = self.probes.counters(attachment.probe)?;
        Ok(ProbeTotals::new(
            kernel,
            self.stats.received(attachment.probe.0),
        ))
    }

    fn report(&self) {
        for a in &self.attachments {
            let totals = match self.totals(a) {
                Ok(t) => t,
                Err(e) => {
                    warn!(tracepoint = %a.resource, "cannot read counters: {}", chain(&e));
                    continue;
                }
            };
            let mut sample = String::new();
            if let Some(last) = self.stats.last(a.probe.0) {
                let _ = write!(
                    sample,
                    "last: pid {} comm {} args {:x?}",
                    last.pid,
                    String::from_utf8_lossy(last.comm()),
                    last.args
                );
            }
            info!(
                tracepoint = %a.resource,
                table = %a.table,
                captured = totals.captured,
                lost_ring_full = totals.lost_ring_full,
                lost_read_failed = totals.lost_read_failed,
                "{sample}"
            );
        }
        if self.stats.decode_errors() > 0 {
            warn!(
                decode_errors = self.stats.decode_errors(),
                "records could not be decoded"
            );
        }
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
        tp.metadata.namespace.as_deref().unwrap_or("default"),
        tp.metadata.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// An error and its sources on one line: `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let _ = write!(line, ": {e}");
        source = e.source();
    }
    line
}
