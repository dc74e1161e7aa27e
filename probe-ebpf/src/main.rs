//! Sonde's eBPF programs.
//!
//! The programs are generic: which hooks they serve, whom they capture and
//! what they copy is configuration that the agent writes into maps, so a new
//! Tracepoint resource never needs a compiler on the node.
//!
//! Records are submitted without waking the reader (`BPF_RB_NO_WAKEUP`): the
//! agent drains on a timer, and a submit wakes it only once the ring holds
//! more than the configured watermark. Waking per event costs several times
//! the traced syscall itself.
#![no_std]
#![no_main]
#![allow(unsafe_code)]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use probe_common::{
    MAX_PROBES, MAX_TARGETS, ProbeCounters, RAW_ARGS, RecordHeader, RecordKind, SyscallRecord,
    TargetKey, TargetMode, TracepointConfig,
};

/// Default ring size; the agent sets the real one at load time.
const DEFAULT_RING_BYTES: u32 = 1 << 22;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static TRACEPOINTS: HashMap<u32, TracepointConfig> = HashMap::with_max_entries(MAX_PROBES, 0);

#[map]
static COUNTERS: PerCpuArray<ProbeCounters> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

#[map]
static TARGETS: HashMap<TargetKey, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[tracepoint]
pub fn sonde_tracepoint(ctx: TracePointContext) -> u32 {
    match try_tracepoint(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

fn try_tracepoint(ctx: &TracePointContext) -> Result<(), ()> {
    // Every tracepoint record starts with `unsigned short common_type`, the
    // event id: it tells which of the hooks this program is attached to fired.
    let event_id: u16 = unsafe { ctx.read_at(0) }.map_err(|_| ())?;
    let Some(config) = TRACEPOINTS.get_ptr(u32::from(event_id)) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup; the value is
    // only replaced whole by the agent, and a torn read is harmless here.
    let config = unsafe { &*config };

    let pid_tgid = bpf_get_current_pid_tgid();
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !is_target(config, pid_tgid, cgroup_id) {
        return Ok(());
    }

    let counters = COUNTERS.get_ptr_mut(config.probe_id).ok_or(())?;
    // SAFETY: per-CPU slot of a successful lookup; programs on one CPU do not
    // run concurrently with each other for tracepoints.
    let counters = unsafe { &mut *counters };
    counters.matched += 1;

    let Some(mut entry) = EVENTS.reserve::<SyscallRecord>(0) else {
        counters.ringbuf_full += 1;
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved slot of exactly this size.
    unsafe {
        (*record).header = RecordHeader {
            kind: RecordKind::Syscall as u32,
            probe_id: config.probe_id,
            ktime_ns: bpf_ktime_get_ns(),
            pid_tgid,
            cgroup_id,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        let mut ok = true;
        for i in 0..RAW_ARGS {
            (*record).args[i] = if (i as u32) < config.args_count {
                match ctx.read_at::<u64>(config.args_offset as usize + i * 8) {
                    Ok(word) => word,
                    Err(_) => {
                        ok = false;
                        0
                    }
                }
            } else {
                0
            };
        }
        if !ok {
            entry.discard(BPF_RB_NO_WAKEUP as u64);
            counters.read_failed += 1;
            return Ok(());
        }
    }
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config.wakeup_watermark {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
    counters.emitted += 1;
    Ok(())
}

#[inline(always)]
fn is_target(config: &TracepointConfig, pid_tgid: u64, cgroup_id: u64) -> bool {
    let id = if config.target_mode == TargetMode::Pids as u32 {
        pid_tgid >> 32
    } else if config.target_mode == TargetMode::Cgroups as u32 {
        cgroup_id
    } else {
        return true;
    };
    let key = TargetKey {
        probe_id: config.probe_id,
        mode: config.target_mode,
        id,
    };
    TARGETS.get_ptr(key).is_some()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier guarantees no panicking path survives; this is never reached.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
