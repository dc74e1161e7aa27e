//! `probe-agent`: wires configuration, logging and shutdown around the
//! library (see `lib.rs`).

use std::{io::IsTerminal, process::ExitCode, sync::Arc};

use clap::Parser;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use probe_agent::{
    cluster::{
        ClusterAgent, Intervals as ClusterIntervals, cgroups::CgroupResolver, report,
        status::NodeFacts, watch::ClusterView,
    },
    config::Config,
    engine::Engine,
    export::{ExportCollector, Exports},
    flight::{self, FlightConfig},
    loader::LoadOptions,
    metrics,
    plan::HostPaths,
    preflight,
    standalone::{Intervals, Standalone, Storage, chain},
    store::{RollupEngine, StoreConfig, TableStore},
    tracefs::Tracefs,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("probe-agent: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), String> {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        // Registered before anything is attached, so a Ctrl-C at any point
        // from here on stops the agent cleanly instead of killing it.
        let shutdown = shutdown_signal().map_err(|e| format!("cannot handle signals: {e}"))?;
        // The cluster's address and credentials are checked before any
        // port is bound or program loaded.
        let client = match mode {
            Mode::Cluster => Some(kube_client().await?),
            Mode::Standalone(_) => None,
        };

        // The port is taken before any program is loaded: a port in use or a
        // bad TLS file fails the start with nothing attached.
        let store = TableStore::new(StoreConfig {
            budget_bytes: Some(config.memory_budget),
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
            },
        )
        .await
        .map_err(|e| chain(&e))?;
        let flight_addr = flight.local_addr();
        let (reports, report_requests) = metrics::report_channel();
        let exports = Exports::new(store.clone(), node_name.clone());
        let metrics_server = match config.metrics_addr {
            Some(addr) => {
                let mut registry = metrics::agent_registry(reports, Some(store.clone()));
                // Sonde's own families carry the sonde_ prefix; the registry itself has
                // none, for the metrics users name.
                ExportCollector::new(exports.clone())
                    .register(registry.sub_registry_with_prefix(metrics::PREFIX));
                flight.metrics().register(&mut registry);
                let server = metrics::bind(addr, Arc::new(registry))
                    .await
                    .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
                Some(server)
            }
            None => None,
        };

        let (stop_servers, servers_stopped) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut stopped = servers_stopped.clone();
            async move {
                // An error means the sender is gone: stop as well.
                let _ = stopped.changed().await;
            }
        };
        let flight_task = tokio::spawn(flight.run(stopped()));
        let metrics_addr = metrics_server
            .as_ref()
            .map(metrics::MetricsServer::local_addr);
        let metrics_task = metrics_server.map(|server| tokio::spawn(server.run(stopped())));

        let kprobes = probe_agent::plan::kprobes_supported(&tracefs);
        let engine = Engine::load(
            tracefs,
            LoadOptions {
                ring_bytes: config.ring_bytes,
                wakeup_watermark: config.wakeup_bytes,
            },
            &node_name,
            Box::new(HostPaths),
        )
        .map_err(|e| chain(&e))?;
        let storage = Storage {
            rollups: RollupEngine::new(store.clone(), &node_name, RollupEngine::DEFAULT_GRACE),
            store,
        };
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
        match (mode, client) {
            (Mode::Standalone(dir), _) => {
                let mut agent = Standalone::start(engine, Some(storage), &dir, config.targets());
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
                agent
                    .run(
                        Intervals {
                            drain: config.drain_interval,
                            rescan: config.rescan_interval,
                            report: config.report_interval,
                        },
                        shutdown,
                    )
                    .await
                    .map_err(|e| format!("cannot watch the ring buffer: {e}"))?;
            }
            (Mode::Cluster, client) => {
                let Some(client) = client else {
                    return Err("cluster mode started without a cluster client".to_owned());
                };
                let (view, watches) = ClusterView::start(&client, &node_name);
                let (statuses, published) = tokio::sync::watch::channel(None);
                let writer = tokio::spawn(report::write_statuses(
                    client.clone(),
                    node_name.clone(),
                    published,
                ));
                let facts = NodeFacts::of_this_node(kprobes, Time(Timestamp::now()));
                let mut agent =
                    ClusterAgent::new(engine, storage, &node_name, CgroupResolver::detect(), facts);
                agent.run_exports(exports.clone(), client);
                if metrics_task.is_some() {
                    agent.answer_reports(report_requests);
                }
                info!(
                    node = %node_name,
                    flight = %flight_addr,
                    "cluster agent running; watching ProbeNode {node_name} and the pods on \
                     this node; status every {:?}; Ctrl-C stops and detaches",
                    config.heartbeat_interval
                );
                serving();
                let result = agent
                    .run(
                        &view,
                        statuses,
                        ClusterIntervals {
                            drain: config.drain_interval,
                            heartbeat: config.heartbeat_interval,
                        },
                        shutdown,
                    )
                    .await;
                for task in watches {
                    task.abort();
                }
                writer.abort();
                result.map_err(|e| format!("cannot watch the ring buffer: {e}"))?;
            }
        }
        exports.shutdown();
        info!("stopped; every program detached and unloaded");
        let _ = stop_servers.send(true);
        let metrics = match metrics_task {
            None => Ok(()),
            Some(task) => match task.await {
                Ok(result) => result.map_err(|e| format!("the metrics server failed: {e}")),
                Err(e) => Err(format!("the metrics server task failed: {e}")),
            },
        };
        match flight_task.await {
            Ok(result) => result.map_err(|e| chain(&e))?,
            Err(e) => return Err(format!("the Flight server task failed: {e}")),
        }
        metrics
    })
}

/// Where the agent's resources come from.
enum Mode {
    /// The YAML files of this folder.
    Standalone(std::path::PathBuf),
    /// The node's ProbeNode.
    Cluster,
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

/// A future that resolves on SIGINT or SIGTERM; the handlers are installed
/// when this is called.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
