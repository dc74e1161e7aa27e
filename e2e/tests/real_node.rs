//! Sonde's images on a real node: a kubelet with containerd and runc runs
//! pods as real containers from images built here, with no registry.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use e2e::{Cluster, NodeImage, RealNode};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};

/// Where the workspace's debug executables are: beside this package's own.
fn executables() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_sonde-pause"))
        .parent()
        .expect("a folder")
        .to_owned()
}

/// Builds the images from the debug executables with the same script as
/// `make images`, into `out`; returns them as the node imports them.
fn build_images(out: &Path) -> anyhow::Result<Vec<NodeImage>> {
    let from = executables();
    for exe in [
        "probe-agent",
        "sonde-operator",
        "sonde-demo-app",
        "sonde-pause",
    ] {
        anyhow::ensure!(
            from.join(exe).is_file(),
            "{} is missing: build the workspace's binaries first (cargo build --workspace --exclude probe-ebpf --bins)",
            from.join(exe).display()
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-images.sh");
    let output = Command::new(&script)
        .args(["--from"])
        .arg(&from)
        .arg("--with-test-images")
        .env("SONDE_IMAGES", out)
        .output()
        .context("running scripts/build-images.sh")?;
    anyhow::ensure!(
        output.status.success(),
        "scripts/build-images.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    Ok([
        "sonde-agent",
        "sonde-operator",
        "sonde-demo-app",
        "sonde-pause",
    ]
    .into_iter()
    .map(|name| NodeImage {
        archive: out.join(format!("{name}-{version}.oci.tar")),
        repository: format!("sonde.local/{name}"),
    })
    .collect())
}

/// The demo application as a pod with no node: the scheduler places it.
fn demo_pod(requests: u32) -> anyhow::Result<Pod> {
    let version = env!("CARGO_PKG_VERSION");
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "demo", "labels": {"app": "demo"}},
        "spec": {
            "hostNetwork": true,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main",
                "image": format!("sonde.local/sonde-demo-app:{version}"),
                "imagePullPolicy": "Never",
                "args": ["--requests", requests.to_string(), "--verbose"],
            }],
        },
    }))?)
}

async fn wait_phase(
    pods: &Api<Pod>,
    name: &str,
    phase: &str,
    node: &RealNode,
) -> anyhow::Result<Pod> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pod = pods.get(name).await?;
        let now = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if now == phase {
            return Ok(pod);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pod {name} is {now}, not {phase}, after 120 s: {:?}\nkubelet log:\n{}",
            pod.status,
            node.kubelet_log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The sysctls the kubelet writes at start, as they are now.
fn kubelet_sysctls() -> Vec<(String, String)> {
    [
        "vm/overcommit_memory",
        "kernel/panic",
        "kernel/panic_on_oops",
    ]
    .into_iter()
    .map(|name| {
        let value = std::fs::read_to_string(Path::new("/proc/sys").join(name)).unwrap_or_default();
        (name.to_owned(), value.trim().to_owned())
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_as_a_real_container_from_an_image_built_here() -> anyhow::Result<()> {
    let sysctls = kubelet_sysctls();
    let images = tempfile::tempdir()?;
    let images = build_images(images.path())?;
    let cluster = Cluster::builder()
        .controller_manager(true)
        .scheduler(true)
        .start()
        .await?;
    let node = RealNode::builder("real-node")
        .images(images)
        .start(&cluster)
        .await?;
    let node_dir = node.dir().to_owned();

    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    pods.create(&PostParams::default(), &demo_pod(5)?).await?;
    let pod = wait_phase(&pods, "demo", "Succeeded", &node).await?;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("real-node"),
        "the scheduler placed the pod"
    );
    let status = pod.status.unwrap_or_default();
    let container = &status.container_statuses.unwrap_or_default()[0];
    assert!(
        container
            .container_id
            .as_deref()
            .unwrap_or("")
            .starts_with("containerd://"),
        "{container:?}"
    );
    assert_eq!(
        container
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(0),
        "{container:?}"
    );
    let log = node.container_log("default", "demo", "main")?;
    assert_eq!(log.matches("request id=").count(), 5, "{log}");

    drop(node);
    assert_eq!(
        kubelet_sysctls(),
        sysctls,
        "the node puts back the sysctls the kubelet set"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    assert!(
        !mounts.contains(&*node_dir.to_string_lossy()),
        "mounts left under {}",
        node_dir.display()
    );
    for hierarchy in ["memory", "pids", "unified"] {
        let root = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join("sonde-real-node");
        assert!(!root.exists(), "{} is left", root.display());
    }
    Ok(())
}
