//! The loaded eBPF object: its programs, configuration maps and counters.
//!
//! One object is loaded per agent. It holds [`MAX_HOOKS`] copies of the
//! generic tracepoint program, one per hook slot: a kernel tracepoint gets a
//! free slot, whose copy is loaded on first use and attached there. What the
//! copy captures is the slot's entry in the configuration map.

use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{TracePoint, trace_point::TracePointLinkId},
    util::nr_cpus,
};
use probe_common::{
    MAX_HOOKS, MAX_PROBES, NO_PROBE, ProbeCounters, RAW_ARGS, TRACEPOINT_PROGRAM_PREFIX, TargetKey,
    TargetMode, TracepointConfig, maps,
};

use crate::{
    error::{Error, Result},
    ring::RingReader,
    tracefs::{Tracefs, TracepointFormat},
};

/// The eBPF object, compiled from `probe-ebpf` by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// Options fixed at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Fill level (bytes) from which a submit wakes the reader.
    pub wakeup_watermark: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 8 << 20,
            wakeup_watermark: 2 << 20,
        }
    }
}

/// Identifies an attached probe: its slot in the counter map and in records.
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
    fn mode(&self) -> TargetMode {
        match self {
            Self::All => TargetMode::All,
            Self::Pids(_) => TargetMode::Pids,
            Self::Cgroups(_) => TargetMode::Cgroups,
        }
    }

    fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        let (pids, cgroups): (&[u32], &[u64]) = match self {
            Self::All => (&[], &[]),
            Self::Pids(p) => (p, &[]),
            Self::Cgroups(c) => (&[], c),
        };
        pids.iter()
            .map(|&p| u64::from(p))
            .chain(cgroups.iter().copied())
    }
}

/// A tracepoint probe as attached: what it is and where it records.
#[derive(Debug)]
struct AttachedTracepoint {
    hook: u32,
    link: TracePointLinkId,
    targets: Targets,
}

/// The loaded object and everything attached through it. Dropping it detaches
/// every program and frees every map.
pub struct ProbeSet {
    ebpf: Ebpf,
    tracefs: Tracefs,
    options: LoadOptions,
    tracepoints: Array<MapData, TracepointConfig>,
    counters: PerCpuArray<MapData, ProbeCounters>,
    targets: HashMap<MapData, TargetKey, u8>,
    ring: Option<RingReader>,
    attached: StdHashMap<ProbeId, AttachedTracepoint>,
    free_slots: Vec<u32>,
    free_hooks: Vec<u32>,
    /// Hook slots whose program copy is loaded in the kernel.
    loaded_hooks: Vec<bool>,
}

impl ProbeSet {
    /// Loads the object's maps; programs are loaded when a hook first needs them.
    pub fn load(tracefs: Tracefs, options: LoadOptions) -> Result<Self> {
        let page = page_size();
        if !options.ring_bytes.is_power_of_two() || options.ring_bytes < page {
            return Err(Error::BadRingSize {
                bytes: options.ring_bytes,
            });
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::EVENTS, options.ring_bytes)
            .load(OBJECT)?;
        let mut tracepoints: Array<MapData, TracepointConfig> =
            take_map(&mut ebpf, maps::TRACEPOINTS)?;
        let unused = TracepointConfig {
            probe_id: NO_PROBE,
            target_mode: TargetMode::All as u32,
            args_offset: 0,
            args_count: 0,
            wakeup_watermark: u64::MAX,
        };
        for hook in 0..MAX_HOOKS {
            tracepoints
                .set(hook, unused, 0)
                .map_err(|source| Error::Map {
                    map: maps::TRACEPOINTS,
                    action: "initialise",
                    source,
                })?;
        }
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        let targets = take_map(&mut ebpf, maps::TARGETS)?;
        let ring = RingReader::new(take_map::<RingBuf<MapData>>(&mut ebpf, maps::EVENTS)?);
        Ok(Self {
            ebpf,
            tracefs,
            options,
            tracepoints,
            counters,
            targets,
            ring: Some(ring),
            attached: StdHashMap::new(),
            // Popped from the end: slot 0 is handed out first.
            free_slots: (0..MAX_PROBES).rev().collect(),
            free_hooks: (0..MAX_HOOKS).rev().collect(),
            loaded_hooks: vec![false; MAX_HOOKS as usize],
        })
    }

    /// The ring buffer reader. There is one; the second call returns `None`.
    pub fn take_ring(&mut self) -> Option<RingReader> {
        self.ring.take()
    }

    pub fn tracefs(&self) -> &Tracefs {
        &self.tracefs
    }

    /// Kernel ids of the loaded programs (to check they are gone after drop).
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }

    /// Attaches the generic program to kernel tracepoint `group/name`, copying
    /// up to [`RAW_ARGS`] argument words that follow the common header.
    pub fn attach_tracepoint(
        &mut self,
        group: &str,
        name: &str,
        targets: Targets,
    ) -> Result<(ProbeId, TracepointFormat)> {
        let format = self.tracefs.format(group, name)?;
        let (args_offset, args_count) = raw_args_window(&format);
        if self.free_hooks.is_empty() {
            return Err(Error::HookSlotsExhausted { max: MAX_HOOKS });
        }
        let slot = self
            .free_slots
            .pop()
            .ok_or(Error::ProbeSlotsExhausted { max: MAX_PROBES })?;
        let hook = self
            .free_hooks
            .pop()
            .ok_or(Error::HookSlotsExhausted { max: MAX_HOOKS })?;
        let probe = ProbeId(slot);
        let result = self.install(probe, hook, group, name, args_offset, args_count, targets);
        if result.is_err() {
            self.free_slots.push(slot);
            self.free_hooks.push(hook);
        }
        result.map(|()| (probe, format))
    }

    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        probe: ProbeId,
        hook: u32,
        group: &str,
        name: &str,
        args_offset: u32,
        args_count: u32,
        targets: Targets,
    ) -> Result<()> {
        self.reset_counters(probe)?;
        for id in targets.ids() {
            self.insert_target(probe, targets.mode(), id)?;
        }
        let config = TracepointConfig {
            probe_id: probe.0,
            target_mode: targets.mode() as u32,
            args_offset,
            args_count,
            wakeup_watermark: self.options.wakeup_watermark,
        };
        self.set_hook(hook, config)?;
        let program_name = hook_program(hook);
        let program: &mut TracePoint = program_mut(&mut self.ebpf, &program_name)?;
        if !self.loaded_hooks[hook as usize] {
            program.load().map_err(|source| Error::Program {
                program: program_name.clone(),
                action: "load",
                source,
            })?;
            self.loaded_hooks[hook as usize] = true;
        }
        let link = match program.attach(group, name) {
            Ok(link) => link,
            Err(source) => {
                self.clear_hook(hook)?;
                return Err(Error::Program {
                    program: program_name,
                    action: "attach",
                    source,
                });
            }
        };
        self.attached.insert(
            probe,
            AttachedTracepoint {
                hook,
                link,
                targets,
            },
        );
        Ok(())
    }

    fn set_hook(&mut self, hook: u32, config: TracepointConfig) -> Result<()> {
        self.tracepoints
            .set(hook, config, 0)
            .map_err(|source| Error::Map {
                map: maps::TRACEPOINTS,
                action: "update",
                source,
            })
    }

    fn clear_hook(&mut self, hook: u32) -> Result<()> {
        self.set_hook(
            hook,
            TracepointConfig {
                probe_id: NO_PROBE,
                target_mode: TargetMode::All as u32,
                args_offset: 0,
                args_count: 0,
                wakeup_watermark: u64::MAX,
            },
        )
    }

    /// Adds a process or cgroup to an attached probe's target set.
    pub fn add_target(&mut self, probe: ProbeId, id: u64) -> Result<()> {
        let mode = match self.attached.get(&probe).map(|a| &a.targets) {
            Some(t) => t.mode(),
            None => return Ok(()),
        };
        self.insert_target(probe, mode, id)
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

    /// Detaches a probe and frees its slot. Unknown ids are ignored.
    pub fn detach(&mut self, probe: ProbeId) -> Result<()> {
        let Some(attached) = self.attached.remove(&probe) else {
            return Ok(());
        };
        // Config first, so nothing is emitted for the slot once it is reused.
        self.clear_hook(attached.hook)?;
        let program_name = hook_program(attached.hook);
        let program: &mut TracePoint = program_mut(&mut self.ebpf, &program_name)?;
        program
            .detach(attached.link)
            .map_err(|source| Error::Program {
                program: program_name,
                action: "detach",
                source,
            })?;
        self.free_hooks.push(attached.hook);
        for id in attached.targets.ids() {
            let _ = self.targets.remove(&TargetKey {
                probe_id: probe.0,
                mode: attached.targets.mode() as u32,
                id,
            });
        }
        self.free_slots.push(probe.0);
        Ok(())
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
                emitted: sum.emitted + c.emitted,
                ringbuf_full: sum.ringbuf_full + c.ringbuf_full,
                read_failed: sum.read_failed + c.read_failed,
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

/// Where the raw argument words start and how many fit: everything after the
/// common header (and after `__syscall_nr` for syscall tracepoints).
fn raw_args_window(format: &TracepointFormat) -> (u32, u32) {
    let mut own = format.own_fields().filter(|f| f.name != "__syscall_nr");
    let Some(first) = own.next() else {
        return (0, 0);
    };
    let end = format
        .own_fields()
        .map(|f| f.offset + f.size)
        .max()
        .unwrap_or(first.offset);
    let words = (end.saturating_sub(first.offset)).div_ceil(8);
    (first.offset, words.min(RAW_ARGS as u32))
}

fn hook_program(hook: u32) -> String {
    format!("{TRACEPOINT_PROGRAM_PREFIX}{hook}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_args_follow_the_syscall_number() {
        let text = "ID: 1\n\
            field:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            field:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            field:int dfd;\toffset:16;\tsize:8;\tsigned:0;\n\
            field:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n";
        let format = TracepointFormat::parse(text).expect("valid format");
        assert_eq!(raw_args_window(&format), (16, 2));
    }

    #[test]
    fn raw_args_are_capped() {
        let mut text = String::from("ID: 1\n");
        for i in 0..10 {
            text.push_str(&format!(
                "field:u64 a{i};\toffset:{};\tsize:8;\tsigned:0;\n",
                8 + i * 8
            ));
        }
        let format = TracepointFormat::parse(&text).expect("valid format");
        assert_eq!(raw_args_window(&format), (8, RAW_ARGS as u32));
    }

    #[test]
    fn no_own_fields_means_no_words() {
        let format = TracepointFormat::parse("ID: 1\n").expect("valid format");
        assert_eq!(raw_args_window(&format), (0, 0));
    }
}
