//! `sonde.http_events`, `sonde.dns_events` and `sonde.conn_stats`, from the socket programs
//! ([`SocketTrace`]), on a thread of their own (`sonde-sockets`): it drains
//! the socket ring, keeps each connection's state (who opened it, its
//! addresses, its HTTP parser and how many bytes of each stream it has
//! accounted for), appends the finished exchanges every drain, and samples
//! every connection on its interval.
//!
//! Nothing is lost silently: records the kernel could not write, bytes it
//! did not copy, messages the parser refused and requests left unpaired
//! are counted on `/metrics` (see `docs/baseline.md`). A stream's position
//! is checked against the totals every record carries, so bytes missed for
//! any reason reach the parser as a gap of the right length, never as a
//! wrong pairing.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crds::TableName;
use probe_capture::{
    clock::WallClock,
    identity::ContainerIdentity,
    sockets::{SockConn, SockEvent, SocketTrace, TlsRequester},
};
use probe_common::sock;
use probe_protocols::{
    dns::{DnsConfig, DnsCounters, DnsExchange, DnsTracker},
    http::{HttpConfig, HttpConnection, HttpCounters, HttpExchange},
    stream::{Direction, Role},
};
use probe_store::TableStore;
use sonde_daemon::{ShutdownSignal, chain};
use tracing::{info, warn};

use super::{
    BaselineMetrics, BaselineTable,
    addresses::{AddressBook, Ends},
    columns::RowSource,
    conn_stats::{ConnRows, ConnSample},
    dns_events::{DnsRows, UNANSWERED_AFTER},
    http_events::{ExchangeSide, HttpRows},
    network_stats::cgroup_paths,
    pods::{PodDirectory, PodSource},
};

/// How the socket tables are collected.
#[derive(Clone, Debug)]
pub struct SocketTablesConfig {
    pub http_events: bool,
    pub dns_events: bool,
    pub conn_stats: bool,
    pub http: HttpConfig,
    pub conn_stats_interval: Duration,
    /// How often the ring is drained.
    pub drain_interval: Duration,
    /// Connections whose state the agent keeps at once; records of
    /// further ones are counted and left out.
    pub max_connections: usize,
    /// Distinct OpenSSL libraries traced at most.
    pub max_tls_libraries: usize,
    pub cgroup_root: Option<PathBuf>,
}

/// Finished connections remembered, so a record that comes after the
/// agent gave up on its connection does not start it again.
const FINISHED_MEMORY: usize = 65536;

/// How often new processes are looked at for OpenSSL libraries.
const TLS_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Largest DNS message reassembled from a call's records.
const MAX_DATAGRAM: usize = 65536;

struct Conn {
    pid: u32,
    tid: u32,
    comm: String,
    cgroup_id: u64,
    fd: u32,
    role: u8,
    protocol: u8,
    bytes_sent: u64,
    bytes_recv: u64,
    peer: Option<SocketAddr>,
    ends: Option<Ends>,
    /// Lookups of `ends` in `/proc` made: at the open and at the first data
    /// record, no more (a connection gone by then stays without them).
    lookups: u8,
    /// The parser, and whether it reads the TLS plaintext.
    http: Option<(HttpConnection, bool)>,
    /// Bytes accounted for, by `[tls][direction]`.
    position: [[u64; 2]; 2],
    /// A DNS message being reassembled from a call's records.
    datagram: Vec<u8>,
    /// The kernel's `CLOCK_MONOTONIC` time of the last record.
    last_ktime: u64,
    /// When the connection closed (kernel time), if it did.
    closed_at: Option<u64>,
    /// Whether `conn_stats` has had the row of its close.
    reported_closed: bool,
}

impl Conn {
    fn new(event: &SockEvent<'_>) -> Self {
        Self {
            pid: event.pid(),
            tid: event.tid(),
            comm: String::from_utf8_lossy(event.comm()).into_owned(),
            cgroup_id: event.record.header.cgroup_id,
            fd: event.record.fd,
            role: event.record.role,
            protocol: event.record.protocol,
            bytes_sent: 0,
            bytes_recv: 0,
            peer: None,
            ends: None,
            lookups: 0,
            http: None,
            position: [[0; 2]; 2],
            datagram: Vec::new(),
            last_ktime: event.record.header.ktime_ns,
            closed_at: None,
            reported_closed: false,
        }
    }

    fn local(&self) -> Option<SocketAddr> {
        self.ends.map(|e| e.local)
    }

    fn remote(&self) -> Option<SocketAddr> {
        self.ends.map(|e| e.remote).or(self.peer)
    }

    fn role_name(&self) -> &'static str {
        let role = match &self.http {
            Some((parser, _)) => parser.role(),
            None => role(self.role),
        };
        match role {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        }
    }
}

fn role(role: u8) -> Role {
    match role {
        sock::ROLE_CLIENT => Role::Client,
        sock::ROLE_SERVER => Role::Server,
        _ => Role::Unknown,
    }
}

/// Cgroup id → pod container, refreshed from the pods and the cgroup tree
/// when an unknown id shows up (at most once a second).
struct Identities {
    pods: Option<Arc<dyn PodSource>>,
    cgroup_root: Option<PathBuf>,
    known: HashMap<u64, Option<ContainerIdentity>>,
    refreshed: Option<Instant>,
}

impl Identities {
    /// The pod container of `cgroup_id`. A cgroup not known, or known as
    /// no pod's, is looked up again (once a second at most): a new pod's
    /// cgroup can exist before the pod's status names its container.
    fn get(&mut self, cgroup_id: u64) -> Option<&ContainerIdentity> {
        let (Some(pods), Some(root)) = (&self.pods, &self.cgroup_root) else {
            return None;
        };
        if self.known.get(&cgroup_id).is_none_or(Option::is_none)
            && self
                .refreshed
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            let directory = PodDirectory::from_pods(&pods.pods());
            self.known = cgroup_paths(root)
                .into_iter()
                .map(|(id, path)| (id, directory.identity(&path)))
                .collect();
            self.refreshed = Some(Instant::now());
        }
        self.known.get(&cgroup_id)?.as_ref()
    }
}

/// The connections and what they finished, fed record by record.
struct Connections {
    config: SocketTablesConfig,
    metrics: BaselineMetrics,
    conns: HashMap<u64, Conn>,
    finished: HashSet<u64>,
    finished_order: VecDeque<u64>,
    addresses: AddressBook,
    dns: DnsTracker<u64>,
    /// HTTP exchanges finished, with their connection.
    http_done: Vec<(u64, HttpExchange)>,
    /// DNS exchanges finished, with their connection.
    dns_done: Vec<(u64, DnsExchange)>,
    scratch: Vec<HttpExchange>,
}

impl Connections {
    fn handle(&mut self, event: &SockEvent<'_>) {
        let r = &event.record;
        if self.finished.contains(&r.conn_id) {
            return;
        }
        if !self.conns.contains_key(&r.conn_id) && self.conns.len() >= self.config.max_connections {
            self.metrics
                .dropped(BaselineTable::ConnStats, "connection_limit", 1);
            return;
        }
        let conn = self
            .conns
            .entry(r.conn_id)
            .or_insert_with(|| Conn::new(event));
        conn.last_ktime = r.header.ktime_ns;
        if r.header.kind == sock::KIND_DATA {
            // Rows name the thread whose call finished them.
            conn.tid = event.tid();
        }
        if r.tls == 0 {
            conn.bytes_sent = conn.bytes_sent.max(r.bytes_sent);
            conn.bytes_recv = conn.bytes_recv.max(r.bytes_recv);
            conn.protocol = r.protocol;
        }
        match r.header.kind {
            sock::KIND_OPEN => {
                conn.peer = event.peer();
                conn.ends = self.addresses.lookup(conn.pid, conn.fd);
                conn.lookups += 1;
                // Closed already: an accepted connection's local end is
                // its listening socket's (which outlives it).
                if conn.ends.is_none()
                    && let (Some(listener), Some(peer)) = (event.listener(), conn.peer)
                    && let Some(listening) = self.addresses.lookup(conn.pid, listener)
                {
                    conn.ends = Some(Ends {
                        local: listening.local,
                        remote: peer,
                    });
                }
            }
            sock::KIND_DATA => {
                if conn.ends.is_none() && conn.lookups < 2 {
                    conn.ends = self.addresses.lookup(conn.pid, conn.fd);
                    conn.lookups = 2;
                }
                match r.protocol {
                    sock::PROTO_HTTP if self.config.http_events => {
                        feed_http(conn, event, &self.config.http, &mut self.scratch);
                    }
                    sock::PROTO_DNS if self.config.dns_events => {
                        if let Some(message) = reassemble(conn, event) {
                            let time = r.header.ktime_ns;
                            if r.direction == sock::EGRESS {
                                self.dns.query(r.conn_id, time, message);
                            } else if let Some(x) = self.dns.response(r.conn_id, time, message) {
                                self.dns_done.push((r.conn_id, x));
                            }
                        } else if r.last == 1 {
                            self.metrics
                                .dropped(BaselineTable::DnsEvents, "message_not_copied", 1);
                        }
                    }
                    _ => {}
                }
            }
            sock::KIND_CLOSE => {
                if let Some((parser, tls)) = &mut conn.http {
                    // Plain streams end at the totals the close carries.
                    if !*tls {
                        for (d, total) in [(0, r.bytes_sent), (1, r.bytes_recv)] {
                            let position = &mut conn.position[0][d];
                            if total > *position {
                                parser.gap(
                                    direction(d),
                                    r.header.ktime_ns,
                                    total - *position,
                                    &mut self.scratch,
                                );
                                *position = total;
                            }
                        }
                    }
                    parser.close(r.header.ktime_ns, &mut self.scratch);
                }
                conn.closed_at = Some(r.header.ktime_ns);
            }
            _ => {}
        }
        self.http_done
            .extend(self.scratch.drain(..).map(|x| (r.conn_id, x)));
    }

    /// Forgets a finished connection, remembering its id for a while.
    fn finish(&mut self, id: u64) {
        if let Some(mut conn) = self.conns.remove(&id)
            && let Some((parser, _)) = &mut conn.http
        {
            count_http(&self.metrics, &parser.take_counters());
        }
        if self.finished.insert(id) {
            self.finished_order.push_back(id);
        }
        while self.finished_order.len() > FINISHED_MEMORY {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    /// The connection ended without a close the programs saw.
    fn end(&mut self, id: u64) {
        if let Some(conn) = self.conns.get_mut(&id) {
            if let Some((parser, _)) = &mut conn.http {
                parser.close(conn.last_ktime, &mut self.scratch);
            }
            conn.closed_at = Some(conn.last_ktime);
            self.http_done
                .extend(self.scratch.drain(..).map(|x| (id, x)));
        }
    }
}

/// The socket tables' state, owned by their thread.
pub struct SocketTables {
    trace: SocketTrace,
    connections: Connections,
    tls: Option<TlsScan>,
    store: TableStore,
    node: String,
    clock: WallClock,
    identities: Identities,
    http_rows: HttpRows,
    dns_rows: DnsRows,
    conn_rows: ConnRows,
    kernel_conns: Vec<(u64, SockConn)>,
    kernel_counters: probe_capture::sockets::SockCounters,
}

impl SocketTables {
    pub fn new(
        trace: SocketTrace,
        tls: Option<TlsRequester>,
        store: TableStore,
        node: &str,
        config: SocketTablesConfig,
        pods: Option<Arc<dyn PodSource>>,
        metrics: BaselineMetrics,
    ) -> Self {
        let identities = Identities {
            pods,
            cgroup_root: config.cgroup_root.clone(),
            known: HashMap::new(),
            refreshed: None,
        };
        let tls = tls.map(|requester| TlsScan {
            requester,
            max_libraries: config.max_tls_libraries,
            scanned: HashSet::new(),
            libraries: HashSet::new(),
            asked: HashMap::new(),
            at: None,
            metrics: metrics.clone(),
        });
        Self {
            trace,
            connections: Connections {
                config,
                metrics,
                conns: HashMap::new(),
                finished: HashSet::new(),
                finished_order: VecDeque::new(),
                addresses: AddressBook::new(Path::new("/proc")),
                dns: DnsTracker::new(&DnsConfig::default()),
                http_done: Vec::new(),
                dns_done: Vec::new(),
                scratch: Vec::new(),
            },
            tls,
            store,
            node: node.to_owned(),
            clock: WallClock::now(),
            identities,
            http_rows: HttpRows::default(),
            dns_rows: DnsRows::default(),
            conn_rows: ConnRows::default(),
            kernel_conns: Vec::new(),
            kernel_counters: Default::default(),
        }
    }

    fn config(&self) -> &SocketTablesConfig {
        &self.connections.config
    }

    fn metrics(&self) -> &BaselineMetrics {
        &self.connections.metrics
    }

    /// Runs until `stop`: drains every drain interval, samples connections
    /// every `conn_stats_interval`, looks for new OpenSSL libraries every
    /// second.
    pub fn run(mut self, stop: &ShutdownSignal) {
        let mut next_sample = Instant::now();
        while !stop.is_triggered() {
            if let Some(tls) = &mut self.tls {
                tls.scan();
            }
            self.drain();
            if Instant::now() >= next_sample {
                self.sample();
                next_sample = Instant::now() + self.config().conn_stats_interval;
            }
            std::thread::sleep(self.config().drain_interval);
        }
        self.drain();
    }

    /// Takes every record in the ring; appends the exchanges finished.
    pub fn drain(&mut self) {
        self.connections.addresses.next_round();
        let connections = &mut self.connections;
        let (_, bad) = self.trace.drain(|event| connections.handle(event));
        self.metrics()
            .dropped(BaselineTable::HttpEvents, "undecodable", bad);
        self.emit();
        self.count_kernel_losses();
    }

    /// Turns the exchanges finished into rows and stores them.
    fn emit(&mut self) {
        let Self {
            connections,
            identities,
            clock,
            node,
            http_rows,
            dns_rows,
            ..
        } = self;
        for (id, exchange) in connections.http_done.drain(..) {
            let Some(conn) = connections.conns.get(&id) else {
                continue;
            };
            let end = if exchange.resp_end_ns > 0 {
                exchange.resp_end_ns
            } else {
                conn.last_ktime
            };
            let identity = identities.get(conn.cgroup_id);
            http_rows.append(
                &source(conn, clock.to_unix_ns(end), node, identity),
                &ExchangeSide {
                    local: conn.local(),
                    remote: conn.remote(),
                    role: conn.role_name(),
                    encrypted: conn.http.as_ref().is_some_and(|(_, tls)| *tls),
                },
                &exchange,
            );
        }
        for (id, exchange) in connections.dns_done.drain(..) {
            let Some(conn) = connections.conns.get(&id) else {
                continue;
            };
            let end = if exchange.resp_time_ns > 0 {
                exchange.resp_time_ns
            } else {
                conn.last_ktime.max(exchange.req_time_ns)
            };
            let identity = identities.get(conn.cgroup_id);
            dns_rows.append(
                &source(conn, clock.to_unix_ns(end), node, identity),
                &ExchangeSide {
                    local: conn.local(),
                    remote: conn.remote(),
                    role: conn.role_name(),
                    encrypted: false,
                },
                &exchange,
            );
        }
        let (store, metrics) = (&self.store, &self.connections.metrics);
        if !self.http_rows.is_empty() {
            let rows = self.http_rows.len() as u64;
            store_batch(
                store,
                metrics,
                BaselineTable::HttpEvents,
                self.http_rows.finish(),
                rows,
            );
        }
        if !self.dns_rows.is_empty() {
            let rows = self.dns_rows.len() as u64;
            store_batch(
                store,
                metrics,
                BaselineTable::DnsEvents,
                self.dns_rows.finish(),
                rows,
            );
        }
    }

    /// Adds what the kernel counted since the last drain to the metrics.
    fn count_kernel_losses(&mut self) {
        let now = self.trace.counters();
        let before = self.kernel_counters;
        let metrics = &self.connections.metrics;
        // Records of either protocol: the ring is shared.
        metrics.dropped(
            BaselineTable::HttpEvents,
            "ring_full",
            now.ring_full.saturating_sub(before.ring_full),
        );
        metrics.dropped(
            BaselineTable::HttpEvents,
            "tls_no_socket",
            now.tls_no_socket.saturating_sub(before.tls_no_socket),
        );
        metrics
            .uncopied_bytes
            .inc_by(now.uncopied_bytes.saturating_sub(before.uncopied_bytes));
        self.kernel_counters = now;
    }

    /// One `sonde.conn_stats` row per connection; a connection closed (or
    /// whose process exited) has one last row. DNS queries unanswered for
    /// [`UNANSWERED_AFTER`] become rows; connections closed longer ago are
    /// forgotten.
    pub fn sample(&mut self) {
        let started = Instant::now();
        let now = monotonic_ns();
        self.trace.connections(&mut self.kernel_conns);
        let in_kernel: HashMap<u64, (u64, SockConn)> = self
            .kernel_conns
            .iter()
            .map(|(key, conn)| (conn.id, (*key, *conn)))
            .collect();
        // Connections the kernel no longer tracks without a close seen:
        // the descriptor was reused or closed another way; and tracked ones
        // whose process exited (exit closes descriptors without a call).
        let mut gone = Vec::new();
        for (id, conn) in &self.connections.conns {
            if conn.closed_at.is_some() {
                continue;
            }
            match in_kernel.get(id) {
                None => gone.push((*id, None)),
                Some((key, _)) if !Path::new(&format!("/proc/{}", conn.pid)).exists() => {
                    gone.push((*id, Some(*key)));
                }
                Some(_) => {}
            }
        }
        for (id, key) in gone {
            if let Some(key) = key {
                self.trace.forget(key);
            }
            self.connections.end(id);
        }
        let timeout = UNANSWERED_AFTER.as_nanos() as u64;
        // Each connection is a flow of its own.
        self.connections
            .dns
            .expire(now, timeout, &mut self.connections.dns_done);
        let conns = &mut self.connections.conns;
        for conn in conns.values_mut() {
            if let Some((parser, _)) = &mut conn.http {
                count_http(&self.connections.metrics, &parser.take_counters());
            }
        }
        count_dns(
            &self.connections.metrics,
            &self.connections.dns.take_counters(),
        );
        self.emit();
        if self.config().conn_stats {
            self.conn_stats(&in_kernel, started);
        }
        let done: Vec<u64> = self
            .connections
            .conns
            .iter()
            .filter(|(_, c)| {
                c.closed_at
                    .is_some_and(|at| now.saturating_sub(at) >= timeout)
                    && (c.reported_closed || !self.connections.config.conn_stats)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.connections.finish(id);
        }
    }

    fn conn_stats(&mut self, in_kernel: &HashMap<u64, (u64, SockConn)>, started: Instant) {
        let now_ns = self.store.now_ns();
        for (id, conn) in &mut self.connections.conns {
            if let Some((_, kernel)) = in_kernel.get(id) {
                conn.bytes_sent = kernel.bytes_sent;
                conn.bytes_recv = kernel.bytes_recv;
                conn.protocol = kernel.protocol;
            }
            if conn.reported_closed {
                continue;
            }
            let identity = self.identities.get(conn.cgroup_id);
            self.conn_rows.append(
                &source(conn, now_ns, &self.node, identity),
                &ConnSample {
                    local: conn.local(),
                    remote: conn.remote(),
                    role: conn.role,
                    protocol: conn.protocol,
                    bytes_sent: conn.bytes_sent,
                    bytes_recv: conn.bytes_recv,
                    open: conn.closed_at.is_none(),
                },
            );
            conn.reported_closed = conn.closed_at.is_some();
        }
        let table = BaselineTable::ConnStats;
        if !self.conn_rows.is_empty() {
            let rows = self.conn_rows.len() as u64;
            store_batch(
                &self.store,
                &self.connections.metrics,
                table,
                self.conn_rows.finish(),
                rows,
            );
        }
        self.connections.metrics.sampled(table, started.elapsed());
    }
}

/// The standard columns of a row about `conn`.
fn source<'a>(
    conn: &'a Conn,
    time_ns: i64,
    node: &'a str,
    identity: Option<&'a ContainerIdentity>,
) -> RowSource<'a> {
    RowSource {
        time_ns,
        node,
        pid: conn.pid,
        tid: conn.tid,
        comm: &conn.comm,
        cgroup_id: conn.cgroup_id,
        identity,
    }
}

/// `CLOCK_MONOTONIC` now, as the programs' `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// Finds the OpenSSL libraries processes map and asks the drive loop to
/// trace each distinct file once.
struct TlsScan {
    requester: TlsRequester,
    max_libraries: usize,
    /// Processes looked at already.
    scanned: HashSet<u32>,
    /// Libraries asked for, by (device, inode).
    libraries: HashSet<(u64, u64)>,
    /// Paths asked for and not answered yet, with their file.
    asked: HashMap<PathBuf, (u64, u64)>,
    at: Option<Instant>,
    metrics: BaselineMetrics,
}

impl TlsScan {
    /// Looks at the processes started since the last scan (at most once a
    /// second), and at what became of the libraries asked for.
    fn scan(&mut self) {
        for (library, outcome) in self.requester.outcomes() {
            let file = self.asked.remove(&library);
            match outcome {
                Ok(()) => {
                    self.metrics.tls_libraries.inc();
                    info!(library = %library.display(), "tracing TLS plaintext through OpenSSL");
                }
                // The process whose root led to it exited first: the next
                // process mapping the same file asks again.
                Err(_) if !library.exists() => {
                    if let Some(file) = file {
                        self.libraries.remove(&file);
                    }
                }
                Err(e) => {
                    self.metrics
                        .dropped(BaselineTable::HttpEvents, "tls_attach_failed", 1);
                    warn!(
                        library = %library.display(),
                        "cannot trace TLS through this OpenSSL library: {}",
                        chain(&e)
                    );
                }
            }
        }
        if self.at.is_some_and(|at| at.elapsed() < TLS_SCAN_INTERVAL) {
            return;
        }
        self.at = Some(Instant::now());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut alive = HashSet::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            alive.insert(pid);
            if pid == std::process::id() || !self.scanned.insert(pid) {
                continue;
            }
            for path in openssl_libraries(pid) {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let file = (meta.dev(), meta.ino());
                if self.libraries.contains(&file) {
                    continue;
                }
                if self.libraries.len() >= self.max_libraries {
                    self.metrics
                        .dropped(BaselineTable::HttpEvents, "tls_library_limit", 1);
                    continue;
                }
                self.libraries.insert(file);
                self.asked.insert(path.clone(), file);
                self.requester.request(path);
            }
        }
        self.scanned.retain(|pid| alive.contains(pid));
    }
}

/// The OpenSSL 3 libraries process `pid` has mapped, as paths through its
/// root (`/proc/<pid>/root/...`), so a container's own library is found.
fn openssl_libraries(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let is_libssl = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libssl.so.3"));
        if is_libssl {
            let through_root = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if !found.contains(&through_root) {
                found.push(through_root);
            }
        }
    }
    found
}

fn direction(d: usize) -> Direction {
    if d == 0 {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

/// Feeds a data record to the connection's HTTP parser, with the bytes the
/// record's totals say were missed before it as a gap.
fn feed_http(
    conn: &mut Conn,
    event: &SockEvent<'_>,
    http: &HttpConfig,
    out: &mut Vec<HttpExchange>,
) {
    let r = &event.record;
    let tls = r.tls == 1;
    let role = role(conn.role);
    let (parser, parser_tls) = conn
        .http
        .get_or_insert_with(|| (HttpConnection::new(role, http), tls));
    if *parser_tls != tls {
        return;
    }
    let d = usize::from(r.direction == sock::INGRESS);
    let dir = direction(d);
    let time = r.header.ktime_ns;
    let total = if d == 0 { r.bytes_sent } else { r.bytes_recv };
    let call_start = total.saturating_sub(u64::from(r.call_len));
    let at = call_start + u64::from(r.offset);
    let position = &mut conn.position[usize::from(tls)][d];
    if at > *position {
        parser.gap(dir, time, at - *position, out);
    }
    parser.data(dir, time, r.offset == 0, event.data, out);
    *position = at + event.data.len() as u64;
    if r.last == 1 {
        let end = call_start + u64::from(r.call_len);
        if end > *position {
            parser.gap(dir, time, end - *position, out);
            *position = end;
        }
    }
}

/// A DNS message: the bytes of one call, whole; `None` until the call's
/// last record, or when the kernel did not copy all of it.
fn reassemble<'a>(conn: &'a mut Conn, event: &'a SockEvent<'_>) -> Option<&'a [u8]> {
    let r = &event.record;
    if r.offset == 0 {
        conn.datagram.clear();
        if r.last == 1 {
            // The common case: one record holds the message.
            return (event.data.len() == r.call_len as usize).then_some(event.data);
        }
    } else if conn.datagram.len() != r.offset as usize {
        conn.datagram.clear();
        return None;
    }
    if conn.datagram.len() + event.data.len() <= MAX_DATAGRAM {
        conn.datagram.extend_from_slice(event.data);
    }
    (r.last == 1 && conn.datagram.len() == r.call_len as usize).then_some(&conn.datagram)
}

fn count_http(metrics: &BaselineMetrics, c: &HttpCounters) {
    let table = BaselineTable::HttpEvents;
    for (reason, count) in [
        ("unparseable_head", c.unparseable_heads),
        ("head_too_long", c.heads_too_long),
        ("lost_sync", c.lost_sync),
        ("response_without_request", c.responses_without_request),
        ("pending_overflow", c.pending_overflow),
        ("protocol_switch", c.upgrades),
        ("abandoned", c.abandoned),
    ] {
        metrics.dropped(table, reason, count);
    }
}

fn count_dns(metrics: &BaselineMetrics, c: &DnsCounters) {
    let table = BaselineTable::DnsEvents;
    for (reason, count) in [
        ("unparseable", c.unparseable),
        ("response_without_query", c.responses_without_query),
        ("evicted", c.evicted),
    ] {
        metrics.dropped(table, reason, count);
    }
}

fn store_batch(
    store: &TableStore,
    metrics: &BaselineMetrics,
    table: BaselineTable,
    batch: Result<arrow_array::RecordBatch, arrow_schema::ArrowError>,
    rows: u64,
) {
    let name: TableName = table.table_name();
    let stored = batch
        .map_err(|e| e.to_string())
        .and_then(|batch| store.append(&name, batch).map_err(|e| chain(&e)));
    match stored {
        Ok(()) => metrics.rows(table, rows),
        Err(e) => {
            metrics.dropped(table, "store", rows);
            warn!(table = %name, "baseline rows not stored: {e}");
        }
    }
}
