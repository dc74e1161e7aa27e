//! Sonde's eBPF programs.
//!
//! The programs are generic: which hooks they serve, whom they capture, what
//! they copy and which events they keep is configuration the agent writes
//! into maps, so a new Tracepoint resource never needs a compiler on the node.
//!
//! Every program does the same thing with a firing: find its probe, check
//! the target set, build the record in a per-CPU scratch buffer (header and
//! configured fields), apply the filters, sampling and rate limit, and write
//! the record to the ring buffer. Every outcome is counted per probe and CPU.
//! Work is ordered so that rejected events cost least: without filters,
//! sampling and the rate limit decide before anything is read; with them,
//! only the fields the filters compare are read first (a string only as far
//! as they compare it), and the rest of the record, header included, is
//! written only for events that pass, unless a filter compares a standard
//! column. Helpers are called only for values an event needs: the cgroup id
//! for cgroup targets or a record, the time for a record, a latency or the
//! rate limit. Registers of uprobes and kprobes are read from the context
//! directly, not through a probe-read helper.
//!
//! Records are submitted without waking the reader (`BPF_RB_NO_WAKEUP`): the
//! agent drains on a timer, and a submit wakes it only when it takes the
//! ring across the configured watermark (or a further quarter of it; see
//! `probe_common::crosses_watermark`). Waking per event costs several times
//! the traced syscall itself.
#![no_std]
#![no_main]
#![allow(unsafe_code)]
// Inline assembly for the BPF target: see `register`.
#![feature(asm_experimental_arch)]

use core::ffi::c_void;

mod reference;
mod sockets;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_attach_cookie, bpf_get_current_cgroup_id,
            bpf_get_current_comm as raw_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_kernel,
            bpf_probe_read_kernel_str, bpf_probe_read_user, bpf_probe_read_user_str,
            bpf_skb_cgroup_id,
        },
    },
    macros::{cgroup_skb, map, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        ProbeContext, RawTracePointContext, RetProbeContext, SkBuffContext, TracePointContext,
    },
};
use probe_common::{
    COMM_LEN, ENTRY_REG_WORDS, ENTRY_REGS, EntryKey, EntryState, FILTER_WORDS, FieldSource,
    FilterOp, HookProbes, MAX_ENTRIES_IN_FLIGHT, MAX_FIELDS, MAX_FILTERS, MAX_HOOKS,
    MAX_NET_CGROUPS, MAX_PROBES, MAX_TARGETS, NO_PROBE, NetCounters, OFFSET_MASK, PROBES_PER_HOOK,
    PT_REGS_WORDS, ProbeConfig, ProbeCounters, RECORD_HEADER_LEN, RECORD_KIND_EVENT, RateWindow,
    RecordHeader, TargetKey, TargetMode, crosses_watermark, filter_kind,
};

/// Default ring size; the agent sets the real one at load time.
const DEFAULT_RING_BYTES: u32 = 1 << 22;

/// Offsets into the scratch buffer are masked with `OFFSET_MASK`; the buffer
/// is twice as large, so a masked offset plus any value written stays inside
/// it.
const SCRATCH_LEN: usize = 8192;

#[repr(C)]
pub struct Scratch {
    bytes: [u8; SCRATCH_LEN],
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static HOOKS: Array<HookProbes> = Array::with_max_entries(MAX_HOOKS, 0);

#[map]
static PROBES: Array<ProbeConfig> = Array::with_max_entries(MAX_PROBES, 0);

#[map]
static COUNTERS: PerCpuArray<ProbeCounters> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

#[map]
static RATES: Array<RateWindow> = Array::with_max_entries(MAX_PROBES, 0);

#[map]
static TARGETS: HashMap<TargetKey, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
static ENTRIES: LruHashMap<EntryKey, EntryState> =
    LruHashMap::with_max_entries(MAX_ENTRIES_IN_FLIGHT, 0);

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
static NET_STATS: PerCpuHashMap<u64, NetCounters> =
    PerCpuHashMap::with_max_entries(MAX_NET_CGROUPS, 0);

#[map]
static NET_OVERFLOW: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What a program's context is. The verifier only allows context reads at
/// constant offsets, and which offsets depends on the program type: direct
/// register reads are made only where the context is `pt_regs`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// A tracepoint's record or a raw tracepoint's arguments: read through
    /// the probe-read helper at any offset.
    Record,
    /// `pt_regs` (uprobes, kprobes): registers are read directly.
    Registers,
}

/// Which half of a probe a program is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Half {
    /// A plain probe: capture at this point.
    Single,
    /// Entry of a return probe: remember time and registers.
    Entry,
    /// Return of a return probe: capture with the remembered entry.
    Return,
}

/// Kernel tracepoints, raw tracepoints and kprobes have no attach cookie
/// here, so each hook gets its own copy of the program, which knows its
/// slot; the agent loads a copy only when it uses the slot.
macro_rules! tracepoint_hook {
    ($name:ident, $slot:literal) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_hook(ctx.as_ptr(), $slot, Half::Single, Context::Record);
            0
        }
    };
}

macro_rules! raw_tracepoint_hook {
    ($name:ident, $slot:literal) => {
        #[raw_tracepoint]
        pub fn $name(ctx: RawTracePointContext) -> u32 {
            on_hook(ctx.as_ptr(), $slot, Half::Single, Context::Record);
            0
        }
    };
}

macro_rules! kprobe_hook {
    ($name:ident, $ret:ident, $slot:literal, $ret_slot:literal) => {
        #[aya_ebpf::macros::kprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            // A kprobe slot serves a plain kprobe, or the entry of a kretprobe
            // whose return half sits in the paired slot.
            on_hook(ctx.as_ptr(), $slot, Half::Single, Context::Registers);
            on_hook(ctx.as_ptr(), $ret_slot, Half::Entry, Context::Registers);
            0
        }

        #[aya_ebpf::macros::kretprobe]
        pub fn $ret(ctx: RetProbeContext) -> u32 {
            on_hook(ctx.as_ptr(), $ret_slot, Half::Return, Context::Registers);
            0
        }
    };
}

tracepoint_hook!(sonde_tp_0, 0);
tracepoint_hook!(sonde_tp_1, 1);
tracepoint_hook!(sonde_tp_2, 2);
tracepoint_hook!(sonde_tp_3, 3);
tracepoint_hook!(sonde_tp_4, 4);
tracepoint_hook!(sonde_tp_5, 5);
tracepoint_hook!(sonde_tp_6, 6);
tracepoint_hook!(sonde_tp_7, 7);
tracepoint_hook!(sonde_tp_8, 8);
tracepoint_hook!(sonde_tp_9, 9);
tracepoint_hook!(sonde_tp_10, 10);
tracepoint_hook!(sonde_tp_11, 11);
tracepoint_hook!(sonde_tp_12, 12);
tracepoint_hook!(sonde_tp_13, 13);
tracepoint_hook!(sonde_tp_14, 14);
tracepoint_hook!(sonde_tp_15, 15);
tracepoint_hook!(sonde_tp_16, 16);
tracepoint_hook!(sonde_tp_17, 17);
tracepoint_hook!(sonde_tp_18, 18);
tracepoint_hook!(sonde_tp_19, 19);
tracepoint_hook!(sonde_tp_20, 20);
tracepoint_hook!(sonde_tp_21, 21);
tracepoint_hook!(sonde_tp_22, 22);
tracepoint_hook!(sonde_tp_23, 23);
tracepoint_hook!(sonde_tp_24, 24);
tracepoint_hook!(sonde_tp_25, 25);
tracepoint_hook!(sonde_tp_26, 26);
tracepoint_hook!(sonde_tp_27, 27);
tracepoint_hook!(sonde_tp_28, 28);
tracepoint_hook!(sonde_tp_29, 29);
tracepoint_hook!(sonde_tp_30, 30);
tracepoint_hook!(sonde_tp_31, 31);
tracepoint_hook!(sonde_tp_32, 32);
tracepoint_hook!(sonde_tp_33, 33);
tracepoint_hook!(sonde_tp_34, 34);
tracepoint_hook!(sonde_tp_35, 35);
tracepoint_hook!(sonde_tp_36, 36);
tracepoint_hook!(sonde_tp_37, 37);
tracepoint_hook!(sonde_tp_38, 38);
tracepoint_hook!(sonde_tp_39, 39);
tracepoint_hook!(sonde_tp_40, 40);
tracepoint_hook!(sonde_tp_41, 41);
tracepoint_hook!(sonde_tp_42, 42);
tracepoint_hook!(sonde_tp_43, 43);
tracepoint_hook!(sonde_tp_44, 44);
tracepoint_hook!(sonde_tp_45, 45);
tracepoint_hook!(sonde_tp_46, 46);
tracepoint_hook!(sonde_tp_47, 47);
tracepoint_hook!(sonde_tp_48, 48);
tracepoint_hook!(sonde_tp_49, 49);
tracepoint_hook!(sonde_tp_50, 50);
tracepoint_hook!(sonde_tp_51, 51);
tracepoint_hook!(sonde_tp_52, 52);
tracepoint_hook!(sonde_tp_53, 53);
tracepoint_hook!(sonde_tp_54, 54);
tracepoint_hook!(sonde_tp_55, 55);
tracepoint_hook!(sonde_tp_56, 56);
tracepoint_hook!(sonde_tp_57, 57);
tracepoint_hook!(sonde_tp_58, 58);
tracepoint_hook!(sonde_tp_59, 59);
tracepoint_hook!(sonde_tp_60, 60);
tracepoint_hook!(sonde_tp_61, 61);
tracepoint_hook!(sonde_tp_62, 62);
tracepoint_hook!(sonde_tp_63, 63);

raw_tracepoint_hook!(sonde_raw_0, 64);
raw_tracepoint_hook!(sonde_raw_1, 65);
raw_tracepoint_hook!(sonde_raw_2, 66);
raw_tracepoint_hook!(sonde_raw_3, 67);
raw_tracepoint_hook!(sonde_raw_4, 68);
raw_tracepoint_hook!(sonde_raw_5, 69);
raw_tracepoint_hook!(sonde_raw_6, 70);
raw_tracepoint_hook!(sonde_raw_7, 71);
raw_tracepoint_hook!(sonde_raw_8, 72);
raw_tracepoint_hook!(sonde_raw_9, 73);
raw_tracepoint_hook!(sonde_raw_10, 74);
raw_tracepoint_hook!(sonde_raw_11, 75);
raw_tracepoint_hook!(sonde_raw_12, 76);
raw_tracepoint_hook!(sonde_raw_13, 77);
raw_tracepoint_hook!(sonde_raw_14, 78);
raw_tracepoint_hook!(sonde_raw_15, 79);

kprobe_hook!(sonde_kp_0, sonde_krp_0, 80, 88);
kprobe_hook!(sonde_kp_1, sonde_krp_1, 81, 89);
kprobe_hook!(sonde_kp_2, sonde_krp_2, 82, 90);
kprobe_hook!(sonde_kp_3, sonde_krp_3, 83, 91);
kprobe_hook!(sonde_kp_4, sonde_krp_4, 84, 92);
kprobe_hook!(sonde_kp_5, sonde_krp_5, 85, 93);
kprobe_hook!(sonde_kp_6, sonde_krp_6, 86, 94);
kprobe_hook!(sonde_kp_7, sonde_krp_7, 87, 95);

/// The least a capturing program can do: reserve a header-sized record,
/// stamp it and submit it without a wakeup. `sonde-bench` attaches it next
/// to the real programs to show what Sonde's own work costs on top; nothing
/// else uses it, and the agent drops its records as unattributed.
#[tracepoint]
pub fn sonde_baseline(_ctx: TracePointContext) -> u32 {
    if let Some(mut entry) = EVENTS.reserve::<[u64; RECORD_HEADER_LEN as usize / 8]>(0) {
        let record = entry.as_mut_ptr();
        // SAFETY: `record` is a reserved slot of exactly this size.
        unsafe {
            (*record) = [0; RECORD_HEADER_LEN as usize / 8];
            (*record)[1] = bpf_ktime_get_ns();
        }
        entry.submit(u64::from(BPF_RB_NO_WAKEUP));
    }
    0
}

/// Every packet a socket receives, counted for the socket's cgroup. Never
/// drops: returns 1 (allow).
#[cgroup_skb(ingress)]
pub fn sonde_net_ingress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx, true);
    1
}

/// Every packet a socket sends, counted for the socket's cgroup.
#[cgroup_skb(egress)]
pub fn sonde_net_egress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx, false);
    1
}

#[inline(always)]
fn count_packet(ctx: &SkBuffContext, ingress: bool) {
    // SAFETY: the context's socket buffer, as the helper expects.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let bytes = u64::from(ctx.len());
    let counters = match NET_STATS.get_ptr_mut(cgroup) {
        Some(counters) => counters,
        None => {
            // BPF_NOEXIST: another CPU may have added it meanwhile; the
            // lookup below finds either entry.
            let _ = NET_STATS.insert(cgroup, NetCounters::default(), 1);
            match NET_STATS.get_ptr_mut(cgroup) {
                Some(counters) => counters,
                None => {
                    if let Some(overflow) = NET_OVERFLOW.get_ptr_mut(0) {
                        // SAFETY: this CPU's slot; programs do not
                        // preempt each other on one CPU.
                        unsafe { *overflow += 1 };
                    }
                    return;
                }
            }
        }
    };
    // SAFETY: this CPU's copy of the entry.
    unsafe {
        if ingress {
            (*counters).rx_bytes += bytes;
            (*counters).rx_packets += 1;
        } else {
            (*counters).tx_bytes += bytes;
            (*counters).tx_packets += 1;
        }
    }
}

/// Uprobes and USDT probes: the attach cookie is the probe slot.
#[uprobe]
pub fn sonde_uprobe(ctx: ProbeContext) -> u32 {
    let probe_id = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    if let Some(config) = PROBES.get(probe_id) {
        let half = if config.save_entry != 0 {
            Half::Entry
        } else {
            Half::Single
        };
        on_probe(ctx.as_ptr(), probe_id, config, half, Context::Registers);
    }
    0
}

#[uretprobe]
pub fn sonde_uretprobe(ctx: RetProbeContext) -> u32 {
    let probe_id = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    if let Some(config) = PROBES.get(probe_id) {
        on_probe(
            ctx.as_ptr(),
            probe_id,
            config,
            Half::Return,
            Context::Registers,
        );
    }
    0
}

#[inline(always)]
fn on_hook(ctx: *mut c_void, slot: u32, half: Half, context: Context) {
    let Some(hook) = HOOKS.get(slot) else {
        return;
    };
    for i in 0..PROBES_PER_HOOK {
        let probe_id = hook.probes[i];
        if probe_id == NO_PROBE {
            continue;
        }
        if let Some(config) = PROBES.get(probe_id) {
            on_probe(ctx, probe_id, config, half, context);
        }
    }
}

// A subprogram, not inlined: a hook serving several probes calls it once per
// probe, and the verifier checks its body once per calling program type.
#[inline(never)]
fn on_probe(ctx: *mut c_void, probe_id: u32, config: &ProbeConfig, half: Half, context: Context) {
    // The thread's ids are always taken: deferring them too would double
    // the states the verifier walks through the field loops. The cgroup id
    // is taken when targets need it, else with the header (0 until then).
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut cgroup_id = 0;
    if config.target_mode == TargetMode::Cgroups as u32 {
        cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    if !is_target(config, probe_id, pid_tgid, cgroup_id) {
        return;
    }
    if half == Half::Entry {
        save_entry(ctx, probe_id, pid_tgid, context);
        return;
    }
    let Some(counters) = COUNTERS.get_ptr_mut(probe_id) else {
        return;
    };
    // SAFETY: per-CPU slot of a successful lookup; a program runs to the end
    // on its CPU before another one there touches the slot.
    let counters = unsafe { &mut *counters };
    counters.matched += 1;

    // The time of the event, taken when first needed: a latency, the rate
    // limit or the record. 0 until then.
    let mut now = 0;
    let entry = if half == Half::Return {
        let key = EntryKey {
            probe_id,
            tid: pid_tgid as u32,
        };
        // SAFETY: the value is copied out at once; a concurrent update of the
        // same key (same thread) cannot happen while this thread runs here.
        match unsafe { ENTRIES.get(key) } {
            Some(state) => {
                let state = *state;
                let _ = ENTRIES.remove(key);
                now = unsafe { bpf_ktime_get_ns() };
                Some(state)
            }
            None => {
                counters.missing_entry += 1;
                return;
            }
        }
    } else {
        None
    };

    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let base = scratch.cast::<u8>();
    // Without filters, sampling and the rate limit decide on what is known
    // already, before anything is read or written. (`has_filters` rereads
    // the map value each time: a flag kept in a register across the field
    // loop would double the states the verifier walks.)
    let mut header_written = false;
    let mut failed = 0u32;
    if !has_filters(config) {
        if !keep(config, counters, probe_id, &mut now) {
            return;
        }
    } else {
        // A filter on a standard column needs the header first.
        if filters_read_header(config) {
            now = time(now);
            cgroup_id = cgroup(cgroup_id);
            write_header(base, probe_id, now, pid_tgid, cgroup_id);
            write_comm(base);
            header_written = true;
        }
        // The fields the filters compare, strings as far as compared.
        for i in 0..MAX_FIELDS {
            let field = &config.fields[i];
            if field.source == 0 {
                break;
            }
            if field.filter_read != 0 {
                let size = u32::from(field.filter_read);
                if !capture_field(ctx, base, field, size, entry.as_ref(), now, context) {
                    failed |= 1 << i;
                }
            }
        }
        for i in 0..MAX_FILTERS {
            let filter = &config.filters[i];
            if filter.op == 0 {
                break;
            }
            if !passes(base, filter) {
                counters.filtered += 1;
                counters.read_errors += u64::from(failed.count_ones());
                return;
            }
        }
        if !keep(config, counters, probe_id, &mut now) {
            counters.read_errors += u64::from(failed.count_ones());
            return;
        }
    }

    // The other fields, and strings the filters read only in part.
    for i in 0..MAX_FIELDS {
        let field = &config.fields[i];
        if field.source == 0 {
            break;
        }
        let whole = u32::from(field.max_len) + 1;
        if field.filter_read == 0 || u32::from(field.filter_read) < whole {
            if capture_field(ctx, base, field, whole, entry.as_ref(), now, context) {
                failed &= !(1 << i);
            } else {
                failed |= 1 << i;
            }
        }
    }
    counters.read_errors += u64::from(failed.count_ones());
    if !header_written {
        now = time(now);
        write_header(base, probe_id, now, pid_tgid, cgroup(cgroup_id));
        write_comm(base);
    }

    // Plans keep record_len within MAX_RECORD (== OFFSET_MASK), so the mask
    // changes nothing; it is there for the verifier.
    let len = (config.record_len & OFFSET_MASK) as usize;
    if len < RECORD_HEADER_LEN as usize {
        return;
    }
    // SAFETY: `len` is at most OFFSET_MASK, inside the scratch buffer.
    let record = unsafe { core::slice::from_raw_parts(base, len) };
    // Wake the reader when this record takes the ring across its watermark
    // (or a further quarter of it), not on every record above it.
    let avail = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let flags = if crosses_watermark(avail + len as u64, len as u64, config.wakeup_watermark) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    match EVENTS.output::<[u8]>(record, u64::from(flags)) {
        Ok(()) => counters.emitted += 1,
        Err(_) => counters.ringbuf_full += 1,
    }
}

/// `now` if the time is taken already, else the time now.
#[inline(always)]
fn time(now: u64) -> u64 {
    if now != 0 {
        now
    } else {
        unsafe { bpf_ktime_get_ns() }
    }
}

/// `cgroup_id` if taken already, else the current task's.
#[inline(always)]
fn cgroup(cgroup_id: u64) -> u64 {
    if cgroup_id != 0 {
        cgroup_id
    } else {
        unsafe { bpf_get_current_cgroup_id() }
    }
}

/// Sampling, then the rate limit: false (and counted) if the event goes.
/// The rate limit takes the time if `now` has none yet.
#[inline(always)]
fn keep(config: &ProbeConfig, counters: &mut ProbeCounters, probe_id: u32, now: &mut u64) -> bool {
    if config.sample_one_in > 1 {
        counters.sample_seq += 1;
        if !counters
            .sample_seq
            .is_multiple_of(u64::from(config.sample_one_in))
        {
            counters.sampled_out += 1;
            return false;
        }
    }
    if config.rate_per_sec != 0 {
        *now = time(*now);
        if over_rate(probe_id, config.rate_per_sec, *now) {
            counters.rate_limited += 1;
            return false;
        }
    }
    true
}

/// Whether a filter compares a standard column (the header).
#[inline(always)]
fn filters_read_header(config: &ProbeConfig) -> bool {
    for i in 0..MAX_FILTERS {
        let filter = &config.filters[i];
        if filter.op == 0 {
            break;
        }
        if filter.offset < RECORD_HEADER_LEN {
            return true;
        }
    }
    false
}

/// Whether the probe has filters (read from the map value each time).
#[inline(always)]
fn has_filters(config: &ProbeConfig) -> bool {
    // SAFETY: a field of a live map value.
    unsafe { core::ptr::read_volatile(&config.filters[0].op) != 0 }
}

/// Writes the header's known values; the command name is left to
/// [`write_comm`]. Field by field with aligned stores: a header built as a
/// value and written unaligned compiles to byte stores and a byte-loop
/// `memset` of the name.
#[inline(always)]
fn write_header(base: *mut u8, probe_id: u32, now: u64, pid_tgid: u64, cgroup_id: u64) {
    let header = base.cast::<RecordHeader>();
    // SAFETY: `base` is this CPU's scratch buffer (a map value, 8-byte
    // aligned), longer than a header.
    unsafe {
        (*header).kind = RECORD_KIND_EVENT;
        (*header).probe_id = probe_id;
        (*header).ktime_ns = now;
        (*header).pid_tgid = pid_tgid;
        (*header).cgroup_id = cgroup_id;
    }
}

/// Writes the command name into the header, straight from the helper.
#[inline(always)]
fn write_comm(base: *mut u8) {
    // SAFETY: the header's comm lies inside the scratch buffer, 8-byte
    // aligned; the helper writes at most COMM_LEN bytes there.
    unsafe {
        let comm = base.add(probe_common::header_offsets::COMM as usize);
        if raw_get_current_comm(comm.cast(), COMM_LEN as u32) != 0 {
            let words = comm.cast::<[u64; COMM_LEN / 8]>();
            *words = [0; COMM_LEN / 8];
        }
    }
}

#[inline(always)]
fn is_target(config: &ProbeConfig, probe_id: u32, pid_tgid: u64, cgroup_id: u64) -> bool {
    let id = if config.target_mode == TargetMode::Pids as u32 {
        pid_tgid >> 32
    } else if config.target_mode == TargetMode::Cgroups as u32 {
        cgroup_id
    } else {
        return true;
    };
    let key = TargetKey {
        probe_id,
        mode: config.target_mode,
        id,
    };
    TARGETS.get_ptr(key).is_some()
}

#[inline(always)]
fn save_entry(ctx: *mut c_void, probe_id: u32, pid_tgid: u64, context: Context) {
    if context != Context::Registers {
        return;
    }
    let mut state = EntryState {
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        regs: [0; ENTRY_REGS],
    };
    // SAFETY: the context is `pt_regs`; each read is at a constant offset
    // inside it, as `register` makes it.
    unsafe {
        state.regs[0] = register(ctx, ENTRY_REG_WORDS[0]);
        state.regs[1] = register(ctx, ENTRY_REG_WORDS[1]);
        state.regs[2] = register(ctx, ENTRY_REG_WORDS[2]);
        state.regs[3] = register(ctx, ENTRY_REG_WORDS[3]);
        state.regs[4] = register(ctx, ENTRY_REG_WORDS[4]);
        state.regs[5] = register(ctx, ENTRY_REG_WORDS[5]);
    }
    let key = EntryKey {
        probe_id,
        tid: pid_tgid as u32,
    };
    let _ = ENTRIES.insert(key, state, 0);
}

/// Reads `pt_regs` word `word` (an 8-byte index) from a uprobe's or
/// kprobe's context. The verifier allows a context read only at a constant
/// offset from the context pointer itself, and the compiler, left to
/// itself, merges such reads into one at a computed address: each arm is
/// therefore one load instruction written out.
#[inline(always)]
unsafe fn register(ctx: *mut c_void, word: usize) -> u64 {
    macro_rules! arms {
        ($($w:literal @ $offset:literal)*) => {
            match word {
                $($w => {
                    let value: u64;
                    // SAFETY: `pt_regs` has PT_REGS_WORDS words; $w is
                    // below, and $offset is 8 × $w.
                    unsafe {
                        core::arch::asm!(
                            concat!("{value} = *(u64 *)({regs} + ", stringify!($offset), ")"),
                            value = out(reg) value,
                            regs = in(reg) ctx,
                            options(readonly, nostack, preserves_flags),
                        );
                    }
                    value
                })*
                _ => 0,
            }
        };
    }
    const _: () = assert!(PT_REGS_WORDS == 21);
    arms!(
        0 @ 0 1 @ 8 2 @ 16 3 @ 24 4 @ 32 5 @ 40 6 @ 48 7 @ 56 8 @ 64 9 @ 72 10 @ 80
        11 @ 88 12 @ 96 13 @ 104 14 @ 112 15 @ 120 16 @ 128 17 @ 136 18 @ 144 19 @ 152
        20 @ 160
    )
}

/// Reads an 8-byte word of the context at `offset`: a register directly
/// from `pt_regs`, otherwise through the probe-read helper.
#[inline(always)]
unsafe fn context_word(ctx: *mut c_void, offset: usize, context: Context) -> (u64, bool) {
    if context == Context::Registers {
        if offset.is_multiple_of(8) && offset / 8 < PT_REGS_WORDS {
            // SAFETY: as `register` requires.
            return (unsafe { register(ctx, offset / 8) }, true);
        }
        return (0, false);
    }
    // SAFETY: the helper validates the address.
    unsafe { read_kernel_int(ctx.cast::<u8>().add(offset), 8) }
}

/// Writes one field into the record; false if it could not be read (the
/// field is then 0 or the empty string). Strings are read up to `size`
/// bytes, their NUL included (at most the field's `max_len + 1`).
#[inline(always)]
fn capture_field(
    ctx: *mut c_void,
    base: *mut u8,
    field: &probe_common::FieldConfig,
    size: u32,
    entry: Option<&EntryState>,
    now: u64,
    context: Context,
) -> bool {
    let dest = u32::from(field.dest) & OFFSET_MASK;
    let source = field.source;
    let offset = usize::from(field.offset);
    let size = (size.min(u32::from(field.max_len) + 1) - 1) & 0x1ff;
    let size = size + 1;
    // SAFETY (whole body): `dest` is masked into the scratch buffer, which
    // has room past OFFSET_MASK for the widest value; context reads go
    // through the probe-read helpers, which fail cleanly on bad addresses,
    // or are register reads at constant offsets of `pt_regs`.
    unsafe {
        let dst = base.add(dest as usize);
        if source == FieldSource::Register as u8 {
            let (value, ok) = context_word(ctx, offset, context);
            write_u64(base, dest, normalize(value, field.width, field.signed));
            ok
        } else if source == FieldSource::Int as u8 {
            let (value, ok) = read_kernel_int(ctx.cast::<u8>().add(offset), field.size);
            write_u64(base, dest, normalize(value, field.width, field.signed));
            ok
        } else if source == FieldSource::UserString as u8
            || source == FieldSource::KernelString as u8
        {
            let (pointer, ok) = context_word(ctx, offset, context);
            let read = if !ok {
                -1
            } else if source == FieldSource::UserString as u8 {
                bpf_probe_read_user_str(dst.cast(), size, pointer as *const c_void)
            } else {
                bpf_probe_read_kernel_str(dst.cast(), size, pointer as *const c_void)
            };
            string_result(dst, read)
        } else if source == FieldSource::DataLoc as u8 {
            let (loc, ok) = read_kernel_int(ctx.cast::<u8>().add(offset), 4);
            let at = (loc & 0xffff) as usize;
            let read = if ok {
                bpf_probe_read_kernel_str(dst.cast(), size, ctx.cast::<u8>().add(at).cast())
            } else {
                -1
            };
            string_result(dst, read)
        } else if source == FieldSource::InlineString as u8 {
            let read =
                bpf_probe_read_kernel_str(dst.cast(), size, ctx.cast::<u8>().add(offset).cast());
            string_result(dst, read)
        } else if source == FieldSource::Latency as u8 {
            let value = entry.map_or(0, |e| now.saturating_sub(e.ktime_ns));
            write_u64(base, dest, value);
            entry.is_some()
        } else if source == FieldSource::EntryRegister as u8 {
            let index = (offset / 8) & (ENTRY_REGS - 1);
            let value = entry.map_or(0, |e| e.regs[index]);
            write_u64(base, dest, normalize(value, field.width, field.signed));
            entry.is_some()
        } else if source == FieldSource::UserMemory as u8 {
            let (register, ok) = context_word(ctx, offset, context);
            let address = register.wrapping_add(field.displacement as u64);
            let mut value = 0u64;
            let size = u32::from(field.size & 0xf).min(8);
            let read = if ok {
                bpf_probe_read_user((&raw mut value).cast(), size, address as *const c_void)
            } else {
                -1
            };
            write_u64(base, dest, normalize(value, field.width, field.signed));
            read == 0
        } else if source == FieldSource::Constant as u8 {
            write_u64(
                base,
                dest,
                normalize(field.displacement as u64, field.width, field.signed),
            );
            true
        } else {
            false
        }
    }
}

/// Reads a little-endian integer of `size` bytes (1, 2, 4 or 8).
#[inline(always)]
unsafe fn read_kernel_int(src: *const u8, size: u8) -> (u64, bool) {
    let mut value = 0u64;
    let size = match size {
        1 => 1,
        2 => 2,
        4 => 4,
        _ => 8,
    };
    // SAFETY: the helper validates `src`; `value` has room for 8 bytes.
    let read = unsafe { bpf_probe_read_kernel((&raw mut value).cast(), size, src.cast()) };
    (value, read == 0)
}

/// Ends a string read: an empty string when it failed.
#[inline(always)]
unsafe fn string_result(dst: *mut u8, read: i64) -> bool {
    if read < 0 {
        // SAFETY: `dst` is inside the scratch buffer.
        unsafe { *dst = 0 };
        false
    } else {
        true
    }
}

/// Cuts or extends a value to its declared width.
#[inline(always)]
fn normalize(value: u64, width: u8, signed: u8) -> u64 {
    match (width, signed != 0) {
        (1, false) => value as u8 as u64,
        (1, true) => value as u8 as i8 as i64 as u64,
        (2, false) => value as u16 as u64,
        (2, true) => value as u16 as i16 as i64 as u64,
        (4, false) => value as u32 as u64,
        (4, true) => value as u32 as i32 as i64 as u64,
        _ => value,
    }
}

#[inline(always)]
fn passes(base: *const u8, filter: &probe_common::FilterConfig) -> bool {
    let at = filter.offset & OFFSET_MASK;
    if filter.kind == filter_kind::STRING {
        let mut equal = true;
        for i in 0..FILTER_WORDS {
            let done = (i * 8) as u32;
            if done >= filter.len {
                break;
            }
            let left = filter.len - done;
            let mask = if left >= 8 {
                u64::MAX
            } else {
                (1u64 << (left * 8)) - 1
            };
            // SAFETY: `at` is masked into the scratch buffer, which extends
            // past it by more than FILTER_WORDS words.
            let word = unsafe { read_u64(base, at + done) };
            if (word ^ filter.words[i]) & mask != 0 {
                equal = false;
                break;
            }
        }
        return if filter.op == FilterOp::Ne as u8 {
            !equal
        } else {
            equal
        };
    }
    // SAFETY: as above. A 4-byte value (the header's tid or pid) is only
    // 4-byte aligned.
    let value = unsafe {
        match filter.len {
            4 => read_u32(base, at),
            _ => read_u64(base, at),
        }
    };
    let signed = filter.kind == filter_kind::SIGNED;
    let less = |x: u64, y: u64| {
        if signed {
            (x as i64) < (y as i64)
        } else {
            x < y
        }
    };
    let (a, b) = (filter.a, filter.b);
    match filter.op {
        op if op == FilterOp::Eq as u8 => value == a,
        op if op == FilterOp::Ne as u8 => value != a,
        op if op == FilterOp::Lt as u8 => less(value, a),
        op if op == FilterOp::Le as u8 => !less(a, value),
        op if op == FilterOp::Gt as u8 => less(a, value),
        op if op == FilterOp::Ge as u8 => !less(value, a),
        op if op == FilterOp::Range as u8 => !less(value, a) && !less(b, value),
        op if op == FilterOp::Mask as u8 => value & a != 0,
        _ => false,
    }
}

/// Counts the event in the probe's current one-second window; true if the
/// window is already full.
#[inline(always)]
fn over_rate(probe_id: u32, limit: u64, now: u64) -> bool {
    let Some(window) = RATES.get_ptr_mut(probe_id) else {
        return false;
    };
    // SAFETY: the pointer is a live map value. Windows are shared by CPUs
    // and the BPF target has no fetch-and-add in core, so two CPUs in the
    // same window can both pass the last slot: the limit may be exceeded by
    // up to the number of CPUs per window. Every event is still counted once,
    // as passed or as rate-limited.
    unsafe {
        if now.wrapping_sub((*window).start_ns) >= 1_000_000_000 {
            (*window).start_ns = now;
            (*window).count = 0;
        }
        (*window).count += 1;
        (*window).count > limit
    }
}

// Plans put every integer column, string area and so every filter word at
// a multiple of 8 in the record (header values at their natural
// alignment), and the scratch buffer is a map value, 8-byte aligned: the
// accessors below clear the low bits, which changes no valid offset, so
// the compiler may use one aligned load or store (an unaligned one on this
// target is eight byte accesses).

#[inline(always)]
unsafe fn write_u64(base: *mut u8, at: u32, value: u64) {
    // SAFETY: callers pass offsets inside the scratch buffer.
    unsafe { *base.add((at & !7) as usize).cast::<u64>() = value }
}

#[inline(always)]
unsafe fn read_u64(base: *const u8, at: u32) -> u64 {
    // SAFETY: callers pass offsets inside the scratch buffer.
    unsafe { *base.add((at & !7) as usize).cast::<u64>() }
}

#[inline(always)]
unsafe fn read_u32(base: *const u8, at: u32) -> u64 {
    // SAFETY: callers pass offsets inside the scratch buffer.
    unsafe { u64::from(*base.add((at & !3) as usize).cast::<u32>()) }
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
