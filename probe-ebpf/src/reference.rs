//! Hand-written reference programs for `sonde-bench`.
//!
//! Each one produces exactly the record Sonde produces for one of the
//! benchmark's Tracepoint specs (same header, same fields at the same
//! offsets), written as one careful, specialised program would be: no
//! configuration maps, constants where Sonde reads configuration, the record
//! built in place in the ring, the wakeup policy Sonde uses, and every
//! record the ring cannot take counted. Only `sonde-bench` attaches them;
//! the agent never loads them, and their records carry
//! [`reference::PROBE_ID`], which no probe has.
//!
//! The specs they mirror are in `sonde-bench`:
//! - `sonde_ref_standard`: `syscalls/sys_enter_getppid`, no fields;
//! - `sonde_ref_openat_prefix`: `syscalls/sys_enter_openat`, `filename`
//!   (string, `maxLength` [`reference::FILENAME_MAX`]), kept only when it
//!   starts with [`reference::OPENAT_PREFIX`];
//! - `sonde_ref_uprobe`: uprobe on `handle_request`, `id` (arg0, u64) and
//!   `size` (arg1, u32);
//! - `sonde_ref_uretprobe_entry` / `sonde_ref_uretprobe`: uretprobe on
//!   `handle_request`, `id` (arg0 at entry), `result` (i64) and `latency`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns,
            bpf_probe_read_user_str,
        },
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use probe_common::{
    COMM_LEN, MAX_ENTRIES_IN_FLIGHT, RECORD_HEADER_LEN, RECORD_KIND_EVENT, RecordHeader,
    crosses_watermark, reference,
};

use crate::EVENTS;

/// Records the ring could not take, per CPU (slot 0).
#[map]
static REF_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Entry time and first argument of `handle_request`, by thread id.
#[map]
static REF_ENTRIES: LruHashMap<u32, RefEntry> =
    LruHashMap::with_max_entries(MAX_ENTRIES_IN_FLIGHT, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct RefEntry {
    ktime_ns: u64,
    id: u64,
}

const HEADER: usize = RECORD_HEADER_LEN as usize;
/// `sys_enter_openat`: the filename pointer's offset in the context.
const OPENAT_FILENAME: usize = 24;
const PREFIX_LEN: usize = reference::OPENAT_PREFIX.len();
/// The filename area: `maxLength` + 1, rounded up to 8, as Sonde lays it out.
const FILENAME_AREA: usize = (reference::FILENAME_MAX as usize + 1).next_multiple_of(8);

/// Writes the standard columns at `record`.
#[inline(always)]
unsafe fn header(record: *mut u8, pid_tgid: u64, now: u64) {
    let header = record.cast::<RecordHeader>();
    // SAFETY: `record` is a reserved ring slot at least a header long, 8-byte
    // aligned.
    unsafe {
        (*header).kind = RECORD_KIND_EVENT;
        (*header).probe_id = reference::PROBE_ID;
        (*header).ktime_ns = now;
        (*header).pid_tgid = pid_tgid;
        (*header).cgroup_id = bpf_get_current_cgroup_id();
        if bpf_get_current_comm((&raw mut (*header).comm).cast(), COMM_LEN as u32) != 0 {
            (*header).comm = [0; COMM_LEN];
        }
    }
}

/// The submit flags for a record of `len` bytes just reserved.
#[inline(always)]
fn wake_flags(len: usize) -> u64 {
    let avail = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if crosses_watermark(avail, len as u64, reference::WAKEUP_WATERMARK) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

#[inline(always)]
fn lost() {
    if let Some(count) = REF_LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs on a CPU do not interleave.
        unsafe { *count += 1 };
    }
}

/// Reserve and submit a header-sized record: the least a capturing uprobe
/// does (the uprobe twin of `sonde_baseline`).
#[uprobe]
pub fn sonde_baseline_uprobe(_ctx: ProbeContext) -> u32 {
    baseline();
    0
}

#[uretprobe]
pub fn sonde_baseline_uretprobe(_ctx: RetProbeContext) -> u32 {
    baseline();
    0
}

#[inline(always)]
fn baseline() {
    if let Some(mut entry) = EVENTS.reserve::<[u64; HEADER / 8]>(0) {
        // SAFETY: a reserved slot of exactly this size.
        unsafe {
            let record = entry.as_mut_ptr();
            (*record) = [0; HEADER / 8];
            (*record)[1] = bpf_ktime_get_ns();
        }
        entry.submit(u64::from(BPF_RB_NO_WAKEUP));
    }
}

/// Shape (a): the standard columns only.
#[tracepoint]
pub fn sonde_ref_standard(_ctx: TracePointContext) -> u32 {
    let Some(mut entry) = EVENTS.reserve::<[u8; HEADER]>(0) else {
        lost();
        return 0;
    };
    // SAFETY: a reserved slot of exactly a header.
    unsafe {
        header(
            entry.as_mut_ptr().cast(),
            bpf_get_current_pid_tgid(),
            bpf_ktime_get_ns(),
        );
    }
    entry.submit(wake_flags(HEADER));
    0
}

/// Shape (b): the filename, kept only with the prefix. The prefix is
/// checked on a short read first, so rejected calls never touch the ring.
#[tracepoint]
pub fn sonde_ref_openat_prefix(ctx: TracePointContext) -> u32 {
    // SAFETY: the tracepoint's context holds the pointer at this offset.
    let Ok(filename) = (unsafe { ctx.read_at::<u64>(OPENAT_FILENAME) }) else {
        return 0;
    };
    let mut start = [0u8; PREFIX_LEN + 1];
    // SAFETY: reads at most `start.len()` bytes of user memory into `start`.
    let read = unsafe {
        bpf_probe_read_user_str(
            start.as_mut_ptr().cast(),
            start.len() as u32,
            filename as *const c_void,
        )
    };
    if read <= PREFIX_LEN as i64 || start[..PREFIX_LEN] != *reference::OPENAT_PREFIX {
        return 0;
    }
    const LEN: usize = HEADER + FILENAME_AREA;
    let Some(mut entry) = EVENTS.reserve::<[u8; LEN]>(0) else {
        lost();
        return 0;
    };
    let record = entry.as_mut_ptr().cast::<u8>();
    // SAFETY: a reserved slot of LEN bytes; the string goes after the header
    // and its read is bounded by the area.
    unsafe {
        header(record, bpf_get_current_pid_tgid(), bpf_ktime_get_ns());
        let name = record.add(HEADER);
        if bpf_probe_read_user_str(
            name.cast(),
            reference::FILENAME_MAX + 1,
            filename as *const c_void,
        ) < 0
        {
            *name = 0;
        }
    }
    entry.submit(wake_flags(LEN));
    0
}

/// Shape (c): `handle_request`'s id and size.
#[uprobe]
pub fn sonde_ref_uprobe(ctx: ProbeContext) -> u32 {
    const LEN: usize = HEADER + 16;
    let Some(mut entry) = EVENTS.reserve::<[u8; LEN]>(0) else {
        lost();
        return 0;
    };
    let record = entry.as_mut_ptr().cast::<u8>();
    // SAFETY: a reserved slot of LEN bytes; the registers are the context.
    unsafe {
        header(record, bpf_get_current_pid_tgid(), bpf_ktime_get_ns());
        let regs = ctx.regs;
        *record.add(HEADER).cast::<u64>() = (*regs).rdi;
        *record.add(HEADER + 8).cast::<u64>() = u64::from((*regs).rsi as u32);
    }
    entry.submit(wake_flags(LEN));
    0
}

/// Shape (d), entry half: remember the time and the id.
#[uprobe]
pub fn sonde_ref_uretprobe_entry(ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let state = RefEntry {
        // SAFETY: helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: the registers are the context.
        id: unsafe { (*ctx.regs).rdi },
    };
    let _ = REF_ENTRIES.insert(tid, state, 0);
    0
}

/// Shape (d), return half: id, result and latency.
#[uretprobe]
pub fn sonde_ref_uretprobe(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: copied out at once; only this thread writes its key.
    let Some(state) = (unsafe { REF_ENTRIES.get(tid) }).copied() else {
        return 0;
    };
    let _ = REF_ENTRIES.remove(tid);
    const LEN: usize = HEADER + 24;
    let Some(mut entry) = EVENTS.reserve::<[u8; LEN]>(0) else {
        lost();
        return 0;
    };
    let record = entry.as_mut_ptr().cast::<u8>();
    // SAFETY: a reserved slot of LEN bytes; the registers are the context.
    unsafe {
        let now = bpf_ktime_get_ns();
        header(record, pid_tgid, now);
        *record.add(HEADER).cast::<u64>() = state.id;
        *record.add(HEADER + 8).cast::<u64>() = (*ctx.regs).rax;
        *record.add(HEADER + 16).cast::<u64>() = now.saturating_sub(state.ktime_ns);
    }
    entry.submit(wake_flags(LEN));
    0
}
