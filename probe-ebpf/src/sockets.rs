//! Socket tracing for the baseline tables `sonde.http_events` and
//! `sonde.conn_stats` (layout in `probe_common::sock`).
//!
//! Connections are tracked from the `connect` or `accept` that made them
//! until their `close`, keyed by `tgid << 32 | fd`. Every call that moves
//! bytes on a tracked connection adds to its totals; the first bytes decide
//! its protocol, and only connections whose first bytes look like HTTP/1.x
//! have their bytes copied to the ring. Calls on file descriptors that are
//! not tracked cost one hash lookup at entry.
//!
//! OpenSSL's `SSL_read`/`SSL_write` (and `_ex`) uprobes give the plaintext
//! of TLS connections. The socket is found from the syscall the TLS call
//! makes on the same thread (remembered per `SSL*` for calls served from
//! OpenSSL's buffer), so the plaintext is attributed to the connection the
//! socket programs track, and marked `tls`.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_comm,
            bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
        },
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use probe_common::{
    COMM_LEN, MAX_ENTRIES_IN_FLIGHT, crosses_watermark,
    sock::{
        EGRESS, HEADER_LEN, INGRESS, KIND_CLOSE, KIND_DATA, KIND_OPEN, LARGE_DATA, LARGE_RECORD,
        MAX_CHUNKS, MAX_CONNS, PROTO_DNS, PROTO_HTTP, PROTO_OTHER, PROTO_TLS, PROTO_UNKNOWN,
        ROLE_CLIENT, ROLE_SERVER, SMALL_DATA, SMALL_RECORD, SSL_READ, SSL_READ_EX, SSL_WRITE,
        SSL_WRITE_EX, SockConfig, SockConn, SockRecord, counter,
    },
};

/// Default ring size; the agent sets the real one at load time.
const DEFAULT_RING_BYTES: u32 = 1 << 23;

#[map]
static SOCK_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static SOCK_CONFIG: Array<SockConfig> = Array::with_max_entries(1, 0);

#[map]
static SOCK_CONNS: LruHashMap<u64, SockConn> = LruHashMap::with_max_entries(MAX_CONNS, 0);

#[map]
static SOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The socket call a thread is in, from entry to exit.
#[map]
static SOCK_CALLS: LruHashMap<u32, SockCall> =
    LruHashMap::with_max_entries(MAX_ENTRIES_IN_FLIGHT, 0);

/// The TLS call a thread is in, from entry to return.
#[map]
static SSL_CALLS: LruHashMap<u32, SslCall> = LruHashMap::with_max_entries(MAX_ENTRIES_IN_FLIGHT, 0);

/// The socket of each `SSL*` seen, by `[tgid, SSL*]`.
#[map]
static SSL_FDS: LruHashMap<[u64; 2], u32> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// `SockCall::kind`.
const CALL_CONNECT: u32 = 1;
const CALL_ACCEPT: u32 = 2;
/// A plain buffer (`read`, `write`, `recvfrom`, `sendto`).
const CALL_BUFFER: u32 = 3;
/// An `iovec` array (`readv`, `writev`).
const CALL_IOVEC: u32 = 4;
/// A `msghdr` (`recvmsg`, `sendmsg`).
const CALL_MSGHDR: u32 = 5;
/// An `mmsghdr` array (`recvmmsg`, `sendmmsg`).
const CALL_MMSG: u32 = 6;
/// Messages of one `sendmmsg`/`recvmmsg` looked at (a resolver sends the
/// A and AAAA queries together).
const MMSG_MAX: u64 = 2;
/// `sizeof(struct mmsghdr)` and the offset of its `msg_len` on 64-bit.
const MMSGHDR_SIZE: u64 = 64;
const MMSG_LEN: u64 = 56;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockCall {
    /// The buffer, `iovec` array or `msghdr`; for `accept`, the address.
    ptr: u64,
    fd: u32,
    kind: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    ssl: u64,
    buf: u64,
    /// `_ex` forms: where the byte count is written.
    size_ptr: u64,
    /// A `probe_common::sock::SSL_*` value.
    kind: u64,
    /// The socket a syscall during the call used; `u32::MAX`: none yet.
    fd: u32,
    _pad: u32,
}

/// Offsets in a `syscalls/sys_enter_*` context: the arguments, 8 bytes
/// each, after the common fields and the syscall number.
const ARG0: usize = 16;
const ARG1: usize = 24;
/// `syscalls/sys_exit_*`: the return value.
const RET: usize = 16;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;
const SOCKADDR_IN: u32 = 16;
const NO_LISTENER: u32 = u32::MAX;
const SOCKADDR_IN6: u32 = 28;
/// `msghdr::msg_iov` on 64-bit.
const MSG_IOV: u64 = 16;

/// A word of the context, read directly (the verifier checks context
/// reads against the tracepoint's size; no helper call is needed).
#[inline(always)]
fn ctx_u64(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: syscall tracepoint contexts hold 8-byte aligned words at
    // these offsets.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>()) }
}

#[inline(always)]
fn count(index: u32, by: u64) {
    if let Some(slot) = SOCK_COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; programs on one CPU do not interleave.
        unsafe { *slot += by };
    }
}

#[inline(always)]
fn config() -> Option<&'static SockConfig> {
    SOCK_CONFIG.get(0)
}

/// `tgid << 32 | fd`, or `None` for the agent's own sockets.
#[inline(always)]
fn conn_key(pid_tgid: u64, fd: u64) -> Option<u64> {
    let tgid = (pid_tgid >> 32) as u32;
    let config = config()?;
    if tgid == config.agent_tgid {
        return None;
    }
    Some((u64::from(tgid) << 32) | (fd & 0xffff_ffff))
}

#[inline(always)]
fn read_user<T: Copy>(ptr: u64) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: reads `size_of::<T>()` bytes of user memory into `value`.
    let rc = unsafe {
        bpf_probe_read_user(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            ptr as *const core::ffi::c_void,
        )
    };
    // SAFETY: the helper filled it.
    (rc == 0).then(|| unsafe { value.assume_init() })
}

// ---- connect ------------------------------------------------------------

#[tracepoint]
pub fn sonde_sock_connect_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = ctx_u64(&ctx, ARG0);
    if conn_key(pid_tgid, fd).is_none() {
        return 0;
    }
    // Only internet sockets: local (unix) sockets are many and not what
    // the tables are about.
    match read_user::<u16>(ctx_u64(&ctx, ARG1)) {
        Some(AF_INET | AF_INET6) => {}
        _ => return 0,
    }
    let call = SockCall {
        ptr: ctx_u64(&ctx, ARG1),
        fd: fd as u32,
        kind: CALL_CONNECT,
    };
    let _ = SOCK_CALLS.insert(pid_tgid as u32, call, 0);
    0
}

#[tracepoint]
pub fn sonde_sock_connect_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_call(pid_tgid, CALL_CONNECT) else {
        return 0;
    };
    let ret = ctx_u64(&ctx, RET) as i64;
    if ret == 0 || ret == -EINPROGRESS {
        open(
            pid_tgid,
            u64::from(call.fd),
            ROLE_CLIENT,
            call.ptr,
            NO_LISTENER,
        );
    }
    0
}

// ---- accept ---------------------------------------------------------------

#[tracepoint]
pub fn sonde_sock_accept_enter(ctx: TracePointContext) -> u32 {
    accept_enter(&ctx)
}

#[tracepoint]
pub fn sonde_sock_accept4_enter(ctx: TracePointContext) -> u32 {
    accept_enter(&ctx)
}

#[inline(always)]
fn accept_enter(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if conn_key(pid_tgid, 0).is_none() {
        return 0;
    }
    // The listening socket, whose address is the new one's local end.
    let call = SockCall {
        ptr: ctx_u64(ctx, ARG1),
        fd: ctx_u64(ctx, ARG0) as u32,
        kind: CALL_ACCEPT,
    };
    let _ = SOCK_CALLS.insert(pid_tgid as u32, call, 0);
    0
}

#[tracepoint]
pub fn sonde_sock_accept_exit(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx)
}

#[tracepoint]
pub fn sonde_sock_accept4_exit(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx)
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_call(pid_tgid, CALL_ACCEPT) else {
        return 0;
    };
    let fd = ctx_u64(ctx, RET) as i64;
    if fd < 0 {
        return 0;
    }
    // With the peer's address asked for, only internet sockets; without
    // it the family is unknown here, and the connection is tracked.
    if call.ptr != 0 {
        match read_user::<u16>(call.ptr) {
            Some(AF_INET | AF_INET6) | None => {}
            Some(_) => return 0,
        }
    }
    open(pid_tgid, fd as u64, ROLE_SERVER, call.ptr, call.fd);
    0
}

/// Starts tracking a connection and says so on the ring, with the peer's
/// address (a `sockaddr` in the process at `peer`, if not 0) and the
/// listening socket it was accepted from (`NO_LISTENER` for a connect).
#[inline(always)]
fn open(pid_tgid: u64, fd: u64, role: u8, peer: u64, listener: u32) {
    let Some(key) = conn_key(pid_tgid, fd) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // Unique per CPU: two CPUs never share the low byte.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() } & 0xff);
    let conn = SockConn {
        id: (now & !0xff) | cpu,
        role,
        ..SockConn::default()
    };
    if SOCK_CONNS.insert(key, conn, 0).is_err() {
        return;
    }
    count(counter::OPENED, 1);
    let Some(conn) = SOCK_CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: the entry just inserted.
    emit_event(
        pid_tgid,
        fd as u32,
        unsafe { &*conn },
        KIND_OPEN,
        now,
        peer,
        listener,
    );
}

// ---- close ----------------------------------------------------------------

#[tracepoint]
pub fn sonde_sock_close_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = ctx_u64(&ctx, ARG0);
    let Some(key) = conn_key(pid_tgid, fd) else {
        return 0;
    };
    let Some(conn) = SOCK_CONNS.get_ptr_mut(key) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a live entry of the map.
    emit_event(
        pid_tgid,
        fd as u32,
        unsafe { &*conn },
        KIND_CLOSE,
        now,
        0,
        NO_LISTENER,
    );
    let _ = SOCK_CONNS.remove(key);
    0
}

#[tracepoint]
pub fn sonde_sock_close_exit(_ctx: TracePointContext) -> u32 {
    0
}

/// An open or close record: the header and the connection's totals, and
/// for an open the peer's `sockaddr` (`sockaddr_in6`'s size, or
/// `sockaddr_in`'s when only that much is readable) as data and the
/// listening socket in `call_len`.
#[inline(always)]
fn emit_event(
    pid_tgid: u64,
    fd: u32,
    conn: &SockConn,
    kind: u32,
    now: u64,
    peer: u64,
    listener: u32,
) {
    let Some(mut entry) = SOCK_EVENTS.reserve::<[u8; SMALL_RECORD as usize]>(0) else {
        count(counter::RING_FULL, 1);
        return;
    };
    let record = entry.as_mut_ptr().cast::<SockRecord>();
    // SAFETY: a reserved slot larger than the header, 8-byte aligned.
    unsafe {
        write_header(record, kind, pid_tgid, now);
        (*record).conn_id = conn.id;
        (*record).bytes_sent = conn.bytes_sent;
        (*record).bytes_recv = conn.bytes_recv;
        (*record).fd = fd;
        (*record).call_len = listener;
        (*record).offset = 0;
        (*record).len = 0;
        if peer != 0 {
            let data = record.cast::<u8>().add(HEADER_LEN as usize);
            for size in [SOCKADDR_IN6, SOCKADDR_IN] {
                if bpf_probe_read_user(data.cast(), size, peer as *const core::ffi::c_void) == 0 {
                    (*record).len = size;
                    break;
                }
            }
        }
        (*record).direction = 0;
        (*record).role = conn.role;
        (*record).tls = 0;
        (*record).protocol = conn.protocol;
        (*record).last = 1;
        (*record)._pad = [0; 3];
    }
    entry.submit(wake_flags(SMALL_RECORD));
}

/// # Safety
/// `record` points at a reserved slot at least a `SockRecord` long.
#[inline(always)]
unsafe fn write_header(record: *mut SockRecord, kind: u32, pid_tgid: u64, now: u64) {
    // SAFETY: as the caller promises.
    unsafe {
        (*record).header.kind = kind;
        (*record).header.probe_id = 0;
        (*record).header.ktime_ns = now;
        (*record).header.pid_tgid = pid_tgid;
        (*record).header.cgroup_id = bpf_get_current_cgroup_id();
        if bpf_get_current_comm((&raw mut (*record).header.comm).cast(), COMM_LEN as u32) != 0 {
            (*record).header.comm = [0; COMM_LEN];
        }
    }
}

#[inline(always)]
fn wake_flags(len: u32) -> u64 {
    let watermark = config().map_or(0, |c| c.wakeup_watermark);
    let avail = SOCK_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if crosses_watermark(avail, u64::from(len), watermark) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

// ---- data -----------------------------------------------------------------

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $kind:expr, $direction:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            data_enter(&ctx, $kind);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            data_exit(&ctx, $direction);
            0
        }
    };
}

data_syscall!(
    sonde_sock_read_enter,
    sonde_sock_read_exit,
    CALL_BUFFER,
    INGRESS
);
data_syscall!(
    sonde_sock_recvfrom_enter,
    sonde_sock_recvfrom_exit,
    CALL_BUFFER,
    INGRESS
);
data_syscall!(
    sonde_sock_readv_enter,
    sonde_sock_readv_exit,
    CALL_IOVEC,
    INGRESS
);
data_syscall!(
    sonde_sock_recvmsg_enter,
    sonde_sock_recvmsg_exit,
    CALL_MSGHDR,
    INGRESS
);
data_syscall!(
    sonde_sock_write_enter,
    sonde_sock_write_exit,
    CALL_BUFFER,
    EGRESS
);
data_syscall!(
    sonde_sock_sendto_enter,
    sonde_sock_sendto_exit,
    CALL_BUFFER,
    EGRESS
);
data_syscall!(
    sonde_sock_writev_enter,
    sonde_sock_writev_exit,
    CALL_IOVEC,
    EGRESS
);
data_syscall!(
    sonde_sock_sendmsg_enter,
    sonde_sock_sendmsg_exit,
    CALL_MSGHDR,
    EGRESS
);
data_syscall!(
    sonde_sock_recvmmsg_enter,
    sonde_sock_recvmmsg_exit,
    CALL_MMSG,
    INGRESS
);
data_syscall!(
    sonde_sock_sendmmsg_enter,
    sonde_sock_sendmmsg_exit,
    CALL_MMSG,
    EGRESS
);

#[inline(always)]
fn data_enter(ctx: &TracePointContext, kind: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = ctx_u64(ctx, ARG0);
    let Some(key) = conn_key(pid_tgid, fd) else {
        return;
    };
    // The fast path for every other file: one lookup.
    if SOCK_CONNS.get_ptr_mut(key).is_none() {
        return;
    }
    let tid = pid_tgid as u32;
    // A TLS call on this thread learns its socket.
    if let Some(ssl) = SSL_CALLS.get_ptr_mut(tid) {
        // SAFETY: a live entry of the map.
        unsafe { (*ssl).fd = fd as u32 };
    }
    let call = SockCall {
        ptr: ctx_u64(ctx, ARG1),
        fd: fd as u32,
        kind,
    };
    let _ = SOCK_CALLS.insert(tid, call, 0);
}

#[inline(always)]
fn data_exit(ctx: &TracePointContext, direction: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: copied out before the entry is removed.
    let Some(call) = (unsafe { SOCK_CALLS.get(tid) }).copied() else {
        return;
    };
    let _ = SOCK_CALLS.remove(tid);
    let ret = ctx_u64(ctx, RET) as i64;
    if ret <= 0 {
        return;
    }
    if call.kind == CALL_MMSG {
        // `ret` messages, each a call of its own.
        let mut i = 0;
        while i < MMSG_MAX {
            if i >= ret as u64 {
                break;
            }
            let header = call.ptr + i * MMSGHDR_SIZE;
            let len = u64::from(read_user::<u32>(header + MMSG_LEN).unwrap_or(0));
            if len > 0 {
                let (ptr, first_len) = match read_user::<u64>(header + MSG_IOV) {
                    Some(iov) => first_iovec(iov),
                    None => (0, 0),
                };
                let first_len = if first_len > len { len } else { first_len };
                on_data(
                    pid_tgid,
                    u64::from(call.fd),
                    ptr,
                    len,
                    first_len,
                    direction,
                    false,
                );
            }
            i += 1;
        }
        return;
    }
    // Where the bytes are: the first buffer holds the first bytes.
    let (ptr, first_len) = match call.kind {
        CALL_BUFFER => (call.ptr, ret as u64),
        CALL_IOVEC => first_iovec(call.ptr),
        CALL_MSGHDR => match read_user::<u64>(call.ptr + MSG_IOV) {
            Some(iov) => first_iovec(iov),
            None => (0, 0),
        },
        _ => return,
    };
    let first_len = if first_len > ret as u64 {
        ret as u64
    } else {
        first_len
    };
    on_data(
        pid_tgid,
        u64::from(call.fd),
        ptr,
        ret as u64,
        first_len,
        direction,
        false,
    );
}

/// The first `iovec` of an array: base and length.
#[inline(always)]
fn first_iovec(iov: u64) -> (u64, u64) {
    match read_user::<[u64; 2]>(iov) {
        Some([base, len]) => (base, len),
        None => (0, 0),
    }
}

/// What every record of one call shares.
struct Call {
    pid_tgid: u64,
    fd: u32,
    conn_id: u64,
    role: u8,
    protocol: u8,
    tls: bool,
    direction: u8,
    now: u64,
    /// The bytes' address in the process.
    ptr: u64,
    len: u64,
    /// Stream totals after the call.
    bytes_sent: u64,
    bytes_recv: u64,
}

/// A call on `fd` moved `len` bytes, of which the first `copyable` are at
/// `ptr` in one piece.
#[inline(always)]
fn on_data(pid_tgid: u64, fd: u64, ptr: u64, len: u64, copyable: u64, direction: u8, tls: bool) {
    let Some(key) = conn_key(pid_tgid, fd) else {
        return;
    };
    let Some(conn) = SOCK_CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live entry; a thread works on its own connections, and a
    // race between threads of one process costs at most a count.
    let conn = unsafe { &mut *conn };
    let (total, protocol) = match (tls, direction) {
        (false, EGRESS) => (&mut conn.bytes_sent, &mut conn.protocol),
        (false, _) => (&mut conn.bytes_recv, &mut conn.protocol),
        (true, EGRESS) => (&mut conn.tls_sent, &mut conn.tls_protocol),
        (true, _) => (&mut conn.tls_recv, &mut conn.tls_protocol),
    };
    *total += len;
    if *protocol == PROTO_UNKNOWN {
        *protocol = detect(ptr, copyable, direction, conn.role);
    }
    let protocol = *protocol;
    if protocol != PROTO_HTTP && protocol != PROTO_DNS {
        return;
    }
    let (bytes_sent, bytes_recv) = if tls {
        (conn.tls_sent, conn.tls_recv)
    } else {
        (conn.bytes_sent, conn.bytes_recv)
    };
    let call = Call {
        pid_tgid,
        fd: fd as u32,
        conn_id: conn.id,
        role: conn.role,
        protocol,
        tls,
        direction,
        now: unsafe { bpf_ktime_get_ns() },
        ptr,
        len,
        bytes_sent,
        bytes_recv,
    };
    let max_chunks = config().map_or(0, |c| c.max_chunks);
    let mut offset: u64 = 0;
    let mut chunk = 0;
    while chunk < MAX_CHUNKS {
        if chunk >= max_chunks || offset >= copyable {
            break;
        }
        let remaining = copyable - offset;
        // The last record of the call: it holds the rest, or no record
        // may follow.
        let last = chunk + 1 >= max_chunks || chunk + 1 >= MAX_CHUNKS;
        let sent = if remaining <= u64::from(SMALL_DATA) {
            emit_chunk::<{ SMALL_RECORD as usize }>(SMALL_DATA, &call, offset, remaining, true)
        } else {
            emit_chunk::<{ LARGE_RECORD as usize }>(LARGE_DATA, &call, offset, remaining, last)
        };
        match sent {
            Some(n) => offset += n,
            None => {
                count(counter::RING_FULL, 1);
                break;
            }
        }
        chunk += 1;
    }
    if offset < len {
        count(counter::UNCOPIED_BYTES, len - offset);
    }
}

/// One record of a call's bytes from `offset`: `Some(bytes copied)`, or
/// `None` when the ring is full.
#[inline(always)]
fn emit_chunk<const SIZE: usize>(
    cap: u32,
    call: &Call,
    offset: u64,
    remaining: u64,
    last: bool,
) -> Option<u64> {
    let mut entry = SOCK_EVENTS.reserve::<[u8; SIZE]>(0)?;
    let record = entry.as_mut_ptr().cast::<SockRecord>();
    let mut n = remaining as u32;
    if n > cap {
        n = cap;
    }
    // SAFETY: a reserved slot of `SIZE` bytes: the header, then `cap` bytes
    // of data, of which `n <= cap` are written.
    let copied = unsafe {
        write_header(record, KIND_DATA, call.pid_tgid, call.now);
        (*record).conn_id = call.conn_id;
        (*record).bytes_sent = call.bytes_sent;
        (*record).bytes_recv = call.bytes_recv;
        (*record).fd = call.fd;
        (*record).call_len = call.len as u32;
        (*record).offset = offset as u32;
        (*record).direction = call.direction;
        (*record).role = call.role;
        (*record).tls = u8::from(call.tls);
        (*record).protocol = call.protocol;
        (*record)._pad = [0; 3];
        let data = record.cast::<u8>().add(HEADER_LEN as usize);
        bpf_probe_read_user(
            data.cast(),
            n,
            (call.ptr + offset) as *const core::ffi::c_void,
        ) == 0
    };
    // SAFETY: as above.
    unsafe {
        (*record).len = if copied { n } else { 0 };
        (*record).last = u8::from(last || u64::from(n) >= remaining);
    }
    entry.submit(wake_flags(SIZE as u32));
    // An unreadable buffer still moves the position: the reader sees the
    // bytes as missing.
    Some(u64::from(n))
}

/// What the first bytes of a connection look like. A DNS query is only
/// recognised as a client's first message: a 12-byte header of a standard
/// query with one question, no answers or authority, and at most one
/// additional record (EDNS).
#[inline(always)]
fn detect(ptr: u64, len: u64, direction: u8, role: u8) -> u8 {
    if len < 4 || ptr == 0 {
        return PROTO_UNKNOWN;
    }
    let Some(head) = read_user::<[u8; 4]>(ptr) else {
        return PROTO_UNKNOWN;
    };
    if head[0] == 0x16 && head[1] == 0x03 {
        return PROTO_TLS;
    }
    match &head {
        b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"TRAC" | b"CONN"
        | b"HTTP" => return PROTO_HTTP,
        _ => {}
    }
    if direction == EGRESS
        && role == ROLE_CLIENT
        && len >= 17
        && let Some(h) = read_user::<[u8; 12]>(ptr)
        && h[2] & 0xf8 == 0
        && h[3] & 0x40 == 0
        && h[4..10] == [0, 1, 0, 0, 0, 0]
        && h[10] == 0
        && h[11] <= 1
    {
        return PROTO_DNS;
    }
    PROTO_OTHER
}

#[inline(always)]
fn take_call(pid_tgid: u64, kind: u32) -> Option<SockCall> {
    let tid = pid_tgid as u32;
    // SAFETY: copied out before the entry is removed.
    let call = (unsafe { SOCK_CALLS.get(tid) }).copied()?;
    let _ = SOCK_CALLS.remove(tid);
    (call.kind == kind).then_some(call)
}

/// Does nothing: the floor of a program on a syscall tracepoint, which
/// `sonde-sockets-bench` attaches where the socket programs go to tell what
/// the tracepoints cost from what the programs do. The agent never loads it.
#[tracepoint]
pub fn sonde_sock_floor(_ctx: TracePointContext) -> u32 {
    0
}

// ---- OpenSSL --------------------------------------------------------------

/// Entry of `SSL_read`, `SSL_write`, `SSL_read_ex` or `SSL_write_ex`; the
/// function is in the attach cookie.
#[uprobe]
pub fn sonde_ssl_entry(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if conn_key(pid_tgid, 0).is_none() {
        return 0;
    }
    // SAFETY: the helper reads this program's own link cookie.
    let kind = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let call = SslCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        size_ptr: ctx.arg::<u64>(3).unwrap_or(0),
        kind,
        fd: u32::MAX,
        _pad: 0,
    };
    let _ = SSL_CALLS.insert(pid_tgid as u32, call, 0);
    0
}

#[uretprobe]
pub fn sonde_ssl_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: copied out before the entry is removed.
    let Some(call) = (unsafe { SSL_CALLS.get(tid) }).copied() else {
        return 0;
    };
    let _ = SSL_CALLS.remove(tid);
    let ret: i64 = ctx.ret::<i64>();
    let len = match call.kind {
        SSL_READ | SSL_WRITE => {
            if ret <= 0 {
                return 0;
            }
            ret as u64
        }
        SSL_READ_EX | SSL_WRITE_EX => {
            if ret != 1 {
                return 0;
            }
            match read_user::<u64>(call.size_ptr) {
                Some(n) => n,
                None => return 0,
            }
        }
        _ => return 0,
    };
    if len == 0 {
        return 0;
    }
    let ssl_key = [pid_tgid >> 32, call.ssl];
    let fd = if call.fd != u32::MAX {
        let _ = SSL_FDS.insert(ssl_key, call.fd, 0);
        call.fd
    } else {
        // SAFETY: copied out.
        match unsafe { SSL_FDS.get(ssl_key) } {
            Some(fd) => *fd,
            None => {
                count(counter::TLS_NO_SOCKET, 1);
                return 0;
            }
        }
    };
    let direction = match call.kind {
        SSL_WRITE | SSL_WRITE_EX => EGRESS,
        _ => INGRESS,
    };
    on_data(pid_tgid, u64::from(fd), call.buf, len, len, direction, true);
    0
}
