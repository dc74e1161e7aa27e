//! The agent process: checks, servers, the drive loop and shutdown, wired
//! in that order so that anything a user can get wrong fails the start
//! before a port is bound or a program loaded.

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use probe_capture::{
    drive::{self, DriveOptions, Waker},
    engine::Engine,
    loader::LoadOptions,
    net::NetStats,
    plan::{self, HostPaths},
    preflight,
    sockets::{SocketOptions, SocketTrace},
    tracefs::Tracefs,
};
use probe_protocols::http::HttpConfig;
use probe_serve::{
    anomaly_metrics::DetectionCollector,
    export::{ExportCollector, Exports},
    flight::{self, FlightConfig},
    metrics,
};
use probe_store::{Compaction, StoreConfig, TableStore};
use sonde_daemon::{Shutdown, chain};
use tracing::{error, info};

use crate::{
    baseline::{self, BaselineConfig, BaselineMetrics, BaselinePrograms, BaselineTable},
    cluster::{
        ClusterAgent, Intervals as ClusterIntervals,
        cgroups::CgroupResolver,
        heartbeat::{self, Pulse},
        report,
        secrets::SecretCache,
        status::NodeFacts,
        watch::ClusterView,
    },
    config::Config,
    standalone::{Intervals, Standalone},
    storage::Storage,
};

/// Where the agent's resources come from.
enum Mode {
    /// The YAML files of this folder.
    Standalone(PathBuf),
    /// The node's ProbeNode.
    Cluster,
}

/// Runs the agent until SIGINT or SIGTERM. The error is the one line the
/// process prints before it exits non-zero.
pub fn run(config: Config) -> Result<(), String> {
    // Everything a user can get wrong is checked before anything is loaded.
    preflight::check_privileges().map_err(|e| chain(&e))?;
    let tracefs = Tracefs::locate(config.tracefs.as_deref()).map_err(|e| chain(&e))?;
    let node_name = config.node_name()?;
    let mode = match config.manifests.clone().filter(|_| config.standalone) {
        Some(dir) if !dir.is_dir() => {
            return Err(format!("--manifests {} is not a folder", dir.display()));
        }
        Some(dir) => Mode::Standalone(dir),
        None => Mode::Cluster,
    };
    // Queries, exports, status writes and scrapes run here; the ring is
    // drained on a thread of its own (`probe_capture::drive`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sonde-async")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve(config, tracefs, node_name, mode))
}

async fn serve(
    config: Config,
    tracefs: Tracefs,
    node_name: String,
    mode: Mode,
) -> Result<(), String> {
    // Registered before anything is attached, so a Ctrl-C at any point
    // from here on stops the agent cleanly instead of killing it.
    let (_signals, stop) =
        Shutdown::on_signals().map_err(|e| format!("cannot handle signals: {e}"))?;
    // The servers outlive the drive loop's last drain: stopped after it.
    let (servers, servers_stop) = Shutdown::new();
    // The cluster's address and credentials are checked before any port
    // is bound or program loaded.
    let client = match mode {
        Mode::Cluster => Some(kube_client().await?),
        Mode::Standalone(_) => None,
    };

    // The port is taken before any program is loaded: a port in use or a
    // bad TLS file fails the start with nothing attached.
    let store = TableStore::new(StoreConfig {
        budget_bytes: Some(config.memory_budget),
        compaction: Some(Compaction {
            cold_after: config.cold_after,
            // Runs still filling wait ten times as long (5 min by default).
            merge_for: config.cold_after * 10,
            ..Compaction::default()
        }),
        cache_bytes: config.decode_cache,
        ..StoreConfig::default()
    });
    let flight = flight::bind(
        Arc::new(store.clone()),
        FlightConfig {
            addr: config.flight_addr,
            token: config.flight_token.clone(),
            tls: config
                .flight_tls_cert
                .clone()
                .zip(config.flight_tls_key.clone()),
            query_memory_limit: usize::try_from(config.query_memory).unwrap_or(usize::MAX),
            // Cluster queries (sonde-query) run this node's stages here.
            worker_node: Some(node_name.clone()),
        },
    )
    .await
    .map_err(|e| chain(&e))?;
    let flight_addr = flight.local_addr();
    let waker = Waker::new().map_err(|e| format!("cannot create the drive loop's wake-up: {e}"))?;
    let (reports, report_requests) = metrics::report_channel(waker.clone(), config.scrape_timeout);
    let exports = Exports::new(store.clone(), node_name.clone());
    let baseline_metrics = BaselineMetrics::default();
    let storage = Storage::new(store, &node_name);
    let metrics_server = match config.metrics_addr {
        Some(addr) => {
            let mut registry = metrics::agent_registry(reports, Some(storage.store.clone()));
            DetectionCollector::new(storage.detections())
                .register(registry.sub_registry_with_prefix(metrics::PREFIX));
            // Sonde's own families carry the sonde_ prefix; the registry
            // itself has none, for the metrics users name.
            ExportCollector::new(exports.clone())
                .register(registry.sub_registry_with_prefix(metrics::PREFIX));
            flight.metrics().register(&mut registry);
            baseline_metrics.register(registry.sub_registry_with_prefix(metrics::PREFIX));
            let server = metrics::bind(addr, Arc::new(registry))
                .await
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            Some(server)
        }
        None => None,
    };

    let flight_task = tokio::spawn(flight.run(servers_stop.clone().wait()));
    let metrics_addr = metrics_server
        .as_ref()
        .map(metrics::MetricsServer::local_addr);
    let metrics_task = metrics_server
        .map(|server| server.spawn_dedicated(servers_stop.clone()))
        .transpose()
        .map_err(|e| format!("cannot start the metrics server: {e}"))?;

    let kprobes = plan::kprobes_supported(&tracefs);
    let mut engine = Engine::load(
        tracefs,
        LoadOptions {
            ring_bytes: config.ring_bytes,
            wakeup_watermark: config.wakeup_bytes,
            // One page when no table reads it.
            socket_ring_bytes: if BaselineTable::ALL
                .iter()
                .any(|t| t.from_sockets() && config.baseline_tables.contains(*t))
            {
                config.socket_ring_bytes
            } else {
                4096
            },
        },
        &node_name,
        Box::new(HostPaths),
    )
    .map_err(|e| chain(&e))?;
    let baseline_config = BaselineConfig {
        tables: config.baseline_tables.clone(),
        process_stats_interval: config.process_stats_interval,
        process_stats_max: usize::try_from(config.process_stats_max).unwrap_or(usize::MAX),
        network_stats_interval: config.network_stats_interval,
        conn_stats_interval: config.conn_stats_interval,
        http: HttpConfig {
            headers: config.http_headers,
            body_bytes: config.http_body_bytes as usize,
            ..HttpConfig::default()
        },
        socket_drain_interval: config.drain_interval,
        cgroup_root: CgroupResolver::detect()
            .ok()
            .map(|resolver| resolver.root().to_owned()),
    };
    // Attached before the drive loop takes the engine; the programs stay
    // attached as long as it lives.
    let mut network = Err("switched off".to_owned());
    if baseline_config.tables.contains(BaselineTable::NetworkStats) {
        network = match &baseline_config.cgroup_root {
            Some(root) => NetStats::attach(engine.probe_set(), root).map_err(|e| chain(&e)),
            None => Err("this node has no cgroup v2 hierarchy".to_owned()),
        };
    }
    let mut sockets = Err("switched off".to_owned());
    if BaselineTable::ALL
        .iter()
        .any(|t| t.from_sockets() && baseline_config.tables.contains(*t))
    {
        sockets = SocketTrace::attach(
            engine.probe_set(),
            std::process::id(),
            SocketOptions::default(),
        )
        .map(|trace| (trace, engine.tls_requests()))
        .map_err(|e| chain(&e));
    }
    let tls =
        preflight::uprobes_available(engine.probe_set().tracefs().root()).map_err(str::to_owned);
    let programs = BaselinePrograms {
        network,
        sockets,
        tls,
    };
    let baseline_tasks;
    let upkeep = tokio::spawn(storage.clone().run_upkeep(servers_stop.clone()));
    let scheme = if config.flight_tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let serving = move || {
        info!(
            "serving Arrow Flight and Flight SQL on {scheme}://{flight_addr}; try: \
             sonde --addr {scheme}://{flight_addr} tables"
        );
        if let Some(addr) = metrics_addr {
            info!(
                "serving Prometheus metrics on http://{addr}{}",
                metrics::METRICS_PATH
            );
        }
    };
    let drive_options = DriveOptions {
        drain_interval: config.drain_interval,
    };
    let mut cluster_tasks = Vec::new();
    // Ends by itself on `stop`, deleting the Lease: awaited, not aborted.
    let mut heartbeat_task = None;
    let drive = match (mode, client) {
        (Mode::Standalone(dir), _) => {
            // Every host process; no pods to name.
            (baseline_tasks, _) = baseline::start(
                storage.store.clone(),
                &node_name,
                &baseline_config,
                None,
                programs,
                &baseline_metrics,
                servers_stop.clone(),
            );
            let mut agent = Standalone::start(
                engine,
                Some(storage),
                &dir,
                config.targets(),
                Intervals {
                    rescan: config.rescan_interval,
                    report: config.report_interval,
                },
            );
            agent.run_exports(exports.clone());
            if metrics_task.is_some() {
                agent.answer_reports(report_requests);
            }
            let attached = agent.applied().filter(|a| a.probe.is_some()).count();
            info!(
                node = %node_name,
                manifests = %dir.display(),
                attached,
                programs = ?agent.program_ids(),
                flight = %flight_addr,
                "standalone agent running; watching the folder for changes; a summary per \
                 Tracepoint every {:?}; inspect programs with `bpftool prog show`; Ctrl-C \
                 stops and detaches",
                config.report_interval
            );
            serving();
            drive::spawn(agent, waker.clone(), drive_options)
                .map(|thread| tokio::task::spawn_blocking(move || thread.join().map(drop)))
        }
        (Mode::Cluster, client) => {
            let Some(client) = client else {
                return Err("cluster mode started without a cluster client".to_owned());
            };
            let (view, watches) = ClusterView::start(&client, &node_name, waker.clone());
            cluster_tasks.extend(watches);
            let baseline_states;
            (baseline_tasks, baseline_states) = baseline::start(
                storage.store.clone(),
                &node_name,
                &baseline_config,
                Some(Arc::new(view.clone())),
                programs,
                &baseline_metrics,
                servers_stop.clone(),
            );
            let pulse = config.heartbeat_namespace.clone().map(|namespace| {
                let pulse = Arc::new(Pulse::default());
                heartbeat_task = Some(tokio::spawn(heartbeat::renew(
                    client.clone(),
                    namespace,
                    node_name.clone(),
                    config.heartbeat_interval,
                    pulse.clone(),
                    stop.clone(),
                )));
                pulse
            });
            let (statuses, published) = tokio::sync::watch::channel(None);
            cluster_tasks.push(tokio::spawn(report::write_statuses(
                client.clone(),
                node_name.clone(),
                published,
            )));
            let secrets = SecretCache::new(client);
            let secret_values = secrets.values();
            cluster_tasks.push(tokio::spawn(secrets.run(view.clone(), stop.clone())));
            let mut facts = NodeFacts::of_this_node(kprobes, Time(Timestamp::now()));
            facts.baseline_tables = baseline_states;
            facts.flight_endpoint = config.advertised_flight_endpoint(flight_addr);
            let mut agent = ClusterAgent::new(
                engine,
                storage,
                &node_name,
                CgroupResolver::detect()
                    .map(|resolver| resolver.under_kubelet_root(&config.kubelet_cgroup_root)),
                facts,
            );
            agent.run_exports(exports.clone(), secret_values);
            if metrics_task.is_some() {
                agent.answer_reports(report_requests);
            }
            agent.follow(
                view,
                statuses,
                ClusterIntervals {
                    heartbeat: config.heartbeat_interval,
                    status: config.status_interval,
                },
                pulse,
            );
            let heartbeat = match &config.heartbeat_namespace {
                Some(namespace) => format!(
                    "heartbeat Lease {namespace}/{node_name} every {:?}, status on change and \
                     every {:?}",
                    config.heartbeat_interval, config.status_interval
                ),
                None => format!(
                    "status on change and every {:?} (no --heartbeat-namespace: no Lease)",
                    config.heartbeat_interval
                ),
            };
            info!(
                node = %node_name,
                flight = %flight_addr,
                "cluster agent running; watching ProbeNode {node_name} and the pods on \
                 this node; {heartbeat}; Ctrl-C stops and detaches"
            );
            serving();
            drive::spawn(agent, waker.clone(), drive_options)
                .map(|thread| tokio::task::spawn_blocking(move || thread.join().map(drop)))
        }
    };
    let mut drive = drive.map_err(|e| format!("cannot start the drive loop: {e}"))?;
    let drive_result = tokio::select! {
        () = stop.clone().wait() => {
            waker.stop();
            (&mut drive).await
        }
        // Only a panic ends the loop before it is told to stop.
        joined = &mut drive => joined,
    };
    if let Some(mut task) = heartbeat_task {
        // It stops on `stop`; a drive loop that failed did not send it.
        if tokio::time::timeout(Duration::from_secs(3), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    for task in cluster_tasks {
        task.abort();
    }
    exports.shutdown();
    servers.trigger();
    let _ = upkeep.await;
    for task in baseline_tasks {
        // Each ends at the trigger, after at most the sample it is taking.
        let _ = task.await;
    }
    let drive_result = match drive_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err("the drive loop failed; see the log above".to_owned()),
    };
    if drive_result.is_ok() {
        info!("stopped; every program detached and unloaded");
    } else {
        error!("the drive loop stopped unexpectedly");
    }
    let metrics = match metrics_task {
        None => Ok(()),
        Some(thread) => match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(result)) => result.map_err(|e| format!("the metrics server failed: {e}")),
            Ok(Err(_)) | Err(_) => Err("the metrics server thread failed".to_owned()),
        },
    };
    match flight_task.await {
        Ok(result) => result.map_err(|e| chain(&e))?,
        Err(e) => return Err(format!("the Flight server task failed: {e}")),
    }
    drive_result.and(metrics)
}

/// A client of the cluster from KUBECONFIG, or in-cluster from the pod's
/// service account.
async fn kube_client() -> Result<kube::Client, String> {
    // kube's rustls needs a process-wide crypto provider; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::infer().await.map_err(|e| {
        format!(
            "cluster mode cannot find the cluster (set KUBECONFIG, or run in a pod): {}",
            chain(&e)
        )
    })?;
    kube::Client::try_from(config)
        .map_err(|e| format!("cannot create the cluster client: {}", chain(&e)))
}
