//! A simulated node: its Node object and lease kept fresh, and a kubelet
//! stand-in that runs each pod bound to the node as host processes inside
//! kubelet-style cgroup v2 folders (`kubepods/pod<uid>/<container-id>`).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Container, Node, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::{ContainerProcess, cgroup, process::die_with_parent};

const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;
const EXIT_POLL: Duration = Duration::from_millis(200);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const LEASE_NAMESPACE: &str = "kube-node-lease";

pub(crate) struct KubeletConfig {
    pub client: Client,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub cgroup_root: PathBuf,
    pub log_dir: PathBuf,
    pub instance: String,
}

struct RunningContainer {
    name: String,
    image: String,
    id: String,
    child: Child,
    pid: u32,
    cgroup: PathBuf,
    log: PathBuf,
    started: Time,
    exit: Option<ExitStatus>,
}

struct RunningPod {
    namespace: String,
    name: String,
    cgroup: PathBuf,
    containers: Vec<RunningContainer>,
    /// The final status was written once every container had exited.
    finished: bool,
}

impl RunningPod {
    /// Kills every process of the pod, reaps them and removes its cgroup.
    fn stop(&mut self) {
        if let Err(e) = cgroup::kill_and_remove(&self.cgroup, KILL_TIMEOUT) {
            tracing::warn!(pod = %self.name, error = %e, "cannot clean the pod's cgroup");
        }
        for c in &mut self.containers {
            if c.exit.is_none() {
                // Already killed through the cgroup; this covers a process that left it.
                let _ = c.child.kill();
                c.exit = c.child.wait().ok();
            }
        }
    }
}

type Pods = Arc<Mutex<HashMap<String, RunningPod>>>;

/// A node of the test cluster and its kubelet stand-in. [`SimulatedNode::stop`]
/// (or drop) kills every pod process and removes the pods' cgroups.
pub(crate) struct SimulatedNode {
    name: String,
    cgroup_root: PathBuf,
    pods: Pods,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SimulatedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedNode")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn lock(pods: &Pods) -> std::sync::MutexGuard<'_, HashMap<String, RunningPod>> {
    pods.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimulatedNode {
    pub async fn start(config: KubeletConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.log_dir)?;
        let nodes: Api<Node> = Api::all(config.client.clone());
        let mut labels = config.labels.clone();
        labels
            .entry("kubernetes.io/hostname".to_owned())
            .or_insert_with(|| config.node.clone());
        labels
            .entry("kubernetes.io/os".to_owned())
            .or_insert_with(|| "linux".to_owned());
        labels
            .entry("kubernetes.io/arch".to_owned())
            .or_insert_with(|| std::env::consts::ARCH.replace("x86_64", "amd64"));
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": config.node, "labels": labels },
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        report_node_ready(&config.client, &config.node).await?;

        let pods: Pods = Arc::default();
        let config = Arc::new(config);
        let tasks = vec![
            tokio::spawn(heartbeat(config.clone())),
            tokio::spawn(watch_pods(config.clone(), pods.clone())),
            tokio::spawn(watch_exits(config.clone(), pods.clone())),
        ];
        Ok(Self {
            name: config.node.clone(),
            cgroup_root: config.cgroup_root.clone(),
            pods,
            tasks,
        })
    }

    pub fn containers_of(&self, namespace: &str, name: &str) -> Vec<ContainerProcess> {
        lock(&self.pods)
            .values()
            .filter(|p| p.namespace == namespace && p.name == name)
            .flat_map(|p| {
                p.containers.iter().map(|c| ContainerProcess {
                    container: c.name.clone(),
                    container_id: c.id.clone(),
                    pid: c.pid,
                    cgroup: c.cgroup.clone(),
                    cgroup_path: relative_cgroup(&self.cgroup_root, &c.cgroup),
                    log: c.log.clone(),
                })
            })
            .collect()
    }

    /// Stops the stand-in's tasks, then every pod process.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for SimulatedNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for (_, mut pod) in lock(&self.pods).drain() {
            pod.stop();
        }
    }
}

/// The container's cgroup relative to the v2 root, as `/proc/<pid>/cgroup` shows it.
fn relative_cgroup(root: &Path, dir: &Path) -> String {
    dir.strip_prefix(root)
        .map(|rel| format!("/{}", rel.display()))
        .unwrap_or_else(|_| dir.display().to_string())
}

async fn report_node_ready(client: &Client, node: &str) -> anyhow::Result<()> {
    let now = serde_json::to_value(Time(Timestamp::now()))?;
    let status = json!({
        "status": {
            "capacity": { "cpu": "2", "memory": "4Gi", "pods": "110" },
            "allocatable": { "cpu": "2", "memory": "4Gi", "pods": "110" },
            "addresses": [
                { "type": "InternalIP", "address": "127.0.0.1" },
                { "type": "Hostname", "address": node },
            ],
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "simulated kubelet is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "nodeInfo": {
                "architecture": std::env::consts::ARCH.replace("x86_64", "amd64"),
                "operatingSystem": "linux",
                "osImage": "sonde e2e simulated node",
                "kernelVersion": "",
                "kubeletVersion": "simulated",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "containerd://simulated",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
    });
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("reporting node {node} Ready"))?;
    Ok(())
}

async fn renew_lease(client: &Client, node: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = serde_json::to_value(MicroTime(Timestamp::now()))?;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": node, "namespace": LEASE_NAMESPACE },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now,
        },
    });
    leases
        .patch(
            node,
            &PatchParams::apply("sonde-e2e-kubelet").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

/// Keeps the node Ready for the node-lifecycle controller: lease and Ready heartbeat.
async fn heartbeat(config: Arc<KubeletConfig>) {
    loop {
        if let Err(e) = renew_lease(&config.client, &config.node).await {
            tracing::debug!(node = %config.node, error = %e, "lease renewal failed");
        }
        if let Err(e) = report_node_ready(&config.client, &config.node).await {
            tracing::debug!(node = %config.node, error = %e, "node status heartbeat failed");
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

async fn watch_pods(config: Arc<KubeletConfig>, pods: Pods) {
    let api: Api<Pod> = Api::all(config.client.clone());
    let selector = format!("spec.nodeName={}", config.node);
    let mut events = watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                if let Err(e) = sync_pod(&config, &pods, &pod).await {
                    tracing::warn!(node = %config.node, error = %format!("{e:#}"), "pod sync failed");
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                // Removed without going through us (e.g. forced): stop what runs.
                let uid = pod.metadata.uid.unwrap_or_default();
                let removed = lock(&pods).remove(&uid);
                if let Some(mut running) = removed {
                    running.stop();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(node = %config.node, error = %e, "pod watch error"),
        }
    }
}

async fn sync_pod(config: &KubeletConfig, pods: &Pods, pod: &Pod) -> anyhow::Result<()> {
    let uid = pod.metadata.uid.clone().context("pod without uid")?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(config.client.clone(), &namespace);

    if pod.metadata.deletion_timestamp.is_some() {
        let removed = lock(pods).remove(&uid);
        if let Some(mut running) = removed {
            running.stop();
        }
        // The kubelet's last word: the containers are gone, the object may go too.
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e).context("finalizing the pod's deletion"),
        }
        return Ok(());
    }

    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if lock(pods).contains_key(&uid) || matches!(phase, Some("Succeeded" | "Failed")) {
        return Ok(());
    }
    let spec = pod.spec.as_ref().context("pod without spec")?;
    match start_pod(config, &uid, &namespace, &name, &spec.containers) {
        Ok(running) => {
            let status = running_status(&running);
            lock(pods).insert(uid, running);
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .context("reporting the pod Running")?;
        }
        Err(e) => {
            let status = json!({
                "status": {
                    "phase": "Failed",
                    "reason": "StartError",
                    "message": format!("{e:#}"),
                }
            });
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .context("reporting the pod Failed")?;
        }
    }
    Ok(())
}

fn new_container_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Unique within the machine for the test's lifetime: pid, time and a counter.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let id = format!(
        "{:08x}{:032x}{:08x}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    // 64 hex digits, like a containerd id.
    format!("{id:0>64}")
}

fn start_pod(
    config: &KubeletConfig,
    uid: &str,
    namespace: &str,
    name: &str,
    containers: &[Container],
) -> anyhow::Result<RunningPod> {
    let pod_cgroup = config
        .cgroup_root
        .join("kubepods")
        .join(format!("pod{uid}"));
    let mut running = RunningPod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        cgroup: pod_cgroup.clone(),
        containers: Vec::new(),
        finished: false,
    };
    for container in containers {
        match start_container(config, &pod_cgroup, namespace, name, container) {
            Ok(c) => running.containers.push(c),
            Err(e) => {
                running.stop();
                return Err(e);
            }
        }
    }
    Ok(running)
}

fn start_container(
    config: &KubeletConfig,
    pod_cgroup: &Path,
    namespace: &str,
    pod: &str,
    container: &Container,
) -> anyhow::Result<RunningContainer> {
    let command: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect();
    if command.is_empty() {
        anyhow::bail!(
            "container {} has no command: the simulated kubelet runs commands on the host and has no images",
            container.name
        );
    }
    let id = new_container_id();
    let cgroup = pod_cgroup.join(&id);
    std::fs::create_dir_all(&cgroup)
        .with_context(|| format!("creating cgroup {} (needs root)", cgroup.display()))?;
    let log = config
        .log_dir
        .join(format!("{namespace}_{pod}_{}.log", container.name));
    let out = File::create(&log)?;
    let err = out.try_clone()?;

    // The shell moves itself into the container's cgroup and then becomes the
    // workload, so the workload's pid is the one we spawned and it never runs
    // outside its cgroup.
    let mut cmd = die_with_parent(Path::new("/bin/sh"));
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(&cgroup)
        .args(&command)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOSTNAME", pod)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for var in container.env.iter().flatten() {
        // Only literal values: there is no downward API or secret store here.
        if let Some(value) = &var.value {
            cmd.env(&var.name, value);
        }
    }
    if let Some(dir) = &container.working_dir {
        cmd.current_dir(dir);
    }
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = cgroup::kill_and_remove(&cgroup, KILL_TIMEOUT);
            return Err(e).with_context(|| format!("starting container {}", container.name));
        }
    };
    let pid = child.id();
    crate::process::record(&config.instance, crate::Component::PodProcess, pid);
    // Report Running only once the process sits in its cgroup (or has already failed).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cgroup::processes(&cgroup).contains(&pid) && std::time::Instant::now() < deadline {
        if !crate::process_running(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(RunningContainer {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        id,
        child,
        pid,
        cgroup,
        log,
        started: Time(Timestamp::now()),
        exit: None,
    })
}

fn condition(kind: &str, status: bool) -> Value {
    json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "lastTransitionTime": Time(Timestamp::now()),
    })
}

fn running_status(pod: &RunningPod) -> Value {
    let statuses: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "containerID": format!("containerd://{}", c.id),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": { "running": { "startedAt": c.started } },
            })
        })
        .collect();
    json!({
        "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{ "ip": "127.0.0.1" }],
            "podIP": "127.0.0.1",
            "podIPs": [{ "ip": "127.0.0.1" }],
            "startTime": Time(Timestamp::now()),
            "conditions": [
                condition("PodReadyToStartContainers", true),
                condition("Initialized", true),
                condition("Ready", true),
                condition("ContainersReady", true),
                condition("PodScheduled", true),
            ],
            "containerStatuses": statuses,
        }
    })
}

fn finished_status(pod: &RunningPod) -> Value {
    let code = |c: &RunningContainer| c.exit.and_then(|s| s.code()).unwrap_or(137);
    let all_ok = pod.containers.iter().all(|c| code(c) == 0);
    let statuses: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "containerID": format!("containerd://{}", c.id),
                "ready": false,
                "started": false,
                "restartCount": 0,
                "state": { "terminated": {
                    "exitCode": code(c),
                    "reason": if code(c) == 0 { "Completed" } else { "Error" },
                    "startedAt": c.started,
                    "finishedAt": Time(Timestamp::now()),
                    "containerID": format!("containerd://{}", c.id),
                } },
            })
        })
        .collect();
    json!({
        "status": {
            "phase": if all_ok { "Succeeded" } else { "Failed" },
            "conditions": [
                condition("PodReadyToStartContainers", false),
                condition("Initialized", true),
                condition("Ready", false),
                condition("ContainersReady", false),
                condition("PodScheduled", true),
            ],
            "containerStatuses": statuses,
        }
    })
}

/// Notices containers that exited by themselves and reports the pod
/// Succeeded or Failed once all have (pods never restart here).
async fn watch_exits(config: Arc<KubeletConfig>, pods: Pods) {
    loop {
        tokio::time::sleep(EXIT_POLL).await;
        let mut finished = Vec::new();
        for pod in lock(&pods).values_mut() {
            if pod.finished {
                continue;
            }
            for c in &mut pod.containers {
                if c.exit.is_none() {
                    c.exit = c.child.try_wait().ok().flatten();
                }
            }
            if pod.containers.iter().all(|c| c.exit.is_some()) {
                pod.finished = true;
                finished.push((
                    pod.namespace.clone(),
                    pod.name.clone(),
                    finished_status(pod),
                ));
            }
        }
        for (namespace, name, status) in finished {
            let api: Api<Pod> = Api::namespaced(config.client.clone(), &namespace);
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
            {
                tracing::debug!(pod = %name, error = %e, "reporting the pod finished failed");
            }
        }
    }
}
