//! Baseline tables: data the agent collects from the moment it starts,
//! with no Tracepoint, in schema `sonde` of the same table store the
//! Flight server serves (so Retentions in namespace `sonde` bound them like
//! any table).
//!
//! Each table is switched on or off with `--baseline-tables` and sampled
//! on its own interval by a task on the async runtime's blocking pool,
//! never on the drive thread. Rows carry the standard columns; the pod
//! columns come from the process's cgroup ([`pods`]), so they are null in
//! standalone mode, as in Tracepoint tables.

mod addresses;
mod columns;
pub mod conn_stats;
pub mod dns_events;
pub mod http_events;
pub mod network_stats;
pub mod pods;
pub mod proc;
pub mod process_stats;
pub mod socket_tables;

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crds::{
    TableName,
    v1alpha1::{BaselineTableState, BaselineTableStatus},
};
use probe_capture::{
    net::NetStats,
    sockets::{SocketTrace, TlsRequester},
};
use probe_protocols::http::HttpConfig;
use probe_store::TableStore;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use sonde_daemon::{ShutdownSignal, chain};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::{
    network_stats::NetworkSampler,
    pods::{PodDirectory, PodSource},
    process_stats::{HostUnits, ProcessSampler},
    socket_tables::{SocketTables, SocketTablesConfig},
};

/// The schema every baseline table lives in.
pub const SCHEMA: &str = "sonde";

/// A table the agent fills without any resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BaselineTable {
    ProcessStats,
    NetworkStats,
    HttpEvents,
    DnsEvents,
    ConnStats,
}

impl BaselineTable {
    pub const ALL: [Self; 5] = [
        Self::ProcessStats,
        Self::NetworkStats,
        Self::HttpEvents,
        Self::DnsEvents,
        Self::ConnStats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ProcessStats => "process_stats",
            Self::NetworkStats => "network_stats",
            Self::HttpEvents => "http_events",
            Self::DnsEvents => "dns_events",
            Self::ConnStats => "conn_stats",
        }
    }

    /// Whether the table comes from the socket programs.
    pub fn from_sockets(self) -> bool {
        matches!(self, Self::HttpEvents | Self::DnsEvents | Self::ConnStats)
    }

    pub fn table_name(self) -> TableName {
        TableName::new(SCHEMA, self.name())
    }
}

/// The baseline tables switched on: `all` (the default), `none`, or a
/// comma-separated list of table names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaselineTables(Vec<BaselineTable>);

impl BaselineTables {
    pub fn contains(&self, table: BaselineTable) -> bool {
        self.0.contains(&table)
    }

    pub fn iter(&self) -> impl Iterator<Item = BaselineTable> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for BaselineTables {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => return Ok(Self(BaselineTable::ALL.to_vec())),
            "none" | "" => return Ok(Self(Vec::new())),
            _ => {}
        }
        let mut tables = Vec::new();
        for name in text.split(',').map(str::trim) {
            let table = BaselineTable::ALL
                .into_iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| {
                    let known: Vec<_> = BaselineTable::ALL.iter().map(|t| t.name()).collect();
                    format!(
                        "unknown baseline table {name:?}: use all, none, or a comma-separated \
                         list of {}",
                        known.join(", ")
                    )
                })?;
            if !tables.contains(&table) {
                tables.push(table);
            }
        }
        Ok(Self(tables))
    }
}

/// How the baseline tables are collected.
#[derive(Clone, Debug)]
pub struct BaselineConfig {
    pub tables: BaselineTables,
    pub process_stats_interval: Duration,
    pub process_stats_max: usize,
    pub network_stats_interval: Duration,
    pub conn_stats_interval: Duration,
    /// What `sonde.http_events` keeps of each message.
    pub http: HttpConfig,
    /// How often the socket programs' ring is drained.
    pub socket_drain_interval: Duration,
    /// The cgroup v2 hierarchy's root, for cgroup ids; `None`: ids are 0.
    pub cgroup_root: Option<PathBuf>,
}

/// Label of the per-table families.
type TableLabel = [(&'static str, &'static str); 1];
/// Labels of the dropped-rows family.
type DropLabels = [(&'static str, &'static str); 2];

/// The baseline tables' own metrics (`sonde_baseline_*`), counted once
/// per sample, never per row.
#[derive(Clone, Default)]
pub struct BaselineMetrics {
    samples: Family<TableLabel, Counter>,
    rows: Family<TableLabel, Counter>,
    dropped: Family<DropLabels, Counter>,
    sample_seconds: Family<TableLabel, Counter<f64>>,
    enabled: Family<TableLabel, Gauge>,
    uncopied_bytes: Counter,
    tls_libraries: Gauge,
    tls_available: Gauge,
}

impl BaselineMetrics {
    /// Registers the families under `sonde_baseline_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("baseline");
        registry.register(
            "samples",
            "Samples taken of a baseline table",
            self.samples.clone(),
        );
        registry.register(
            "rows",
            "Rows a baseline table's samples produced",
            self.rows.clone(),
        );
        registry.register(
            "dropped",
            "Items a baseline table left out, by reason: limit (over the per-sample cap), \
             vanished (the process exited while read), unreadable, store (rows the table store \
             refused), map_full (packets the kernel could not count: too many cgroups); for \
             http_events: ring_full (socket records the kernel could not write), \
             unparseable_head, head_too_long, lost_sync (bytes the parser needed were not \
             copied), response_without_request, pending_overflow, protocol_switch, abandoned, \
             tls_no_socket (TLS calls whose socket was not known), tls_attach_failed, \
             tls_library_limit, undecodable; for conn_stats: connection_limit",
            self.dropped.clone(),
        );
        registry.register(
            "uncopied_bytes",
            "Bytes of HTTP calls the kernel did not copy (past the records one call may fill, \
             or lost with a full ring); the parser counts them as body bytes or loses sync",
            self.uncopied_bytes.clone(),
        );
        registry.register(
            "tls_libraries",
            "OpenSSL libraries (distinct files) whose SSL_read/SSL_write are traced",
            self.tls_libraries.clone(),
        );
        registry.register(
            "tls_available",
            "Whether TLS plaintext can be traced on this node (1: uprobes can be made) or not (0)",
            self.tls_available.clone(),
        );
        registry.register(
            "sample_seconds",
            "Time spent taking a baseline table's samples (its collection cost)",
            self.sample_seconds.clone(),
        );
        registry.register(
            "enabled",
            "Whether a baseline table is collected on this node (1) or not (0)",
            self.enabled.clone(),
        );
    }

    fn rows(&self, table: BaselineTable, count: u64) {
        self.rows
            .get_or_create(&[("table", table.name())])
            .inc_by(count);
    }

    fn sampled(&self, table: BaselineTable, took: Duration) {
        let label = [("table", table.name())];
        self.samples.get_or_create(&label).inc();
        self.sample_seconds
            .get_or_create(&label)
            .inc_by(took.as_secs_f64());
    }

    fn dropped(&self, table: BaselineTable, reason: &'static str, count: u64) {
        if count > 0 {
            self.dropped
                .get_or_create(&[("table", table.name()), ("reason", reason)])
                .inc_by(count);
        }
    }
}

/// The kernel programs of the baseline tables, attached (before the drive
/// loop takes the engine), or why they are not.
pub struct BaselinePrograms {
    /// The traffic counters of `network_stats`.
    pub network: Result<NetStats, String>,
    /// The socket programs of `http_events`, `dns_events` and
    /// `conn_stats`, and the drive loop's OpenSSL requester.
    pub sockets: Result<(SocketTrace, TlsRequester), String>,
    /// Whether OpenSSL's plaintext can be traced here (uprobes), or why not.
    pub tls: Result<(), String>,
}

/// Creates the switched-on baseline tables in `store` and starts their
/// samplers; they stop at `stop`. `pods` names the pods on the node
/// (cluster mode); without it the identity columns stay null. `programs`
/// are the kernel programs the tables read, attached, or why they are not.
/// Returns the samplers' tasks and each table's state, for the node's
/// status.
pub fn start(
    store: TableStore,
    node: &str,
    config: &BaselineConfig,
    pods: Option<Arc<dyn PodSource>>,
    programs: BaselinePrograms,
    metrics: &BaselineMetrics,
    stop: ShutdownSignal,
) -> (Vec<JoinHandle<()>>, Vec<BaselineTableStatus>) {
    let BaselinePrograms {
        network,
        sockets,
        tls,
    } = programs;
    let mut tasks = Vec::new();
    let mut states = Vec::new();
    let mut network = Some(network);
    let mut socket_tables = Vec::new();
    for table in BaselineTable::ALL {
        let on = config.tables.contains(table);
        metrics
            .enabled
            .get_or_create(&[("table", table.name())])
            .set(i64::from(on));
        if !on {
            info!(table = %table.table_name(), "baseline table switched off (--baseline-tables)");
            states.push(BaselineTableStatus {
                table: table.name().to_owned(),
                state: BaselineTableState::Off,
                message: None,
            });
            continue;
        }
        match table {
            BaselineTable::ProcessStats => {
                if config.cgroup_root.is_none() {
                    warn!(
                        table = %table.table_name(),
                        "no cgroup v2 hierarchy on this node: cgroup_id is 0 and pod columns are \
                         null in every row"
                    );
                }
                let sampler = ProcessSampler::new(
                    Path::new("/proc"),
                    config.cgroup_root.clone(),
                    node,
                    config.process_stats_max,
                    HostUnits::of_this_host(),
                );
                if let Err(e) = store.create_table(table.table_name(), sampler.schema()) {
                    states.push(unavailable(metrics, table, &chain(&e)));
                    continue;
                }
                info!(
                    table = %table.table_name(),
                    interval = ?config.process_stats_interval,
                    max_processes = config.process_stats_max,
                    "baseline table collecting: every process's CPU, memory, faults and I/O"
                );
                tasks.push(tokio::spawn(sample_processes(
                    sampler,
                    store.clone(),
                    config.process_stats_interval,
                    pods.clone(),
                    metrics.clone(),
                    stop.clone(),
                )));
            }
            BaselineTable::NetworkStats => {
                let attached = network
                    .take()
                    .unwrap_or_else(|| Err("attached once only".to_owned()));
                let (stats, root) = match (attached, &config.cgroup_root) {
                    (Ok(stats), Some(root)) => (stats, root.clone()),
                    (Err(reason), _) => {
                        states.push(unavailable(metrics, table, &reason));
                        continue;
                    }
                    (Ok(_), None) => {
                        states.push(unavailable(
                            metrics,
                            table,
                            "this node has no cgroup v2 hierarchy",
                        ));
                        continue;
                    }
                };
                let sampler = NetworkSampler::new(stats, root, node);
                if let Err(e) = store.create_table(table.table_name(), sampler.schema()) {
                    states.push(unavailable(metrics, table, &chain(&e)));
                    continue;
                }
                info!(
                    table = %table.table_name(),
                    interval = ?config.network_stats_interval,
                    "baseline table collecting: every cgroup's packets and bytes, from cgroup_skb \
                     programs on the cgroup v2 root"
                );
                tasks.push(tokio::spawn(sample_network(
                    sampler,
                    store.clone(),
                    config.network_stats_interval,
                    pods.clone(),
                    metrics.clone(),
                    stop.clone(),
                )));
            }
            BaselineTable::HttpEvents | BaselineTable::DnsEvents | BaselineTable::ConnStats => {
                if let Err(reason) = &sockets {
                    states.push(unavailable(metrics, table, reason));
                    continue;
                }
                let schema = match table {
                    BaselineTable::HttpEvents => http_events::schema(),
                    BaselineTable::DnsEvents => dns_events::schema(),
                    _ => conn_stats::schema(),
                };
                if let Err(e) = store.create_table(table.table_name(), schema) {
                    states.push(unavailable(metrics, table, &chain(&e)));
                    continue;
                }
                socket_tables.push(table);
            }
        }
        // Collected, but without TLS plaintext where uprobes are missing:
        // said once in the log, in the node's status and the metrics.
        let message = match (&tls, table) {
            (Err(reason), BaselineTable::HttpEvents) => {
                warn!(
                    table = %table.table_name(),
                    "HTTPS is not traced on this node, plaintext HTTP is: {reason}"
                );
                Some(format!("TLS plaintext not traced: {reason}"))
            }
            _ => None,
        };
        metrics.tls_available.set(i64::from(tls.is_ok()));
        states.push(BaselineTableStatus {
            table: table.name().to_owned(),
            state: BaselineTableState::Collecting,
            message,
        });
    }
    if let Ok((trace, tls_requests)) = sockets
        && !socket_tables.is_empty()
    {
        let on = |table| socket_tables.contains(&table);
        info!(
            tables = ?socket_tables.iter().map(|t| t.name()).collect::<Vec<_>>(),
            interval = ?config.conn_stats_interval,
            "baseline tables collecting: TCP connections, HTTP/1.x exchanges and DNS queries from \
             the socket syscalls, and TLS plaintext through OpenSSL"
        );
        let tables = SocketTables::new(
            trace,
            tls.is_ok().then_some(tls_requests),
            store,
            node,
            SocketTablesConfig {
                http_events: on(BaselineTable::HttpEvents),
                dns_events: on(BaselineTable::DnsEvents),
                conn_stats: on(BaselineTable::ConnStats),
                http: config.http,
                conn_stats_interval: config.conn_stats_interval,
                drain_interval: config.socket_drain_interval,
                max_connections: probe_common::sock::MAX_CONNS as usize,
                max_tls_libraries: 256,
                cgroup_root: config.cgroup_root.clone(),
            },
            pods,
            metrics.clone(),
        );
        // A thread of the blocking pool for as long as the agent runs.
        tasks.push(tokio::task::spawn_blocking(move || tables.run(&stop)));
    }
    (tasks, states)
}

/// Says once, in the log and the `sonde_baseline_enabled` gauge, that a
/// switched-on table cannot be collected on this node; its state for the
/// node's status.
fn unavailable(
    metrics: &BaselineMetrics,
    table: BaselineTable,
    reason: &str,
) -> BaselineTableStatus {
    warn!(table = %table.table_name(), "baseline table cannot be collected on this node: {reason}");
    metrics
        .enabled
        .get_or_create(&[("table", table.name())])
        .set(0);
    BaselineTableStatus {
        table: table.name().to_owned(),
        state: BaselineTableState::Unavailable,
        message: Some(reason.to_owned()),
    }
}

/// Reads the traffic counters every `interval`, the first at once, until
/// `stop`.
async fn sample_network(
    sampler: NetworkSampler,
    store: TableStore,
    interval: Duration,
    pods: Option<Arc<dyn PodSource>>,
    metrics: BaselineMetrics,
    stop: ShutdownSignal,
) {
    let table = BaselineTable::NetworkStats;
    let name = table.table_name();
    let label = [("table", table.name())];
    let sampler = Arc::new(Mutex::new(sampler));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {}
        }
        let (sampler, store, stored_name, pods, metrics) = (
            sampler.clone(),
            store.clone(),
            name.clone(),
            pods.clone(),
            metrics.clone(),
        );
        let sampled = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let directory = pods
                .map(|p| PodDirectory::from_pods(&p.pods()))
                .unwrap_or_default();
            let mut sampler = sampler.lock().unwrap_or_else(PoisonError::into_inner);
            let result = sampler.sample(store.now_ns(), &directory);
            drop(sampler);
            metrics
                .sample_seconds
                .get_or_create(&label)
                .inc_by(started.elapsed().as_secs_f64());
            metrics.samples.get_or_create(&label).inc();
            match result {
                Ok((batch, counts)) => {
                    metrics.dropped(table, "map_full", counts.overflow);
                    let rows = batch.num_rows() as u64;
                    match store.append(&stored_name, batch) {
                        Ok(()) => {
                            metrics.rows.get_or_create(&label).inc_by(rows);
                        }
                        Err(e) => {
                            metrics.dropped(table, "store", rows);
                            warn!(table = %stored_name, "baseline rows not stored: {}", chain(&e));
                        }
                    }
                }
                Err(e) => warn!(table = %stored_name, "baseline sample failed: {}", chain(&e)),
            }
        })
        .await;
        if let Err(e) = sampled {
            warn!(table = %name, "baseline sample task failed: {e}");
        }
    }
}

/// Samples processes every `interval`, the first at once, until `stop`.
async fn sample_processes(
    sampler: ProcessSampler,
    store: TableStore,
    interval: Duration,
    pods: Option<Arc<dyn PodSource>>,
    metrics: BaselineMetrics,
    stop: ShutdownSignal,
) {
    let table = BaselineTable::ProcessStats;
    let name = table.table_name();
    let label = [("table", table.name())];
    let sampler = Arc::new(Mutex::new(sampler));
    // An error is logged once, then again only after a sample succeeds.
    let failing = Arc::new(AtomicBool::new(false));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {}
        }
        let (sampler, store, stored_name, pods, metrics, failing) = (
            sampler.clone(),
            store.clone(),
            name.clone(),
            pods.clone(),
            metrics.clone(),
            failing.clone(),
        );
        let sampled = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let directory = pods
                .map(|p| PodDirectory::from_pods(&p.pods()))
                .unwrap_or_default();
            let mut sampler = sampler.lock().unwrap_or_else(PoisonError::into_inner);
            let result = sampler.sample(store.now_ns(), &directory);
            drop(sampler);
            metrics
                .sample_seconds
                .get_or_create(&label)
                .inc_by(started.elapsed().as_secs_f64());
            metrics.samples.get_or_create(&label).inc();
            match result {
                Ok((batch, counts)) => {
                    failing.store(false, Ordering::Relaxed);
                    metrics.dropped(table, "limit", counts.capped);
                    metrics.dropped(table, "vanished", counts.vanished);
                    metrics.dropped(table, "unreadable", counts.unreadable);
                    let rows = batch.num_rows() as u64;
                    match store.append(&stored_name, batch) {
                        Ok(()) => {
                            metrics.rows.get_or_create(&label).inc_by(rows);
                        }
                        Err(e) => {
                            metrics.dropped(table, "store", rows);
                            warn!(table = %stored_name, "baseline rows not stored: {}", chain(&e));
                        }
                    }
                }
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        warn!(table = %stored_name, "baseline sample failed: {}", chain(&e));
                    }
                }
            }
        })
        .await;
        if let Err(e) = sampled {
            warn!(table = %name, "baseline sample task failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_table_lists() {
        assert_eq!(
            "all".parse::<BaselineTables>(),
            Ok(BaselineTables(BaselineTable::ALL.to_vec()))
        );
        assert_eq!("none".parse::<BaselineTables>(), Ok(BaselineTables(vec![])));
        assert_eq!(
            "process_stats, process_stats".parse::<BaselineTables>(),
            Ok(BaselineTables(vec![BaselineTable::ProcessStats]))
        );
        assert_eq!(
            "network_stats,process_stats".parse::<BaselineTables>(),
            Ok(BaselineTables(vec![
                BaselineTable::NetworkStats,
                BaselineTable::ProcessStats
            ]))
        );
        let error = "process_stats,http"
            .parse::<BaselineTables>()
            .expect_err("unknown table");
        assert!(
            error.contains("\"http\"") && error.contains("process_stats"),
            "{error}"
        );
    }
}
