//! A real control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, with simulated nodes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::core::v1::{Container, Namespace, Pod, PodSpec, ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use crate::{
    Component, Installation, cgroup,
    kubelet::{KubeletConfig, SimulatedNode},
    pki::ClusterPki,
    ports::port_for,
    process::{ManagedProcess, args, log_tail},
};

/// How long one kubectl call may take before the harness gives up on it.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `run_pod` and `delete_pod` wait for the simulated kubelet.
const POD_TIMEOUT: Duration = Duration::from_secs(30);

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// A pod's container as the simulated kubelet runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProcess {
    pub container: String,
    /// The id without the runtime prefix (`containerd://` in the pod status).
    pub container_id: String,
    pub pid: u32,
    /// The container's cgroup folder, e.g. `/sys/fs/cgroup/unified/kubepods/pod<uid>/<id>`.
    pub cgroup: PathBuf,
    /// The same cgroup as `/proc/<pid>/cgroup` shows it (relative to the v2 root).
    pub cgroup_path: String,
    /// The container's stdout and stderr.
    pub log: PathBuf,
}

/// Options of a [`Cluster`]; [`Cluster::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    name: Option<String>,
    installation: Installation,
    apiserver_port: Option<u16>,
    etcd_port: Option<u16>,
    etcd_servers: Option<String>,
    apiserver_args: Vec<String>,
    controller_manager: bool,
    scheduler: bool,
    service_account_tokens: bool,
    ready_timeout: Duration,
    cgroup_root: Option<PathBuf>,
    manifests: Vec<String>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            name: None,
            installation: Installation::from_env(),
            apiserver_port: None,
            etcd_port: None,
            etcd_servers: None,
            apiserver_args: Vec::new(),
            controller_manager: true,
            scheduler: false,
            service_account_tokens: false,
            ready_timeout: Duration::from_secs(60),
            cgroup_root: None,
            manifests: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    /// Names the cluster: in its temp folder and in [`crate::spawned_processes`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn installation(mut self, installation: Installation) -> Self {
        self.installation = installation;
        self
    }

    /// The apiserver's port on 127.0.0.1 (default: a free one).
    pub fn apiserver_port(mut self, port: u16) -> Self {
        self.apiserver_port = Some(port);
        self
    }

    /// etcd's client port on 127.0.0.1 (default: a free one).
    pub fn etcd_port(mut self, port: u16) -> Self {
        self.etcd_port = Some(port);
        self
    }

    /// Points the apiserver at other etcd servers than the one the harness starts.
    pub fn etcd_servers(mut self, urls: impl Into<String>) -> Self {
        self.etcd_servers = Some(urls.into());
        self
    }

    /// An extra kube-apiserver flag, e.g. `--feature-gates=...`.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// Whether to run kube-controller-manager (garbage collection, namespaces,
    /// service accounts). On by default.
    pub fn controller_manager(mut self, enabled: bool) -> Self {
        self.controller_manager = enabled;
        self
    }

    /// Whether to run kube-scheduler, which Deployments and DaemonSets need
    /// to place their pods on a real node ([`crate::RealNode`]). Off by
    /// default: the simulated nodes' pods name their node themselves.
    pub fn scheduler(mut self, enabled: bool) -> Self {
        self.scheduler = enabled;
        self
    }

    /// Whether pods get service-account tokens (the ServiceAccount admission
    /// plugin), which real containers need to reach the API from inside.
    /// Off by default: simulated pods mount none, and a pod created right
    /// after its namespace then need not wait for the token controller.
    pub fn service_account_tokens(mut self, enabled: bool) -> Self {
        self.service_account_tokens = enabled;
        self
    }

    /// How long each component may take to become ready (default 60 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Where the simulated kubelets lay out pod cgroups (default: the cgroup v2 mount).
    pub fn cgroup_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cgroup_root = Some(root.into());
        self
    }

    /// Manifests (e.g. CRDs) applied with kubectl once the apiserver is ready and
    /// before kube-controller-manager starts. Its garbage collector then knows
    /// their kinds from the start; kinds added later take it up to ~40 s to notice.
    pub fn manifests(mut self, yaml: impl Into<String>) -> Self {
        self.manifests.push(yaml.into());
        self
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager and returns once
    /// the apiserver's `/readyz` passes (and the controller manager works).
    /// On failure everything started so far is stopped again.
    pub async fn start(self) -> anyhow::Result<Cluster> {
        // kube's rustls needs a process-wide crypto provider; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let started = Instant::now();
        let name = self.name.clone().unwrap_or_else(|| {
            format!(
                "cluster-{}-{}",
                std::process::id(),
                INSTANCES.fetch_add(1, Ordering::Relaxed)
            )
        });

        // Every binary is checked before anything starts.
        let inst = &self.installation;
        let etcd_bin = inst.binary(Component::Etcd)?;
        let apiserver_bin = inst.binary(Component::KubeApiserver)?;
        let kcm_bin = if self.controller_manager {
            Some(inst.binary(Component::KubeControllerManager)?)
        } else {
            None
        };

        let dir = tempfile::Builder::new()
            .prefix(&format!("sonde-e2e-{name}-"))
            .tempdir()
            .context("creating the cluster's temp folder")?;
        let root = dir.path().to_owned();
        let pki = ClusterPki::generate(&root.join("pki")).context("generating certificates")?;

        let etcd = start_etcd(&name, &etcd_bin, &root, self.etcd_port, self.ready_timeout).await?;
        // Another etcd for the apiserver (error-path tests); ours still runs so teardown is uniform.
        let etcd_url = self
            .etcd_servers
            .clone()
            .unwrap_or_else(|| etcd.url.clone());

        let port = port_for(Component::KubeApiserver, self.apiserver_port)?;
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = root.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki)?;
        let apiserver_args = apiserver_flags(
            &root,
            &pki,
            port,
            &etcd_url,
            self.service_account_tokens,
            &self.apiserver_args,
        );
        let mut apiserver = ManagedProcess::spawn(
            &name,
            Component::KubeApiserver,
            &apiserver_bin,
            &apiserver_args,
            root.join("kube-apiserver.log"),
        )?;
        let client = client_for(&kubeconfig).await?;
        let probe_client = client.clone();
        apiserver
            .wait_ready(self.ready_timeout, "GET /readyz", || {
                let c = probe_client.clone();
                async move { ready(&c).await }
            })
            .await?;

        for yaml in &self.manifests {
            run_kubectl(&kubeconfig, &["apply", "-f", "-"], Some(yaml))
                .await
                .context("applying the cluster's initial manifests")?;
        }
        if !self.manifests.is_empty() {
            wait_crds_established(&client, self.ready_timeout).await?;
        }

        let controller_manager = match kcm_bin {
            Some(bin) => {
                let mut kcm = ManagedProcess::spawn(
                    &name,
                    Component::KubeControllerManager,
                    &bin,
                    &controller_manager_flags(&kubeconfig, &pki),
                    root.join("kube-controller-manager.log"),
                )?;
                // The service-account controller creating `default` proves the controllers run.
                let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
                kcm.wait_ready(
                    self.ready_timeout,
                    "service account default/default created",
                    || {
                        let sa = sa.clone();
                        async move { matches!(sa.get_opt("default").await, Ok(Some(_))) }
                    },
                )
                .await?;
                Some(kcm)
            }
            None => {
                let ns: Api<Namespace> = Api::all(client.clone());
                apiserver
                    .wait_ready(self.ready_timeout, "namespace default exists", || {
                        let ns = ns.clone();
                        async move { matches!(ns.get_opt("default").await, Ok(Some(_))) }
                    })
                    .await?;
                None
            }
        };

        let scheduler = if self.scheduler {
            let bin = self.installation.binary(Component::KubeScheduler)?;
            Some(ManagedProcess::spawn(
                &name,
                Component::KubeScheduler,
                &bin,
                &args([
                    format!("--kubeconfig={}", kubeconfig.display()),
                    format!("--authentication-kubeconfig={}", kubeconfig.display()),
                    format!("--authorization-kubeconfig={}", kubeconfig.display()),
                    // No serving port: nothing scrapes it, and fixed ports would clash.
                    "--secure-port=0".to_owned(),
                    "--leader-elect=false".to_owned(),
                ]),
                root.join("kube-scheduler.log"),
            )?)
        } else {
            None
        };

        tracing::info!(
            cluster = %name,
            %server,
            elapsed = ?started.elapsed(),
            "control plane ready"
        );
        Ok(Cluster {
            name,
            server,
            kubeconfig,
            client,
            cgroup_root: self.cgroup_root.unwrap_or_else(cgroup::default_root),
            nodes: Mutex::new(Vec::new()),
            controller_manager,
            scheduler,
            apiserver: Some(apiserver),
            etcd: Some(etcd.process),
            dir: Some(dir),
            start_time: started.elapsed(),
        })
    }
}

/// A control plane for one test. Dropping it stops pods, then every process,
/// and removes its temp folder.
pub struct Cluster {
    name: String,
    server: String,
    kubeconfig: PathBuf,
    client: Client,
    cgroup_root: PathBuf,
    nodes: Mutex<Vec<SimulatedNode>>,
    controller_manager: Option<ManagedProcess>,
    scheduler: Option<ManagedProcess>,
    apiserver: Option<ManagedProcess>,
    etcd: Option<ManagedProcess>,
    dir: Option<tempfile::TempDir>,
    start_time: Duration,
}

impl Cluster {
    /// Starts a cluster with default options.
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client with cluster-admin rights.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A kubeconfig with cluster-admin rights, for kubectl or the components under test.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// How long [`ClusterBuilder::start`] took.
    pub fn start_time(&self) -> Duration {
        self.start_time
    }

    /// The pids of the control-plane processes.
    pub fn pids(&self) -> Vec<(Component, u32)> {
        [
            &self.etcd,
            &self.apiserver,
            &self.controller_manager,
            &self.scheduler,
        ]
        .into_iter()
        .flatten()
        .map(|p| (p.component(), p.pid()))
        .collect()
    }

    /// The cluster's temp folder (logs, certificates, kubeconfig).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// Runs the installed `kubectl` against this cluster; returns its stdout, or
    /// an error with its stderr.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_with_input(args, None).await
    }

    /// `kubectl apply -f -` with the given manifests.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
            .await
    }

    /// Runs kubectl with `input` on its stdin.
    pub async fn kubectl_with_input(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> anyhow::Result<String> {
        run_kubectl(&self.kubeconfig, args, input).await
    }

    /// A cluster with Sonde's CRDs (given to the garbage collector from the
    /// start), its RBAC in `namespace` and a `shop` namespace for the
    /// resources under test.
    pub async fn start_with_sonde(namespace: &str) -> anyhow::Result<Self> {
        let cluster = Self::builder()
            .manifests(include_str!("../../crds/sonde.dev.yaml"))
            .start()
            .await?;
        cluster.install_sonde_rbac(namespace).await?;
        cluster.kubectl(&["create", "namespace", "shop"]).await?;
        Ok(cluster)
    }

    /// Creates `namespace` and applies Sonde's RBAC there, as the Helm chart
    /// does (`charts/sonde/templates/rbac.yaml`): ServiceAccounts
    /// `sonde-operator`, `sonde-agent` and `sonde-query` with their roles.
    pub async fn install_sonde_rbac(&self, namespace: &str) -> anyhow::Result<()> {
        const RBAC: &str = include_str!("../../charts/sonde/templates/rbac.yaml");
        self.kubectl(&["create", "namespace", namespace]).await?;
        self.apply(&RBAC.replace("{{ .Release.Namespace }}", namespace))
            .await?;
        Ok(())
    }

    /// A kubeconfig that authenticates as a ServiceAccount (with a token from
    /// the TokenRequest API, valid for two hours), so that a component runs
    /// with exactly the rights its RBAC manifests grant.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self
            .kubectl(&["create", "token", name, "-n", namespace, "--duration=2h"])
            .await
            .with_context(|| format!("requesting a token for {namespace}/{name}"))?;
        let admin: serde_json::Value = serde_json::from_slice(&std::fs::read(&self.kubeconfig)?)?;
        let mut config = admin.clone();
        config["users"] = json!([{
            "name": format!("{namespace}-{name}"),
            "user": {"token": token.trim()},
        }]);
        config["contexts"][0]["context"]["user"] = json!(format!("{namespace}-{name}"));
        let path = self.dir().join(format!("kubeconfig-{namespace}-{name}"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Adds a Ready node with the given labels and starts its kubelet stand-in,
    /// which runs every pod bound to the node (`spec.nodeName`) as host processes.
    pub async fn add_node(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let node = SimulatedNode::start(KubeletConfig {
            client: self.client.clone(),
            node: name.to_owned(),
            labels,
            cgroup_root: self.cgroup_root.clone(),
            log_dir: self.dir().join("pods"),
            instance: self.name.clone(),
        })
        .await
        .with_context(|| format!("adding node {name}"))?;
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(node);
        Ok(())
    }

    /// Creates the pod and waits until its node's kubelet stand-in reports it Running.
    pub async fn run_pod(&self, namespace: &str, pod: Pod) -> anyhow::Result<Pod> {
        let name = pod.metadata.name.clone().context("the pod has no name")?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {namespace}/{name}"))?;
        let start = Instant::now();
        loop {
            let pod = api.get(&name).await?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            match phase {
                Some("Running") => return Ok(pod),
                Some(phase @ ("Failed" | "Succeeded")) => {
                    let message = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.message.clone())
                        .unwrap_or_default();
                    bail!("pod {namespace}/{name} is {phase}, not Running: {message}");
                }
                _ => {}
            }
            if start.elapsed() > POD_TIMEOUT {
                bail!(
                    "pod {namespace}/{name} not Running after {POD_TIMEOUT:?} (phase {phase:?}); \
                     is its spec.nodeName a node added with add_node?"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes the pod the way kubectl does (graceful) and waits until the
    /// kubelet stand-in has stopped it and the object is gone.
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting pod {namespace}/{name}"))?;
        let start = Instant::now();
        while api.get_opt(name).await?.is_some() {
            if start.elapsed() > POD_TIMEOUT {
                bail!("pod {namespace}/{name} still exists {POD_TIMEOUT:?} after its deletion");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The processes the kubelet stand-ins run for a pod (empty if none).
    pub fn pod_processes(&self, namespace: &str, name: &str) -> Vec<ContainerProcess> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|n| n.containers_of(namespace, name))
            .collect()
    }

    /// What the pod's container wrote to stdout and stderr so far.
    pub fn pod_log(&self, namespace: &str, name: &str, container: &str) -> anyhow::Result<String> {
        let path = self
            .pod_processes(namespace, name)
            .into_iter()
            .find(|c| c.container == container)
            .map(|c| c.log)
            .with_context(|| format!("no container {container} of pod {namespace}/{name} runs"))?;
        Ok(std::fs::read_to_string(path)?)
    }

    fn stop(&mut self) {
        let panicking = std::thread::panicking();
        for node in self
            .nodes
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            node.stop();
        }
        for process in [
            &mut self.scheduler,
            &mut self.controller_manager,
            &mut self.apiserver,
            &mut self.etcd,
        ]
        .into_iter()
        .flatten()
        {
            process.stop();
            if panicking {
                // The temp folder goes away; what the component said may explain the failure.
                eprintln!(
                    "--- {} of cluster {} (last lines of {}):\n{}",
                    process.component(),
                    self.name,
                    process.log_path().display(),
                    log_tail(process.log_path(), 30)
                );
            }
        }
        self.controller_manager = None;
        self.apiserver = None;
        self.etcd = None;
        if let Some(dir) = self.dir.take() {
            // A failure to remove a temp folder must not turn into a panic in drop.
            let _ = dir.close();
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("pids", &self.pids())
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pod whose one container (`main`) runs `command` on its node's host.
/// The image is only recorded: the simulated kubelet has no container runtime.
pub fn pod(name: &str, node: &str, command: &[&str]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(5),
            containers: vec![Container {
                name: "main".to_owned(),
                image: Some("host".to_owned()),
                command: Some(command.iter().map(|s| (*s).to_owned()).collect()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// Runs kubectl with the kubeconfig (and a discovery cache beside it, never in
/// the user's home); returns stdout, or an error with stderr.
async fn run_kubectl(
    kubeconfig: &Path,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
    let cache = kubeconfig.with_file_name("kubectl-cache");
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .context("cannot run kubectl (is it installed and on PATH?)")?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await?;
        drop(stdin);
    }
    let out = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("kubectl {} took over {KUBECTL_TIMEOUT:?}", args.join(" ")))??;
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until every CustomResourceDefinition is Established.
async fn wait_crds_established(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        let pending: Vec<String> = crds
            .list(&Default::default())
            .await?
            .into_iter()
            .filter(|crd| {
                !crd.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            })
            .filter_map(|crd| crd.metadata.name)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("CRDs not Established after {timeout:?}: {pending:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Etcd {
    process: ManagedProcess,
    url: String,
}

async fn start_etcd(
    instance: &str,
    bin: &Path,
    root: &Path,
    client_port: Option<u16>,
    timeout: Duration,
) -> anyhow::Result<Etcd> {
    let client_port = port_for(Component::Etcd, client_port)?;
    let peer_port = port_for(Component::Etcd, None)?;
    let url = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let data = root.join("etcd");
    let mut process = ManagedProcess::spawn(
        instance,
        Component::Etcd,
        bin,
        &args([
            "--name=default".to_owned(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            // Test data is thrown away: durability only costs time here.
            "--unsafe-no-fsync=true".to_owned(),
            "--log-level=warn".to_owned(),
        ]),
        root.join("etcd.log"),
    )?;
    let http = loopback_http()?;
    let health = format!("{url}/health");
    process
        .wait_ready(timeout, "GET /health", || {
            let (http, health) = (http.clone(), health.clone());
            async move {
                match http.get(&health).send().await {
                    Ok(resp) => resp
                        .text()
                        .await
                        .map(|t| t.contains("\"health\":\"true\""))
                        .unwrap_or(false),
                    Err(_) => false,
                }
            }
        })
        .await?;
    Ok(Etcd { process, url })
}

fn apiserver_flags(
    root: &Path,
    pki: &ClusterPki,
    port: u16,
    etcd_url: &str,
    service_account_tokens: bool,
    extra: &[String],
) -> Vec<std::ffi::OsString> {
    let p = |path: &Path| path.display().to_string();
    let mut flags = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", p(&root.join("apiserver-certs"))),
        format!("--tls-cert-file={}", p(&pki.serving_cert)),
        format!("--tls-private-key-file={}", p(&pki.serving_key)),
        format!("--client-ca-file={}", p(&pki.ca_cert)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!("--service-account-key-file={}", p(&pki.service_account_pub)),
        format!(
            "--service-account-signing-key-file={}",
            p(&pki.service_account_key)
        ),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        "--authorization-mode=RBAC".to_owned(),
        "--allow-privileged=true".to_owned(),
        // Endpoints may not hold loopback addresses; nothing here routes to the service anyway.
        "--endpoint-reconciler-type=none".to_owned(),
        "--profiling=false".to_owned(),
    ];
    if !service_account_tokens {
        // Simulated pods mount no service-account token, and a pod created right
        // after its namespace must not wait for the token controller.
        flags.push("--disable-admission-plugins=ServiceAccount".to_owned());
    }
    flags.extend(extra.iter().cloned());
    args(flags)
}

fn controller_manager_flags(kubeconfig: &Path, pki: &ClusterPki) -> Vec<std::ffi::OsString> {
    let p = |path: &Path| path.display().to_string();
    args([
        format!("--kubeconfig={}", p(kubeconfig)),
        // No serving port: nothing scrapes it, and fixed default ports would clash between clusters.
        "--secure-port=0".to_owned(),
        "--leader-elect=false".to_owned(),
        "--controllers=*".to_owned(),
        format!(
            "--service-account-private-key-file={}",
            p(&pki.service_account_key)
        ),
        format!("--root-ca-file={}", p(&pki.ca_cert)),
        format!("--cluster-signing-cert-file={}", p(&pki.ca_cert)),
        format!("--cluster-signing-key-file={}", p(&pki.ca_key)),
    ])
}

fn write_kubeconfig(path: &Path, server: &str, pki: &ClusterPki) -> anyhow::Result<()> {
    // JSON is YAML, so kubectl and kube-rs both read it.
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "sonde-e2e",
            "cluster": { "server": server, "certificate-authority": pki.ca_cert },
        }],
        "users": [{
            "name": "sonde-e2e-admin",
            "user": {
                "client-certificate": pki.admin_cert,
                "client-key": pki.admin_key,
            },
        }],
        "contexts": [{
            "name": "sonde-e2e",
            "context": { "cluster": "sonde-e2e", "user": "sonde-e2e-admin" },
        }],
        "current-context": "sonde-e2e",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    // Probes must fail fast while the apiserver is still coming up.
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(Client::try_from(config)?)
}

async fn ready(client: &Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    matches!(client.request_text(request).await, Ok(body) if body.trim() == "ok")
}

/// A plain-HTTP client for loopback endpoints, never through a proxy.
pub(crate) fn loopback_http() -> anyhow::Result<reqwest::Client> {
    // reqwest's rustls (enabled by the agent's OTLP/HTTP exporter in the
    // same build) takes the process's crypto provider: ring, as above.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?)
}
