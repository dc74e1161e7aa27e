//! `#[repr(C)]` types shared by Sonde's eBPF programs and the agent that
//! configures them and decodes what they emit.
//!
//! Everything here is plain data with a fixed layout: the eBPF side reads it
//! from configuration maps and writes records, the agent does the reverse.
//! Layout changes must be made on both sides at once, which is why the types
//! live in one crate.
//!
//! A record is a [`RecordHeader`] followed by the probe's payload: each field
//! at the offset its [`FieldConfig::dest`] names, integers as 8 bytes
//! (sign- or zero-extended to the declared width), strings NUL-terminated in
//! an area of `max_len + 1` bytes.
#![no_std]

/// Number of probe slots: each attached probe owns one slot in the probe
/// configuration and counter maps, and its records carry the slot number.
pub const MAX_PROBES: u32 = 256;

/// Hook slots of kernel tracepoints; the object holds one copy of the
/// tracepoint program per slot (`sonde_tp_<slot>`).
pub const TRACEPOINT_HOOKS: u32 = 64;
/// Hook slots of raw tracepoints (`sonde_raw_<n>`, slot `TRACEPOINT_HOOKS + n`).
pub const RAW_TRACEPOINT_HOOKS: u32 = 16;
/// Hook slots of kprobes and kretprobes (`sonde_kp_<n>` / `sonde_krp_<n>`,
/// slot `TRACEPOINT_HOOKS + RAW_TRACEPOINT_HOOKS + n`).
pub const KPROBE_HOOKS: u32 = 8;
/// All hook slots.
pub const MAX_HOOKS: u32 = TRACEPOINT_HOOKS + RAW_TRACEPOINT_HOOKS + 2 * KPROBE_HOOKS;

/// Value of a hook slot's probe entry that serves no probe.
pub const NO_PROBE: u32 = u32::MAX;

/// Probes one hook slot can serve: Tracepoints on the same kernel hook share
/// one attachment, and each firing runs each of them.
pub const PROBES_PER_HOOK: usize = 4;

/// The probes a hook slot serves, `NO_PROBE` where unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookProbes {
    pub probes: [u32; PROBES_PER_HOOK],
}

impl HookProbes {
    pub const EMPTY: Self = Self {
        probes: [NO_PROBE; PROBES_PER_HOOK],
    };
}

/// Fields one probe can capture.
pub const MAX_FIELDS: usize = 16;
/// Filters one probe can evaluate.
pub const MAX_FILTERS: usize = 8;
/// Longest string a field keeps, without its NUL.
pub const MAX_STRING: u32 = 256;
/// Mask the eBPF side applies to record lengths and offsets so the verifier
/// can bound every access into the record buffer.
pub const OFFSET_MASK: u32 = 4095;
/// Largest record, header included. A length the mask would change (4096
/// would become 0) must never reach the kernel: plans refuse longer records.
pub const MAX_RECORD: u32 = OFFSET_MASK;
const _: () = assert!(MAX_RECORD & OFFSET_MASK == MAX_RECORD);
/// 8-byte words of a string filter operand: `MAX_STRING` bytes and a NUL.
pub const FILTER_WORDS: usize = (MAX_STRING as usize + 8) / 8;

/// Length of the kernel's task command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Maximum number of entries in the target set (pids or cgroup ids).
pub const MAX_TARGETS: u32 = 16384;

/// Entry states kept for return probes (latency, arguments at entry); the
/// map is LRU, so entries whose return never comes are evicted.
pub const MAX_ENTRIES_IN_FLIGHT: u32 = 16384;

/// Cgroups whose traffic [`NetCounters`] are kept for at once; traffic of
/// further cgroups is counted in `NET_OVERFLOW` until the agent removes the
/// entries of cgroups that are gone.
pub const MAX_NET_CGROUPS: u32 = 16384;

/// Traffic of one cgroup's sockets on one CPU, as the `cgroup_skb`
/// programs see it: packets and their bytes from the network header on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Map names, shared so the agent looks up exactly what the programs define.
pub mod maps {
    /// Ring buffer every program writes records to.
    pub const EVENTS: &str = "EVENTS";
    /// `Array<HookProbes>`: the probe slots each hook slot serves.
    pub const HOOKS: &str = "HOOKS";
    /// `Array<ProbeConfig>` indexed by probe slot.
    pub const PROBES: &str = "PROBES";
    /// `PerCpuArray<ProbeCounters>` indexed by probe slot.
    pub const COUNTERS: &str = "COUNTERS";
    /// `Array<RateWindow>` indexed by probe slot.
    pub const RATES: &str = "RATES";
    /// `HashMap<TargetKey, u8>`: pids or cgroup ids a probe is limited to.
    pub const TARGETS: &str = "TARGETS";
    /// `PerCpuHashMap<u64, NetCounters>`: traffic by socket cgroup id.
    pub const NET_STATS: &str = "NET_STATS";
    /// `PerCpuArray<u64>` of one entry: packets not counted in `NET_STATS`
    /// because it was full.
    pub const NET_OVERFLOW: &str = "NET_OVERFLOW";
    /// Ring buffer of the socket programs ([`crate::sock`]).
    pub const SOCK_EVENTS: &str = "SOCK_EVENTS";
    /// `Array<SockConfig>` of one entry.
    pub const SOCK_CONFIG: &str = "SOCK_CONFIG";
    /// `LruHashMap<u64, SockConn>`: tracked connections by `tgid << 32 | fd`.
    pub const SOCK_CONNS: &str = "SOCK_CONNS";
    /// `PerCpuArray<u64>` indexed by `sock::counter`.
    pub const SOCK_COUNTERS: &str = "SOCK_COUNTERS";
}

/// Program names, or name prefixes for the per-hook copies.
pub mod programs {
    pub const TRACEPOINT_PREFIX: &str = "sonde_tp_";
    pub const RAW_TRACEPOINT_PREFIX: &str = "sonde_raw_";
    pub const KPROBE_PREFIX: &str = "sonde_kp_";
    pub const KRETPROBE_PREFIX: &str = "sonde_krp_";
    /// Uprobes (and USDT probes) find their probe slot in the attach cookie.
    pub const UPROBE: &str = "sonde_uprobe";
    pub const URETPROBE: &str = "sonde_uretprobe";
    /// Reserve-and-submit only; for measuring Sonde's own cost.
    pub const BASELINE: &str = "sonde_baseline";
    /// The same, as a uprobe and as a uretprobe.
    pub const BASELINE_UPROBE: &str = "sonde_baseline_uprobe";
    pub const BASELINE_URETPROBE: &str = "sonde_baseline_uretprobe";
    /// `cgroup_skb` programs counting every socket's traffic by cgroup,
    /// attached to the cgroup v2 root (`sonde.network_stats`).
    pub const NET_INGRESS: &str = "sonde_net_ingress";
    pub const NET_EGRESS: &str = "sonde_net_egress";
    /// Socket tracing: `sonde_sock_<syscall>_enter` / `_exit` on the
    /// `syscalls` tracepoints named in [`SOCK_SYSCALLS`].
    pub const SOCK_PREFIX: &str = "sonde_sock_";
    /// The syscalls the socket programs hook, entry and exit each.
    pub const SOCK_SYSCALLS: &[&str] = &[
        "connect", "accept", "accept4", "close", "read", "write", "recvfrom", "sendto", "readv",
        "writev", "recvmsg", "sendmsg", "recvmmsg", "sendmmsg",
    ];
    /// Returns at once: `sonde-sockets-bench` attaches it where the socket
    /// programs go, to tell the tracepoints' own cost from the programs'.
    pub const SOCK_FLOOR: &str = "sonde_sock_floor";
    /// Uprobe on OpenSSL's `SSL_read`/`SSL_write` and their `_ex` forms
    /// (the function in the attach cookie, a `sock::SSL_*` value).
    pub const SSL_ENTRY: &str = "sonde_ssl_entry";
    pub const SSL_RETURN: &str = "sonde_ssl_return";
    /// Hand-written programs that produce exactly the records Sonde
    /// produces for the benchmark's shapes, specialised, with no
    /// configuration maps: the floor `sonde-bench` compares Sonde with.
    pub mod reference {
        /// `syscalls/sys_enter_getppid`, standard columns only.
        pub const STANDARD: &str = "sonde_ref_standard";
        /// `syscalls/sys_enter_openat`, the filename ([`crate::reference::FILENAME_MAX`]
        /// bytes) kept when it starts with [`crate::reference::OPENAT_PREFIX`].
        pub const OPENAT_PREFIX: &str = "sonde_ref_openat_prefix";
        /// Uprobe on `handle_request(id: u64, size: u32, ..)`: id, size.
        pub const UPROBE: &str = "sonde_ref_uprobe";
        /// Entry and return of `handle_request`: id, result, latency.
        pub const URETPROBE_ENTRY: &str = "sonde_ref_uretprobe_entry";
        pub const URETPROBE: &str = "sonde_ref_uretprobe";
    }
}

/// What the reference programs are specialised for (`sonde-bench` attaches
/// Sonde with the same specs).
pub mod reference {
    /// Probe id the reference programs write in their records (no probe of
    /// the agent has it, so the reader counts them as unattributed).
    pub const PROBE_ID: u32 = super::NO_PROBE;
    /// The openat prefix filter's value.
    pub const OPENAT_PREFIX: &[u8] = b"/dev/zero";
    /// `maxLength` of the openat filename.
    pub const FILENAME_MAX: u32 = 64;
    /// Ring fill level from which the reference programs wake the reader
    /// (the agent's default).
    pub const WAKEUP_WATERMARK: u64 = 2 << 20;
}

/// Whether the submit of a `len`-byte record should wake the ring's reader,
/// given the ring held `avail_after` bytes once the record was reserved.
///
/// The reader is woken when the fill level crosses the watermark, and again
/// at each further quarter of it, rather than on every record above it:
/// a wakeup costs several times the traced event, and a reader woken once
/// drains everything. Concurrent producers may jump over a step together
/// (each sees the other's record); the next step, or the reader's own
/// timer, catches that.
#[inline(always)]
pub const fn crosses_watermark(avail_after: u64, len: u64, watermark: u64) -> bool {
    if watermark == 0 {
        return true;
    }
    if avail_after < watermark {
        return false;
    }
    let step = if watermark >= 4 { watermark / 4 } else { 1 };
    let before = avail_after.saturating_sub(len);
    before < watermark || (before - watermark) / step != (avail_after - watermark) / step
}

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

/// Where a field's value comes from. Offsets are into the program's context:
/// the tracepoint record, the raw tracepoint's argument array, or `pt_regs`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldSource {
    /// `size` bytes at `offset`, an integer.
    Int = 1,
    /// A pointer at `offset` to a NUL-terminated string in user memory.
    UserString = 2,
    /// A pointer at `offset` to a NUL-terminated string in kernel memory.
    KernelString = 3,
    /// A `__data_loc` word at `offset`: the string is in the record itself.
    DataLoc = 4,
    /// A `char[N]` array in the record at `offset`.
    InlineString = 5,
    /// Nanoseconds since the matching entry (return probes).
    Latency = 6,
    /// The register at `offset` as it was at entry (return probes).
    EntryRegister = 7,
    /// `size` bytes of user memory at (register at `offset`) + `displacement`.
    UserMemory = 8,
    /// The constant `displacement`.
    Constant = 9,
    /// The `pt_regs` register at `offset` (uprobes, kprobes and USDT
    /// probes), read from the context directly and cut to `width`.
    Register = 10,
}

/// How one field is captured and where it goes in the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldConfig {
    /// A [`FieldSource`] value; 0 ends the list.
    pub source: u8,
    /// Bytes to read for integers (1, 2, 4 or 8).
    pub size: u8,
    /// Declared width in bytes the value is cut or extended to.
    pub width: u8,
    /// 1 if the declared type is signed.
    pub signed: u8,
    /// Offset in the context (see [`FieldSource`]).
    pub offset: u16,
    /// Longest string kept, without its NUL.
    pub max_len: u16,
    /// Offset of the value in the record.
    pub dest: u16,
    /// Non-zero if a filter compares this field: it is then read before
    /// the filters decide. For a string, the bytes to read then (the
    /// compared bytes and one more, so a longer string differs); a field
    /// whose `filter_read` is short of `max_len + 1` is read again, whole,
    /// for events that pass.
    pub filter_read: u16,
    pub _pad: [u8; 4],
    /// For `UserMemory` and `Constant`.
    pub displacement: i64,
}

impl FieldConfig {
    pub const EMPTY: Self = Self {
        source: 0,
        size: 0,
        width: 0,
        signed: 0,
        offset: 0,
        max_len: 0,
        dest: 0,
        filter_read: 0,
        _pad: [0; 4],
        displacement: 0,
    };
}

/// Filter operators, evaluated on the record being built.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    Eq = 1,
    Ne = 2,
    Lt = 3,
    Le = 4,
    Gt = 5,
    Ge = 6,
    /// `a <= value <= b`.
    Range = 7,
    /// `(value & a) != 0`.
    Mask = 8,
    /// The string starts with the operand.
    Prefix = 9,
}

/// One condition on a value in the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// A [`FilterOp`] value; 0 ends the list.
    pub op: u8,
    /// 1: compare as signed integers; 2: compare strings.
    pub kind: u8,
    pub _pad: [u8; 2],
    /// Offset of the tested value in the record.
    pub offset: u32,
    /// String compare length in bytes (the NUL included for `Eq`/`Ne`).
    pub len: u32,
    pub _pad2: u32,
    /// Operand, or range minimum, or mask.
    pub a: u64,
    /// Range maximum.
    pub b: u64,
    /// String operand, NUL-padded.
    pub words: [u64; FILTER_WORDS],
}

/// `FilterConfig::kind` values.
pub mod filter_kind {
    pub const UNSIGNED: u8 = 0;
    pub const SIGNED: u8 = 1;
    pub const STRING: u8 = 2;
}

impl FilterConfig {
    pub const EMPTY: Self = Self {
        op: 0,
        kind: 0,
        _pad: [0; 2],
        offset: 0,
        len: 0,
        _pad2: 0,
        a: 0,
        b: 0,
        words: [0; FILTER_WORDS],
    };
}

/// Everything a probe does with an event, indexed by probe slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// A [`TargetMode`] value.
    pub target_mode: u32,
    /// Record length: header and payload.
    pub record_len: u32,
    /// Keep one event in this many (0 or 1: all).
    pub sample_one_in: u32,
    /// 1 for the entry half of a return probe: save state, emit nothing.
    pub save_entry: u32,
    /// Events per second per node (0: unlimited).
    pub rate_per_sec: u64,
    /// Ring fill level (bytes) at which a record wakes the reader (see
    /// [`crosses_watermark`]).
    pub wakeup_watermark: u64,
    pub fields: [FieldConfig; MAX_FIELDS],
    pub filters: [FilterConfig; MAX_FILTERS],
}

impl ProbeConfig {
    pub const EMPTY: Self = Self {
        target_mode: TargetMode::All as u32,
        record_len: RECORD_HEADER_LEN,
        sample_one_in: 0,
        save_entry: 0,
        rate_per_sec: 0,
        wakeup_watermark: u64::MAX,
        fields: [FieldConfig::EMPTY; MAX_FIELDS],
        filters: [FilterConfig::EMPTY; MAX_FILTERS],
    };
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

/// A rate limit's current one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub start_ns: u64,
    pub count: u64,
}

/// Key of a return probe's saved entry state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryKey {
    pub probe_id: u32,
    pub tid: u32,
}

/// What a return probe needs from the entry: the time and the argument
/// registers, in argument order (see [`ENTRY_REG_WORDS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    pub ktime_ns: u64,
    pub regs: [u64; ENTRY_REGS],
}

/// Slots of saved registers at entry: the six argument registers, and two
/// slots that stay zero (a power of two, so an index masks into range).
pub const ENTRY_REGS: usize = 8;

/// The `pt_regs` words (8-byte index) saved at entry, slot by slot: the
/// x86-64 argument registers rdi, rsi, rdx, rcx, r8 and r9. An
/// `EntryRegister` field's `offset` is its slot times 8.
pub const ENTRY_REG_WORDS: [usize; 6] = [14, 13, 12, 11, 9, 8];

/// Words in x86-64 `pt_regs` (r15 through ss).
pub const PT_REGS_WORDS: usize = 21;

/// Per-probe, per-CPU counters, summed over CPUs by the agent. Every matched
/// event is counted in exactly one of the outcome counters:
/// `matched == filtered + sampled_out + rate_limited + ringbuf_full + emitted`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Events that reached the probe and matched its target set.
    pub matched: u64,
    /// Events a filter rejected.
    pub filtered: u64,
    /// Events dropped by 1-in-N sampling.
    pub sampled_out: u64,
    /// Events over the per-node rate limit.
    pub rate_limited: u64,
    /// Records lost because the ring buffer had no room.
    pub ringbuf_full: u64,
    /// Records written to the ring buffer.
    pub emitted: u64,
    /// Fields that could not be read and were left empty (not a loss).
    pub read_errors: u64,
    /// Return events with no saved entry (entry before attach, or evicted).
    pub missing_entry: u64,
    /// Sampling sequence (not a count of anything).
    pub sample_seq: u64,
}

/// Record header. `kind` is always [`RECORD_KIND_EVENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
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

pub const RECORD_KIND_EVENT: u32 = 2;
pub const RECORD_HEADER_LEN: u32 = 48;

impl RecordHeader {
    /// The header at the start of `record`, if it is long enough. Reads
    /// native-endian fields one by one: records in the ring are only
    /// 8-byte aligned, and this needs no `unsafe`. Inlined: the decoder
    /// calls it for every record, from another crate.
    #[inline]
    pub fn read(record: &[u8]) -> Option<Self> {
        let bytes = record.get(..RECORD_HEADER_LEN as usize)?;
        let u32_at = |at: usize| {
            let mut word = [0; 4];
            word.copy_from_slice(&bytes[at..at + 4]);
            u32::from_ne_bytes(word)
        };
        let u64_at = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(word)
        };
        let mut comm = [0; COMM_LEN];
        comm.copy_from_slice(&bytes[header_offsets::COMM as usize..][..COMM_LEN]);
        Some(Self {
            kind: u32_at(0),
            probe_id: u32_at(4),
            ktime_ns: u64_at(8),
            pid_tgid: u64_at(header_offsets::TID as usize),
            cgroup_id: u64_at(header_offsets::CGROUP_ID as usize),
            comm,
        })
    }

    /// The header as the bytes the eBPF side writes (tests and benchmarks
    /// build records with it).
    pub fn to_bytes(&self) -> [u8; RECORD_HEADER_LEN as usize] {
        let mut bytes = [0; RECORD_HEADER_LEN as usize];
        bytes[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        bytes[4..8].copy_from_slice(&self.probe_id.to_ne_bytes());
        bytes[8..16].copy_from_slice(&self.ktime_ns.to_ne_bytes());
        bytes[16..24].copy_from_slice(&self.pid_tgid.to_ne_bytes());
        bytes[24..32].copy_from_slice(&self.cgroup_id.to_ne_bytes());
        bytes[32..48].copy_from_slice(&self.comm);
        bytes
    }

    /// The command name as the kernel keeps it: NUL-padded to [`COMM_LEN`].
    pub fn comm_from(name: &[u8]) -> [u8; COMM_LEN] {
        let mut comm = [0; COMM_LEN];
        let len = name.len().min(COMM_LEN - 1);
        comm[..len].copy_from_slice(&name[..len]);
        comm
    }
}

/// Offsets of the standard values in a record, for filters on them.
pub mod header_offsets {
    pub const TID: u32 = 16;
    pub const PID: u32 = 20;
    pub const CGROUP_ID: u32 = 24;
    pub const COMM: u32 = 32;
}

/// Socket tracing for the baseline tables `sonde.http_events` and
/// `sonde.conn_stats`: connections a process opens with `connect` or
/// `accept`, the bytes it moves on them, and (for connections whose first
/// bytes look like a traced protocol) copies of those bytes, on their own
/// ring (`maps::SOCK_EVENTS`).
///
/// A record is a [`SockRecord`] followed by `len` bytes of data. One call
/// (a `read`, `sendto`, `SSL_write`, ...) that moved more than one record
/// holds gives several records with increasing `offset`; bytes past the
/// last copied one (`call_len - offset - len` of the last record, up to
/// [`sock::MAX_CHUNKS`] records per call) are known only by length.
pub mod sock {
    use super::RecordHeader;

    /// `RecordHeader::kind` of a connection opened (`connect` or `accept`).
    pub const KIND_OPEN: u32 = 10;
    /// Bytes a call moved, with a copy of (some of) them.
    pub const KIND_DATA: u32 = 11;
    /// A connection closed; `bytes_sent`/`bytes_recv` are its totals.
    pub const KIND_CLOSE: u32 = 12;

    /// `SockRecord::direction`: the process wrote (sent) the bytes.
    pub const EGRESS: u8 = 0;
    /// The process read (received) them.
    pub const INGRESS: u8 = 1;

    /// `SockConn::role` / `SockRecord::role`.
    pub const ROLE_CLIENT: u8 = 1;
    pub const ROLE_SERVER: u8 = 2;

    /// `SockConn::protocol`: what the first bytes looked like.
    pub const PROTO_UNKNOWN: u8 = 0;
    pub const PROTO_HTTP: u8 = 1;
    /// A TLS record: the plaintext, if any, comes from the OpenSSL uprobes.
    pub const PROTO_TLS: u8 = 2;
    /// Anything else: bytes are counted, never copied.
    pub const PROTO_OTHER: u8 = 3;
    /// DNS messages over UDP: a client's first datagram is a standard
    /// query (one question, no answers).
    pub const PROTO_DNS: u8 = 4;

    /// Size of a small record (header and data), for short calls.
    pub const SMALL_RECORD: u32 = 512;
    /// Size of a large record.
    pub const LARGE_RECORD: u32 = 4096;
    /// Header length.
    pub const HEADER_LEN: u32 = 96;
    /// Data a small record holds.
    pub const SMALL_DATA: u32 = SMALL_RECORD - HEADER_LEN;
    /// Data a large record holds.
    pub const LARGE_DATA: u32 = LARGE_RECORD - HEADER_LEN;
    /// Records one call may produce (default; `SockConfig::max_chunks`).
    pub const MAX_CHUNKS: u32 = 4;

    /// Connections tracked at once, node-wide (LRU: the least recently
    /// used is forgotten first, and counted).
    pub const MAX_CONNS: u32 = 65536;

    /// Header of every record on the socket ring.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SockRecord {
        /// `kind` is one of `KIND_*`; `probe_id` is 0.
        pub header: RecordHeader,
        /// The connection, unique on the node while the agent runs (the
        /// `CLOCK_MONOTONIC` time it was first seen, made unique per CPU).
        pub conn_id: u64,
        /// Totals of the stream this record belongs to, after this call:
        /// the socket's bytes, or the TLS plaintext when `tls` is 1. A
        /// reader that saw less than `bytes_* - call_len` before the call
        /// knows how many bytes it missed.
        pub bytes_sent: u64,
        pub bytes_recv: u64,
        pub fd: u32,
        /// Bytes the call moved. In an open record: the descriptor of the
        /// listening socket a connection was accepted from, or `u32::MAX`.
        pub call_len: u32,
        /// Offset in the call of the bytes that follow.
        pub offset: u32,
        /// Bytes that follow the header.
        pub len: u32,
        /// `EGRESS` or `INGRESS`.
        pub direction: u8,
        /// `ROLE_*`.
        pub role: u8,
        /// 1 when the bytes are the plaintext of a TLS call.
        pub tls: u8,
        /// `PROTO_*` of the connection as seen so far.
        pub protocol: u8,
        /// 1 on the last record of a call: bytes of the call past this
        /// record's are not copied (the reader can count them at once).
        pub last: u8,
        pub _pad: [u8; 3],
    }

    /// What the programs know about one tracked connection, keyed by
    /// `tgid << 32 | fd`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockConn {
        pub id: u64,
        pub bytes_sent: u64,
        pub bytes_recv: u64,
        /// Plaintext moved through TLS calls.
        pub tls_sent: u64,
        pub tls_recv: u64,
        pub role: u8,
        /// `PROTO_*` of the plain bytes.
        pub protocol: u8,
        /// `PROTO_*` of the TLS plaintext.
        pub tls_protocol: u8,
        pub _pad: [u8; 5],
    }

    /// Configuration written by the agent (entry 0 of `maps::SOCK_CONFIG`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockConfig {
        /// The agent's own tgid: its sockets are never traced.
        pub agent_tgid: u32,
        /// Records one call may produce (at most [`MAX_CHUNKS`]); 0: none.
        pub max_chunks: u32,
        /// Ring fill level that wakes the reader.
        pub wakeup_watermark: u64,
    }

    /// Indices of the per-CPU counters in `maps::SOCK_COUNTERS`.
    pub mod counter {
        /// Records the ring could not take.
        pub const RING_FULL: u32 = 0;
        /// Bytes of traced-protocol calls that were not copied: the call
        /// was longer than `max_chunks` records hold, or the ring was full.
        pub const UNCOPIED_BYTES: u32 = 1;
        /// TLS calls whose socket could not be found.
        pub const TLS_NO_SOCKET: u32 = 2;
        /// Connections opened.
        pub const OPENED: u32 = 3;
        pub const COUNT: u32 = 8;
    }

    /// `SslCall::kind`.
    pub const SSL_READ: u64 = 0;
    pub const SSL_WRITE: u64 = 1;
    pub const SSL_READ_EX: u64 = 2;
    pub const SSL_WRITE_EX: u64 = 3;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (for every impl below): the types are `#[repr(C)]`, `Copy`, made
    // of integers only with explicit padding members, so any bit pattern is a
    // valid value.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::ProbeConfig {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::TargetKey {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::HookProbes {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::ProbeCounters {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::RateWindow {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::NetCounters {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::sock::SockConn {}
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::sock::SockConfig {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_are_pinned() {
        // The eBPF verifier rejects reads of uninitialised padding and the
        // decoder relies on these offsets: pin them.
        assert_eq!(size_of::<RecordHeader>() as u32, RECORD_HEADER_LEN);
        assert_eq!(size_of::<sock::SockRecord>() as u32, sock::HEADER_LEN);
        assert_eq!(size_of::<sock::SockConn>(), 48);
        assert_eq!(
            offset_of!(RecordHeader, pid_tgid) as u32,
            header_offsets::TID
        );
        assert_eq!(
            offset_of!(RecordHeader, cgroup_id) as u32,
            header_offsets::CGROUP_ID
        );
        assert_eq!(offset_of!(RecordHeader, comm) as u32, header_offsets::COMM);
        assert_eq!(size_of::<FieldConfig>(), 24);
        assert_eq!(size_of::<FilterConfig>(), 32 + 8 * FILTER_WORDS);
        assert_eq!(size_of::<TargetKey>(), 16);
        assert_eq!(size_of::<EntryKey>(), 8);
        assert_eq!(size_of::<ProbeCounters>(), 72);
        assert_eq!(FILTER_WORDS * 8, MAX_STRING as usize + 8);
    }

    #[test]
    fn wakeups_come_at_the_watermark_and_each_quarter_above_it() {
        let w = 1000;
        // The fill levels, up to `upto`, at which records of `len` bytes wake.
        let wakes = |len: u64, upto: u64| {
            let mut found = [0u64; 8];
            let mut n = 0;
            for avail in (len..=upto).step_by(len as usize) {
                if crosses_watermark(avail, len, w) {
                    found[n] = avail;
                    n += 1;
                }
            }
            (found, n)
        };
        // 50-byte records: at 1000 (the watermark), 1250, 1500, 1750, 2000.
        let (found, n) = wakes(50, 2000);
        assert_eq!(found[..n], [1000, 1250, 1500, 1750, 2000]);
        // 48-byte records cross inside a record.
        let (found, n) = wakes(48, 1600);
        assert_eq!(found[..n], [1008, 1296, 1536]);
        // A record larger than a step wakes once.
        assert!(crosses_watermark(1400, 600, w));
        assert!(!crosses_watermark(999, 999, w));
        // Watermark 0: every record wakes.
        assert!(crosses_watermark(8, 8, 0));
    }

    #[test]
    fn headers_round_trip_through_bytes() {
        let header = RecordHeader {
            kind: RECORD_KIND_EVENT,
            probe_id: 7,
            ktime_ns: 123_456,
            pid_tgid: (42 << 32) | 43,
            cgroup_id: 99,
            comm: RecordHeader::comm_from(b"cat"),
        };
        let bytes = header.to_bytes();
        assert_eq!(RecordHeader::read(&bytes), Some(header));
        assert_eq!(RecordHeader::read(&bytes[..47]), None);
        assert_eq!(&bytes[32..36], b"cat\0");
    }
}
