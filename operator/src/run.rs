//! The operator process: flags, caches, leader election, the controllers
//! and `/metrics`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use crds::{Export, Retention, Tracepoint, v1alpha1::ProbeNode};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, ResourceExt,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    Error,
    context::{Caches, Context, Settings},
    metrics::{self, Metrics},
    nodes, resources, tracepoints,
};

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

    /// Namespace of the leader-election Lease (the operator's own).
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
    let mut shutdown = std::pin::pin!(shutdown_signal().context("cannot handle signals")?);
    let client = Client::try_default().await.context(
        "cannot configure the Kubernetes client (KUBECONFIG, or the in-cluster service account)",
    )?;
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("cannot serve metrics on {}", config.metrics_addr))?;
    let metrics_addr = listener.local_addr()?;

    let caches = Caches::start(&client);
    let metrics = Arc::new(Metrics::default());
    let registry = metrics::registry(&metrics, caches.clone(), config.heartbeat_grace);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics_task = tokio::spawn(metrics::serve(listener, registry, async move {
        let mut stopped = stopped;
        let _ = stopped.changed().await;
    }));
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
                let _ = stop.send(true);
                return Ok(());
            }
            Some(led) => led.context("leader election stopped")?,
        }
        info!(%identity, "leading");
        leading = Some((channel, task));
    }

    tokio::select! {
        () = &mut shutdown => {
            let _ = stop.send(true);
            return Ok(());
        }
        ready = caches.ready() => ready.context("a cache stopped before it was filled")?,
    }
    info!("caches filled; reconciling");
    let ctx = Arc::new(Context::new(
        client.clone(),
        caches,
        Settings {
            heartbeat_grace: config.heartbeat_grace,
        },
        metrics,
    ));
    let controllers = controllers(&client, ctx);

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
    let _ = stop.send(true);
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

/// All four controllers, running until one stops.
async fn controllers(client: &Client, ctx: Arc<Context>) {
    let config = watcher::Config::default;

    let nodes = Controller::new(Api::<Node>::all(client.clone()), config());
    let node_store = nodes.store();
    let all_nodes = move || {
        node_store
            .state()
            .iter()
            .map(|n| ObjectRef::from_obj(n.as_ref()))
            .collect::<Vec<_>>()
    };
    let (every_node, every_node_2, every_node_3) =
        (all_nodes.clone(), all_nodes.clone(), all_nodes);
    let nodes = nodes
        .owns(Api::<ProbeNode>::all(client.clone()), config())
        .watches(Api::<Pod>::all(client.clone()), config(), |pod: Pod| {
            pod.spec
                .and_then(|s| s.node_name)
                .map(|node| ObjectRef::<Node>::new(&node))
        })
        .watches(
            Api::<Tracepoint>::all(client.clone()),
            config(),
            move |_| every_node(),
        )
        .watches(Api::<Retention>::all(client.clone()), config(), move |_| {
            every_node_2()
        })
        .watches(Api::<Export>::all(client.clone()), config(), move |_| {
            every_node_3()
        })
        .run(nodes::reconcile, error_policy, ctx.clone())
        .for_each(log_result("node"));

    let tracepoints = Controller::new(Api::<Tracepoint>::all(client.clone()), config());
    let tracepoint_store = tracepoints.store();
    let tracepoints = tracepoints
        .watches(
            Api::<ProbeNode>::all(client.clone()),
            config(),
            |pn: ProbeNode| named_in::<Tracepoint>(&pn, crds::v1alpha1::AssignmentKind::Tracepoint),
        )
        .watches(
            Api::<Pod>::all(client.clone()),
            config(),
            move |pod: Pod| {
                let namespace = pod.namespace();
                tracepoint_store
                    .state()
                    .iter()
                    .filter(|tp| tp.namespace() == namespace)
                    .map(|tp| ObjectRef::from_obj(tp.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(tracepoints::reconcile, error_policy, ctx.clone())
        .for_each(log_result("tracepoint"));

    let retentions = Controller::new(Api::<Retention>::all(client.clone()), config())
        .watches(
            Api::<ProbeNode>::all(client.clone()),
            config(),
            |pn: ProbeNode| named_in::<Retention>(&pn, crds::v1alpha1::AssignmentKind::Retention),
        )
        .run(resources::reconcile_retention, error_policy, ctx.clone())
        .for_each(log_result("retention"));

    let exports = Controller::new(Api::<Export>::all(client.clone()), config())
        .watches(
            Api::<ProbeNode>::all(client.clone()),
            config(),
            |pn: ProbeNode| named_in::<Export>(&pn, crds::v1alpha1::AssignmentKind::Export),
        )
        .run(resources::reconcile_export, error_policy, ctx)
        .for_each(log_result("export"));

    futures::future::select_all([
        nodes.boxed(),
        tracepoints.boxed(),
        retentions.boxed(),
        exports.boxed(),
    ])
    .await;
}

/// The resources of one kind a ProbeNode's spec or status names.
fn named_in<K>(pn: &ProbeNode, kind: crds::v1alpha1::AssignmentKind) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let assigned = pn
        .spec
        .assignments
        .iter()
        .filter(|a| a.kind == kind)
        .map(|a| (a.namespace.as_str(), a.name.as_str()));
    let reported = pn
        .status
        .iter()
        .flat_map(|s| &s.assignments)
        .filter(|a| a.kind == kind)
        .map(|a| (a.namespace.as_str(), a.name.as_str()));
    let mut refs: Vec<(&str, &str)> = assigned.chain(reported).collect();
    refs.sort_unstable();
    refs.dedup();
    refs.into_iter()
        .map(|(namespace, name)| ObjectRef::new(name).within(namespace))
        .collect()
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

/// An error and its sources on one line: `a: b: c`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        line.push_str(": ");
        line.push_str(&e.to_string());
        source = e.source();
    }
    line
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when called.
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
