//! The loaded eBPF object: its programs, configuration maps and counters.
//!
//! One object is loaded per agent. Kernel tracepoints, raw tracepoints and
//! kprobes get a hook slot each, served by that slot's copy of the program
//! (loaded on first use); uprobes and USDT probes share one program and find
//! their probe in the attach cookie. What a probe captures is its entry in
//! the `PROBES` map, so attaching only writes maps and links.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    os::fd::AsFd as _,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{
        KProbe, RawTracePoint, TracePoint, UProbe,
        kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
    util::nr_cpus,
};
use probe_common::{
    HookProbes, KPROBE_HOOKS, MAX_HOOKS, MAX_PROBES, NO_PROBE, ProbeConfig, ProbeCounters,
    RAW_TRACEPOINT_HOOKS, RateWindow, TRACEPOINT_HOOKS, TargetKey, TargetMode, maps, programs,
};

use crate::{
    error::{Error, Result},
    plan::HookTarget,
    preflight,
    ring::RingReader,
    tracefs::Tracefs,
    uprobe_events::{UprobeEventLink, UprobeEvents},
};

/// The eBPF object, compiled from `probe-ebpf` by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// Options fixed at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Fill level (bytes) at which a submit wakes the reader (and again at
    /// each further quarter of it).
    pub wakeup_watermark: u64,
    /// Size of the socket programs' ring (`sonde.http_events`): a power of
    /// two, at least one page; one page when they are not used.
    pub socket_ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 8 << 20,
            wakeup_watermark: 2 << 20,
            socket_ring_bytes: 8 << 20,
        }
    }
}

/// Identifies an attached probe: its slot in the maps and in records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u32);

/// Whom an attached probe captures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Every process on the host.
    All,
    /// Only these processes (tgids).
    Pids(Vec<u32>),
    /// Only processes in these cgroup v2 ids.
    Cgroups(Vec<u64>),
}

impl Targets {
    pub fn mode(&self) -> TargetMode {
        match self {
            Self::All => TargetMode::All,
            Self::Pids(_) => TargetMode::Pids,
            Self::Cgroups(_) => TargetMode::Cgroups,
        }
    }

    fn ids(&self) -> Vec<u64> {
        match self {
            Self::All => Vec::new(),
            Self::Pids(p) => p.iter().map(|&p| u64::from(p)).collect(),
            Self::Cgroups(c) => c.clone(),
        }
    }
}

/// A kernel link of an attached probe.
#[derive(Debug)]
enum Link {
    Tracepoint(String, TracePointLinkId),
    RawTracepoint(String, RawTracePointLinkId),
    Kprobe(String, KProbeLinkId),
    Uprobe(&'static str, UProbeLinkId),
    UprobeEvent(UprobeEventLink),
}

/// A kernel attachment and the probes it serves. Probes on the same kernel
/// tracepoint or raw tracepoint share one, up to
/// [`PROBES_PER_HOOK`](probe_common::PROBES_PER_HOOK);
/// uprobes carry their probe in the link's cookie and kprobes keep a slot
/// pair each, so those are never shared.
#[derive(Debug)]
struct HookEntry {
    target: HookTarget,
    /// Slot in `HOOKS`; `None` for cookie-based (uprobe) hooks.
    slot: Option<u32>,
    kprobe_pair: Option<u32>,
    probes: HookProbes,
    links: Vec<Link>,
}

impl HookEntry {
    fn shareable(&self) -> bool {
        matches!(
            self.target,
            HookTarget::Tracepoint { .. } | HookTarget::RawTracepoint { .. }
        )
    }
}

#[derive(Debug)]
struct Attached {
    /// Key of the [`HookEntry`] serving this probe.
    entry: u64,
    targets: Targets,
}

/// The loaded object and everything attached through it. Dropping it detaches
/// every program and frees every map.
pub struct ProbeSet {
    ebpf: Ebpf,
    tracefs: Tracefs,
    /// Where uprobes are made when the uprobe PMU is not allowed to us.
    uprobe_events: Option<UprobeEvents>,
    options: LoadOptions,
    hooks: Array<MapData, HookProbes>,
    probes: Array<MapData, ProbeConfig>,
    counters: PerCpuArray<MapData, ProbeCounters>,
    rates: Array<MapData, RateWindow>,
    targets: HashMap<MapData, TargetKey, u8>,
    ring: Option<RingReader>,
    attached: StdHashMap<ProbeId, Attached>,
    entries: StdHashMap<u64, HookEntry>,
    next_entry: u64,
    loaded: HashSet<String>,
    free_probes: Vec<u32>,
    free_tracepoint_hooks: Vec<u32>,
    free_raw_hooks: Vec<u32>,
    free_kprobe_pairs: Vec<u32>,
}

impl ProbeSet {
    /// Loads the object's maps; programs are loaded when a hook first needs them.
    pub fn load(tracefs: Tracefs, options: LoadOptions) -> Result<Self> {
        let page = page_size();
        for bytes in [options.ring_bytes, options.socket_ring_bytes] {
            if !bytes.is_power_of_two() || bytes < page {
                return Err(Error::BadRingSize { bytes });
            }
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::EVENTS, options.ring_bytes)
            .map_max_entries(maps::SOCK_EVENTS, options.socket_ring_bytes)
            .load(OBJECT)?;
        let mut hooks: Array<MapData, HookProbes> = take_map(&mut ebpf, maps::HOOKS)?;
        for hook in 0..MAX_HOOKS {
            hooks
                .set(hook, HookProbes::EMPTY, 0)
                .map_err(|source| Error::Map {
                    map: maps::HOOKS,
                    action: "initialise",
                    source,
                })?;
        }
        let probes = take_map(&mut ebpf, maps::PROBES)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        let rates = take_map(&mut ebpf, maps::RATES)?;
        let targets = take_map(&mut ebpf, maps::TARGETS)?;
        let ring_map = take_map::<RingBuf<MapData>>(&mut ebpf, maps::EVENTS)?;
        let ring = RingReader::new(ring_map, page, options.ring_bytes);
        let uprobe_events = (!preflight::uprobe_pmu_allowed()).then(|| {
            tracing::info!(
                tracefs = %tracefs.root().display(),
                "no CAP_SYS_ADMIN for the uprobe PMU: uprobes are made through tracefs' uprobe_events"
            );
            UprobeEvents::new(tracefs.root())
        });
        // Free lists are popped from the end: the lowest slots go first.
        Ok(Self {
            ebpf,
            tracefs,
            uprobe_events,
            options,
            hooks,
            probes,
            counters,
            rates,
            targets,
            ring: Some(ring),
            attached: StdHashMap::new(),
            entries: StdHashMap::new(),
            next_entry: 0,
            loaded: HashSet::new(),
            free_probes: (0..MAX_PROBES).rev().collect(),
            free_tracepoint_hooks: (0..TRACEPOINT_HOOKS).rev().collect(),
            free_raw_hooks: (0..RAW_TRACEPOINT_HOOKS).rev().collect(),
            free_kprobe_pairs: (0..KPROBE_HOOKS).rev().collect(),
        })
    }

    /// Takes a map out of the object (once).
    pub(crate) fn take_map<M>(&mut self, name: &'static str) -> Result<M>
    where
        M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        take_map(&mut self.ebpf, name)
    }

    /// The ring buffer reader. There is one; the second call returns `None`.
    pub fn take_ring(&mut self) -> Option<RingReader> {
        self.ring.take()
    }

    pub fn tracefs(&self) -> &Tracefs {
        &self.tracefs
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Kernel ids of the loaded programs of Tracepoints (to check they are
    /// gone after drop); the baseline tables' programs are not among them.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter(|(name, _)| {
                ![programs::NET_INGRESS, programs::NET_EGRESS].contains(name)
                    && !name.starts_with(programs::SOCK_PREFIX)
                    && ![programs::SSL_ENTRY, programs::SSL_RETURN].contains(name)
            })
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }

    /// Attaches a kernel tracepoint that records only the standard columns.
    pub fn attach_tracepoint(
        &mut self,
        group: &str,
        name: &str,
        targets: Targets,
    ) -> Result<ProbeId> {
        // Checked first so that a missing tracepoint is named as such.
        self.tracefs.format(group, name)?;
        let config = ProbeConfig {
            wakeup_watermark: self.options.wakeup_watermark,
            ..ProbeConfig::EMPTY
        };
        self.attach(
            &HookTarget::Tracepoint {
                group: group.to_owned(),
                name: name.to_owned(),
            },
            config,
            targets,
        )
    }

    /// Attaches the baseline program (reserve and submit a header-sized
    /// record, nothing else) to a tracepoint, for measurements. Its records
    /// are not attributed to any probe; dropping the set detaches it.
    pub fn attach_baseline(&mut self, group: &str, name: &str) -> Result<()> {
        self.attach_measurement_tracepoint(programs::BASELINE, group, name)
    }

    /// Attaches a measurement program (the baseline or one of
    /// [`programs::reference`]) to a kernel tracepoint. Its records are not
    /// attributed to any probe; dropping the set detaches it.
    pub fn attach_measurement_tracepoint(
        &mut self,
        program: &str,
        group: &str,
        name: &str,
    ) -> Result<()> {
        let loaded: &mut TracePoint = self.loaded_program(program)?;
        loaded
            .attach(group, name)
            .map_err(|source| program_error(program, "attach", source))?;
        Ok(())
    }

    /// Attaches a measurement uprobe or uretprobe program (one of
    /// [`programs::reference`]) to `symbol` in `binary`, for every process.
    /// Dropping the set detaches it.
    pub fn attach_measurement_uprobe(
        &mut self,
        program: &str,
        binary: &std::path::Path,
        symbol: &str,
    ) -> Result<()> {
        let loaded: &mut UProbe = self.loaded_program(program)?;
        loaded
            .attach(
                UProbeAttachLocation::Symbol(symbol),
                binary,
                UProbeScope::AllProcesses,
            )
            .map_err(|source| program_error(program, "attach", source))?;
        Ok(())
    }

    /// Attaches the uprobe (or, with `ret`, uretprobe) program `name` at
    /// `offset` in `binary`, for every process, with `cookie`. Through the uprobe PMU
    /// the link lives as long as the set; through tracefs' `uprobe_events`
    /// (without CAP_SYS_ADMIN) it lives as long as the returned link.
    pub(crate) fn attach_uprobe_program(
        &mut self,
        name: &'static str,
        binary: &std::path::Path,
        offset: u64,
        ret: bool,
        cookie: u64,
    ) -> Result<Option<UprobeEventLink>> {
        self.loaded_program::<UProbe>(name)?;
        let program: &mut UProbe = program_mut(&mut self.ebpf, name)?;
        if let Some(events) = &mut self.uprobe_events {
            let fd = program
                .fd()
                .map_err(|source| program_error(name, "attach", source))?;
            return events
                .attach(fd.as_fd(), binary, offset, ret, cookie)
                .map(Some);
        }
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        };
        program
            .attach(point, binary, UProbeScope::AllProcesses)
            .map_err(|source| program_error(name, "attach", source))?;
        Ok(None)
    }

    /// Attaches a compiled probe. On error nothing of it stays attached.
    pub fn attach(
        &mut self,
        hook: &HookTarget,
        mut config: ProbeConfig,
        targets: Targets,
    ) -> Result<ProbeId> {
        config.target_mode = targets.mode() as u32;
        let slot = self
            .free_probes
            .pop()
            .ok_or(Error::ProbeSlotsExhausted { max: MAX_PROBES })?;
        let probe = ProbeId(slot);
        match self.install(probe, hook, config, &targets) {
            Ok(entry) => {
                self.attached.insert(probe, Attached { entry, targets });
                Ok(probe)
            }
            Err(e) => {
                self.forget_targets(probe, &targets);
                self.free_probes.push(probe.0);
                Err(e)
            }
        }
    }

    /// Configures the probe's maps and puts it on a hook; returns the hook
    /// entry's key.
    fn install(
        &mut self,
        probe: ProbeId,
        hook: &HookTarget,
        config: ProbeConfig,
        targets: &Targets,
    ) -> Result<u64> {
        self.reset_counters(probe)?;
        self.rates
            .set(probe.0, RateWindow::default(), 0)
            .map_err(|source| Error::Map {
                map: maps::RATES,
                action: "reset",
                source,
            })?;
        for id in targets.ids() {
            self.insert_target(probe, targets.mode(), id)?;
        }
        self.probes
            .set(probe.0, config, 0)
            .map_err(|source| Error::Map {
                map: maps::PROBES,
                action: "update",
                source,
            })?;

        // Join an existing attachment of the same hook if it has room.
        let shared = self.entries.iter_mut().find(|(_, e)| {
            e.shareable() && e.target == *hook && e.probes.probes.contains(&NO_PROBE)
        });
        if let Some((&key, entry)) = shared {
            let free = entry
                .probes
                .probes
                .iter()
                .position(|&p| p == NO_PROBE)
                .unwrap_or(0);
            entry.probes.probes[free] = probe.0;
            let (slot, probes) = (entry.slot, entry.probes);
            if let Some(slot) = slot {
                self.set_hook(slot, probes)?;
            }
            return Ok(key);
        }

        let mut entry = HookEntry {
            target: hook.clone(),
            slot: None,
            kprobe_pair: None,
            probes: HookProbes::EMPTY,
            links: Vec::new(),
        };
        entry.probes.probes[0] = probe.0;
        let result = self.open_hook(probe, &mut entry);
        if let Err(e) = result {
            let _ = self.close_hook(entry);
            return Err(e);
        }
        let key = self.next_entry;
        self.next_entry += 1;
        self.entries.insert(key, entry);
        Ok(key)
    }

    /// Takes a hook slot for a new entry and attaches its program(s).
    fn open_hook(&mut self, probe: ProbeId, entry: &mut HookEntry) -> Result<()> {
        match entry.target.clone() {
            HookTarget::Tracepoint { group, name } => {
                let slot = self
                    .free_tracepoint_hooks
                    .pop()
                    .ok_or(Error::HookSlotsExhausted {
                        kind: "tracepoint",
                        max: TRACEPOINT_HOOKS,
                    })?;
                entry.slot = Some(slot);
                self.set_hook(slot, entry.probes)?;
                let program_name = format!("{}{slot}", programs::TRACEPOINT_PREFIX);
                let program: &mut TracePoint = self.loaded_program(&program_name)?;
                let link = program
                    .attach(&group, &name)
                    .map_err(|source| program_error(&program_name, "attach", source))?;
                entry.links.push(Link::Tracepoint(program_name, link));
            }
            HookTarget::RawTracepoint { name } => {
                let index = self.free_raw_hooks.pop().ok_or(Error::HookSlotsExhausted {
                    kind: "raw tracepoint",
                    max: RAW_TRACEPOINT_HOOKS,
                })?;
                let slot = TRACEPOINT_HOOKS + index;
                entry.slot = Some(slot);
                self.set_hook(slot, entry.probes)?;
                let program_name = format!("{}{index}", programs::RAW_TRACEPOINT_PREFIX);
                let program: &mut RawTracePoint = self.loaded_program(&program_name)?;
                let link = program
                    .attach(&name)
                    .map_err(|source| program_error(&program_name, "attach", source))?;
                entry.links.push(Link::RawTracepoint(program_name, link));
            }
            HookTarget::Kprobe {
                function,
                offset,
                ret,
            } => {
                let pair = self
                    .free_kprobe_pairs
                    .pop()
                    .ok_or(Error::HookSlotsExhausted {
                        kind: "kprobe",
                        max: KPROBE_HOOKS,
                    })?;
                entry.kprobe_pair = Some(pair);
                let first = TRACEPOINT_HOOKS + RAW_TRACEPOINT_HOOKS;
                // A plain kprobe uses the pair's first slot; a kretprobe the
                // second, which the entry program fills and the return reads.
                let slot = if ret {
                    first + KPROBE_HOOKS + pair
                } else {
                    first + pair
                };
                entry.slot = Some(slot);
                self.set_hook(slot, entry.probes)?;
                let enter = format!("{}{pair}", programs::KPROBE_PREFIX);
                let program: &mut KProbe = self.loaded_program(&enter)?;
                let link = program
                    .attach(&function, offset)
                    .map_err(|source| program_error(&enter, "attach", source))?;
                entry.links.push(Link::Kprobe(enter, link));
                if ret {
                    let exit = format!("{}{pair}", programs::KRETPROBE_PREFIX);
                    let program: &mut KProbe = self.loaded_program(&exit)?;
                    let link = program
                        .attach(&function, 0)
                        .map_err(|source| program_error(&exit, "attach", source))?;
                    entry.links.push(Link::Kprobe(exit, link));
                }
            }
            HookTarget::Uprobe {
                binary,
                offset,
                ret,
            } => {
                // The entry program always attaches: for a return probe it
                // records the entry (time, arguments) the return half needs.
                let mut names = vec![programs::UPROBE];
                if ret {
                    names.push(programs::URETPROBE);
                }
                let cookie = u64::from(probe.0);
                for name in names {
                    self.loaded_program::<UProbe>(name)?;
                    let program: &mut UProbe = program_mut(&mut self.ebpf, name)?;
                    let link = if let Some(events) = &mut self.uprobe_events {
                        let fd = program
                            .fd()
                            .map_err(|source| program_error(name, "attach", source))?;
                        let ret = name == programs::URETPROBE;
                        Link::UprobeEvent(events.attach(
                            fd.as_fd(),
                            &binary,
                            offset,
                            ret,
                            cookie,
                        )?)
                    } else {
                        let point = UProbeAttachPoint {
                            location: UProbeAttachLocation::AbsoluteOffset(offset),
                            cookie: Some(cookie),
                        };
                        let id = program
                            .attach(point, &binary, UProbeScope::AllProcesses)
                            .map_err(|source| program_error(name, "attach", source))?;
                        Link::Uprobe(name, id)
                    };
                    entry.links.push(link);
                }
            }
        }
        Ok(())
    }

    /// Detaches an entry's links and frees its slots.
    fn close_hook(&mut self, entry: HookEntry) -> Result<()> {
        let mut first_error = None;
        if let Some(slot) = entry.slot {
            // The slot first, so nothing is emitted for it once it is reused.
            if let Err(e) = self.set_hook(slot, HookProbes::EMPTY) {
                first_error.get_or_insert(e);
            }
            let kprobe_first = TRACEPOINT_HOOKS + RAW_TRACEPOINT_HOOKS;
            if slot < TRACEPOINT_HOOKS {
                self.free_tracepoint_hooks.push(slot);
            } else if slot < kprobe_first {
                self.free_raw_hooks.push(slot - TRACEPOINT_HOOKS);
            }
        }
        if let Some(pair) = entry.kprobe_pair {
            self.free_kprobe_pairs.push(pair);
        }
        for link in entry.links {
            let result = match link {
                Link::Tracepoint(name, id) => program_mut::<TracePoint>(&mut self.ebpf, &name)
                    .and_then(|p| p.detach(id).map_err(|s| program_error(&name, "detach", s))),
                Link::RawTracepoint(name, id) => {
                    program_mut::<RawTracePoint>(&mut self.ebpf, &name)
                        .and_then(|p| p.detach(id).map_err(|s| program_error(&name, "detach", s)))
                }
                Link::Kprobe(name, id) => program_mut::<KProbe>(&mut self.ebpf, &name)
                    .and_then(|p| p.detach(id).map_err(|s| program_error(&name, "detach", s))),
                Link::Uprobe(name, id) => program_mut::<UProbe>(&mut self.ebpf, name)
                    .and_then(|p| p.detach(id).map_err(|s| program_error(name, "detach", s))),
                Link::UprobeEvent(link) => link.detach(),
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// How many kernel attachments (links) serve the attached probes.
    pub fn attachment_count(&self) -> usize {
        self.entries.values().map(|e| e.links.len()).sum()
    }

    /// The program `name`, loaded into the kernel on first use.
    pub(crate) fn loaded_program<P>(&mut self, name: &str) -> Result<&mut P>
    where
        P: LoadProgram,
        for<'p> &'p mut P:
            TryFrom<&'p mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        if !self.loaded.contains(name) {
            let program: &mut P = program_mut(&mut self.ebpf, name)?;
            program
                .load_program()
                .map_err(|source| program_error(name, "load", source))?;
            self.loaded.insert(name.to_owned());
        }
        program_mut(&mut self.ebpf, name)
    }

    fn set_hook(&mut self, slot: u32, probes: HookProbes) -> Result<()> {
        self.hooks
            .set(slot, probes, 0)
            .map_err(|source| Error::Map {
                map: maps::HOOKS,
                action: "update",
                source,
            })
    }

    /// Adds a process or cgroup to an attached probe's target set.
    pub fn add_target(&mut self, probe: ProbeId, id: u64) -> Result<()> {
        let Some(attached) = self.attached.get_mut(&probe) else {
            return Ok(());
        };
        let mode = attached.targets.mode();
        match &mut attached.targets {
            Targets::All => return Ok(()),
            Targets::Pids(p) => p.push(id as u32),
            Targets::Cgroups(c) => c.push(id),
        }
        self.insert_target(probe, mode, id)
    }

    /// Removes a process or cgroup from an attached probe's target set.
    /// Unknown probes and ids are ignored.
    pub fn remove_target(&mut self, probe: ProbeId, id: u64) -> Result<()> {
        let Some(attached) = self.attached.get_mut(&probe) else {
            return Ok(());
        };
        let mode = attached.targets.mode();
        let known = match &mut attached.targets {
            Targets::All => return Ok(()),
            Targets::Pids(p) => {
                let before = p.len();
                p.retain(|&pid| u64::from(pid) != id);
                p.len() != before
            }
            Targets::Cgroups(c) => {
                let before = c.len();
                c.retain(|&cgroup| cgroup != id);
                c.len() != before
            }
        };
        if !known {
            return Ok(());
        }
        let key = TargetKey {
            probe_id: probe.0,
            mode: mode as u32,
            id,
        };
        self.targets.remove(&key).map_err(|source| Error::Map {
            map: maps::TARGETS,
            action: "remove",
            source,
        })
    }

    fn insert_target(&mut self, probe: ProbeId, mode: TargetMode, id: u64) -> Result<()> {
        let key = TargetKey {
            probe_id: probe.0,
            mode: mode as u32,
            id,
        };
        self.targets.insert(key, 1, 0).map_err(|source| Error::Map {
            map: maps::TARGETS,
            action: "insert",
            source,
        })
    }

    /// Detaches a probe and frees its slots. Unknown ids are ignored. The
    /// kernel attachment goes with its last probe.
    pub fn detach(&mut self, probe: ProbeId) -> Result<()> {
        let Some(attached) = self.attached.remove(&probe) else {
            return Ok(());
        };
        let mut result = Ok(());
        if let Some(entry) = self.entries.get_mut(&attached.entry) {
            for p in &mut entry.probes.probes {
                if *p == probe.0 {
                    *p = NO_PROBE;
                }
            }
            let (slot, probes) = (entry.slot, entry.probes);
            if probes.probes.iter().all(|&p| p == NO_PROBE) {
                if let Some(entry) = self.entries.remove(&attached.entry) {
                    result = self.close_hook(entry);
                }
            } else if let Some(slot) = slot {
                result = self.set_hook(slot, probes);
            }
        }
        self.forget_targets(probe, &attached.targets);
        self.free_probes.push(probe.0);
        result
    }

    fn forget_targets(&mut self, probe: ProbeId, targets: &Targets) {
        let mode = targets.mode() as u32;
        for id in targets.ids() {
            let _ = self.targets.remove(&TargetKey {
                probe_id: probe.0,
                mode,
                id,
            });
        }
    }

    /// In-kernel counters of a probe, summed over CPUs.
    pub fn counters(&self, probe: ProbeId) -> Result<ProbeCounters> {
        let per_cpu = self
            .counters
            .get(&probe.0, 0)
            .map_err(|source| Error::Map {
                map: maps::COUNTERS,
                action: "read",
                source,
            })?;
        Ok(per_cpu
            .iter()
            .fold(ProbeCounters::default(), |sum, c| ProbeCounters {
                matched: sum.matched + c.matched,
                filtered: sum.filtered + c.filtered,
                sampled_out: sum.sampled_out + c.sampled_out,
                rate_limited: sum.rate_limited + c.rate_limited,
                ringbuf_full: sum.ringbuf_full + c.ringbuf_full,
                emitted: sum.emitted + c.emitted,
                read_errors: sum.read_errors + c.read_errors,
                missing_entry: sum.missing_entry + c.missing_entry,
                sample_seq: 0,
            }))
    }

    fn reset_counters(&mut self, probe: ProbeId) -> Result<()> {
        let cpus = nr_cpus().map_err(|(path, source)| Error::Io {
            path: path.into(),
            source,
        })?;
        let zeros =
            PerCpuValues::try_from(vec![ProbeCounters::default(); cpus]).map_err(|source| {
                Error::Io {
                    path: "/sys/devices/system/cpu/possible".into(),
                    source,
                }
            })?;
        self.counters
            .set(probe.0, zeros, 0)
            .map_err(|source| Error::Map {
                map: maps::COUNTERS,
                action: "reset",
                source,
            })
    }
}

/// Loading differs per program type only in name; this gives them one.
pub trait LoadProgram {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}

macro_rules! load_program {
    ($($t:ty),*) => {
        $(impl LoadProgram for $t {
            fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
                self.load()
            }
        })*
    };
}

load_program!(
    TracePoint,
    RawTracePoint,
    KProbe,
    UProbe,
    aya::programs::CgroupSkb
);

fn program_error(name: &str, action: &'static str, source: aya::programs::ProgramError) -> Error {
    Error::Program {
        program: name.to_owned(),
        action,
        source,
    }
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::MissingInObject {
            kind: "program",
            name: name.to_owned(),
        })?;
    program.try_into().map_err(|source| Error::Program {
        program: name.to_owned(),
        action: "type check",
        source,
    })
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| Error::MissingInObject {
        kind: "map",
        name: name.to_owned(),
    })?;
    M::try_from(map).map_err(|source| Error::Map {
        map: name,
        action: "type check",
        source,
    })
}

fn page_size() -> u32 {
    // sysconf(_SC_PAGESIZE) cannot fail on Linux; 4096 is the floor anyway.
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(4096)
}
