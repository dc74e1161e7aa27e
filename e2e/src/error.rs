//! The failures a test may want to tell apart, each naming the component.

use std::{fmt, path::PathBuf, time::Duration};

/// A component the harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    Prometheus,
    Collector,
    PythonVenv,
    /// The helm command, to lint, render and install the chart.
    Helm,
    /// A pod's container process, started by a simulated kubelet.
    PodProcess,
    KubeScheduler,
    /// The real node's kubelet, built with the control plane.
    Kubelet,
    /// The real node's container runtime (Debian's package).
    Containerd,
}

impl Component {
    /// The name users know the component by (its binary's name where it has one).
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::Prometheus => "prometheus",
            Component::Collector => "otelcol-sonde",
            Component::PythonVenv => "python venv",
            Component::Helm => "helm",
            Component::PodProcess => "pod process",
            Component::KubeScheduler => "kube-scheduler",
            Component::Kubelet => "kubelet",
            Component::Containerd => "containerd",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a harness component could not be started. Returned inside
/// `anyhow::Error`; tests can `downcast_ref::<HarnessError>()`.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "{component}: {path} is missing; install it with `{install}` (SONDE_CACHE={cache})",
        cache = cache.display(),
        path = path.display()
    )]
    MissingBinary {
        component: Component,
        path: PathBuf,
        cache: PathBuf,
        install: &'static str,
    },

    #[error("{component}: port {port} on 127.0.0.1 is already in use")]
    PortInUse { component: Component, port: u16 },

    #[error(
        "{component} exited during start-up ({status}); last lines of {log}:\n{tail}",
        log = log.display()
    )]
    Exited {
        component: Component,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "{component} was not ready after {waited:?} ({probe}); last lines of {log}:\n{tail}",
        log = log.display()
    )]
    NotReady {
        component: Component,
        waited: Duration,
        probe: String,
        log: PathBuf,
        tail: String,
    },

    #[error("{component}: cannot start {path}: {source}", path = path.display())]
    Spawn {
        component: Component,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HarnessError {
    /// The component the error is about.
    pub fn component(&self) -> Component {
        match self {
            HarnessError::MissingBinary { component, .. }
            | HarnessError::PortInUse { component, .. }
            | HarnessError::Exited { component, .. }
            | HarnessError::NotReady { component, .. }
            | HarnessError::Spawn { component, .. } => *component,
        }
    }
}
