//! End-to-end test harness: the real components a Sonde user meets, started on
//! loopback for one test and stopped when the test lets go of them.
//!
//! - [`Cluster`]: etcd, kube-apiserver and kube-controller-manager with
//!   certificates and a kubeconfig of their own, plus simulated nodes whose
//!   kubelet stand-in runs each pod's command as a host process inside a
//!   kubelet-style cgroup v2 path and reports the pod Running.
//! - [`Prometheus`]: a real Prometheus scraping given targets, queried through
//!   its HTTP API.
//! - [`Collector`]: a real OpenTelemetry Collector receiving OTLP and writing
//!   what it received as JSON lines the test reads back.
//! - [`fleet`]: Node and Pod objects by the thousand with no kubelet, and
//!   simulated agents writing `ProbeNode` status, for the operator at scale.
//! - [`Helm`]: the helm command on the repository's chart.
//! - [`RealNode`]: a kubelet with containerd and runc, running pods as real
//!   containers from images built here.
//! - [`python`]/[`python_venv`]: the virtualenv with pyarrow and the ADBC
//!   Flight SQL driver, for Arrow client scripts.
//!
//! Binaries come from the cache that `scripts/install-harness.sh` fills
//! (`$SONDE_CACHE`, default `/var/cache/sonde`). Every process the harness
//! starts is stopped when its owner is dropped, also while a failing test
//! unwinds, and dies with the test process if that is killed.

#![forbid(unsafe_code)]

mod cgroup;
mod cluster;
mod collector;
mod error;
pub mod fleet;
mod helm;
mod installation;
mod kubelet;
mod node;
mod pki;
mod ports;
mod process;
mod prometheus;

pub use cluster::{Cluster, ClusterBuilder, ContainerProcess, pod};
pub use collector::{Collector, CollectorBuilder, Signal};
pub use error::{Component, HarnessError};
pub use helm::{Helm, HelmOutput};
pub use installation::{Installation, python, python_venv};
pub use node::{NodeImage, RealNode, RealNodeBuilder};
pub use ports::free_port;
pub use process::{SpawnedProcess, cpu_time, die_with_parent, process_running, spawned_processes};
pub use prometheus::{Prometheus, PrometheusBuilder, Sample, promtool_check, sample_value};

/// Fails with a clear message unless the test runs as root: the cluster
/// harness writes cgroups, and so will the eBPF tests that build on it.
pub fn require_root() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    match euid {
        Some(0) => Ok(()),
        Some(uid) => anyhow::bail!(
            "this end-to-end test needs root (it writes cgroups under /sys/fs/cgroup); running as uid {uid}"
        ),
        None => anyhow::bail!("cannot read the effective uid from /proc/self/status"),
    }
}
