//! The Helm chart, with the helm that `scripts/install-harness.sh` builds:
//! - `helm lint --strict` finds nothing, with the default values and with
//!   every option on;
//! - `values.schema.json` refuses malformed values with a message naming them;
//! - what `helm template` renders carries what the chart README promises:
//!   probes, resources, the agent's capabilities (all others dropped, not
//!   privileged), the Flight token and TLS from Secrets, the ServiceMonitor;
//! - the rendered chart applies server-side to a real apiserver and reads
//!   back unchanged (`kubectl diff --server-side`);
//! - `helm install` then `helm uninstall` on that apiserver, and deleting the
//!   CRDs as the README says, leave no object of Sonde's in the API.
//!
//! The cluster test needs root and `scripts/install-harness.sh`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use e2e::{Cluster, Helm};
use serde_yaml::Value;

/// Every option that changes what is rendered, on.
const ALL_OPTIONS: &[&str] = &[
    "--set=image.operator.repository=sonde/operator",
    "--set=image.agent.repository=sonde/agent",
    "--set=image.agent.tag=1.2.3",
    "--set=image.pullSecrets={regcred}",
    "--set=agent.flightToken.secretName=sonde-flight-token",
    "--set=agent.flightToken.key=bearer",
    "--set=agent.flightTLS.secretName=sonde-flight-tls",
    "--set=agent.hostNetwork=true",
    "--set=agent.kubeletCgroupRoot=/kubelet",
    "--set=agent.extraEnv[0].name=HTTPS_PROXY",
    "--set=agent.extraEnv[0].value=http://proxy:3128",
    "--set=operator.hostNetwork=true",
    "--set=operator.extraEnv[0].name=HTTPS_PROXY",
    "--set=operator.extraEnv[0].value=http://proxy:3128",
    "--set=agent.priorityClassName=system-node-critical",
    "--set=agent.nodeSelector.sonde\\.dev/trace=yes",
    "--set=operator.logLevel=debug",
    "--set=serviceMonitor.enabled=true",
    "--set=serviceMonitor.labels.release=prometheus",
];

/// The Prometheus Operator's ServiceMonitor kind, reduced to what the
/// apiserver needs to accept the chart's object: its group, names and an
/// open schema. Only the server-side apply of the rendered chart uses it.
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

/// How long garbage collection may take to remove a deleted Deployment's pods.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_is_clean_with_defaults_and_every_option() -> anyhow::Result<()> {
    let helm = Helm::new()?;
    let chart = Helm::chart();
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    for options in [&[][..], ALL_OPTIONS] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend_from_slice(options);
        let out = helm.ok(&args).await?;
        ensure!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint {options:?}:\n{out}"
        );
        for finding in ["[WARNING]", "[ERROR]"] {
            ensure!(
                !out.contains(finding),
                "helm lint {options:?} reports {finding}:\n{out}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_refuses_malformed_values_naming_them() -> anyhow::Result<()> {
    let helm = Helm::new()?;
    let chart = Helm::chart();
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    // (value, what the error must name: the value's JSON pointer)
    let cases = [
        ("agent.flightPort=0", "/agent/flightPort"),
        ("agent.metricsPort=70000", "/agent/metricsPort"),
        ("agent.memoryBudget=lots", "/agent/memoryBudget"),
        ("agent.heartbeatInterval=10", "/agent/heartbeatInterval"),
        ("operator.heartbeatGrace=soon", "/operator/heartbeatGrace"),
        (
            "operator.replica=3",
            "additional properties 'replica' not allowed",
        ),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("agent.capabilities={bpf}", "/agent/capabilities/0"),
        (
            "agent.kubeletCgroupRoot=kubelet",
            "/agent/kubeletCgroupRoot",
        ),
        ("agent.extraEnv[0].value=x", "/agent/extraEnv/0"),
        ("serviceMonitor.enabled=maybe", "/serviceMonitor/enabled"),
        (
            "agent.flightToken.secretName=Not_A_Name",
            "/agent/flightToken/secretName",
        ),
    ];
    for (value, named) in cases {
        let set = format!("--set={value}");
        let out = helm.run(&["template", "sonde", chart, &set]).await?;
        ensure!(!out.success, "--set {value} was accepted:\n{}", out.stdout);
        ensure!(
            out.stderr
                .contains("values don't meet the specifications of the schema"),
            "--set {value}: not refused by the schema:\n{}",
            out.stderr
        );
        ensure!(
            out.stderr.contains(named),
            "--set {value}: the error does not name {named}:\n{}",
            out.stderr
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_keeps_its_promises() -> anyhow::Result<()> {
    let helm = Helm::new()?;
    let chart = Helm::chart();
    let chart = chart.to_str().context("chart path is not UTF-8")?;

    let defaults = objects(
        &helm
            .ok(&["template", "sonde", chart, "-n", "sonde-system"])
            .await?,
    )?;
    ensure!(
        !defaults.contains_key("ServiceMonitor/sonde"),
        "a ServiceMonitor is rendered although serviceMonitor.enabled is false"
    );
    let agent = container(&defaults, "DaemonSet/sonde-agent")?;
    ensure!(
        agent["image"] == format!("sonde-agent:{}", chart_app_version()?).as_str(),
        "the agent's image tag is not the chart's appVersion: {:?}",
        agent["image"]
    );
    ensure!(
        env(agent, "SONDE_FLIGHT_TOKEN").is_none(),
        "a Flight token is configured although no Secret is named"
    );
    ensure!(
        !args(agent).iter().any(|a| a.starts_with("--flight-tls")),
        "TLS is configured although no Secret is named"
    );
    // Helm prints large integers of values.yaml as floats (8388608 as
    // 8.388608e+06) unless the template says `int`; no flag takes that.
    for workload in [
        "DaemonSet/sonde-agent",
        "Deployment/sonde-operator",
        "Deployment/sonde-query",
    ] {
        let floats: Vec<&str> = args(container(&defaults, workload)?)
            .into_iter()
            .filter(|a| {
                a.split_once('=')
                    .is_some_and(|(_, v)| v.contains("e+") && v.parse::<f64>().is_ok())
            })
            .collect();
        ensure!(
            floats.is_empty(),
            "{workload} gets numbers in exponent form: {floats:?}"
        );
    }

    let mut args_all = vec!["template", "sonde", chart, "-n", "sonde-system"];
    args_all.extend_from_slice(ALL_OPTIONS);
    let all = objects(&helm.ok(&args_all).await?)?;
    let agent_pod = &all["DaemonSet/sonde-agent"]["spec"]["template"]["spec"];
    let agent = container(&all, "DaemonSet/sonde-agent")?;
    let operator = container(&all, "Deployment/sonde-operator")?;

    ensure!(
        agent["image"] == "sonde/agent:1.2.3",
        "{:?}",
        agent["image"]
    );
    ensure!(
        agent_pod["hostPID"] == true,
        "the agent needs the host's PID namespace"
    );
    ensure!(
        agent_pod["hostNetwork"] == true,
        "agent.hostNetwork was not applied"
    );
    ensure!(
        agent_pod["priorityClassName"] == "system-node-critical",
        "agent.priorityClassName was not applied"
    );
    ensure!(
        agent_pod["imagePullSecrets"][0]["name"] == "regcred",
        "image.pullSecrets was not applied to the agent"
    );

    // Least privilege: not privileged, every capability dropped but the listed ones.
    let security = &agent["securityContext"];
    ensure!(security["privileged"] != true, "the agent is privileged");
    ensure!(
        security["capabilities"]["drop"] == serde_yaml::from_str::<Value>("[ALL]")?,
        "the agent does not drop every capability: {:?}",
        security["capabilities"]
    );
    ensure!(
        security["capabilities"]["add"]
            == serde_yaml::from_str::<Value>(
                "[BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH, NET_ADMIN]"
            )?,
        "the agent's capabilities are not the documented ones: {:?}",
        security["capabilities"]["add"]
    );
    ensure!(
        security["allowPrivilegeEscalation"] == false,
        "{security:?}"
    );
    ensure!(security["readOnlyRootFilesystem"] == true, "{security:?}");

    // The Flight token and TLS come from Secrets.
    let token = env(agent, "SONDE_FLIGHT_TOKEN").context("no SONDE_FLIGHT_TOKEN in the agent")?;
    ensure!(
        token["valueFrom"]["secretKeyRef"]
            == serde_yaml::from_str::<Value>("{name: sonde-flight-token, key: bearer}")?,
        "the Flight token does not come from the named Secret's key: {token:?}"
    );
    let agent_args = args(agent);
    for arg in [
        "--flight-tls-cert=/etc/sonde/flight-tls/tls.crt",
        "--flight-tls-key=/etc/sonde/flight-tls/tls.key",
    ] {
        ensure!(
            agent_args.contains(&arg),
            "the agent lacks {arg}: {agent_args:?}"
        );
    }
    let tls_volume = agent_pod["volumes"]
        .as_sequence()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "flight-tls"))
        .context("no flight-tls volume")?;
    ensure!(
        tls_volume["secret"]["secretName"] == "sonde-flight-tls",
        "{tls_volume:?}"
    );

    // Probes and resources on both components.
    for (name, c) in [("agent", agent), ("operator", operator)] {
        for probe in ["readinessProbe", "livenessProbe"] {
            ensure!(c[probe].is_mapping(), "the {name} has no {probe}");
        }
        for kind in ["requests", "limits"] {
            ensure!(
                c["resources"][kind]["memory"].is_string(),
                "the {name} has no memory {kind}"
            );
        }
    }
    ensure!(
        agent["readinessProbe"]["tcpSocket"]["port"] == "flight",
        "{:?}",
        agent["readinessProbe"]
    );
    ensure!(
        operator["livenessProbe"]["httpGet"]["path"] == "/metrics",
        "{:?}",
        operator["livenessProbe"]
    );
    ensure!(
        env(operator, "RUST_LOG").map(|e| &e["value"]) == Some(&Value::from("debug")),
        "operator.logLevel was not applied"
    );

    let monitor = all
        .get("ServiceMonitor/sonde")
        .context("no ServiceMonitor although serviceMonitor.enabled is true")?;
    ensure!(
        monitor["metadata"]["labels"]["release"] == "prometheus",
        "serviceMonitor.labels were not applied: {:?}",
        monitor["metadata"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_server_side_installs_and_uninstalls_without_leftovers() -> anyhow::Result<()> {
    e2e::require_root()?;
    let cluster = Cluster::builder().name("chart").start().await?;
    eprintln!("control plane ready in {:?}", cluster.start_time());
    let helm = Helm::new()?.with_kubeconfig(cluster.kubeconfig_path());
    let chart = Helm::chart();
    let chart = chart.to_str().context("chart path is not UTF-8")?;

    // 1. `helm template` (CRDs included, every option on), applied server-side.
    cluster.apply(SERVICE_MONITOR_CRD).await?;
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/servicemonitors.monitoring.coreos.com",
        ])
        .await?;
    cluster
        .kubectl(&["create", "namespace", "sonde-system"])
        .await?;
    let mut args = vec![
        "template",
        "sonde",
        chart,
        "-n",
        "sonde-system",
        "--include-crds",
    ];
    args.extend_from_slice(ALL_OPTIONS);
    let rendered = helm.ok(&args).await?;
    let started = Instant::now();
    let ssa = [
        "--server-side",
        "--field-manager=sonde-chart-test",
        "-f",
        "-",
    ];
    cluster
        .kubectl_with_input(&[&["apply"][..], &ssa].concat(), Some(&rendered))
        .await
        .context("the rendered chart does not apply server-side")?;
    // Exit status 1 (a difference) fails kubectl_with_input with the diff.
    cluster
        .kubectl_with_input(&[&["diff"][..], &ssa].concat(), Some(&rendered))
        .await
        .context("the objects read back differ from the rendered chart")?;
    let applied = objects(&rendered)?;
    eprintln!(
        "{} rendered objects applied server-side and read back in {:?}",
        applied.len(),
        started.elapsed()
    );
    let without_crds: Vec<&str> = rendered
        .split("\n---")
        .filter(|doc| !doc.contains("kind: CustomResourceDefinition"))
        .collect();
    cluster
        .kubectl_with_input(
            &["delete", "--wait=true", "-f", "-"],
            Some(&without_crds.join("\n---")),
        )
        .await?;

    // 2. Helm itself: install, check, uninstall, then delete the CRDs as the README says.
    let started = Instant::now();
    helm.ok(&[
        "install",
        "sonde",
        chart,
        "-n",
        "sonde-helm",
        "--create-namespace",
    ])
    .await
    .context("helm install")?;
    let manifest = helm
        .ok(&["get", "manifest", "sonde", "-n", "sonde-helm"])
        .await?;
    let installed = objects(&manifest)?;
    for (key, object) in &installed {
        get(&cluster, object)
            .await?
            .with_context(|| format!("{key} is in the release but not in the API"))?;
    }
    let status = helm.ok(&["status", "sonde", "-n", "sonde-helm"]).await?;
    ensure!(status.contains("STATUS: deployed"), "{status}");
    helm.ok(&[
        "uninstall",
        "sonde",
        "-n",
        "sonde-helm",
        "--wait",
        "--timeout=60s",
    ])
    .await
    .context("helm uninstall")?;
    for (key, object) in &installed {
        if get(&cluster, object).await?.is_some() {
            bail!("{key} is left after helm uninstall");
        }
    }
    // The Deployment's ReplicaSets and pods go through garbage collection.
    wait_until_none(&cluster, "sonde-helm", "replicasets,pods").await?;
    // Deleted once the apiserver serves every kind from its watch cache: a
    // CRD deleted seconds after its creation, while that cache is still
    // initializing, has its instance cleanup fail ("storage is
    // (re)initializing") and retried with a backoff of minutes.
    wait_for_watch_caches(&cluster).await?;
    let crds = Helm::chart().join("crds");
    cluster
        .kubectl(&[
            "delete",
            "--wait=true",
            "-f",
            crds.to_str().context("path")?,
        ])
        .await?;
    let left = cluster
        .kubectl(&["api-resources", "--api-group=sonde.dev", "-o", "name"])
        .await?;
    ensure!(
        left.trim().is_empty(),
        "Sonde kinds left after deleting the CRDs: {left}"
    );
    let cluster_scoped = cluster
        .kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"])
        .await?;
    ensure!(
        !cluster_scoped.contains("sonde"),
        "cluster-scoped RBAC left: {cluster_scoped}"
    );
    eprintln!(
        "{} objects installed, uninstalled and gone in {:?}",
        installed.len(),
        started.elapsed()
    );
    Ok(())
}

/// Rendered manifests by `Kind/name`.
fn objects(yaml: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = <Value as serde::Deserialize>::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().context("an object without kind")?;
        let name = value["metadata"]["name"]
            .as_str()
            .context("an object without name")?;
        out.insert(format!("{kind}/{name}"), value.clone());
    }
    Ok(out)
}

fn container<'a>(objects: &'a BTreeMap<String, Value>, key: &str) -> anyhow::Result<&'a Value> {
    let object = objects
        .get(key)
        .with_context(|| format!("{key} is not rendered"))?;
    Ok(&object["spec"]["template"]["spec"]["containers"][0])
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_sequence()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn chart_app_version() -> anyhow::Result<String> {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(Helm::chart().join("Chart.yaml"))?)?;
    chart["appVersion"]
        .as_str()
        .map(str::to_owned)
        .context("Chart.yaml has no appVersion")
}

/// The object as the API has it, or `None` if it does not exist.
async fn get(cluster: &Cluster, object: &Value) -> anyhow::Result<Option<String>> {
    let kind = object["kind"].as_str().context("kind")?;
    let name = object["metadata"]["name"].as_str().context("name")?;
    let mut args = vec!["get", kind, name, "-o", "name", "--ignore-not-found"];
    if let Some(namespace) = object["metadata"]["namespace"].as_str() {
        args.extend(["-n", namespace]);
    }
    let out = cluster.kubectl(&args).await?;
    Ok(Some(out).filter(|o| !o.trim().is_empty()))
}

/// Waits until the namespace holds none of these kinds with the release's label.
async fn wait_for_watch_caches(cluster: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    for kind in ["tracepoints", "retentions", "exports", "probenodes"] {
        // resourceVersion=0: answered from the watch cache, once it is ready.
        let path = format!("/apis/sonde.dev/v1alpha1/{kind}?resourceVersion=0&limit=1");
        while let Err(e) = cluster.kubectl(&["get", "--raw", &path]).await {
            if Instant::now() > deadline {
                bail!("the apiserver does not serve {kind} from its cache: {e:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn wait_until_none(cluster: &Cluster, namespace: &str, kinds: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    loop {
        let left = cluster
            .kubectl(&[
                "get",
                kinds,
                "-n",
                namespace,
                "-l",
                "app.kubernetes.io/instance=sonde",
                "-o",
                "name",
            ])
            .await?;
        if left.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("left in {namespace} {CLEANUP_TIMEOUT:?} after helm uninstall:\n{left}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
