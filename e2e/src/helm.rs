//! The `helm` command that `scripts/install-harness.sh` builds, run on the
//! repository's chart with a home of its own (no user cache or repositories).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use tempfile::TempDir;

use crate::{Component, Installation};

/// Longest a helm command may take; `install` does not wait for pods.
const HELM_TIMEOUT: Duration = Duration::from_secs(120);

/// What a helm command printed and whether it succeeded.
#[derive(Debug)]
pub struct HelmOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs helm with its cache, configuration and data in a temporary folder.
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    home: TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    /// Helm from the harness cache, or an error naming the install command.
    pub fn new() -> anyhow::Result<Self> {
        let binary = Installation::from_env().binary(Component::Helm)?;
        let home = tempfile::Builder::new().prefix("sonde-helm-").tempdir()?;
        Ok(Self {
            binary,
            home,
            kubeconfig: None,
        })
    }

    /// Talk to the cluster of this kubeconfig (install, uninstall, list).
    pub fn with_kubeconfig(mut self, kubeconfig: &Path) -> Self {
        self.kubeconfig = Some(kubeconfig.to_owned());
        self
    }

    /// The repository's chart, `charts/sonde`.
    pub fn chart() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sonde")
    }

    /// Runs `helm <args>`; a failed command is an `Ok` with `success: false`.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<HelmOutput> {
        let home = self.home.path();
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match &self.kubeconfig {
            Some(path) => cmd.env("KUBECONFIG", path),
            None => cmd.env_remove("KUBECONFIG"),
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let out = tokio::time::timeout(HELM_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("helm {} took over {HELM_TIMEOUT:?}", args.join(" ")))??;
        Ok(HelmOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `helm <args>` and returns its standard output, or fails with
    /// everything it printed.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args).await?;
        anyhow::ensure!(
            out.success,
            "helm {} failed:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }
}
