//! Acceptance tests of the end-to-end harness itself: each component starts,
//! does the real thing a later test will rely on, and leaves nothing behind.
//! Needs `scripts/install-harness.sh` to have run; the cluster tests need root.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use e2e::{
    Cluster, Collector, Component, HarnessError, Installation, Prometheus, Signal, process_running,
    spawned_processes,
};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.sonde.dev
spec:
  group: e2e.sonde.dev
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: { type: integer }
"#;

const WIDGET: &str = r#"
apiVersion: e2e.sonde.dev/v1
kind: Widget
metadata: { name: w1, namespace: default }
spec: { size: 3 }
"#;

/// Asserts that none of the processes an instance started still runs.
fn assert_nothing_left(instance: &str) {
    let leftovers: Vec<_> = spawned_processes()
        .into_iter()
        .filter(|p| p.instance == instance && process_running(p.pid))
        .collect();
    assert!(leftovers.is_empty(), "still running: {leftovers:?}");
}

fn harness_error(err: &anyhow::Error) -> &HarnessError {
    err.downcast_ref::<HarnessError>()
        .unwrap_or_else(|| panic!("not a harness error: {err:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_custom_resources_pods_and_garbage_collection() -> anyhow::Result<()> {
    e2e::require_root()?;
    let cluster = Cluster::builder().name("smoke").start().await?;
    eprintln!("control plane ready in {:?}", cluster.start_time());
    let client = cluster.client();

    // A CRD and an object of it through kubectl, seen by a kube-rs watch.
    cluster.apply(WIDGET_CRD).await?;
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/widgets.e2e.sonde.dev",
            "--timeout=30s",
        ])
        .await?;
    let gvk = GroupVersionKind::gvk("e2e.sonde.dev", "v1", "Widget");
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));
    let mut seen = watcher(widgets.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    cluster.apply(WIDGET).await?;
    let widget = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(obj) = seen.try_next().await? {
            if obj.metadata.name.as_deref() == Some("w1") {
                return Ok::<_, anyhow::Error>(obj);
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await
    .context("no watch event for widget w1 within 30 s")??;
    assert_eq!(widget.data["spec"]["size"], json!(3));
    drop(seen);

    // A simulated node runs a pod's process inside the pod's cgroup.
    cluster
        .add_node("node-a", &[("sonde.dev/pool", "a")])
        .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("node-a").await?;
    assert_eq!(
        node.metadata.labels.as_ref().unwrap()["sonde.dev/pool"],
        "a"
    );
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "node-a is not Ready");

    let pod = cluster
        .run_pod("default", e2e::pod("sleeper", "node-a", &["sleep", "300"]))
        .await?;
    let status = pod.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let container = &status.container_statuses.unwrap()[0];
    assert!(container.ready);
    let procs = cluster.pod_processes("default", "sleeper");
    assert_eq!(procs.len(), 1, "{procs:?}");
    let proc = &procs[0];
    assert_eq!(
        container.container_id.as_deref(),
        Some(format!("containerd://{}", proc.container_id).as_str())
    );
    let uid = pod.metadata.uid.clone().unwrap();
    assert_eq!(
        proc.cgroup_path,
        format!("/kubepods/pod{uid}/{}", proc.container_id)
    );
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", proc.pid))?;
    let v2 = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line")?;
    assert_eq!(v2, proc.cgroup_path);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/comm", proc.pid))?.trim(),
        "sleep"
    );

    // Deleting the pod kills the process and removes the cgroup and the object.
    cluster
        .kubectl(&["delete", "pod", "sleeper", "--timeout=30s"])
        .await?;
    assert!(
        !process_running(proc.pid),
        "pod process {} survived",
        proc.pid
    );
    assert!(!proc.cgroup.exists(), "{} remains", proc.cgroup.display());
    assert!(!proc.cgroup.parent().unwrap().exists());

    // A workload that exits is reported with its exit code; its output is kept.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let short = e2e::pod(
        "short",
        "node-a",
        &["sh", "-c", "echo hello from short; exit 3"],
    );
    pods.create(&PostParams::default(), &short).await?;
    let start = Instant::now();
    let finished = loop {
        let pod = pods.get("short").await?;
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") {
            break pod;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pod short never Failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let terminated = finished.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(terminated.exit_code, 3);
    assert_eq!(
        cluster.pod_log("default", "short", "main")?.trim(),
        "hello from short"
    );
    cluster.delete_pod("default", "short").await?;
    assert!(cluster.pod_processes("default", "short").is_empty());

    // Deleting the owner garbage-collects what it owns (kube-controller-manager).
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owned = ConfigMap {
        metadata: ObjectMeta {
            name: Some("owned-by-w1".to_owned()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "e2e.sonde.dev/v1".to_owned(),
                    kind: "Widget".to_owned(),
                    name: "w1".to_owned(),
                    uid: widget.metadata.uid.clone().unwrap(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
        ..Default::default()
    };
    config_maps.create(&PostParams::default(), &owned).await?;
    cluster.kubectl(&["delete", "widget", "w1"]).await?;
    let start = Instant::now();
    while config_maps.get_opt("owned-by-w1").await?.is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "owned ConfigMap not garbage-collected within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "owned object collected {:?} after its owner's deletion",
        start.elapsed()
    );

    let pids = cluster.pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    drop(cluster);
    for (component, pid) in pids {
        assert!(
            !process_running(pid),
            "{component} ({pid}) survived the drop"
        );
    }
    assert_nothing_left("smoke");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_objects_of_preinstalled_kinds_are_collected_promptly() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .name("preinstalled")
        .manifests(WIDGET_CRD)
        .start()
        .await?;
    let client = cluster.client();
    let gvk = GroupVersionKind::gvk("e2e.sonde.dev", "v1", "Widget");
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));
    let owner: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "e2e.sonde.dev/v1",
        "kind": "Widget",
        "metadata": { "name": "owner" },
        "spec": { "size": 1 },
    }))?;
    let owner = widgets.create(&PostParams::default(), &owner).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let owned: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "owned",
            "ownerReferences": [{
                "apiVersion": "e2e.sonde.dev/v1",
                "kind": "Widget",
                "name": "owner",
                "uid": owner.metadata.uid.clone().unwrap(),
            }],
        },
    }))?;
    config_maps.create(&PostParams::default(), &owned).await?;
    widgets.delete("owner", &Default::default()).await?;
    let start = Instant::now();
    while config_maps.get_opt("owned").await?.is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "owned ConfigMap of a preinstalled kind not collected within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("collected {:?} after its owner's deletion", start.elapsed());
    drop(cluster);
    assert_nothing_left("preinstalled");
    Ok(())
}

/// A tiny HTTP server answering every request with the same metrics text.
struct MetricsTarget {
    addr: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsTarget {
    async fn serve(body: &'static str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 4096];
                // One request per connection; its content does not matter.
                let _ = conn.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        Ok(Self { addr, hits, task })
    }
}

impl Drop for MetricsTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_target_and_answers_queries() -> anyhow::Result<()> {
    let target =
        MetricsTarget::serve("# TYPE sonde_e2e_answer gauge\nsonde_e2e_answer{kind=\"test\"} 42\n")
            .await?;
    let prometheus = Prometheus::builder()
        .name("scrape")
        .job("sonde-e2e", "/metrics", &[&target.addr])
        .start()
        .await?;
    let samples = prometheus
        .wait_for("sonde_e2e_answer", Duration::from_secs(30))
        .await?;
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].value, 42.0);
    assert_eq!(samples[0].metric["kind"], "test");
    assert_eq!(samples[0].metric["job"], "sonde-e2e");
    assert_eq!(samples[0].metric["instance"], target.addr);
    let up = prometheus
        .query(&format!("up{{instance=\"{}\"}}", target.addr))
        .await?;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].value, 1.0);
    assert!(target.hits.load(Ordering::Relaxed) >= 1);

    let err = prometheus.query("sum(").await.unwrap_err();
    assert!(err.to_string().contains("prometheus rejected"), "{err:#}");

    let pid = prometheus.pid().unwrap();
    drop(prometheus);
    assert!(!process_running(pid));
    assert_nothing_left("scrape");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_receives_an_otlp_log_record_and_writes_it_out() -> anyhow::Result<()> {
    let collector = Collector::builder().name("otlp").start().await?;
    let body = format!("sonde e2e log {}", std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos()
        .to_string();
    collector
        .send_json(
            Signal::Logs,
            &json!({ "resourceLogs": [{
                "resource": { "attributes": [
                    { "key": "service.name", "value": { "stringValue": "sonde-e2e" } },
                ] },
                "scopeLogs": [{
                    "scope": { "name": "harness-test" },
                    "logRecords": [{
                        "timeUnixNano": now,
                        "severityNumber": 9,
                        "severityText": "INFO",
                        "body": { "stringValue": body },
                        "attributes": [
                            { "key": "table", "value": { "stringValue": "opens" } },
                        ],
                    }],
                }],
            }] }),
        )
        .await?;
    let record = collector
        .wait_for(Duration::from_secs(20), Collector::log_records, |r| {
            r["body"]["stringValue"] == body.as_str()
        })
        .await?;
    assert_eq!(record["severityText"], "INFO");
    assert_eq!(record["timeUnixNano"], now.as_str());
    assert_eq!(record["attributes"][0]["key"], "table");
    assert_eq!(record["attributes"][0]["value"]["stringValue"], "opens");
    let requests = collector.received(Signal::Logs)?;
    assert_eq!(
        requests[0]["resourceLogs"][0]["resource"]["attributes"][0]["value"]["stringValue"],
        "sonde-e2e"
    );
    assert!(collector.spans()?.is_empty());

    let pid = collector.pid().unwrap();
    drop(collector);
    assert!(!process_running(pid));
    assert_nothing_left("otlp");
    Ok(())
}

#[test]
fn python_venv_has_the_arrow_clients() -> anyhow::Result<()> {
    let python = e2e::python()?;
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import pyarrow, pyarrow.flight, adbc_driver_flightsql.dbapi as d; \
             t = pyarrow.table({'x': [1, 2, 3]}); print(pyarrow.__version__, t.num_rows)",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    assert!(text.trim().ends_with(" 3"), "{text}");
    assert!(e2e::python_venv().join("bin/python").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_binaries_are_named_with_the_install_command() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let install = Installation::at(empty.path());

    let err = Cluster::builder()
        .name("missing")
        .installation(install.clone())
        .start()
        .await
        .unwrap_err();
    eprintln!("{err}");
    let e = harness_error(&err);
    assert!(matches!(
        e,
        HarnessError::MissingBinary {
            component: Component::Etcd,
            ..
        }
    ));
    let text = err.to_string();
    assert!(text.starts_with("etcd: "), "{text}");
    assert!(text.contains("scripts/install-harness.sh"), "{text}");
    assert!(text.contains(&empty.path().display().to_string()), "{text}");

    let err = Prometheus::builder()
        .name("missing")
        .installation(install.clone())
        .start()
        .await
        .unwrap_err();
    assert_eq!(harness_error(&err).component(), Component::Prometheus);
    assert!(err.to_string().starts_with("prometheus: "), "{err}");

    let err = Collector::builder()
        .name("missing")
        .installation(install)
        .start()
        .await
        .unwrap_err();
    assert_eq!(harness_error(&err).component(), Component::Collector);
    assert!(err.to_string().contains("install-harness.sh"), "{err}");

    // Nothing was even started.
    assert!(spawned_processes().iter().all(|p| p.instance != "missing"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_named_and_nothing_is_left_running() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();

    // etcd starts first; the apiserver's port is taken, so etcd must be stopped again.
    let err = Cluster::builder()
        .name("port-clash")
        .apiserver_port(port)
        .start()
        .await
        .unwrap_err();
    eprintln!("{err}");
    assert!(
        matches!(
            harness_error(&err),
            HarnessError::PortInUse { component: Component::KubeApiserver, port: p } if *p == port
        ),
        "{err:#}"
    );
    assert!(err.to_string().contains(&format!("port {port}")), "{err}");
    let started: Vec<_> = spawned_processes()
        .into_iter()
        .filter(|p| p.instance == "port-clash")
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].component, Component::Etcd);
    assert_nothing_left("port-clash");

    let err = Prometheus::builder()
        .name("port-clash-prometheus")
        .port(port)
        .start()
        .await
        .unwrap_err();
    assert_eq!(harness_error(&err).component(), Component::Prometheus);
    assert!(err.to_string().starts_with("prometheus: port"), "{err}");

    let err = Collector::builder()
        .name("port-clash-collector")
        .http_port(port)
        .start()
        .await
        .unwrap_err();
    assert_eq!(harness_error(&err).component(), Component::Collector);
    assert_nothing_left("port-clash-prometheus");
    assert_nothing_left("port-clash-collector");
    drop(taken);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_that_fails_to_start_is_named_and_cleaned_up() -> anyhow::Result<()> {
    let err = Cluster::builder()
        .name("bad-flag")
        .apiserver_arg("--no-such-flag=1")
        .start()
        .await
        .unwrap_err();
    eprintln!("{err}");
    let e = harness_error(&err);
    assert!(
        matches!(
            e,
            HarnessError::Exited {
                component: Component::KubeApiserver,
                ..
            }
        ),
        "{err:#}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("kube-apiserver exited during start-up"),
        "{text}"
    );
    assert!(
        text.contains("no-such-flag"),
        "the log tail should show why: {text}"
    );
    let components: Vec<_> = spawned_processes()
        .into_iter()
        .filter(|p| p.instance == "bad-flag")
        .map(|p| p.component)
        .collect();
    assert_eq!(components, [Component::Etcd, Component::KubeApiserver]);
    assert_nothing_left("bad-flag");

    // An apiserver whose etcd does not answer never becomes ready.
    let nobody = e2e::free_port()?;
    let err = Cluster::builder()
        .name("no-etcd")
        .etcd_servers(format!("http://127.0.0.1:{nobody}"))
        .ready_timeout(Duration::from_secs(8))
        .start()
        .await
        .unwrap_err();
    eprintln!("{err}");
    let e = harness_error(&err);
    assert_eq!(e.component(), Component::KubeApiserver, "{err:#}");
    assert!(err.to_string().starts_with("kube-apiserver "), "{err}");
    assert_nothing_left("no-etcd");
    Ok(())
}
