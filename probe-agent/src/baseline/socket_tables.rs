//! `sonde.http_events` and `sonde.conn_stats`, from the socket programs
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
    http_events::{ExchangeSide, HttpRows},
    network_stats::cgroup_paths,
    pods::{PodDirectory, PodSource},
};

/// How the socket tables are collected.
#[derive(Clone, Debug)]
pub struct SocketTablesConfig {
    pub http_events: bool,
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
    /// The parser, and whether it reads the TLS plaintext.
    http: Option<(HttpConnection, bool)>,
    /// Bytes accounted for, by `[tls][direction]`.
    position: [[u64; 2]; 2],
    /// The kernel's `CLOCK_MONOTONIC` time of the last record.
    last_ktime: u64,
    closed: bool,
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
            http: None,
            position: [[0; 2]; 2],
            last_ktime: event.record.header.ktime_ns,
            closed: false,
        }
    }

    fn local(&self) -> Option<SocketAddr> {
        self.ends.map(|e| e.local)
    }

    fn remote(&self) -> Option<SocketAddr> {
        self.ends.map(|e| e.remote).or(self.peer)
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
    fn get(&mut self, cgroup_id: u64) -> Option<&ContainerIdentity> {
        let (Some(pods), Some(root)) = (&self.pods, &self.cgroup_root) else {
            return None;
        };
        if !self.known.contains_key(&cgroup_id)
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
        self.known.get(&cgroup_id).and_then(Option::as_ref)
    }
}

/// The socket tables' state, owned by their thread.
pub struct SocketTables {
    trace: SocketTrace,
    tls: Option<TlsRequester>,
    store: TableStore,
    node: String,
    config: SocketTablesConfig,
    metrics: BaselineMetrics,
    clock: WallClock,
    conns: HashMap<u64, Conn>,
    finished: HashSet<u64>,
    finished_order: VecDeque<u64>,
    addresses: AddressBook,
    identities: Identities,
    http_rows: HttpRows,
    conn_rows: ConnRows,
    exchanges: Vec<HttpExchange>,
    kernel_conns: Vec<(u64, SockConn)>,
    kernel_counters: probe_capture::sockets::SockCounters,
    /// Processes looked at for OpenSSL, and the libraries traced by
    /// (device, inode).
    tls_scanned: HashSet<u32>,
    tls_libraries: HashSet<(u64, u64)>,
    tls_scan_at: Option<Instant>,
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
        Self {
            trace,
            tls,
            store,
            node: node.to_owned(),
            config,
            metrics,
            clock: WallClock::now(),
            conns: HashMap::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            addresses: AddressBook::new(Path::new("/proc")),
            identities,
            http_rows: HttpRows::default(),
            conn_rows: ConnRows::default(),
            exchanges: Vec::new(),
            kernel_conns: Vec::new(),
            kernel_counters: Default::default(),
            tls_scanned: HashSet::new(),
            tls_libraries: HashSet::new(),
            tls_scan_at: None,
        }
    }

    /// Runs until `stop`: drains every drain interval, samples connections
    /// every `conn_stats_interval`, looks for new OpenSSL libraries every
    /// second.
    pub fn run(mut self, stop: &ShutdownSignal) {
        let mut next_sample = Instant::now();
        while !stop.is_triggered() {
            self.scan_tls();
            self.drain();
            if Instant::now() >= next_sample {
                self.sample();
                next_sample = Instant::now() + self.config.conn_stats_interval;
            }
            std::thread::sleep(self.config.drain_interval);
        }
        self.drain();
    }

    /// Takes every record in the ring; appends the exchanges finished.
    pub fn drain(&mut self) {
        self.addresses.next_round();
        // The connection of each exchange finished, in order.
        let mut owners = Vec::new();
        // Decoded records borrow the ring: handle each before the next.
        let (_, bad) = {
            let Self {
                trace,
                conns,
                finished,
                addresses,
                config,
                exchanges,
                metrics,
                ..
            } = self;
            trace.drain(|event| {
                handle(
                    event, conns, finished, addresses, config, exchanges, metrics,
                );
                owners.resize(exchanges.len(), event.record.conn_id);
            })
        };
        self.metrics
            .dropped(BaselineTable::HttpEvents, "undecodable", bad);
        self.emit_exchanges(&owners);
        self.count_kernel_losses();
        self.flush_http();
    }

    /// Turns the exchanges `handle` finished (one connection id per
    /// exchange, in order) into rows.
    fn emit_exchanges(&mut self, owners: &[u64]) {
        let exchanges = std::mem::take(&mut self.exchanges);
        for (exchange, conn_id) in exchanges.iter().zip(owners) {
            let Some(conn) = self.conns.get(conn_id) else {
                continue;
            };
            let Some((parser, tls)) = &conn.http else {
                continue;
            };
            let end = if exchange.resp_end_ns > 0 {
                exchange.resp_end_ns
            } else {
                conn.last_ktime
            };
            let role = match parser.role() {
                Role::Client => "client",
                Role::Server => "server",
                Role::Unknown => "unknown",
            };
            let identity = self.identities.get(conn.cgroup_id).cloned();
            self.http_rows.append(
                &RowSource {
                    time_ns: self.clock.to_unix_ns(end),
                    node: &self.node,
                    pid: conn.pid,
                    tid: conn.tid,
                    comm: &conn.comm,
                    cgroup_id: conn.cgroup_id,
                    identity: identity.as_ref(),
                },
                &ExchangeSide {
                    local: conn.local(),
                    remote: conn.remote(),
                    role,
                    encrypted: *tls,
                },
                exchange,
            );
        }
        self.exchanges = exchanges;
        self.exchanges.clear();
    }

    fn flush_http(&mut self) {
        if self.http_rows.is_empty() || !self.config.http_events {
            return;
        }
        let rows = self.http_rows.len() as u64;
        let table = BaselineTable::HttpEvents;
        match self.http_rows.finish() {
            Ok(batch) => append(&self.store, &self.metrics, table, batch, rows),
            Err(e) => {
                self.metrics.dropped(table, "store", rows);
                warn!(table = %table.table_name(), "baseline rows not built: {e}");
            }
        }
    }

    /// Adds what the kernel counted since the last drain to the metrics.
    fn count_kernel_losses(&mut self) {
        let now = self.trace.counters();
        let before = self.kernel_counters;
        let table = BaselineTable::HttpEvents;
        self.metrics.dropped(
            table,
            "ring_full",
            now.ring_full.saturating_sub(before.ring_full),
        );
        self.metrics.dropped(
            table,
            "tls_no_socket",
            now.tls_no_socket.saturating_sub(before.tls_no_socket),
        );
        self.metrics
            .uncopied_bytes
            .inc_by(now.uncopied_bytes.saturating_sub(before.uncopied_bytes));
        self.kernel_counters = now;
    }

    /// One `sonde.conn_stats` row per connection; connections closed (or
    /// whose process exited) since the last sample get their last row and
    /// are forgotten.
    pub fn sample(&mut self) {
        let started = Instant::now();
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
        for (id, conn) in &self.conns {
            if conn.closed {
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
            if let Some(conn) = self.conns.get_mut(&id) {
                if let Some((parser, _)) = &mut conn.http {
                    parser.close(conn.last_ktime, &mut self.exchanges);
                }
                conn.closed = true;
            }
            let owners = vec![id; self.exchanges.len()];
            self.emit_exchanges(&owners);
        }
        self.count_parser_losses();
        self.flush_http();
        if self.config.conn_stats {
            let now_ns = self.store.now_ns();
            // Tracked by the kernel, known here.
            for (id, conn) in &mut self.conns {
                if let Some((_, kernel)) = in_kernel.get(id) {
                    conn.bytes_sent = kernel.bytes_sent;
                    conn.bytes_recv = kernel.bytes_recv;
                    conn.protocol = kernel.protocol;
                }
            }
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in &ids {
                let Some(conn) = self.conns.get(id) else {
                    continue;
                };
                let identity = self.identities.get(conn.cgroup_id).cloned();
                self.conn_rows.append(
                    &RowSource {
                        time_ns: now_ns,
                        node: &self.node,
                        pid: conn.pid,
                        tid: conn.tid,
                        comm: &conn.comm,
                        cgroup_id: conn.cgroup_id,
                        identity: identity.as_ref(),
                    },
                    &ConnSample {
                        local: conn.local(),
                        remote: conn.remote(),
                        role: conn.role,
                        protocol: conn.protocol,
                        bytes_sent: conn.bytes_sent,
                        bytes_recv: conn.bytes_recv,
                        open: !conn.closed,
                    },
                );
            }
            let rows = self.conn_rows.len() as u64;
            let table = BaselineTable::ConnStats;
            match self.conn_rows.finish() {
                Ok(batch) if rows > 0 => append(&self.store, &self.metrics, table, batch, rows),
                Ok(_) => {}
                Err(e) => {
                    self.metrics.dropped(table, "store", rows);
                    warn!(table = %table.table_name(), "baseline rows not built: {e}");
                }
            }
            self.metrics.sampled(table, started.elapsed());
        }
        let closed: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.closed)
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.finish(id);
        }
    }

    /// Forgets a finished connection, remembering its id for a while.
    fn finish(&mut self, id: u64) {
        if let Some(mut conn) = self.conns.remove(&id)
            && let Some((parser, _)) = &mut conn.http
        {
            let counters = parser.take_counters();
            count_parser(&self.metrics, &counters);
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

    fn count_parser_losses(&mut self) {
        for conn in self.conns.values_mut() {
            if let Some((parser, _)) = &mut conn.http {
                let counters = parser.take_counters();
                count_parser(&self.metrics, &counters);
            }
        }
    }

    /// Asks the drive thread to trace the OpenSSL library of every process
    /// not looked at before (each distinct file once).
    fn scan_tls(&mut self) {
        let Some(tls) = &self.tls else { return };
        if self
            .tls_scan_at
            .is_some_and(|at| at.elapsed() < TLS_SCAN_INTERVAL)
        {
            return;
        }
        self.tls_scan_at = Some(Instant::now());
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
            if pid == std::process::id() || !self.tls_scanned.insert(pid) {
                continue;
            }
            for path in openssl_libraries(pid) {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let file = (meta.dev(), meta.ino());
                if self.tls_libraries.contains(&file) {
                    continue;
                }
                if self.tls_libraries.len() >= self.config.max_tls_libraries {
                    self.metrics
                        .dropped(BaselineTable::HttpEvents, "tls_library_limit", 1);
                    continue;
                }
                self.tls_libraries.insert(file);
                tls.request(path);
            }
        }
        self.tls_scanned.retain(|pid| alive.contains(pid));
        for (library, outcome) in tls.outcomes() {
            match outcome {
                Ok(()) => {
                    self.metrics.tls_libraries.inc();
                    info!(library = %library.display(), "tracing TLS plaintext through OpenSSL");
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

/// Handles one record; the exchanges it finished are pushed onto
/// `exchanges`.
fn handle(
    event: &SockEvent<'_>,
    conns: &mut HashMap<u64, Conn>,
    finished: &HashSet<u64>,
    addresses: &mut AddressBook,
    config: &SocketTablesConfig,
    exchanges: &mut Vec<HttpExchange>,
    metrics: &BaselineMetrics,
) {
    let r = &event.record;
    if finished.contains(&r.conn_id) {
        return;
    }
    if !conns.contains_key(&r.conn_id) && conns.len() >= config.max_connections {
        metrics.dropped(BaselineTable::ConnStats, "connection_limit", 1);
        return;
    }
    let conn = conns.entry(r.conn_id).or_insert_with(|| Conn::new(event));
    conn.last_ktime = r.header.ktime_ns;
    if r.tls == 0 {
        conn.bytes_sent = conn.bytes_sent.max(r.bytes_sent);
        conn.bytes_recv = conn.bytes_recv.max(r.bytes_recv);
        conn.protocol = r.protocol;
    }
    match r.header.kind {
        sock::KIND_OPEN => {
            conn.peer = event.peer();
            conn.ends = addresses.lookup(conn.pid, conn.fd);
            // Closed already: an accepted connection's local end is its
            // listening socket's (which outlives it).
            if conn.ends.is_none()
                && let (Some(listener), Some(peer)) = (event.listener(), conn.peer)
                && let Some(listening) = addresses.lookup(conn.pid, listener)
            {
                conn.ends = Some(Ends {
                    local: listening.local,
                    remote: peer,
                });
            }
        }
        sock::KIND_DATA => {
            if conn.ends.is_none() {
                conn.ends = addresses.lookup(conn.pid, conn.fd);
            }
            if config.http_events {
                feed(conn, event, &config.http, exchanges);
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
                                exchanges,
                            );
                            *position = total;
                        }
                    }
                }
                parser.close(r.header.ktime_ns, exchanges);
            }
            conn.closed = true;
        }
        _ => {}
    }
}

fn direction(d: usize) -> Direction {
    if d == 0 {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

/// Feeds a data record to the connection's parser, with the bytes the
/// record's totals say were missed before it as a gap.
fn feed(conn: &mut Conn, event: &SockEvent<'_>, http: &HttpConfig, out: &mut Vec<HttpExchange>) {
    let r = &event.record;
    let tls = r.tls == 1;
    let role = match conn.role {
        sock::ROLE_CLIENT => Role::Client,
        sock::ROLE_SERVER => Role::Server,
        _ => Role::Unknown,
    };
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

fn count_parser(metrics: &BaselineMetrics, c: &HttpCounters) {
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

fn append(
    store: &TableStore,
    metrics: &BaselineMetrics,
    table: BaselineTable,
    batch: arrow_array::RecordBatch,
    rows: u64,
) {
    let name: TableName = table.table_name();
    match store.append(&name, batch) {
        Ok(()) => metrics.rows(table, rows),
        Err(e) => {
            metrics.dropped(table, "store", rows);
            warn!(table = %name, "baseline rows not stored: {}", chain(&e));
        }
    }
}
