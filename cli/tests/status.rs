//! `sonde status` against a real apiserver: the Tracepoints and ProbeNodes
//! it lists, with their status as the operator and agents write it (written
//! by the test here; `operator/tests` covers who writes what).

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use crds::{Tracepoint, v1alpha1::ProbeNode};
use e2e::Cluster;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

fn sonde(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_tracepoints_and_nodes() -> anyhow::Result<()> {
    e2e::require_root()?;
    let cluster = Cluster::builder()
        .manifests(include_str!("../../crds/sonde.dev.yaml"))
        .controller_manager(false)
        .start()
        .await?;
    cluster.kubectl(&["create", "namespace", "shop"]).await?;
    let tracepoints: Api<Tracepoint> = Api::namespaced(cluster.client(), "shop");
    let tp: Tracepoint = serde_json::from_value(json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "Tracepoint",
        "metadata": {"name": "calls"},
        "spec": {"probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}},
                 "table": "calls"}
    }))?;
    tracepoints.create(&PostParams::default(), &tp).await?;
    tracepoints
        .patch_status(
            "calls",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Degraded",
                "nodes": {"selected": 2, "running": 1, "failed": 1, "unknown": 0},
                "nodeErrors": [{"node": "node-b", "reason": "BinaryNotFound",
                                "message": "no /srv/app in pod shop/web-b"}]
            }})),
        )
        .await?;
    let nodes: Api<ProbeNode> = Api::all(cluster.client());
    let pn: ProbeNode = serde_json::from_value(json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeNode",
        "metadata": {"name": "node-a"}, "spec": {"node": "node-a"}
    }))?;
    nodes.create(&PostParams::default(), &pn).await?;

    let (ok, out, err) = sonde(&cluster, &["status", "-o", "json"]);
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.lines().next().unwrap())?;
    assert_eq!(
        row,
        json!({"namespace": "shop", "name": "calls", "phase": "Degraded", "selected": 2,
               "running": 1, "failed": 1, "unknown": 0, "table": "shop.calls",
               "problems": "node-b: BinaryNotFound: no /srv/app in pod shop/web-b"})
    );
    let (ok, out, err) = sonde(&cluster, &["status", "--namespace", "other", "-o", "csv"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    let (ok, out, err) = sonde(&cluster, &["status", "--nodes", "-o", "json"]);
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.lines().next().unwrap())?;
    assert_eq!(row["node"], "node-a");
    assert_eq!(row["heartbeat"], "never");

    // No cluster: one line saying so.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["status"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr)?;
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("sonde: Kubernetes API: "), "{stderr}");
    Ok(())
}
