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
        "sonde-query",
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
        "sonde-query",
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
    let sysctls = node.sysctls_before();
    let cgroup_root = node.cgroup_root();

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
            .join(cgroup_root.trim_start_matches('/'));
        assert!(!root.exists(), "{} is left", root.display());
    }
    Ok(())
}

/// Waits until `pods` matching `selector` are all Ready, and there is one.
async fn wait_ready(
    pods: &Api<Pod>,
    selector: &str,
    node: &RealNode,
    within: Duration,
) -> anyhow::Result<Pod> {
    let deadline = Instant::now() + within;
    loop {
        let list = pods
            .list(&kube::api::ListParams::default().labels(selector))
            .await?;
        let ready = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        if let Some(pod) = list.items.iter().find(|p| ready(p)) {
            return Ok(pod.clone());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no Ready pod with {selector} within {within:?}: {:?}\nkubelet log:\n{}",
            list.items.iter().map(|p| &p.status).collect::<Vec<_>>(),
            node.kubelet_log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The agent's Flight token and sonde-query's client token, as the
/// Secrets `sonde-flight` and `sonde-query-token` hold them.
const AGENT_TOKEN: &str = "agent-token-9f1c";
const QUERY_TOKEN: &str = "query-token-27ab";

/// `sql`'s answer as CSV through the `sonde` CLI, with `endpoint` the
/// global flags that pick the agent or sonde-query and the token.
fn sonde_csv(endpoint: &[&str], sql: &str) -> anyhow::Result<String> {
    let sonde = executables().join("sonde");
    let output = Command::new(&sonde)
        .args(endpoint)
        .args(["--output", "csv", "query"])
        .arg(sql)
        .output()
        .with_context(|| format!("running {}", sonde.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "sonde query: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn sonde_uprobe_events() -> Vec<String> {
    std::fs::read_to_string("/sys/kernel/tracing/uprobe_events")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(":sonde_"))
        .map(str::to_owned)
        .collect()
}

/// Ids of the loaded eBPF programs that are Sonde's, as bpftool lists them:
/// every program of probe-ebpf is named `sonde_*`.
fn sonde_programs() -> anyhow::Result<Vec<u64>> {
    let output = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("run bpftool (scripts/install.sh installs it)")?;
    anyhow::ensure!(output.status.success(), "bpftool prog show failed");
    let programs: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    Ok(programs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("sonde_")))
        .filter_map(|p| p["id"].as_u64())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_sonde_on_a_real_node_and_the_agent_captures_a_container()
-> anyhow::Result<()> {
    const REQUESTS: u32 = 300;
    let version = env!("CARGO_PKG_VERSION");
    let work = tempfile::tempdir()?;
    let images = build_images(&work.path().join("images"))?;
    let cluster = Cluster::builder()
        .controller_manager(true)
        .scheduler(true)
        .service_account_tokens(true)
        .start()
        .await?;
    let node = RealNode::builder("real-node")
        .images(images)
        .start(&cluster)
        .await?;
    let cgroup_root = node.cgroup_root();
    let apiserver_port = cluster
        .server_url()
        .rsplit(':')
        .next()
        .context("a port in the server URL")?
        .to_owned();
    let (flight, metrics, operator_metrics) =
        (e2e::free_port()?, e2e::free_port()?, e2e::free_port()?);
    // Sonde's programs already loaded by something else on the host (none
    // when test binaries run one at a time, as `make test` runs them).
    let programs_before = sonde_programs()?;
    let query_port = e2e::free_port()?;

    // The tokens come from Secrets, as the chart's README says.
    cluster
        .kubectl(&["create", "namespace", "sonde-system"])
        .await?;
    for (secret, token) in [
        ("sonde-flight", AGENT_TOKEN),
        ("sonde-query-token", QUERY_TOKEN),
    ] {
        cluster
            .kubectl(&[
                "create",
                "secret",
                "generic",
                secret,
                "-n",
                "sonde-system",
                &format!("--from-literal=token={token}"),
            ])
            .await?;
    }

    // Helm, as a user installs it, with the images built here and both
    // components on the node's network: this harness has no pod network and
    // no service proxy, so they reach the API server on loopback.
    let values = work.path().join("values.yaml");
    let api_env = format!(
        "[{{name: KUBERNETES_SERVICE_HOST, value: \"127.0.0.1\"}}, {{name: KUBERNETES_SERVICE_PORT, value: \"{apiserver_port}\"}}]"
    );
    std::fs::write(
        &values,
        format!(
            "image:
  operator: {{repository: sonde.local/sonde-operator, tag: \"{version}\"}}
  agent: {{repository: sonde.local/sonde-agent, tag: \"{version}\"}}
  query: {{repository: sonde.local/sonde-query, tag: \"{version}\"}}
  pullPolicy: Never
operator:
  replicas: 1
  hostNetwork: true
  metricsPort: {operator_metrics}
  extraEnv: {api_env}
agent:
  hostNetwork: true
  flightPort: {flight}
  metricsPort: {metrics}
  kubeletCgroupRoot: {cgroup_root}
  flightToken: {{secretName: sonde-flight}}
  extraEnv: {api_env}
query:
  hostNetwork: true
  port: {query_port}
  token: {{secretName: sonde-query-token}}
  extraEnv: {api_env}
"
        ),
    )?;
    let helm = e2e::Helm::new()?.with_kubeconfig(cluster.kubeconfig_path());
    let chart = e2e::Helm::chart();
    helm.ok(&[
        "install",
        "sonde",
        &chart.to_string_lossy(),
        "-n",
        "sonde-system",
        "--create-namespace",
        "-f",
        &values.to_string_lossy(),
    ])
    .await
    .context("helm install")?;
    // Rolled out, as docs/getting-started.md checks it.
    for workload in [
        "deployment/sonde-operator",
        "daemonset/sonde-agent",
        "deployment/sonde-query",
    ] {
        let rolled_out = cluster
            .kubectl(&[
                "-n",
                "sonde-system",
                "rollout",
                "status",
                workload,
                "--timeout=120s",
            ])
            .await;
        if let Err(e) = rolled_out {
            // What the pods say, for whoever reads the failure.
            let mut seen = String::new();
            for args in [
                &["-n", "sonde-system", "get", "pods", "-o", "wide"][..],
                &["-n", "sonde-system", "describe", "pods"][..],
                &[
                    "-n",
                    "sonde-system",
                    "logs",
                    "--all-containers",
                    "--prefix",
                    "--tail=40",
                    "-l",
                    "app.kubernetes.io/part-of=sonde",
                ][..],
            ] {
                let out = cluster
                    .kubectl(args)
                    .await
                    .unwrap_or_else(|e| format!("{e:#}"));
                seen.push_str(&format!("$ kubectl {}\n{out}\n", args.join(" ")));
            }
            return Err(e.context(format!("kubectl rollout status {workload}\n{seen}")));
        }
    }
    let system: Api<Pod> = Api::namespaced(cluster.client(), "sonde-system");
    let agent = wait_ready(
        &system,
        "app.kubernetes.io/name=sonde-agent",
        &node,
        Duration::from_secs(120),
    )
    .await?;
    for component in ["sonde-operator", "sonde-query"] {
        wait_ready(
            &system,
            &format!("app.kubernetes.io/name={component}"),
            &node,
            Duration::from_secs(120),
        )
        .await?;
    }
    let agent_addr = format!("http://127.0.0.1:{flight}");
    let on_agent = ["--addr", &agent_addr, "--token", AGENT_TOKEN];

    // A workload in a container, held until the probe is attached.
    let trigger = work.path().join("trigger");
    std::fs::create_dir(&trigger)?;
    cluster.kubectl(&["create", "namespace", "shop"]).await?;
    let shop: Api<Pod> = Api::namespaced(cluster.client(), "shop");
    let demo: Pod = serde_json::from_value(serde_json::json!({
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
                "args": ["--requests", REQUESTS.to_string(), "--wait-file", "/trigger/go"],
                "volumeMounts": [{"name": "trigger", "mountPath": "/trigger", "readOnly": true}],
            }],
            "volumes": [{"name": "trigger", "hostPath": {"path": trigger.to_string_lossy()}}],
        },
    }))?;
    shop.create(&PostParams::default(), &demo).await?;
    wait_phase(&shop, "demo", "Running", &node).await?;
    let collector = e2e::Collector::start().await?;
    cluster
        .apply(&format!(
            "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata: {{name: requests, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: demo}}}}
  probe:
    uprobe: {{binary: /usr/local/bin/sonde-demo-app, symbol: handle_request}}
  fields:
    - {{name: request_id, source: arg0, type: u64}}
  table: requests
---
apiVersion: sonde.dev/v1alpha1
kind: Retention
metadata: {{name: requests, namespace: shop}}
spec:
  tables: [requests]
  maxAge: 1h
  rollups:
    - name: requests_1s
      interval: 1s
      groupBy: [pod]
      aggregates: [{{fn: count}}]
      keep: 1h
---
apiVersion: sonde.dev/v1alpha1
kind: Export
metadata: {{name: requests, namespace: shop}}
spec:
  tables: [requests]
  destination:
    otlp: {{endpoint: \"http://{endpoint}\", protocol: grpc, signal: logs}}
  mapping: {{attributes: [request_id]}}
  interval: 1s
",
            endpoint = collector.otlp_grpc_endpoint()
        ))
        .await?;
    // The operator, in its container, reports the probe running on the node.
    wait_tracepoint(&cluster, 1).await?;

    // Attached on the node: the uprobe is in tracefs, made by the agent's process.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sonde_uprobe_events().is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent made no uprobe within 60 s; Tracepoint: {}",
            cluster
                .kubectl(&["get", "tracepoint", "-n", "shop", "requests", "-o", "yaml"])
                .await
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let loaded = sonde_programs()?;
    anyhow::ensure!(
        loaded.iter().any(|id| !programs_before.contains(id)),
        "the agent runs a probe, yet bpftool lists none of its programs: {loaded:?}"
    );
    std::fs::write(trigger.join("go"), "")?;
    wait_phase(&shop, "demo", "Succeeded", &node).await?;

    // Every call, attributed to the container's pod.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sql = "SELECT count(*) AS n, min(namespace) AS ns, min(pod) AS pod, min(container) AS c FROM shop.requests";
    let expected = format!("n,ns,pod,c\n{REQUESTS},shop,demo,main\n");
    loop {
        let answer = sonde_csv(&on_agent, sql).unwrap_or_default();
        if answer == expected {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "shop.requests on the agent says {answer:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The same rows through pyarrow, as a Flight client no one here wrote.
    let script = format!(
        "import pyarrow.flight as f, json\n\
         c = f.FlightClient('grpc://127.0.0.1:{flight}')\n\
         o = f.FlightCallOptions(headers=[(b'authorization', b'Bearer {AGENT_TOKEN}')])\n\
         t = c.do_get(f.Ticket(json.dumps({{'table': 'shop.requests'}})), o).read_all()\n\
         print(t.num_rows, sorted(set(t.column('pod').to_pylist())))"
    );
    let output = Command::new(e2e::python()?)
        .args(["-c", &script])
        .output()?;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        printed.trim(),
        format!("{REQUESTS} ['demo']"),
        "pyarrow: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The token from the Secret is required: without it the agent refuses.
    let refused = sonde_csv(&["--addr", &agent_addr], "SELECT 1")
        .expect_err("the agent answered a client with no token");
    assert!(
        refused.to_string().contains("nauthenticated"),
        "refused for another reason: {refused:#}"
    );

    // The same count through sonde-query, the cluster's endpoint, which found
    // the agent from its ProbeNode and reaches it with the agents' token.
    let query_addr = format!("http://127.0.0.1:{query_port}");
    let on_cluster = [
        "--cluster",
        "--cluster-addr",
        &query_addr,
        "--token",
        QUERY_TOKEN,
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let cluster_sql = "SELECT node, count(*) AS n FROM shop.requests GROUP BY node";
    let expected = format!("node,n\nreal-node,{REQUESTS}\n");
    loop {
        let answer = sonde_csv(&on_cluster, cluster_sql);
        if answer.as_ref().is_ok_and(|a| *a == expected) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sonde-query answers {answer:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The rollup counts every call, once its windows have closed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rollup_sql = "SELECT sum(\"count\") AS n FROM shop.requests_1s WHERE pod = 'demo'";
    loop {
        let answer = sonde_csv(&on_agent, rollup_sql).unwrap_or_default();
        if answer == format!("n\n{REQUESTS}\n") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "shop.requests_1s says {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Prometheus scrapes the agent's container.
    let prometheus = e2e::Prometheus::scraping(&[&format!("127.0.0.1:{metrics}")]).await?;
    let promql = format!(
        "sonde_events_captured_total{{namespace=\"shop\",tracepoint=\"requests\"}} == {REQUESTS}"
    );
    let samples = match prometheus.wait_for(&promql, Duration::from_secs(60)).await {
        Ok(samples) => samples,
        Err(e) => {
            let seen = prometheus.query("{__name__=~\"sonde_events_.*\"}").await?;
            let up = prometheus.query("up").await?;
            let body = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
                .await?
                .text()
                .await?;
            let lines: Vec<&str> = body
                .lines()
                .filter(|l| {
                    l.contains("scrape_report")
                        || l.contains("sonde_probes")
                        || l.contains("captured")
                })
                .collect();
            anyhow::bail!("{e}: Prometheus has {seen:?}; up: {up:?}; agent serves {lines:#?}");
        }
    };
    assert_eq!(samples.len(), 1, "{samples:?}");

    // The collector receives every row as a log record.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = collector.log_records()?.len();
        if records == REQUESTS as usize {
            break;
        }
        anyhow::ensure!(
            records < REQUESTS as usize && Instant::now() < deadline,
            "the collector has {records} log records, not {REQUESTS}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // An edit reaches the node: the operator hands it the new generation and
    // the agent reports that generation back (idle now: the workload ended,
    // and what it captured stays on /metrics).
    cluster
        .kubectl(&[
            "patch",
            "tracepoint",
            "requests",
            "-n",
            "shop",
            "--type=merge",
            "-p",
            r#"{"spec":{"sampling":{"oneIn":2}}}"#,
        ])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cluster
            .kubectl(&["get", "probenode", node.name(), "-o", "json"])
            .await?;
        let probe_node: serde_json::Value = serde_json::from_str(&out)?;
        let reported = probe_node["status"]["assignments"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["kind"] == "Tracepoint" && a["name"] == "requests");
        if reported.is_some_and(|a| a["generation"] == 2 && a["state"] == "Idle") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent did not report generation 2 of shop/requests: {reported:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Removed as docs/getting-started.md says: Sonde's resources first, while
    // the operator runs to release them (its finalizer detaches every node),
    // then the release, then the CRDs. Nothing of Sonde's stays.
    cluster
        .kubectl(&[
            "delete",
            "tracepoints,retentions,exports",
            "--all",
            "-n",
            "shop",
            "--wait=true",
            "--timeout=90s",
        ])
        .await?;
    helm.ok(&[
        "uninstall",
        "sonde",
        "-n",
        "sonde-system",
        "--wait",
        "--timeout=90s",
    ])
    .await
    .context("helm uninstall")?;
    // No program of Sonde's is left on the host: the agent's pod is gone,
    // and with it its uprobe events and every program it loaded.
    let agent_name = agent.metadata.name.unwrap_or_default();
    let left = || -> anyhow::Result<Vec<u64>> {
        let mut ids = sonde_programs()?;
        ids.retain(|id| !programs_before.contains(id));
        Ok(ids)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while system.get_opt(&agent_name).await?.is_some()
        || !sonde_uprobe_events().is_empty()
        || !left()?.is_empty()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "after helm uninstall: agent pod {agent_name}, uprobes {:?} or programs {:?} left",
            sonde_uprobe_events(),
            left()?
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Then the CRDs, as the chart's README says: no object of Sonde's is left.
    cluster
        .kubectl(&[
            "delete",
            "--wait=true",
            "-f",
            &chart.join("crds").to_string_lossy(),
        ])
        .await?;
    let resources = cluster
        .kubectl(&["api-resources", "--api-group=sonde.dev", "-o", "name"])
        .await?;
    assert_eq!(resources.trim(), "", "Sonde's kinds are still served");
    cluster
        .kubectl(&[
            "delete",
            "namespace",
            "sonde-system",
            "--wait=true",
            "--timeout=90s",
        ])
        .await?;
    let leases = cluster
        .kubectl(&[
            "get",
            "leases",
            "-A",
            "-l",
            "sonde.dev/agent-heartbeat",
            "-o",
            "name",
        ])
        .await?;
    assert_eq!(leases.trim(), "", "heartbeat Leases left");
    Ok(())
}

/// Waits until the Tracepoint shop/requests runs on the node at `generation`,
/// as the operator reports it.
async fn wait_tracepoint(cluster: &Cluster, generation: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = cluster
            .kubectl(&["get", "tracepoint", "requests", "-n", "shop", "-o", "json"])
            .await?;
        let tracepoint: serde_json::Value = serde_json::from_str(&out)?;
        let status = &tracepoint["status"];
        if status["observedGeneration"] == generation
            && status["phase"] == "Running"
            && status["nodes"]["running"] == 1
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Tracepoint shop/requests is not Running at generation {generation} on the node: {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
