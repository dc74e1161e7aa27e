//! `#[repr(C)]` types shared by Sonde's eBPF programs and the agent that
//! configures them and decodes what they emit.
//!
//! Everything here is plain data with a fixed layout: the eBPF side writes it
//! into ring-buffer records and reads it from configuration maps, the agent
//! does the reverse. Layout changes must be made on both sides at once, which
//! is why the types live in one crate.
#![no_std]

/// Number of probe slots: each attached probe (a Tracepoint on one hook) owns
/// one slot in the configuration and counter maps.
pub const MAX_PROBES: u32 = 256;

/// Number of tracepoint hooks one agent can attach at once; the eBPF object
/// has one copy of the tracepoint program per hook slot.
pub const MAX_HOOKS: u32 = 64;

/// `probe_id` of an unused hook slot.
pub const NO_PROBE: u32 = u32::MAX;

/// Number of raw argument words a [`SyscallRecord`] carries.
pub const RAW_ARGS: usize = 6;

/// Length of the kernel's task command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Maximum number of entries in the shared target set (pids or cgroup ids).
pub const MAX_TARGETS: u32 = 16384;

/// Map names, shared so the agent looks up exactly what the programs define.
pub mod maps {
    /// Ring buffer every program writes records to.
    pub const EVENTS: &str = "EVENTS";
    /// `Array<TracepointConfig>` indexed by hook slot.
    pub const TRACEPOINTS: &str = "TRACEPOINTS";
    /// `PerCpuArray<ProbeCounters>` indexed by probe slot.
    pub const COUNTERS: &str = "COUNTERS";
    /// `HashMap<TargetKey, u8>`: pids or cgroup ids a probe is limited to.
    pub const TARGETS: &str = "TARGETS";
}

/// Name prefix of the tracepoint programs: `sonde_tp_<slot>` serves hook
/// slot `<slot>`, `0..MAX_HOOKS`.
pub const TRACEPOINT_PROGRAM_PREFIX: &str = "sonde_tp_";

/// Who a probe captures events from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetMode {
    /// Every process on the host (standalone mode only).
    All = 0,
    /// Processes whose tgid is in the target set.
    Pids = 1,
    /// Processes whose cgroup (v2) id is in the target set.
    Cgroups = 2,
}

/// Configuration of one tracepoint hook slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointConfig {
    /// Slot of the probe in the counter map and in emitted records, or
    /// [`NO_PROBE`] when the hook slot is unused.
    pub probe_id: u32,
    /// A [`TargetMode`] value.
    pub target_mode: u32,
    /// Offset in the tracepoint record of the first raw argument word.
    pub args_offset: u32,
    /// How many 8-byte words to copy from `args_offset` (at most [`RAW_ARGS`]).
    pub args_count: u32,
    /// Ring-buffer fill level, in bytes, from which a submit wakes the reader;
    /// below it records are submitted without a wakeup.
    pub wakeup_watermark: u64,
}

/// Key of the target set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub probe_id: u32,
    /// A [`TargetMode`] value (`Pids` or `Cgroups`).
    pub mode: u32,
    /// A tgid or a cgroup id.
    pub id: u64,
}

/// Per-probe, per-CPU counters. Summed over CPUs by the agent at read time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Events that reached the probe and matched its target set.
    pub matched: u64,
    /// Records written to the ring buffer.
    pub emitted: u64,
    /// Records lost because the ring buffer had no room (reserve failed).
    pub ringbuf_full: u64,
    /// Records lost because the kernel refused to read an argument.
    pub read_failed: u64,
}

/// Kind of a ring-buffer record, the first field of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Syscall = 1,
}

/// Fields every record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// A [`RecordKind`] value.
    pub kind: u32,
    pub probe_id: u32,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ktime_ns: u64,
    /// `tgid << 32 | tid`.
    pub pid_tgid: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A fixed-size record from a tracepoint: the header and raw argument words.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallRecord {
    pub header: RecordHeader,
    pub args: [u64; RAW_ARGS],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (for every impl below): the types are `#[repr(C)]`, `Copy`, contain
    // only integers, and have no padding the kernel could leave uninitialised
    // in a way that matters: any bit pattern is a valid value.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::TracepointConfig {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::TargetKey {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::ProbeCounters {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        // The eBPF verifier rejects stack reads of uninitialised padding and
        // the decoder relies on these sizes: pin them.
        assert_eq!(size_of::<RecordHeader>(), 48);
        assert_eq!(size_of::<SyscallRecord>(), 48 + 8 * RAW_ARGS);
        assert_eq!(size_of::<TracepointConfig>(), 24);
        assert_eq!(size_of::<TargetKey>(), 16);
        assert_eq!(size_of::<ProbeCounters>(), 32);
    }
}
