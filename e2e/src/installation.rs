//! Where `scripts/install-harness.sh` put each binary, by pinned version.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::{Component, HarnessError};

/// The versions file the install script reads too, so both agree on paths.
const VERSIONS: &str = include_str!("../../scripts/harness/versions.env");
const INSTALL: &str = "scripts/install-harness.sh";
const DEFAULT_CACHE: &str = "/var/cache/sonde";

fn version(name: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim())
        // The file is compiled in; a missing key is caught by the unit test below.
        .unwrap_or("unknown")
}

/// The harness cache: `$SONDE_CACHE`, or `/var/cache/sonde`.
#[derive(Debug, Clone)]
pub struct Installation {
    cache: PathBuf,
}

impl Installation {
    /// The cache named by `SONDE_CACHE`, or the default one.
    pub fn from_env() -> Self {
        let cache = std::env::var_os("SONDE_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
        Self { cache }
    }

    /// A cache at another place (tests of the harness's own error paths).
    pub fn at(cache: impl Into<PathBuf>) -> Self {
        Self {
            cache: cache.into(),
        }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// Where the install script puts the component's executable.
    pub fn path_of(&self, component: Component) -> PathBuf {
        let c = &self.cache;
        match component {
            Component::Etcd => c
                .join("etcd")
                .join(version("ETCD_VERSION"))
                .join("bin/etcd"),
            Component::KubeApiserver => c
                .join("k8s")
                .join(version("KUBERNETES_VERSION"))
                .join("bin/kube-apiserver"),
            Component::KubeControllerManager => c
                .join("k8s")
                .join(version("KUBERNETES_VERSION"))
                .join("bin/kube-controller-manager"),
            Component::Prometheus => c
                .join("prometheus")
                .join(version("PROMETHEUS_VERSION"))
                .join("bin/prometheus"),
            Component::Collector => c
                .join("otelcol")
                .join(version("OTELCOL_VERSION"))
                .join("otelcol-sonde"),
            Component::PythonVenv => c.join("venv/bin/python"),
            Component::Helm => c
                .join("helm")
                .join(version("HELM_VERSION"))
                .join("bin/helm"),
            Component::KubeScheduler => c
                .join("k8s")
                .join(version("KUBERNETES_VERSION"))
                .join("bin/kube-scheduler"),
            Component::Kubelet => c
                .join("k8s")
                .join(version("KUBERNETES_VERSION"))
                .join("bin/kubelet"),
            Component::Containerd => PathBuf::from("/usr/bin/containerd"),
            // Pod commands start through the shell, which moves them into their cgroup.
            Component::PodProcess => PathBuf::from("/bin/sh"),
        }
    }

    /// The component's executable, or an error naming it and the install command.
    pub fn binary(&self, component: Component) -> Result<PathBuf, HarnessError> {
        let path = self.path_of(component);
        let executable = std::fs::metadata(&path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if executable {
            Ok(path)
        } else {
            Err(HarnessError::MissingBinary {
                component,
                path,
                cache: self.cache.clone(),
                install: INSTALL,
            })
        }
    }

    /// The virtualenv with pyarrow and the ADBC Flight SQL driver.
    pub fn venv(&self) -> PathBuf {
        self.cache.join("venv")
    }
}

/// The Python virtualenv with `pyarrow`, `adbc-driver-manager` and
/// `adbc-driver-flightsql` (it may not exist; see [`python`]).
pub fn python_venv() -> PathBuf {
    Installation::from_env().venv()
}

/// The virtualenv's Python interpreter, or an error naming the install command.
pub fn python() -> Result<PathBuf, HarnessError> {
    Installation::from_env().binary(Component::PythonVenv)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]
mod tests {
    use super::*;

    #[test]
    fn every_version_is_pinned() {
        for key in [
            "KUBERNETES_VERSION",
            "ETCD_VERSION",
            "OTELCOL_VERSION",
            "PROMETHEUS_VERSION",
            "HELM_VERSION",
        ] {
            assert_ne!(version(key), "unknown", "{key} missing in versions.env");
        }
    }

    #[test]
    fn missing_binary_names_component_and_install_command() {
        let install = Installation::at("/nonexistent/sonde-cache");
        let err = install.binary(Component::Etcd).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("etcd: "), "{text}");
        assert!(text.contains(INSTALL), "{text}");
        assert!(text.contains("/nonexistent/sonde-cache/etcd/v3."), "{text}");
    }
}
