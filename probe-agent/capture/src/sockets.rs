//! Socket tracing: the programs on the socket syscalls and OpenSSL that
//! feed `sonde.http_events` and `sonde.conn_stats` (layout and semantics
//! in [`probe_common::sock`]). [`SocketTrace`] attaches them, drains their
//! ring into [`SockEvent`]s and reads the table of tracked connections.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::{Path, PathBuf},
    sync::mpsc,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
pub use probe_common::sock::{SockConn, SockRecord};
use probe_common::{
    COMM_LEN, RecordHeader, maps, programs,
    sock::{self, SockConfig, counter},
};

use crate::{
    elf::{ElfBinary, ElfError},
    error::{Error, Result},
    loader::ProbeSet,
    uprobe_events::UprobeEventLink,
};

/// How the socket programs copy bytes.
#[derive(Clone, Copy, Debug)]
pub struct SocketOptions {
    /// Records one call may produce, 1 to [`sock::MAX_CHUNKS`].
    pub max_chunks: u32,
    /// Ring fill level that wakes the reader.
    pub wakeup_watermark: u64,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            max_chunks: sock::MAX_CHUNKS,
            wakeup_watermark: 1 << 20,
        }
    }
}

/// One record of the socket ring.
#[derive(Clone, Copy, Debug)]
pub struct SockEvent<'a> {
    pub record: SockRecord,
    /// The copied bytes (`record.len` of them).
    pub data: &'a [u8],
}

impl SockEvent<'_> {
    pub fn pid(&self) -> u32 {
        (self.record.header.pid_tgid >> 32) as u32
    }

    pub fn tid(&self) -> u32 {
        self.record.header.pid_tgid as u32
    }

    /// The command name up to its first NUL.
    pub fn comm(&self) -> &[u8] {
        let comm = &self.record.header.comm;
        let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &comm[..end]
    }

    /// The peer's address an open record carries (the `sockaddr` given to
    /// `connect` or filled by `accept`), if it is an internet address.
    pub fn peer(&self) -> Option<SocketAddr> {
        if self.record.header.kind != sock::KIND_OPEN {
            return None;
        }
        parse_sockaddr(self.data)
    }

    /// The listening socket's descriptor an open record of an accepted
    /// connection carries.
    pub fn listener(&self) -> Option<u32> {
        (self.record.header.kind == sock::KIND_OPEN && self.record.call_len != u32::MAX)
            .then_some(self.record.call_len)
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A `sockaddr_in` or `sockaddr_in6` as the kernel lays them out.
pub fn parse_sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
    match family {
        AF_INET => {
            let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((Ipv4Addr::from(ip), port)))
        }
        AF_INET6 => {
            let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let ip = Ipv6Addr::from(ip);
            // Dual-stack sockets name IPv4 peers as ::ffff:a.b.c.d.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, port)),
                None => SocketAddr::from((ip, port)),
            })
        }
        _ => None,
    }
}

/// Decodes one record of the socket ring; `None` if it is shorter than
/// its header says.
pub fn decode(bytes: &[u8]) -> Option<SockEvent<'_>> {
    let header = RecordHeader::read(bytes)?;
    let at = |offset: usize| -> Option<u64> {
        let word = bytes.get(offset..offset + 8)?;
        let mut out = [0; 8];
        out.copy_from_slice(word);
        Some(u64::from_ne_bytes(out))
    };
    let half = |offset: usize| -> Option<u32> {
        let word = bytes.get(offset..offset + 4)?;
        let mut out = [0; 4];
        out.copy_from_slice(word);
        Some(u32::from_ne_bytes(out))
    };
    let bytes_at = |offset: usize| bytes.get(offset).copied();
    let record = SockRecord {
        header,
        conn_id: at(48)?,
        bytes_sent: at(56)?,
        bytes_recv: at(64)?,
        fd: half(72)?,
        call_len: half(76)?,
        offset: half(80)?,
        len: half(84)?,
        direction: bytes_at(88)?,
        role: bytes_at(89)?,
        tls: bytes_at(90)?,
        protocol: bytes_at(91)?,
        last: bytes_at(92)?,
        _pad: [0; 3],
    };
    let start = sock::HEADER_LEN as usize;
    let data = bytes.get(start..start + record.len as usize)?;
    Some(SockEvent { record, data })
}

/// The kernel's socket counters, summed over CPUs (see
/// [`probe_common::sock::counter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockCounters {
    pub ring_full: u64,
    pub uncopied_bytes: u64,
    pub tls_no_socket: u64,
    pub opened: u64,
}

/// The socket programs, attached; they stay attached as long as the
/// [`ProbeSet`] they were loaded from.
pub struct SocketTrace {
    /// Held, not read: programs loaded later refer to it by descriptor.
    _config: Array<MapData, SockConfig>,
    ring: RingBuf<MapData>,
    conns: HashMap<MapData, u64, SockConn>,
    counters: PerCpuArray<MapData, u64>,
}

/// The `syscalls` tracepoints the socket programs go on, each with the
/// program's name: `sonde_sock_<syscall>_enter` on `sys_enter_<syscall>`,
/// and `_exit` on `sys_exit_<syscall>`.
fn socket_tracepoints() -> impl Iterator<Item = (String, String)> {
    programs::SOCK_SYSCALLS.iter().flat_map(|syscall| {
        [("enter", "sys_enter_"), ("exit", "sys_exit_")].map(|(half, event)| {
            (
                format!("{}{syscall}_{half}", programs::SOCK_PREFIX),
                format!("{event}{syscall}"),
            )
        })
    })
}

/// The OpenSSL functions traced, with the cookie the programs know them by.
const SSL_FUNCTIONS: [(&str, u64); 4] = [
    ("SSL_read", sock::SSL_READ),
    ("SSL_write", sock::SSL_WRITE),
    ("SSL_read_ex", sock::SSL_READ_EX),
    ("SSL_write_ex", sock::SSL_WRITE_EX),
];

impl SocketTrace {
    /// Configures the socket programs and attaches them to every syscall
    /// they trace. The agent's own process (`agent_tgid`) is never traced.
    pub fn attach(set: &mut ProbeSet, agent_tgid: u32, options: SocketOptions) -> Result<Self> {
        let mut config: Array<MapData, SockConfig> = set.take_map(maps::SOCK_CONFIG)?;
        config
            .set(
                0,
                SockConfig {
                    agent_tgid,
                    max_chunks: options.max_chunks.clamp(1, sock::MAX_CHUNKS),
                    wakeup_watermark: options.wakeup_watermark,
                },
                0,
            )
            .map_err(|source| Error::Map {
                map: maps::SOCK_CONFIG,
                action: "set",
                source,
            })?;
        let ring = set.take_map(maps::SOCK_EVENTS)?;
        let conns = set.take_map(maps::SOCK_CONNS)?;
        let counters = set.take_map(maps::SOCK_COUNTERS)?;
        for (name, tracepoint) in socket_tracepoints() {
            let program: &mut TracePoint = set.loaded_program(&name)?;
            program
                .attach("syscalls", &tracepoint)
                .map_err(|source| Error::Program {
                    program: name.clone(),
                    action: "attach",
                    source,
                })?;
        }
        Ok(Self {
            _config: config,
            ring,
            conns,
            counters,
        })
    }

    /// Stops tracking the connection with `key` (`tgid << 32 | fd`): its
    /// process is gone.
    pub fn forget(&mut self, key: u64) {
        // Already gone is fine.
        let _ = self.conns.remove(&key);
    }

    /// Hands every record in the ring to `each`; returns how many there
    /// were, and how many were too short to decode (counted, skipped).
    pub fn drain(&mut self, mut each: impl FnMut(&SockEvent<'_>)) -> (u64, u64) {
        let (mut taken, mut bad) = (0, 0);
        while let Some(item) = self.ring.next() {
            taken += 1;
            match decode(&item) {
                Some(event) => each(&event),
                None => bad += 1,
            }
        }
        (taken, bad)
    }

    /// Every tracked connection, by `tgid << 32 | fd`, into `out` (cleared
    /// first). Entries that vanish while read are skipped.
    pub fn connections(&self, out: &mut Vec<(u64, SockConn)>) {
        out.clear();
        out.extend(self.conns.iter().flatten());
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counters(&self) -> SockCounters {
        let read = |index: u32| -> u64 {
            self.counters
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        SockCounters {
            ring_full: read(counter::RING_FULL),
            uncopied_bytes: read(counter::UNCOPIED_BYTES),
            tls_no_socket: read(counter::TLS_NO_SOCKET),
            opened: read(counter::OPENED),
        }
    }

    /// The ring's descriptor, readable when a program woke the reader.
    pub fn ring_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// Attaches the do-nothing program to every tracepoint the socket programs
/// use, for measurements (`sonde-sockets-bench`); dropping the set
/// detaches it.
pub fn attach_floor(set: &mut ProbeSet) -> Result<()> {
    for (_, tracepoint) in socket_tracepoints() {
        set.attach_measurement_tracepoint(programs::SOCK_FLOOR, "syscalls", &tracepoint)?;
    }
    Ok(())
}

/// Attaches the TLS programs to OpenSSL's read and write functions in
/// `library` (a `libssl.so.3`), for every process that maps it; returns
/// the links to keep when uprobes are made through
/// tracefs.
pub fn attach_openssl(set: &mut ProbeSet, library: &Path) -> Result<Vec<UprobeEventLink>> {
    let elf_error = |source: ElfError| Error::Elf {
        path: library.to_owned(),
        source: Box::new(source),
    };
    let binary = ElfBinary::open(library).map_err(elf_error)?;
    let mut offsets = Vec::with_capacity(SSL_FUNCTIONS.len());
    for (function, cookie) in SSL_FUNCTIONS {
        offsets.push((binary.symbol_offset(function).map_err(elf_error)?, cookie));
    }
    let mut links = Vec::new();
    for (offset, cookie) in offsets {
        for (program, ret) in [(programs::SSL_ENTRY, false), (programs::SSL_RETURN, true)] {
            links.extend(set.attach_uprobe_program(program, library, offset, ret, cookie)?);
        }
    }
    Ok(links)
}

/// Asks the thread that owns the programs (the drive loop) to trace an
/// OpenSSL library: the socket tables' thread finds them, only the owner
/// of the [`ProbeSet`] can attach.
#[derive(Debug)]
pub struct TlsRequester {
    requests: mpsc::Sender<PathBuf>,
    outcomes: mpsc::Receiver<(PathBuf, Result<()>)>,
}

impl TlsRequester {
    /// Queues `library`; it is attached at the drive loop's next turn.
    pub fn request(&self, library: PathBuf) {
        // The drive loop gone means the agent is stopping.
        let _ = self.requests.send(library);
    }

    /// What became of the libraries asked for, as each was tried.
    pub fn outcomes(&self) -> impl Iterator<Item = (PathBuf, Result<()>)> + '_ {
        self.outcomes.try_iter()
    }
}

/// The drive loop's side of [`TlsRequester`].
#[derive(Debug)]
pub struct TlsService {
    requests: mpsc::Receiver<PathBuf>,
    outcomes: mpsc::Sender<(PathBuf, Result<()>)>,
    links: Vec<UprobeEventLink>,
}

impl TlsService {
    pub fn channel() -> (TlsRequester, Self) {
        let (requests_tx, requests) = mpsc::channel();
        let (outcomes, outcomes_rx) = mpsc::channel();
        (
            TlsRequester {
                requests: requests_tx,
                outcomes: outcomes_rx,
            },
            Self {
                requests,
                outcomes,
                links: Vec::new(),
            },
        )
    }

    /// Attaches every library asked for since the last call.
    pub fn serve(&mut self, set: &mut ProbeSet) {
        while let Ok(library) = self.requests.try_recv() {
            let outcome = attach_openssl(set, &library).map(|links| self.links.extend(links));
            let _ = self.outcomes.send((library, outcome));
        }
    }
}

impl AsRawFd for SocketTrace {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_programs_write() {
        let header = RecordHeader {
            kind: sock::KIND_DATA,
            probe_id: 0,
            ktime_ns: 7,
            pid_tgid: (42 << 32) | 43,
            cgroup_id: 9,
            comm: RecordHeader::comm_from(b"curl"),
        };
        let mut bytes = header.to_bytes().to_vec();
        for word in [5_u64, 100, 200] {
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        for half in [3_u32, 4, 0, 4] {
            bytes.extend_from_slice(&half.to_ne_bytes());
        }
        bytes.extend_from_slice(&[
            sock::EGRESS,
            sock::ROLE_CLIENT,
            1,
            sock::PROTO_HTTP,
            1,
            0,
            0,
            0,
        ]);
        assert_eq!(bytes.len(), sock::HEADER_LEN as usize);
        bytes.extend_from_slice(b"GET /");
        let event = decode(&bytes).expect("a whole record");
        assert_eq!(event.pid(), 42);
        assert_eq!(event.tid(), 43);
        assert_eq!(event.comm(), b"curl");
        assert_eq!(event.record.conn_id, 5);
        assert_eq!(
            (event.record.bytes_sent, event.record.bytes_recv),
            (100, 200)
        );
        assert_eq!(
            (event.record.fd, event.record.call_len, event.record.offset),
            (3, 4, 0)
        );
        assert_eq!((event.record.tls, event.record.last), (1, 1));
        assert_eq!(event.data, b"GET ");
        assert!(decode(&bytes[..90]).is_none(), "short header");
    }

    #[test]
    fn parses_peer_addresses() {
        let mut v4 = vec![0; 16];
        v4[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
        v4[2..4].copy_from_slice(&8080_u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            parse_sockaddr(&v4),
            Some("127.0.0.1:8080".parse().expect("address"))
        );
        let mut v6 = vec![0; 28];
        v6[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        v6[2..4].copy_from_slice(&443_u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"::1".parse::<Ipv6Addr>().expect("address").octets());
        assert_eq!(
            parse_sockaddr(&v6),
            Some("[::1]:443".parse().expect("address"))
        );
        v6[8..24].copy_from_slice(
            &"::ffff:10.0.0.2"
                .parse::<Ipv6Addr>()
                .expect("address")
                .octets(),
        );
        assert_eq!(
            parse_sockaddr(&v6),
            Some("10.0.0.2:443".parse().expect("address"))
        );
        assert_eq!(parse_sockaddr(&[1, 0, 0]), None);
    }
}
