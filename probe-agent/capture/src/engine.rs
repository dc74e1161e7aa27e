//! The capture engine: Tracepoint specs in, tables and loss counts out.
//!
//! It joins the loaded programs ([`ProbeSet`]), the plans that configure
//! them ([`plan`](crate::plan)) and the tables the ring buffer is drained
//! into ([`Capture`]). Standalone mode drives it from files; cluster mode
//! from the node's assignments.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::Arc,
};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use crds::{TableName, ValidationError, v1alpha1::TracepointSpec};

use crate::{
    capture::{Capture, MAX_PENDING, ProbeTotals},
    derived_metrics::{EventMetrics, MetricError, MetricSample},
    identity::CgroupIdentities,
    loader::{LoadOptions, ProbeId, ProbeSet, Targets},
    plan::{self, BinaryResolver, HookTarget, PlanError, RecordSchema},
    ring::{RingReader, RingUsage},
    sink::{BatchSink, SinkError},
    tracefs::Tracefs,
};

/// Why a Tracepoint could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("invalid spec")]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Plan(#[from] Box<PlanError>),
    #[error("cannot create its table")]
    Table(#[from] SinkError),
    #[error(transparent)]
    Metric(#[from] MetricError),
    #[error("cannot attach {hook}")]
    Attach {
        hook: Box<HookTarget>,
        #[source]
        source: Box<crate::Error>,
    },
}

impl AttachError {
    /// True when the node lacks what the probe needs, rather than the spec
    /// being wrong: reported as "unsupported on this node".
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Plan(e) if matches!(**e, PlanError::Unsupported { .. }))
    }
}

/// What an attached probe is.
#[derive(Clone, Debug)]
pub struct AttachedProbe {
    pub id: ProbeId,
    pub hook: HookTarget,
    pub schema: RecordSchema,
}

/// Loaded programs, the ring reader and the tables.
pub struct Engine {
    /// OpenSSL libraries traced for the socket tables, on request.
    tls: Option<crate::sockets::TlsService>,
    // Declared first: dropped (detached) before the ring and tables go.
    probes: ProbeSet,
    ring: RingReader,
    capture: Capture,
    binaries: Box<dyn BinaryResolver + Send>,
    node: String,
}

impl Engine {
    pub fn load(
        tracefs: Tracefs,
        options: LoadOptions,
        node: &str,
        binaries: Box<dyn BinaryResolver + Send>,
    ) -> crate::Result<Self> {
        let mut probes = ProbeSet::load(tracefs, options)?;
        let ring = probes.take_ring().ok_or(crate::Error::MissingInObject {
            kind: "map",
            name: probe_common::maps::EVENTS.to_owned(),
        })?;
        Ok(Self {
            tls: None,
            probes,
            ring,
            capture: Capture::new(node),
            binaries,
            node: node.to_owned(),
        })
    }

    /// Seals captured rows into `sink` (the table store), where retention
    /// applies and readers (Flight, SQL) see them. Call before attaching
    /// anything.
    pub fn with_sink(mut self, sink: Arc<dyn BatchSink>) -> Self {
        self.capture = Capture::with_sink(&self.node, sink);
        self
    }

    /// Validates, compiles and attaches a Tracepoint spec of namespace
    /// `default`.
    pub fn attach(
        &mut self,
        spec: &TracepointSpec,
        targets: Targets,
    ) -> Result<AttachedProbe, AttachError> {
        self.attach_in("default", spec, targets)
    }

    /// Validates, compiles and attaches a Tracepoint spec; its table is
    /// `namespace.table`.
    pub fn attach_in(
        &mut self,
        namespace: &str,
        spec: &TracepointSpec,
        targets: Targets,
    ) -> Result<AttachedProbe, AttachError> {
        let binaries = std::mem::replace(&mut self.binaries, Box::new(plan::HostPaths));
        let result = self.attach_with(namespace, spec, targets, binaries.as_ref(), false);
        self.binaries = binaries;
        result
    }

    /// Like [`Self::attach_in`], with binaries found through `binaries`
    /// instead of the resolver given at load (cluster mode: inside the
    /// selected containers). With `replace_table`, an existing store table
    /// with other columns is dropped and created anew (an edited spec);
    /// otherwise that is an error.
    pub fn attach_with(
        &mut self,
        namespace: &str,
        spec: &TracepointSpec,
        targets: Targets,
        binaries: &dyn BinaryResolver,
        replace_table: bool,
    ) -> Result<AttachedProbe, AttachError> {
        spec.validate()?;
        let plan = plan::compile(
            spec,
            self.probes.tracefs(),
            binaries,
            targets.mode(),
            self.probes.options().wakeup_watermark,
        )
        .map_err(Box::new)?;
        // Resolved before anything is attached: a metric that cannot be
        // derived leaves nothing behind.
        let metrics = EventMetrics::compile(&spec.metrics, &plan.schema, &self.node)?;
        let id = self
            .probes
            .attach(&plan.hook, plan.config, targets)
            .map_err(|source| AttachError::Attach {
                hook: Box::new(plan.hook.clone()),
                source: Box::new(source),
            })?;
        // The table exists before the drain can see the first record.
        let table = TableName::new(namespace, &spec.table);
        let mut opened = self
            .capture
            .open_table(id.0, plan.schema.clone(), table.clone());
        if replace_table && matches!(opened, Err(SinkError::SchemaMismatch { .. })) {
            self.capture.drop_sink_table(&table);
            opened = self.capture.open_table(id.0, plan.schema.clone(), table);
        }
        if let Err(e) = opened {
            let _ = self.probes.detach(id);
            return Err(e.into());
        }
        self.capture.set_metrics(id.0, metrics);
        Ok(AttachedProbe {
            id,
            hook: plan.hook,
            schema: plan.schema,
        })
    }

    /// Detaches a probe. Without a store what it captured goes with it; in a
    /// store its table stays, under retention, until dropped there.
    pub fn detach(&mut self, probe: ProbeId) -> crate::Result<()> {
        // Records already in the ring still belong to the table.
        self.drain();
        let result = self.probes.detach(probe);
        self.capture.close(probe.0);
        result
    }

    pub fn add_target(&mut self, probe: ProbeId, id: u64) -> crate::Result<()> {
        self.probes.add_target(probe, id)
    }

    /// Removes a process or cgroup from an attached probe's target set.
    pub fn remove_target(&mut self, probe: ProbeId, id: u64) -> crate::Result<()> {
        self.probes.remove_target(probe, id)
    }

    /// The cgroup → pod container map rows are labelled from.
    pub fn identities_mut(&mut self) -> &mut CgroupIdentities {
        self.capture.identities_mut()
    }

    /// Moves everything in the ring buffer into the tables, and seals rows
    /// that waited [`MAX_PENDING`] so readers see them at low rates too.
    pub fn drain(&mut self) -> u64 {
        let taken = self.ring.drain(&mut self.capture);
        self.capture.seal_older_than(MAX_PENDING);
        taken
    }

    /// Where every event the probe matched went.
    pub fn totals(&self, probe: ProbeId) -> crate::Result<ProbeTotals> {
        Ok(ProbeTotals::new(
            self.probes.counters(probe)?,
            self.capture.received(probe.0),
            self.capture.decode_errors(probe.0),
        ))
    }

    /// What the Tracepoint's `spec.metrics` counted so far, for a scrape.
    /// They are derived from the moment of attach and go with detach.
    pub fn metrics(&self, probe: ProbeId) -> Vec<MetricSample> {
        self.capture.metric_samples(probe.0)
    }

    pub fn batches(&mut self, probe: ProbeId) -> Vec<RecordBatch> {
        self.capture.batches(probe.0)
    }

    pub fn schema(&mut self, probe: ProbeId) -> Option<SchemaRef> {
        self.capture.table(probe.0).map(|t| t.schema())
    }

    /// The loaded programs, for what the engine does not wrap (measurements).
    pub fn probe_set(&mut self) -> &mut ProbeSet {
        &mut self.probes
    }

    /// Makes the engine attach the OpenSSL libraries the returned requester
    /// asks for, at each turn of the drive loop ([`Self::serve_requests`]).
    pub fn tls_requests(&mut self) -> crate::sockets::TlsRequester {
        let (requester, service) = crate::sockets::TlsService::channel();
        self.tls = Some(service);
        requester
    }

    /// Attaches what was asked for through [`Self::tls_requests`].
    pub fn serve_requests(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.serve(&mut self.probes);
        }
    }

    pub fn program_ids(&self) -> Vec<u32> {
        self.probes.program_ids()
    }

    /// How full the ring buffer is now.
    pub fn ring_usage(&self) -> Option<RingUsage> {
        self.ring.usage()
    }

    /// Records that named no attached probe or could not be decoded at all.
    pub fn unattributed_errors(&self) -> u64 {
        self.capture.unattributed_errors()
    }
}

impl AsRawFd for Engine {
    /// The ring buffer's fd: readable when a record crossed the watermark.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl AsFd for Engine {
    /// The ring buffer's fd: readable when a record crossed the watermark.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}
