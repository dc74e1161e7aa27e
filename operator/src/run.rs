//! The operator process: flags, client, cache, leader election, the
//! controllers and `/metrics`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use futures::{FutureExt, StreamExt};
use kube::{
    Resource,
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::Store,
        watcher,
    },
};
use kube_lease_manager::LeaseManagerBuilder;
use serde::de::DeserializeOwned;
use sonde_daemon::{Shutdown, chain};
use tracing::{info, warn};

use crate::{
    Error,
    cache::Cache,
    client,
    context::{Context, Settings},
    metrics::{self, Metrics},
    nodes,
    queue::WorkQueue,
    resources, tracepoints,
};

/// Reconciles of one controller that may run at once (never two of one
/// object). Node reconciles are one write each, paced by the client's rate
/// limit; status reconciles mostly compute and rarely write.
const NODE_CONCURRENCY: u16 = 16;
const STATUS_CONCURRENCY: u16 = 8;

/// How long a queued object waits for more changes before its reconcile:
/// `kubectl apply` of several resources becomes one write per node.
const NODE_DEBOUNCE: Duration = Duration::from_millis(200);
const STATUS_DEBOUNCE: Duration = Duration::from_millis(100);

/// Sonde's operator: reconciles Tracepoint, Retention and Export resources
/// into per-node state and the agents' reports into their status.
#[derive(Clone, Debug, Parser)]
#[command(name = "sonde-operator", version, about)]
pub struct Config {
    /// Where Prometheus metrics are served, at /metrics.
    #[arg(long, env = "SONDE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Elect one active replica through a Lease, so several can run.
    #[arg(long, env = "SONDE_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,

    /// The operator's own namespace: where its leader-election Lease is,
    /// and where agents renew their heartbeat Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sonde-system")]
    pub namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "SONDE_LEASE_NAME", default_value = "sonde-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease; the host name and pid if unset.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a leader's Lease lasts without renewal.
    #[arg(long, env = "SONDE_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,

    /// A node whose agent has not reported for this long (a Go-style
    /// duration) is counted as unknown, and no longer waited for.
    #[arg(long, env = "SONDE_HEARTBEAT_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_grace: Duration,

    /// Requests per second to the apiserver, on average. A Retention or
    /// Export change rewrites every node's ProbeNode: at 1,000 nodes that is
    /// 1,000 writes, which at 100/s take 10 s instead of arriving at once
    /// and taking every seat the apiserver's priority and fairness gives
    /// the operator's priority level, starving the agents' heartbeats and
    /// other controllers of the same level.
    #[arg(long, env = "SONDE_KUBE_API_QPS", default_value_t = 100.0, value_parser = parse_qps)]
    pub kube_api_qps: f64,

    /// Requests the operator may send at once after being idle: a
    /// Tracepoint change touching up to this many nodes is written without
    /// waiting for the rate.
    #[arg(long, env = "SONDE_KUBE_API_BURST", default_value_t = 200)]
    pub kube_api_burst: u32,
}

fn parse_qps(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(qps) if qps.is_finite() && qps > 0.0 => Ok(qps),
        _ => Err(format!(
            "{text:?} is not a positive number of requests per second"
        )),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = crds::units::parse_duration(text).map_err(|e| e.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{text:?} is too short: use at least 1s"));
    }
    Ok(duration)
}

/// Runs until SIGINT or SIGTERM, or until leadership is lost (an error: the
/// process exits and its replacement campaigns again).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let (_signals, signal) = Shutdown::on_signals().context("cannot handle signals")?;
    let mut shutdown = std::pin::pin!(signal.wait());
    let kube_config = kube::Config::infer().await.context(
        "cannot configure the Kubernetes client (KUBECONFIG, or the in-cluster service account)",
    )?;
    let client = client::rate_limited(kube_config, config.kube_api_qps, config.kube_api_burst)
        .context("cannot build the Kubernetes client")?;
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("cannot serve metrics on {}", config.metrics_addr))?;
    let metrics_addr = listener.local_addr()?;

    let metrics = Arc::new(Metrics::default());
    let cache = Cache::start(&client, config.heartbeat_grace, &config.namespace);
    let registry = metrics::registry(&metrics, cache.clone(), config.heartbeat_grace);
    let (stop, stopped) = Shutdown::new();
    let metrics_task = tokio::spawn(metrics::serve(listener, registry, stopped.wait()));
    info!("serving Prometheus metrics on http://{metrics_addr}/metrics");

    let mut leading = None;
    if config.leader_elect {
        let identity = config.identity.clone().unwrap_or_else(default_identity);
        let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&identity)
            .with_duration(config.lease_seconds)
            .with_grace(config.lease_seconds.div_ceil(3).max(1))
            .build()
            .await
            .with_context(|| {
                format!(
                    "cannot use Lease {}/{} for leader election",
                    config.namespace, config.lease_name
                )
            })?;
        let (mut channel, task) = manager.watch().await;
        info!(lease = %format!("{}/{}", config.namespace, config.lease_name), %identity, "waiting to lead");
        let led = tokio::select! {
            () = &mut shutdown => None,
            led = channel.wait_for(|leader| *leader) => Some(led.map(|_| ())),
        };
        match led {
            None => {
                drop(channel);
                let _ = task.await;
                stop.trigger();
                return Ok(());
            }
            Some(led) => led.context("leader election stopped")?,
        }
        info!(%identity, "leading");
        leading = Some((channel, task));
    }

    tokio::select! {
        () = &mut shutdown => {
            stop.trigger();
            return Ok(());
        }
        ready = cache.ready() => ready.context("a cache stopped before it was filled")?,
    }
    info!("caches filled; reconciling");
    let ctx = Arc::new(Context::new(
        client.clone(),
        cache,
        Settings {
            heartbeat_grace: config.heartbeat_grace,
        },
        metrics,
    ));
    let controllers = controllers(ctx);

    let lost = async {
        match &mut leading {
            Some((channel, _)) => {
                let _ = channel.wait_for(|leader| !*leader).await;
            }
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        () = controllers => Err(anyhow::anyhow!("the controllers stopped")),
        () = lost => Err(anyhow::anyhow!("lost the leader-election Lease; exiting so a replica can take over")),
    };
    if let Some((channel, task)) = leading {
        // Closing the channel releases the Lease for the next replica.
        drop(channel);
        let _ = task.await;
    }
    stop.trigger();
    let _ = metrics_task.await;
    result
}

fn default_identity() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "sonde-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// All four controllers, running until one stops. Each is fed by its
/// queue alone (see `cache`); no controller watches anything itself.
async fn controllers(ctx: Arc<Context>) {
    let cache = &ctx.cache;
    let config = |concurrency, debounce| {
        controller::Config::default()
            .concurrency(concurrency)
            .debounce(debounce)
    };
    let nodes = fed_by(&cache.queues.nodes, cache.nodes.clone())
        .with_config(config(NODE_CONCURRENCY, NODE_DEBOUNCE))
        .run(nodes::reconcile, error_policy, ctx.clone())
        .for_each(log_result("node"));
    let tracepoints = fed_by(&cache.queues.tracepoints, cache.tracepoints.clone())
        .with_config(config(STATUS_CONCURRENCY, STATUS_DEBOUNCE))
        .run(tracepoints::reconcile, error_policy, ctx.clone())
        .for_each(log_result("tracepoint"));
    let retentions = fed_by(&cache.queues.retentions, cache.retentions.clone())
        .with_config(config(STATUS_CONCURRENCY, STATUS_DEBOUNCE))
        .run(resources::reconcile_retention, error_policy, ctx.clone())
        .for_each(log_result("retention"));
    let exports = fed_by(&cache.queues.exports, cache.exports.clone())
        .with_config(config(STATUS_CONCURRENCY, STATUS_DEBOUNCE))
        .run(resources::reconcile_export, error_policy, ctx.clone())
        .for_each(log_result("export"));

    futures::future::select_all([
        nodes.boxed(),
        tracepoints.boxed(),
        retentions.boxed(),
        exports.boxed(),
    ])
    .await;
}

/// A controller of the objects in `store`, reconciling what `queue` holds.
fn fed_by<K>(queue: &Arc<WorkQueue<K>>, store: Store<K>) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Controller::for_stream(
        futures::stream::pending::<Result<K, watcher::Error>>(),
        store,
    )
    .reconcile_on(queue.stream())
}

fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    warn!("reconcile failed, retrying in 2s: {}", chain(error));
    Action::requeue(Duration::from_secs(2))
}

fn log_result<T, E: std::fmt::Display>(
    controller: &'static str,
) -> impl FnMut(Result<T, E>) -> std::future::Ready<()> {
    move |result| {
        if let Err(e) = result {
            // Reconcile failures are logged by the error policy already.
            tracing::debug!(controller, "{e}");
        }
        std::future::ready(())
    }
}
