//! `make bench-sockets`: what socket tracing costs the processes it traces,
//! as ratios measured side by side in one run (absolute times drift on a
//! shared machine; ratios measured together do not). Writes `NAME.md` and
//! `NAME.json` into `--out` and prints the Markdown. Asserts nothing; needs
//! root (or CAP_BPF + CAP_PERFMON).
//!
//! The load is this process itself, on one thread: a round is a `write()`
//! of `--size` bytes on one end of a loopback TCP connection and a `read()`
//! of them on the other end (two syscalls). The socket programs are
//! attached with [`SocketTrace::attach`] as the agent attaches them,
//! excluding a tgid that is not this one, so this process is traced like
//! any other; a thread of the bench drains their ring the way the agent's
//! drive loop does (woken at the ring's watermark, otherwise every 50 ms).
//!
//! 1. **untraced**: nothing attached.
//! 2. **attached, connection not tracked**: programs attached; the same
//!    connection as 1, made before they were, so every call takes the fast
//!    path (one hash lookup at entry, one at exit).
//! 3. **tracked, not HTTP**: a connection made after attaching whose first
//!    bytes are binary: its bytes are counted, never copied.
//! 4. **tracked, HTTP**: a connection made after attaching that carries an
//!    HTTP/1.1 request of the same size, over and over: every call's bytes
//!    are copied to the ring and drained.
//!
//! And what every other process on the node pays: `read()` of a regular
//! file (page cache), and a `write()` + `read()` through a pipe, untraced
//! and attached.
//!
//! The floor: the same work with a program that returns at once on each of
//! the same tracepoints (`sonde_sock_floor`), loaded and attached between
//! the untraced and the attached cases. What any program on those
//! tracepoints costs is the floor over untraced; what the socket programs'
//! fast path adds is attached over the floor.
//!
//! Each of `--rounds` rounds measures every case: the untraced ones and the
//! attached ones on either side of one load-and-attach (alternately before
//! and after it), each group in an order that rotates from round to round,
//! so drift falls on all cases alike. Each case is timed by the measuring
//! thread's CPU time (not disturbed by other threads taking its CPU) and by
//! elapsed time. Reported, for both: medians of ns per round, and the ratio
//! to the untraced reference doing the same work and the added ns per round
//! and per syscall, computed per round and their medians.
//!
//! Each round also checks that the cases were what they claim (which
//! connections were tracked, with what protocol, what was copied, and that
//! the ring never filled) and that no other BPF program came or went
//! meanwhile (another tracer's syscall tracepoint would make the untraced
//! cases traced). Rounds that fail are left out, and more are run, up to
//! twice `--rounds`.

#[path = "../sonde-bench/report.rs"]
mod report;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::File,
    hint::black_box,
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use probe_capture::{
    loader::{LoadOptions, ProbeSet},
    preflight,
    sockets::{SockConn, SockCounters, SocketOptions, SocketTrace, attach_floor},
    tracefs::Tracefs,
};
use probe_common::{programs, sock};
use report::{Report, Table, median};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    about = "Measures what socket tracing costs the traced processes, as ratios measured side \
             by side in one run"
)]
struct Args {
    /// Rounds; every case is measured once per round (medians are reported).
    #[arg(long, default_value_t = 11)]
    rounds: usize,
    /// write() + read() rounds per measurement of a TCP case.
    #[arg(long, default_value_t = 80_000)]
    iterations: u64,
    /// read() calls (or pipe write() + read() rounds) per measurement of a
    /// file or pipe case.
    #[arg(long, default_value_t = 400_000)]
    file_iterations: u64,
    /// Bytes written and read per call (at least 40: the HTTP request
    /// must fit).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Where the report goes (default: `$CARGO_TARGET_DIR/bench`, or
    /// `target/bench`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// File name of the report, without extension.
    #[arg(long, default_value = "sockets")]
    name: String,
}

/// The agent's default drain interval.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// Excluded from tracing in place of the agent's tgid: no process has it,
/// so this one is traced like any other.
const NO_AGENT: u32 = u32::MAX;

/// What each case is timed by: the measuring thread's CPU time (its
/// syscalls and the programs they run, not the time it waited while other
/// threads ran: the machine is shared), and elapsed time.
const CLOCKS: [(&str, &str); 2] = [
    ("cpu", "the measuring thread's CPU time"),
    ("wall", "elapsed time"),
];

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// Size of the regular file the file case reads through.
const FILE_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    TcpUntraced,
    TcpUntracked,
    TcpOther,
    TcpHttp,
    FileUntraced,
    FileAttached,
    PipeUntraced,
    PipeAttached,
    TcpFloor,
    FileFloor,
    PipeFloor,
}

struct CaseInfo {
    case: Case,
    key: &'static str,
    title: &'static str,
    /// Whether the socket programs are attached while it runs.
    attached: bool,
    /// Whether the do-nothing program is, on the same tracepoints.
    floor: bool,
    /// The untraced case doing the same work.
    reference: Case,
    /// Traced syscalls per round (a file round's rare `lseek` is not one).
    syscalls: f64,
}

const CASES: [CaseInfo; 11] = [
    CaseInfo {
        case: Case::TcpUntraced,
        key: "tcp_untraced",
        title: "TCP: untraced",
        attached: false,
        floor: false,
        reference: Case::TcpUntraced,
        syscalls: 2.0,
    },
    CaseInfo {
        case: Case::TcpUntracked,
        key: "tcp_attached_not_tracked",
        title: "TCP: attached, connection not tracked",
        attached: true,
        floor: false,
        reference: Case::TcpUntraced,
        syscalls: 2.0,
    },
    CaseInfo {
        case: Case::TcpOther,
        key: "tcp_tracked_other",
        title: "TCP: tracked, not HTTP (counted)",
        attached: true,
        floor: false,
        reference: Case::TcpUntraced,
        syscalls: 2.0,
    },
    CaseInfo {
        case: Case::TcpHttp,
        key: "tcp_tracked_http",
        title: "TCP: tracked, HTTP (copied, drained)",
        attached: true,
        floor: false,
        reference: Case::TcpUntraced,
        syscalls: 2.0,
    },
    CaseInfo {
        case: Case::FileUntraced,
        key: "file_read_untraced",
        title: "file read(): untraced",
        attached: false,
        floor: false,
        reference: Case::FileUntraced,
        syscalls: 1.0,
    },
    CaseInfo {
        case: Case::FileAttached,
        key: "file_read_attached",
        title: "file read(): attached",
        attached: true,
        floor: false,
        reference: Case::FileUntraced,
        syscalls: 1.0,
    },
    CaseInfo {
        case: Case::PipeUntraced,
        key: "pipe_untraced",
        title: "pipe write() + read(): untraced",
        attached: false,
        floor: false,
        reference: Case::PipeUntraced,
        syscalls: 2.0,
    },
    CaseInfo {
        case: Case::PipeAttached,
        key: "pipe_attached",
        title: "pipe write() + read(): attached",
        attached: true,
        floor: false,
        reference: Case::PipeUntraced,
        syscalls: 2.0,
    },
    CaseInfo {
        case: Case::TcpFloor,
        key: "tcp_floor",
        title: "TCP: do-nothing programs (floor)",
        attached: false,
        floor: true,
        reference: Case::TcpUntraced,
        syscalls: 2.0,
    },
    CaseInfo {
        case: Case::FileFloor,
        key: "file_read_floor",
        title: "file read(): do-nothing programs (floor)",
        attached: false,
        floor: true,
        reference: Case::FileUntraced,
        syscalls: 1.0,
    },
    CaseInfo {
        case: Case::PipeFloor,
        key: "pipe_floor",
        title: "pipe write() + read(): do-nothing programs (floor)",
        attached: false,
        floor: true,
        reference: Case::PipeUntraced,
        syscalls: 2.0,
    },
];

/// Each attached case that meets nothing but the fast path, with the same
/// work under the do-nothing programs.
const OVER_FLOOR: [(Case, Case); 3] = [
    (Case::TcpUntracked, Case::TcpFloor),
    (Case::FileAttached, Case::FileFloor),
    (Case::PipeAttached, Case::PipeFloor),
];

fn index(case: Case) -> usize {
    CASES.iter().position(|c| c.case == case).unwrap_or(0)
}

/// Both ends of a loopback TCP connection, as files: `write()` and
/// `read()` are the syscalls made on them (a `TcpStream` would make
/// `sendto()` and `recvfrom()`).
struct Pair {
    client: File,
    server: File,
}

impl Pair {
    fn open() -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        // Each round's write waits on no ACK of the last.
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok(Self {
            client: File::from(OwnedFd::from(client)),
            server: File::from(OwnedFd::from(server)),
        })
    }

    fn fds(&self) -> [u32; 2] {
        [self.client.as_raw_fd(), self.server.as_raw_fd()].map(|fd| fd as u32)
    }
}

/// The connections of one round.
struct Pairs {
    /// Made before the programs were attached: never tracked.
    before: Pair,
    /// Made after: tracked, binary and HTTP.
    other: Option<Pair>,
    http: Option<Pair>,
}

/// What the cases write and read through, besides the connections.
struct Work {
    size: usize,
    binary: Vec<u8>,
    http: Vec<u8>,
    buf: Vec<u8>,
    file: File,
    file_path: PathBuf,
    file_pos: u64,
    pipe: (io::PipeReader, io::PipeWriter),
    tcp_iterations: u64,
    file_iterations: u64,
}

impl Work {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let size = args.size;
        let mut http = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Pad: ".to_vec();
        if size < http.len() + 4 {
            bail!(
                "--size {size} is too small for an HTTP request (at least {})",
                http.len() + 4
            );
        }
        http.resize(size - 4, b'a');
        http.extend_from_slice(b"\r\n\r\n");
        // Not a method, not TLS: "other" from the first bytes.
        let binary: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let file_path =
            std::env::temp_dir().join(format!("sonde-sockets-bench-{}", std::process::id()));
        let mut file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&file_path)
            .with_context(|| format!("create {}", file_path.display()))?;
        file.write_all(&vec![b'x'; FILE_BYTES as usize])?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Self {
            size,
            binary,
            http,
            buf: vec![0; size],
            file,
            file_path,
            file_pos: 0,
            pipe: io::pipe()?,
            tcp_iterations: args.iterations,
            file_iterations: args.file_iterations,
        })
    }

    /// Runs `case` (a tenth of it first, untimed) and returns ns per
    /// round, by [`CLOCKS`].
    fn measure(&mut self, case: Case, pairs: &Pairs) -> anyhow::Result<[f64; 2]> {
        let tcp = match case {
            Case::TcpUntraced | Case::TcpUntracked | Case::TcpFloor => Some((&pairs.before, false)),
            Case::TcpOther => Some((pairs.other.as_ref().context("no connection")?, false)),
            Case::TcpHttp => Some((pairs.http.as_ref().context("no connection")?, true)),
            _ => None,
        };
        let n = if tcp.is_some() {
            self.tcp_iterations
        } else {
            self.file_iterations
        };
        let mut elapsed = [Duration::ZERO; 2];
        for (rounds, timed) in [(n / 10, false), (n, true)] {
            let (cpu, wall) = (thread_cpu(), Instant::now());
            match (case, tcp) {
                (_, Some((pair, http))) => self.tcp(pair, http, rounds)?,
                (Case::FileUntraced | Case::FileAttached | Case::FileFloor, _) => {
                    self.file(rounds)?
                }
                _ => self.pipe(rounds)?,
            }
            if timed {
                elapsed = [thread_cpu().saturating_sub(cpu), wall.elapsed()];
            }
        }
        Ok(elapsed.map(|d| d.as_nanos() as f64 / n.max(1) as f64))
    }

    fn tcp(&mut self, pair: &Pair, http: bool, rounds: u64) -> io::Result<()> {
        let message = if http { &self.http } else { &self.binary };
        let (mut writer, mut reader) = (&pair.client, &pair.server);
        for _ in 0..rounds {
            writer.write_all(message)?;
            reader.read_exact(&mut self.buf)?;
            black_box(&mut self.buf);
        }
        Ok(())
    }

    fn file(&mut self, rounds: u64) -> io::Result<()> {
        let size = self.size as u64;
        for _ in 0..rounds {
            if self.file_pos + size > FILE_BYTES {
                self.file.seek(SeekFrom::Start(0))?;
                self.file_pos = 0;
            }
            self.file.read_exact(&mut self.buf)?;
            self.file_pos += size;
            black_box(&mut self.buf);
        }
        Ok(())
    }

    fn pipe(&mut self, rounds: u64) -> io::Result<()> {
        let (reader, writer) = &mut self.pipe;
        for _ in 0..rounds {
            writer.write_all(&self.binary)?;
            reader.read_exact(&mut self.buf)?;
            black_box(&mut self.buf);
        }
        Ok(())
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file_path);
    }
}

/// What the drain thread saw of this process while the programs were
/// attached.
#[derive(Default)]
struct Drained {
    /// Data records and copied bytes, by descriptor.
    data: HashMap<u32, (u64, u64)>,
    /// This process's tracked connections at the end, by descriptor.
    conns: HashMap<u32, SockConn>,
    counters: SockCounters,
    /// Records drained (every process's) and the drain thread's CPU time.
    records: u64,
    cpu: Duration,
}

/// Drains `trace` as the agent's drive loop does until `stop`, then
/// reads the tracked connections and the counters.
fn drain(mut trace: SocketTrace, stop: &AtomicBool, pid: u32) -> anyhow::Result<Drained> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        trace.ring_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
    )?;
    let timeout = EpollTimeout::try_from(DRAIN_INTERVAL)?;
    let mut ready = [EpollEvent::empty(); 1];
    let mut drained = Drained::default();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if !stopping {
            // EINTR and friends: drain anyway, then wait again.
            let _ = epoll.wait(&mut ready, timeout);
        }
        let (taken, _) = trace.drain(|event| {
            if event.pid() == pid && event.record.header.kind == sock::KIND_DATA {
                let seen = drained.data.entry(event.record.fd).or_default();
                seen.0 += 1;
                seen.1 += event.data.len() as u64;
            }
        });
        drained.records += taken;
        if stopping {
            break;
        }
    }
    let mut conns = Vec::new();
    trace.connections(&mut conns);
    drained.conns = conns
        .into_iter()
        .filter(|(key, _)| (key >> 32) as u32 == pid)
        .map(|(key, conn)| (key as u32, conn))
        .collect();
    drained.counters = trace.counters();
    drained.cpu = thread_cpu();
    Ok(drained)
}

/// The socket programs attached, and the thread draining their ring.
struct Attached {
    set: ProbeSet,
    ids: Vec<u32>,
    stop: Arc<AtomicBool>,
    drainer: JoinHandle<anyhow::Result<Drained>>,
}

/// Kernel ids of the loaded socket programs.
fn socket_program_ids() -> HashSet<u32> {
    // Kernel program names are cut at 15 bytes.
    let prefix = &programs::SOCK_PREFIX.as_bytes()[..programs::SOCK_PREFIX.len().min(15)];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name().starts_with(prefix))
        .map(|p| p.id())
        .collect()
}

impl Attached {
    fn attach() -> anyhow::Result<Self> {
        let others = socket_program_ids();
        let mut set = ProbeSet::load(Tracefs::locate(None)?, LoadOptions::default())?;
        let trace = SocketTrace::attach(&mut set, NO_AGENT, SocketOptions::default())?;
        let ids = socket_program_ids().difference(&others).copied().collect();
        let stop = Arc::new(AtomicBool::new(false));
        let drainer = {
            let stop = Arc::clone(&stop);
            let pid = std::process::id();
            std::thread::Builder::new()
                .name("drain".into())
                .spawn(move || drain(trace, &stop, pid))?
        };
        Ok(Self {
            set,
            ids,
            stop,
            drainer,
        })
    }

    /// Stops the drain, detaches everything and waits (up to 10 s) until
    /// the kernel has freed the programs: freeing them must not land in
    /// the next measurement.
    fn detach(self) -> anyhow::Result<Drained> {
        self.stop.store(true, Ordering::Release);
        let drained = self
            .drainer
            .join()
            .map_err(|_| anyhow::anyhow!("the drain thread panicked"))??;
        drop(self.set);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && socket_program_ids().iter().any(|id| self.ids.contains(id))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(drained)
    }
}

/// Checks that each case of a round was what it claims; returns what was
/// not.
fn check(drained: &Drained, pairs: &Pairs, work: &Work) -> Vec<String> {
    let mut failures = Vec::new();
    let data = |fd: &u32| drained.data.get(fd).copied().unwrap_or_default();
    // Every call of a case's measurement, warm-up included.
    let calls = work.tcp_iterations + work.tcp_iterations / 10;
    let bytes = calls * work.size as u64;
    for fd in pairs.before.fds() {
        if drained.conns.contains_key(&fd) || data(&fd).0 != 0 {
            failures.push(format!("not tracked: fd {fd} was tracked"));
        }
    }
    let expect = [
        (&pairs.other, sock::PROTO_OTHER, "not HTTP", false),
        (&pairs.http, sock::PROTO_HTTP, "HTTP", true),
    ];
    for (pair, protocol, name, copied) in expect {
        let Some(pair) = pair else {
            continue;
        };
        let [client, server] = pair.fds();
        match (drained.conns.get(&client), drained.conns.get(&server)) {
            (Some(c), Some(s)) => {
                if c.protocol != protocol || s.protocol != protocol {
                    failures.push(format!(
                        "{name}: protocols {} and {}, not {protocol}",
                        c.protocol, s.protocol
                    ));
                }
                if c.bytes_sent != bytes || s.bytes_recv != bytes {
                    failures.push(format!(
                        "{name}: {} bytes sent and {} received counted, not {bytes}",
                        c.bytes_sent, s.bytes_recv
                    ));
                }
            }
            _ => failures.push(format!("{name}: the connection was not tracked")),
        }
        let (records, copied_bytes) = {
            let (c, s) = (data(&client), data(&server));
            (c.0 + s.0, c.1 + s.1)
        };
        let want = if copied { 2 * bytes } else { 0 };
        if copied_bytes != want {
            failures.push(format!(
                "{name}: {copied_bytes} bytes copied in {records} records, not {want}"
            ));
        }
    }
    // Every process's calls go to this ring: the bytes of this one's were
    // checked above, other processes' long calls may leave bytes uncopied.
    if drained.counters.ring_full != 0 {
        failures.push(format!(
            "the ring was full {} times",
            drained.counters.ring_full
        ));
    }
    failures
}

/// `cases` rotated left by `by`.
fn rotated(cases: &[Case], by: usize) -> Vec<Case> {
    let mut cases = cases.to_vec();
    let len = cases.len();
    cases.rotate_left(by % len);
    cases
}

/// Every BPF program loaded but `ours`.
fn foreign_programs(ours: &[u32]) -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| !ours.contains(id))
        .collect()
}

/// The figures of the rounds kept.
struct Results {
    /// By clock and case: ns per round, one value per round kept.
    ns: [Vec<Vec<f64>>; 2],
    attach_ms: Vec<f64>,
    /// The drain thread's CPU ns per record drained, per round kept.
    drain_ns_per_record: Vec<f64>,
    /// Rounds run, and why some were left out.
    run: usize,
    left_out: Vec<String>,
    /// Whether every round was left out and all are reported anyway.
    kept_all: bool,
}

/// One round's figures.
struct Round {
    /// By clock and case.
    ns: [[f64; CASES.len()]; 2],
    attach_ms: f64,
    drain_ns_per_record: f64,
    /// Why it must not count, if it must not.
    spoiled: Vec<String>,
}

/// Runs one round: the untraced cases and the attached ones on either
/// side of one load-and-attach; `n` (from 1) sets the order.
fn round(n: usize, work: &mut Work, baseline: &BTreeSet<u32>) -> anyhow::Result<Round> {
    let untraced: Vec<Case> = CASES
        .iter()
        .filter(|c| !c.attached && !c.floor)
        .map(|c| c.case)
        .collect();
    let floor: Vec<Case> = CASES.iter().filter(|c| c.floor).map(|c| c.case).collect();
    let attached: Vec<Case> = CASES
        .iter()
        .filter(|c| c.attached)
        .map(|c| c.case)
        .collect();
    // Other tracing programs loaded or unloaded meanwhile change what the
    // untraced cases measure (one attached syscall tracepoint sends every
    // task's syscalls through the slow path): such rounds are left out.
    let disturbed = std::cell::Cell::new(false);
    let watch = |ours: &[u32]| {
        if foreign_programs(ours) != *baseline {
            disturbed.set(true);
        }
    };
    watch(&[]);
    let mut pairs = Pairs {
        before: Pair::open()?,
        other: None,
        http: None,
    };
    let mut ns = [[0.0; CASES.len()]; 2];
    let untraced_first = n % 2 == 1;
    let mut untraced_phase = |work: &mut Work, pairs: &Pairs| -> anyhow::Result<()> {
        for case in rotated(&untraced, n / 2) {
            let [cpu, wall] = work.measure(case, pairs)?;
            (ns[0][index(case)], ns[1][index(case)]) = (cpu, wall);
            watch(&[]);
        }
        Ok(())
    };
    if untraced_first {
        untraced_phase(work, &pairs)?;
    }
    // The do-nothing programs on the same tracepoints.
    let mut floor_ns = Vec::new();
    {
        let others = socket_program_ids();
        let mut set = ProbeSet::load(Tracefs::locate(None)?, LoadOptions::default())?;
        attach_floor(&mut set).context("attach the do-nothing programs")?;
        let ids: Vec<u32> = socket_program_ids().difference(&others).copied().collect();
        for case in rotated(&floor, n) {
            floor_ns.push((case, work.measure(case, &pairs)?));
            watch(&ids);
        }
        drop(set);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && socket_program_ids().iter().any(|id| ids.contains(id)) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let start = Instant::now();
    let programs = Attached::attach().context("load and attach the socket programs")?;
    let attach_ms = start.elapsed().as_secs_f64() * 1e3;
    pairs.other = Some(Pair::open()?);
    pairs.http = Some(Pair::open()?);
    let mut attached_ns = Vec::new();
    for case in rotated(&attached, n - 1) {
        attached_ns.push((case, work.measure(case, &pairs)?));
        watch(&programs.ids);
    }
    let drained = programs.detach()?;
    let mut spoiled = check(&drained, &pairs, work);
    pairs.other = None;
    pairs.http = None;
    if !untraced_first {
        untraced_phase(work, &pairs)?;
    }
    for (case, [cpu, wall]) in attached_ns.into_iter().chain(floor_ns) {
        (ns[0][index(case)], ns[1][index(case)]) = (cpu, wall);
    }
    watch(&[]);
    if disturbed.get() {
        spoiled.push("other BPF programs were loaded or unloaded meanwhile".to_owned());
    }
    Ok(Round {
        ns,
        attach_ms,
        drain_ns_per_record: drained.cpu.as_nanos() as f64 / drained.records.max(1) as f64,
        spoiled,
    })
}

/// Runs rounds until `args.rounds` of them were undisturbed, or twice as
/// many were run.
fn run(args: &Args, work: &mut Work) -> anyhow::Result<Results> {
    let baseline = foreign_programs(&[]);
    let mut rounds = Vec::new();
    let mut kept = 0;
    while kept < args.rounds && rounds.len() < 2 * args.rounds {
        let n = rounds.len() + 1;
        let round = round(n, work, &baseline)?;
        let line = |clock: usize| {
            let ns = |case| round.ns[clock][index(case)];
            format!(
                "TCP {:.0} {:.0} {:.0} {:.0} {:.0}, file {:.0} {:.0} {:.0}, pipe {:.0} {:.0} {:.0}",
                ns(Case::TcpUntraced),
                ns(Case::TcpFloor),
                ns(Case::TcpUntracked),
                ns(Case::TcpOther),
                ns(Case::TcpHttp),
                ns(Case::FileUntraced),
                ns(Case::FileFloor),
                ns(Case::FileAttached),
                ns(Case::PipeUntraced),
                ns(Case::PipeFloor),
                ns(Case::PipeAttached),
            )
        };
        eprintln!(
            "round {n} ({kept} of {} kept so far), ns per round (TCP untraced, floor, not \
             tracked, not HTTP, HTTP; file and pipe untraced, floor, attached): CPU {}; wall \
             {}{}",
            args.rounds,
            line(0),
            line(1),
            if round.spoiled.is_empty() {
                String::new()
            } else {
                format!("; LEFT OUT: {}", round.spoiled.join("; "))
            }
        );
        kept += usize::from(round.spoiled.is_empty());
        rounds.push(round);
    }
    let kept_all = kept == 0;
    let left_out = rounds
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.spoiled.is_empty())
        .map(|(i, r)| format!("round {}: {}", i + 1, r.spoiled.join("; ")))
        .collect();
    let kept: Vec<&Round> = rounds
        .iter()
        .filter(|r| kept_all || r.spoiled.is_empty())
        .collect();
    Ok(Results {
        ns: [0, 1].map(|clock| {
            (0..CASES.len())
                .map(|c| kept.iter().map(|r| r.ns[clock][c]).collect())
                .collect()
        }),
        attach_ms: kept.iter().map(|r| r.attach_ms).collect(),
        drain_ns_per_record: kept.iter().map(|r| r.drain_ns_per_record).collect(),
        run: rounds.len(),
        left_out,
        kept_all,
    })
}

/// The table of one clock's figures (`ns`: by case, per round kept).
fn table(ns: &[Vec<f64>]) -> (String, serde_json::Map<String, serde_json::Value>) {
    let rounds = ns[0].len();
    let mut table = Table::new(&[
        "case",
        "traced syscalls per round",
        "ns per round",
        "÷ untraced (min–max)",
        "added ns per round",
        "added ns per syscall",
    ]);
    let mut figures = serde_json::Map::new();
    for (c, info) in CASES.iter().enumerate() {
        let reference = index(info.reference);
        let per_round = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
            (0..rounds).map(|r| f(ns[c][r], ns[reference][r])).collect()
        };
        let ratios = per_round(&|ns, base| ns / base);
        let (low, high) = ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                (lo.min(r), hi.max(r))
            });
        let ratio = median(ratios.clone());
        let added = median(per_round(&|ns, base| ns - base));
        let median_ns = median(ns[c].clone());
        let is_reference = info.reference == info.case;
        let unless_reference = |text: String| if is_reference { String::new() } else { text };
        table.row(&[
            info.title.to_owned(),
            format!("{}", info.syscalls),
            format!("{median_ns:.0}"),
            if is_reference {
                "1.00".to_owned()
            } else {
                format!("**{ratio:.3}** ({low:.3}–{high:.3})")
            },
            unless_reference(format!("{added:+.0}")),
            unless_reference(format!("**{:+.0}**", added / info.syscalls)),
        ]);
        figures.insert(
            info.key.to_owned(),
            json!({
                "title": info.title,
                "reference": CASES[reference].key,
                "traced_syscalls_per_round": info.syscalls,
                "ns_per_round": median_ns,
                "rounds_ns_per_round": ns[c],
                "ratio": ratio,
                "ratio_min": low,
                "ratio_max": high,
                "added_ns_per_round": added,
                "added_ns_per_syscall": added / info.syscalls,
            }),
        );
    }
    (table.finish(), figures)
}

/// What the socket programs' fast path adds over do-nothing programs on
/// the same tracepoints (`ns`: by case, per round kept).
fn over_floor(ns: &[Vec<f64>]) -> (String, serde_json::Map<String, serde_json::Value>) {
    let rounds = ns[0].len();
    let mut table = Table::new(&[
        "work",
        "ns per round: untraced, floor, socket programs",
        "floor ÷ untraced",
        "socket programs ÷ floor (min–max)",
        "added ns per syscall over the floor",
    ]);
    let mut figures = serde_json::Map::new();
    for (attached, floor) in OVER_FLOOR {
        let info = &CASES[index(attached)];
        let (a, f, u) = (index(attached), index(floor), index(info.reference));
        let ratios: Vec<f64> = (0..rounds).map(|r| ns[a][r] / ns[f][r]).collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                (lo.min(r), hi.max(r))
            });
        let ratio = median(ratios);
        let floor_ratio = median((0..rounds).map(|r| ns[f][r] / ns[u][r]).collect());
        let added = median((0..rounds).map(|r| ns[a][r] - ns[f][r]).collect()) / info.syscalls;
        table.row(&[
            info.title.to_owned(),
            format!(
                "{:.0}, {:.0}, {:.0}",
                median(ns[u].clone()),
                median(ns[f].clone()),
                median(ns[a].clone())
            ),
            format!("{floor_ratio:.3}"),
            format!("**{ratio:.3}** ({low:.3}–{high:.3})"),
            format!("**{added:+.0}**"),
        ]);
        figures.insert(
            info.key.to_owned(),
            json!({
                "floor": CASES[f].key,
                "floor_over_untraced": floor_ratio,
                "ratio_over_floor": ratio,
                "ratio_over_floor_min": low,
                "ratio_over_floor_max": high,
                "added_ns_per_syscall_over_floor": added,
            }),
        );
    }
    (table.finish(), figures)
}

fn section(report: &mut Report, args: &Args, results: &Results) {
    let rounds = results.ns[0][0].len();
    let mut tables = String::new();
    let mut figures = serde_json::Map::new();
    for ((key, name), ns) in CLOCKS.iter().zip(&results.ns) {
        let (text, clock) = table(ns);
        tables.push_str(&format!("By {name}:\n\n{text}\n"));
        figures.insert((*key).to_owned(), json!(clock));
    }
    // The fast path against its floor: the same tracepoints with programs
    // that return at once (what any program there costs).
    for ((key, name), ns) in CLOCKS.iter().zip(&results.ns) {
        let (text, clock) = over_floor(ns);
        tables.push_str(&format!(
            "The fast path over its floor (do-nothing programs on the same {} \
             tracepoints), by {name}:\n\n{text}\n",
            2 * programs::SOCK_SYSCALLS.len()
        ));
        figures.insert(format!("{key}_over_floor"), json!(clock));
    }
    let checks = "Each round checks that the connection of *not tracked* was not tracked, \
                  that those of *not HTTP* and *HTTP* were tracked with that protocol and \
                  every byte counted, that every HTTP byte (and no other) was copied and \
                  drained, and that the ring never filled; and that no other BPF program \
                  was loaded or unloaded during the round (one attached syscall tracepoint \
                  sends every task's syscalls through the slow path, untraced cases \
                  included). A round that fails either is left out, and more rounds are \
                  run, up to twice the rounds asked for.";
    let left_out = if results.left_out.is_empty() {
        format!("{} rounds run, none left out.", results.run)
    } else {
        format!(
            "{} rounds run; left out{}:\n\n{}",
            results.run,
            if results.kept_all {
                " (but **every round failed, and all are reported**: the figures are \
                 suspect)"
            } else {
                ""
            },
            results
                .left_out
                .iter()
                .map(|f| format!("- {f}\n"))
                .collect::<String>()
        )
    };
    report.section(
        "overhead",
        "Socket tracing: cost to the traced processes",
        &format!(
            "One thread of the bench makes each round's syscalls: for TCP, a `write()` of \
             {size} bytes on one end of a loopback connection and a `read()` of them on the \
             other; for the file, a `read()` of {size} bytes of a file in the page cache; for \
             the pipe, a `write()` and a `read()` of {size} bytes. *Attached*: the socket \
             programs on the {tracepoints} syscall tracepoints, this process traced like any other, its \
             ring drained by a thread of the bench as the agent drains it. *Not tracked*: a \
             connection made before attaching (every call takes the fast path, as every \
             read and write of every other file on the node does); *not HTTP*: made after, \
             binary bytes (counted, never copied); *HTTP*: made after, an HTTP/1.1 request \
             of the same size (every call copied to the ring). {tcp} TCP rounds and {file} \
             file or pipe rounds per measurement, {rounds} rounds kept, untraced and attached \
             cases side by side in each (alternately first) in rotating order; ns per round \
             is the median, ratios and added ns are per round against that round's untraced \
             case doing the same work, and their medians. Each case is timed twice: by the \
             measuring thread's CPU time (its syscalls, the programs they run and the \
             loopback's softirq work done on its way, but not the time it waited while other \
             threads ran: the machine is shared, and the drain thread runs meanwhile), and by \
             elapsed time, which holds that wait too. Not part of any figure: loading and \
             attaching took {attach:.0} ms, and the drain thread (the agent's side) spent \
             {drain:.0} ns of CPU per record it drained (medians).\n\n{tables}{checks} {left_out}",
            size = args.size,
            tracepoints = 2 * programs::SOCK_SYSCALLS.len(),
            tcp = args.iterations,
            file = args.file_iterations,
            attach = median(results.attach_ms.clone()),
            drain = median(results.drain_ns_per_record.clone()),
        ),
        json!({
            "rounds": rounds,
            "size": args.size,
            "tcp_iterations": args.iterations,
            "file_iterations": args.file_iterations,
            "attach_ms": median(results.attach_ms.clone()),
            "drain_cpu_ns_per_record": median(results.drain_ns_per_record.clone()),
            "rounds_run": results.run,
            "left_out": results.left_out,
            "every_round_left_out": results.kept_all,
            "cpu": figures.remove("cpu"),
            "wall": figures.remove("wall"),
        }),
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rounds == 0 || args.iterations == 0 || args.file_iterations == 0 {
        bail!("--rounds, --iterations and --file-iterations must be at least 1");
    }
    let started = Instant::now();
    preflight::check_privileges()?;
    let mut report = Report::on_this_machine("Socket tracing benchmark", "sonde-sockets-bench");
    let mut work = Work::new(&args)?;
    let results = run(&args, &mut work)?;
    drop(work);
    section(&mut report, &args, &results);
    report.finish(args.out.clone(), &args.name, started)?;
    Ok(())
}
