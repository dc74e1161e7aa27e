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
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use probe_common::{
    MAX_HOOKS, MAX_PROBES, MAX_TARGETS, NO_PROBE, ProbeCounters, RAW_ARGS, RecordHeader,
    RecordKind, SyscallRecord, TargetKey, TargetMode, TracepointConfig,
};

/// Default ring size; the agent sets the real one at load time.
const DEFAULT_RING_BYTES: u32 = 1 << 22;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static TRACEPOINTS: Array<TracepointConfig> = Array::with_max_entries(MAX_HOOKS, 0);

#[map]
static COUNTERS: PerCpuArray<ProbeCounters> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

#[map]
static TARGETS: HashMap<TargetKey, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// One program per hook slot. The kernel hands tracepoint programs a record
/// whose common header is overwritten with a `pt_regs` pointer, so a program
/// cannot tell which tracepoint fired; instead each hook gets its own copy,
/// which knows its slot. The agent loads a copy only when it uses the slot.
macro_rules! hook {
    ($name:ident, $slot:literal) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            match try_tracepoint(&ctx, $slot) {
                Ok(()) | Err(()) => 0,
            }
        }
    };
}

hook!(sonde_tp_0, 0);
hook!(sonde_tp_1, 1);
hook!(sonde_tp_2, 2);
hook!(sonde_tp_3, 3);
hook!(sonde_tp_4, 4);
hook!(sonde_tp_5, 5);
hook!(sonde_tp_6, 6);
hook!(sonde_tp_7, 7);
hook!(sonde_tp_8, 8);
hook!(sonde_tp_9, 9);
hook!(sonde_tp_10, 10);
hook!(sonde_tp_11, 11);
hook!(sonde_tp_12, 12);
hook!(sonde_tp_13, 13);
hook!(sonde_tp_14, 14);
hook!(sonde_tp_15, 15);
hook!(sonde_tp_16, 16);
hook!(sonde_tp_17, 17);
hook!(sonde_tp_18, 18);
hook!(sonde_tp_19, 19);
hook!(sonde_tp_20, 20);
hook!(sonde_tp_21, 21);
hook!(sonde_tp_22, 22);
hook!(sonde_tp_23, 23);
hook!(sonde_tp_24, 24);
hook!(sonde_tp_25, 25);
hook!(sonde_tp_26, 26);
hook!(sonde_tp_27, 27);
hook!(sonde_tp_28, 28);
hook!(sonde_tp_29, 29);
hook!(sonde_tp_30, 30);
hook!(sonde_tp_31, 31);
hook!(sonde_tp_32, 32);
hook!(sonde_tp_33, 33);
hook!(sonde_tp_34, 34);
hook!(sonde_tp_35, 35);
hook!(sonde_tp_36, 36);
hook!(sonde_tp_37, 37);
hook!(sonde_tp_38, 38);
hook!(sonde_tp_39, 39);
hook!(sonde_tp_40, 40);
hook!(sonde_tp_41, 41);
hook!(sonde_tp_42, 42);
hook!(sonde_tp_43, 43);
hook!(sonde_tp_44, 44);
hook!(sonde_tp_45, 45);
hook!(sonde_tp_46, 46);
hook!(sonde_tp_47, 47);
hook!(sonde_tp_48, 48);
hook!(sonde_tp_49, 49);
hook!(sonde_tp_50, 50);
hook!(sonde_tp_51, 51);
hook!(sonde_tp_52, 52);
hook!(sonde_tp_53, 53);
hook!(sonde_tp_54, 54);
hook!(sonde_tp_55, 55);
hook!(sonde_tp_56, 56);
hook!(sonde_tp_57, 57);
hook!(sonde_tp_58, 58);
hook!(sonde_tp_59, 59);
hook!(sonde_tp_60, 60);
hook!(sonde_tp_61, 61);
hook!(sonde_tp_62, 62);
hook!(sonde_tp_63, 63);

#[inline(always)]
fn try_tracepoint(ctx: &TracePointContext, slot: u32) -> Result<(), ()> {
    let config = TRACEPOINTS.get(slot).ok_or(())?;
    if config.probe_id == NO_PROBE {
        return Ok(());
    }

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
