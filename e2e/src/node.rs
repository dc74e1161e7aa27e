//! A real node: Debian's containerd and runc run pods as real containers for a
//! kubelet built from the same Kubernetes release as the control plane.
//!
//! What this host needs, and why each setting is there:
//! - containerd's CRI plugin with `restrict_oom_score_adj`, and the kubelet
//!   with `oomScoreAdj: 0`: root here lacks CAP_SYS_RESOURCE, so neither may
//!   lower an `oom_score_adj`.
//! - `cgroupDriver: cgroupfs` (this containerd does not implement CRI's
//!   RuntimeConfig, so the kubelet cannot ask) and `failCgroupV1: false` (the
//!   host has cgroup v1 controllers, with v2 beside them); runc mirrors each
//!   container's cgroup into the unified hierarchy, which is what
//!   `bpf_get_current_cgroup_id()` reports.
//! - Its own cgroup root, so it never meets the stand-in kubelet's `kubepods`.
//! - A loopback-only CNI configuration: the runtime's network is Ready, and
//!   pods use the host network (`hostNetwork: true`).
//! - The sysctls the kubelet sets at start (`vm.overcommit_memory`,
//!   `kernel.panic`, `kernel.panic_on_oops`) are read before and written back
//!   when the node stops.
//! - No registry: images are OCI archives imported into containerd, and pods
//!   name them with `imagePullPolicy: Never`; the sandbox's pause image is
//!   built here too (`sonde-pause`).

use std::{
    ffi::OsString,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::{
    Cluster, Component, Installation,
    ports::free_port,
    process::{ManagedProcess, args, log_tail},
};

/// Sysctls the kubelet writes at start.
const KUBELET_SYSCTLS: [&str; 3] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// An image for the node: an OCI archive and the name pods use for it.
#[derive(Clone, Debug)]
pub struct NodeImage {
    /// The OCI archive (`scripts/build-images.sh` writes them).
    pub archive: PathBuf,
    /// The repository pods name, such as `sonde.local/sonde-agent`; the tag
    /// is the archive's.
    pub repository: String,
}

/// Builds a [`RealNode`].
#[derive(Debug)]
pub struct RealNodeBuilder {
    name: String,
    images: Vec<NodeImage>,
    sandbox_image: String,
    ready_timeout: Duration,
}

impl RealNodeBuilder {
    /// Images to import into containerd before the kubelet starts.
    pub fn images(mut self, images: impl IntoIterator<Item = NodeImage>) -> Self {
        self.images.extend(images);
        self
    }

    /// The pause image of pod sandboxes, as pods would name it (imported with
    /// [`Self::images`]).
    pub fn sandbox_image(mut self, image: impl Into<String>) -> Self {
        self.sandbox_image = image.into();
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts containerd, imports the images, starts the kubelet against
    /// `cluster` and returns once the Node is Ready.
    pub async fn start(self, cluster: &Cluster) -> anyhow::Result<RealNode> {
        crate::require_root()?;
        // One real node at a time in a process: kubelets share the host's
        // sysctls, and each node's names must not meet another's.
        let turn = node_turn().lock_owned().await;
        let installation = Installation::from_env();
        let kubelet_bin = installation.binary(Component::Kubelet)?;
        let containerd_bin = installation.binary(Component::Containerd)?;
        let ctr = Path::new("/usr/bin/ctr");
        // Sockets must fit in sun_path: a short folder of the node's own.
        let dir = tempfile::Builder::new()
            .prefix("sonde-node-")
            .tempdir_in("/tmp")
            .context("a folder for the node")?;
        let root = dir.path().to_owned();
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .filter_map(|name| {
                let value = std::fs::read_to_string(Path::new("/proc/sys").join(name)).ok()?;
                Some(((*name).to_owned(), value.trim().to_owned()))
            })
            .collect();
        let mut node = RealNode {
            name: self.name.clone(),
            root: root.clone(),
            socket: root.join("containerd/containerd.sock"),
            cgroup_root: format!("sonde-{}", self.name),
            kubelet: None,
            containerd: None,
            sysctls,
            link: None,
            _dir: Some(dir),
            _turn: turn,
        };
        let link = NodeLink::create()?;
        let address = link.address;
        node.link = Some(link);

        // containerd, with the CRI plugin set up for this host.
        let cni = root.join("cni");
        std::fs::create_dir_all(&cni)?;
        std::fs::write(
            cni.join("10-loopback.conflist"),
            r#"{"cniVersion": "0.4.0", "name": "loopback", "plugins": [{"type": "loopback"}]}"#,
        )?;
        let config = root.join("containerd.toml");
        std::fs::write(
            &config,
            containerd_config(&root, &node.socket, &cni, &self.sandbox_image),
        )?;
        node.containerd = Some(ManagedProcess::spawn(
            &self.name,
            Component::Containerd,
            &containerd_bin,
            &args([OsString::from("--config"), config.into_os_string()]),
            root.join("containerd.log"),
        )?);
        node.wait_for_containerd(ctr).await?;
        for image in &self.images {
            node.ctr(
                ctr,
                &[
                    "images",
                    "import",
                    "--base-name",
                    &image.repository,
                    &image.archive.to_string_lossy(),
                ],
            )
            .with_context(|| format!("importing {}", image.archive.display()))?;
        }

        // The kubelet, under a cgroup root of its own in every hierarchy.
        create_cgroups(&node.cgroup_root)?;
        let kubelet_root = root.join("kubelet");
        std::fs::create_dir_all(&kubelet_root)?;
        let kubelet_config = root.join("kubelet.yaml");
        std::fs::write(
            &kubelet_config,
            kubelet_config_yaml(
                &node.socket,
                &node.cgroup_root,
                &root.join("pod-logs"),
                free_port()?,
            ),
        )?;
        node.kubelet = Some(ManagedProcess::spawn(
            &self.name,
            Component::Kubelet,
            &kubelet_bin,
            &args([
                OsString::from(format!("--config={}", kubelet_config.display())),
                OsString::from(format!(
                    "--kubeconfig={}",
                    cluster.kubeconfig_path().display()
                )),
                OsString::from(format!("--root-dir={}", kubelet_root.display())),
                OsString::from(format!("--cert-dir={}", root.join("kubelet-pki").display())),
                OsString::from(format!("--hostname-override={}", self.name)),
                OsString::from(format!("--node-ip={address}")),
                OsString::from("--v=1"),
            ]),
            root.join("kubelet.log"),
        )?);
        node.wait_ready(cluster, self.ready_timeout).await?;
        Ok(node)
    }
}

/// A kubelet with containerd, registered as a Node of a [`Cluster`]. Dropping
/// it stops the kubelet, every container it started and containerd, removes
/// their mounts and cgroups, and writes back the sysctls the kubelet changed.
#[derive(Debug)]
pub struct RealNode {
    name: String,
    root: PathBuf,
    socket: PathBuf,
    cgroup_root: String,
    kubelet: Option<ManagedProcess>,
    containerd: Option<ManagedProcess>,
    sysctls: Vec<(String, String)>,
    link: Option<NodeLink>,
    _dir: Option<tempfile::TempDir>,
    /// Held while the node lives; dropped after `stop`.
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// Serialises real nodes within the test process.
fn node_turn() -> std::sync::Arc<tokio::sync::Mutex<()>> {
    static TURN: std::sync::OnceLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
        std::sync::OnceLock::new();
    TURN.get_or_init(Default::default).clone()
}

impl RealNode {
    pub fn builder(name: impl Into<String>) -> RealNodeBuilder {
        RealNodeBuilder {
            name: name.into(),
            images: Vec::new(),
            sandbox_image: "sonde.local/sonde-pause:0.1.0".to_owned(),
            ready_timeout: Duration::from_secs(120),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder with the node's logs (`kubelet.log`, `containerd.log`).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The node's address (its InternalIP, and hostNetwork pods' IP): on the
    /// host's end of a veth pair whose other end is in a network namespace
    /// of the node's own, so the kubelet's probes of hostNetwork pods stay on
    /// this host. Listeners on 0.0.0.0 answer on it; tests use 127.0.0.1.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.link.as_ref().map(|l| l.address)
    }

    /// The kubelet's cgroup root (such as `/sonde-real-node`), for the agent's
    /// `--kubelet-cgroup-root`.
    pub fn cgroup_root(&self) -> String {
        format!("/{}", self.cgroup_root)
    }

    /// The sysctls the kubelet changes, as the node read them before it
    /// started; they hold again once the node is dropped.
    pub fn sysctls_before(&self) -> Vec<(String, String)> {
        self.sysctls.clone()
    }

    /// The kubelet's log, for failure messages.
    pub fn kubelet_log_tail(&self, lines: usize) -> String {
        log_tail(&self.root.join("kubelet.log"), lines)
    }

    /// What a container of a pod on this node wrote (stdout and stderr, in the
    /// CRI log format's message part), from the kubelet's pod log folder.
    pub fn container_log(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> anyhow::Result<String> {
        let prefix = format!("{namespace}_{pod}_");
        let logs = self.root.join("pod-logs");
        let dir = std::fs::read_dir(&logs)
            .with_context(|| format!("reading {}", logs.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .with_context(|| {
                format!(
                    "no log folder for pod {namespace}/{pod} in {}",
                    logs.display()
                )
            })?;
        let mut text = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(container))
            .with_context(|| format!("no logs of container {container} in {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            // CRI log lines: "<time> <stream> <P|F> <message>".
            for line in std::fs::read_to_string(&file)?.lines() {
                let message = line.splitn(4, ' ').nth(3).unwrap_or("");
                text.push_str(message);
                text.push('\n');
            }
        }
        Ok(text)
    }

    fn ctr(&self, ctr: &Path, arguments: &[&str]) -> anyhow::Result<String> {
        let output = std::process::Command::new(ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(arguments)
            .output()
            .with_context(|| format!("running {}", ctr.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "ctr {}: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    async fn wait_for_containerd(&mut self, ctr: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ctr(ctr, &["version"]).is_ok() {
                return Ok(());
            }
            if let Some(process) = self.containerd.as_mut()
                && let Some(status) = process.exit_status()
            {
                return Err(process.exited_error(status).into());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "containerd did not answer on {} within 30 s:\n{}",
                self.socket.display(),
                log_tail(&self.root.join("containerd.log"), 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_ready(&mut self, cluster: &Cluster, timeout: Duration) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(cluster.client());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(node) = nodes.get_opt(&self.name).await.ok().flatten()
                && node
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                return Ok(());
            }
            if let Some(process) = self.kubelet.as_mut()
                && let Some(status) = process.exit_status()
            {
                return Err(process.exited_error(status).into());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} was not Ready within {timeout:?}; kubelet log:\n{}",
                self.name,
                self.kubelet_log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops everything the node started and puts the host back.
    pub fn stop(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop();
        }
        if self.containerd.is_some() {
            // The kubelet is gone: stop its containers through containerd.
            let ctr = Path::new("/usr/bin/ctr");
            let tasks = self
                .ctr(ctr, &["tasks", "list", "--quiet"])
                .unwrap_or_default();
            for task in tasks.lines().filter(|t| !t.is_empty()) {
                let _ = self.ctr(ctr, &["tasks", "kill", "--signal", "SIGKILL", task]);
                for _ in 0..50 {
                    if self.ctr(ctr, &["tasks", "delete", task]).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let containers = self
                .ctr(ctr, &["containers", "list", "--quiet"])
                .unwrap_or_default();
            for container in containers.lines().filter(|c| !c.is_empty()) {
                let _ = self.ctr(ctr, &["containers", "delete", container]);
            }
        }
        if let Some(mut containerd) = self.containerd.take() {
            containerd.stop();
        }
        unmount_below(&self.root);
        remove_cgroups(&self.cgroup_root);
        if let Some(link) = self.link.take() {
            link.remove();
        }
        for (name, value) in std::mem::take(&mut self.sysctls) {
            let path = Path::new("/proc/sys").join(&name);
            if std::fs::read_to_string(&path)
                .map(|v| v.trim().to_owned())
                .ok()
                != Some(value.clone())
                && let Err(e) = std::fs::write(&path, &value)
            {
                tracing::warn!(sysctl = %name, %value, error = %e, "cannot restore a sysctl the kubelet changed");
            }
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The kubelet refuses a loopback node IP. The node's address is the host's
/// end of a veth pair (in 198.18.0.0/15, the range set aside for benchmarks,
/// never routed) whose other end sits in a network namespace made for it:
/// traffic to it is delivered on this host.
#[derive(Debug)]
struct NodeLink {
    netns: String,
    host_end: String,
    address: Ipv4Addr,
}

impl NodeLink {
    fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let tag = pid % 100_000;
        let link = Self {
            netns: format!("sonde-node-{tag}"),
            host_end: format!("sn{tag}h"),
            address: Ipv4Addr::new(198, 18, ((pid / 250) % 250) as u8, (pid % 250 + 1) as u8),
        };
        let peer = format!("sn{tag}n");
        let address = format!("{}/32", link.address);
        let steps: [&[&str]; 5] = [
            &["netns", "add", &link.netns],
            &[
                "link",
                "add",
                &link.host_end,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &link.netns,
            ],
            &["-n", &link.netns, "link", "set", &peer, "up"],
            &["addr", "add", &address, "dev", &link.host_end],
            &["link", "set", &link.host_end, "up"],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                link.remove();
                return Err(e);
            }
        }
        Ok(link)
    }

    fn remove(&self) {
        let _ = ip(&["link", "del", &self.host_end]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

fn ip(arguments: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("ip")
        .args(arguments)
        .output()
        .context("running ip (Debian package iproute2)")?;
    anyhow::ensure!(
        output.status.success(),
        "ip {}: {}",
        arguments.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn containerd_config(root: &Path, socket: &Path, cni: &Path, sandbox_image: &str) -> String {
    let root_dir = root.join("containerd/root");
    let state = root.join("containerd/state");
    format!(
        r#"version = 2
root = "{root_dir}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root_dir = root_dir.display(),
        state = state.display(),
        socket = socket.display(),
        cni = cni.display(),
    )
}

fn kubelet_config_yaml(socket: &Path, cgroup_root: &str, pod_logs: &Path, port: u16) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
podLogsDir: {pod_logs}
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
enforceNodeAllocatable: []
oomScoreAdj: 0
failSwapOn: false
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzPort: 0
# Served on loopback only; the apiserver does not reach it at the node's
# address, so tests read container logs from podLogsDir
# (RealNode::container_log).
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
authorization:
  mode: AlwaysAllow
makeIPTablesUtilChains: false
protectKernelDefaults: false
registerNode: true
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"}}
syncFrequency: 2s
fileCheckFrequency: 2s
nodeStatusUpdateFrequency: 2s
"#,
        socket = socket.display(),
        pod_logs = pod_logs.display(),
    )
}

/// Unmounts whatever containerd and the kubelet left mounted under `root`,
/// deepest first.
fn unmount_below(root: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let root = root.to_string_lossy();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&*root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = std::process::Command::new("umount")
            .args(["--lazy", point])
            .status();
    }
}

/// Creates the node's cgroup root in every hierarchy (the kubelet expects it).
fn create_cgroups(cgroup_root: &str) -> anyhow::Result<()> {
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let path = hierarchy.path();
        // Hierarchies are directories with a cgroup.procs; skip symlinks such as cpu -> cpu,cpuacct.
        if path.is_symlink() || !path.join("cgroup.procs").exists() {
            continue;
        }
        let root = path.join(cgroup_root);
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating cgroup {}", root.display()))?;
    }
    Ok(())
}

/// Removes the node's cgroup tree from every hierarchy, deepest first.
fn remove_cgroups(cgroup_root: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        if hierarchy.path().is_symlink() {
            continue;
        }
        let top = hierarchy.path().join(cgroup_root);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}
