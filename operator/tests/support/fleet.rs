//! The operator against a fleet of API objects (see `e2e::fleet`): nodes in
//! zones and racks, pods spread over namespaces and nodes, Tracepoints with
//! varied selectors and nodeSelectors, Retentions and Exports; the
//! operator binary as a process, read through its `/metrics` and `/proc`.
//! Shared by the write-count test (`tests/scale.rs`) and the scale bench
//! (`benches/scale.rs`).

#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use crds::{
    Export, Retention, Tracepoint,
    v1alpha1::{AssignmentKind, ProbeNode},
};
use e2e::{Cluster, fleet};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::json;

pub const OPERATOR: &str = env!("CARGO_BIN_EXE_sonde-operator");
pub const NAMESPACE: &str = "sonde-system";
/// Nodes per rack; racks carry a `rack` label, zones (ten) a `zone` label.
pub const RACK_SIZE: usize = 10;
pub const ZONES: usize = 10;
/// Distinct `app` labels of pods; Tracepoint `i` selects `app-{i % APPS}`.
pub const APPS: usize = 20;

/// How big a fleet to build.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub nodes: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub tracepoints: usize,
    pub retentions: usize,
    pub exports: usize,
}

pub fn node_name(n: usize) -> String {
    format!("node-{n:04}")
}

pub fn namespace_name(i: usize) -> String {
    format!("team-{i:02}")
}

fn node_labels(n: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("zone".to_owned(), format!("z{}", n % ZONES)),
        ("rack".to_owned(), format!("r{}", n / RACK_SIZE)),
    ])
}

/// Tracepoint `i`'s nodeSelector: none, a zone, or a rack, in turn.
pub fn node_selector(i: usize, size: &Size) -> BTreeMap<String, String> {
    let racks = size.nodes.div_ceil(RACK_SIZE);
    match i % 3 {
        0 => BTreeMap::new(),
        1 => BTreeMap::from([("zone".to_owned(), format!("z{}", i % ZONES))]),
        _ => BTreeMap::from([("rack".to_owned(), format!("r{}", i % racks))]),
    }
}

pub fn tracepoint(i: usize, size: &Size) -> Tracepoint {
    serde_json::from_value(json!({
        "apiVersion": "sonde.dev/v1alpha1",
        "kind": "Tracepoint",
        "metadata": {"name": format!("tp-{i:03}"), "namespace": namespace_name(i % size.namespaces)},
        "spec": {
            "selector": {"matchLabels": {"app": format!("app-{}", i % APPS)}},
            "nodeSelector": node_selector(i, size),
            "probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_openat"}},
            "table": format!("opens_{i}"),
        },
    }))
    .expect("a valid Tracepoint")
}

pub fn retention(i: usize, size: &Size) -> Retention {
    serde_json::from_value(json!({
        "apiVersion": "sonde.dev/v1alpha1",
        "kind": "Retention",
        "metadata": {"name": format!("keep-{i:02}"), "namespace": namespace_name(i % size.namespaces)},
        "spec": {"tables": [format!("opens_{i}")], "maxBytes": "16Mi", "maxAge": "1h"},
    }))
    .expect("a valid Retention")
}

pub fn export(i: usize, size: &Size) -> Export {
    serde_json::from_value(json!({
        "apiVersion": "sonde.dev/v1alpha1",
        "kind": "Export",
        "metadata": {"name": format!("ship-{i:02}"), "namespace": namespace_name(i % size.namespaces)},
        "spec": {
            "tables": [format!("opens_{i}")],
            "destination": {"otlp": {"endpoint": "http://127.0.0.1:4317", "protocol": "grpc", "signal": "logs"}},
        },
    }))
    .expect("a valid Export")
}

/// Pod `p`: namespace `p % namespaces`, node `p % nodes`, app `p % APPS`.
pub fn pod(p: usize, size: &Size) -> Pod {
    fleet::api_pod(
        &namespace_name(p % size.namespaces),
        &format!("pod-{p:05}"),
        &node_name(p % size.nodes),
        &[("app", &format!("app-{}", p % APPS))],
    )
}

/// What each node should run: (kind, namespace, name) → generation,
/// computed here from the resources and labels, not by the operator.
pub type Expected = BTreeMap<String, Runs>;

/// What one node runs: generation by kind, namespace and name.
pub type Runs = BTreeMap<(AssignmentKind, String, String), i64>;

/// A ProbeNode's node, generation and assignments.
fn assigned(pn: &ProbeNode) -> (String, (i64, Runs)) {
    let runs = pn
        .spec
        .assignments
        .iter()
        .map(|a| ((a.kind, a.namespace.clone(), a.name.clone()), a.generation))
        .collect();
    (pn.name_any(), (pn.metadata.generation.unwrap_or(0), runs))
}

/// A cluster with the fleet's objects (no operator yet).
pub struct Fleet {
    pub cluster: Cluster,
    pub client: Client,
    pub size: Size,
    pub kubeconfig: PathBuf,
    /// Node labels as the fleet set them.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Fleet {
    /// Starts a control plane (no controller manager: Node objects without
    /// a kubelet would be tainted and their pods evicted) and creates the
    /// fleet, `concurrency` requests at a time.
    pub async fn create(size: Size, concurrency: usize) -> anyhow::Result<Self> {
        let cluster = Cluster::builder()
            .controller_manager(false)
            .manifests(include_str!("../../../crds/sonde.dev.yaml"))
            // The fleet is created and churned at a rate no kubelet-backed
            // test reaches; the defaults (400/200) would throttle it.
            .apiserver_arg("--max-requests-inflight=800")
            .apiserver_arg("--max-mutating-requests-inflight=400")
            .start()
            .await?;
        cluster.install_sonde_rbac(NAMESPACE).await?;
        let kubeconfig = cluster
            .service_account_kubeconfig(NAMESPACE, "sonde-operator")
            .await?;
        let client = cluster.client();
        let namespaces: Vec<Namespace> = (0..size.namespaces)
            .map(|i| {
                serde_json::from_value(json!({"metadata": {"name": namespace_name(i)}}))
                    .expect("a valid Namespace")
            })
            .collect();
        fleet::create_all_cluster_scoped(&client, namespaces, concurrency).await?;
        let labels: BTreeMap<String, BTreeMap<String, String>> = (0..size.nodes)
            .map(|n| (node_name(n), node_labels(n)))
            .collect();
        let nodes: Vec<Node> = labels
            .iter()
            .map(|(name, labels)| fleet::api_node(name, labels))
            .collect();
        fleet::create_all_cluster_scoped(&client, nodes, concurrency).await?;
        let pods: Vec<Pod> = (0..size.pods).map(|p| pod(p, &size)).collect();
        fleet::create_all(&client, pods, concurrency).await?;
        let tracepoints: Vec<Tracepoint> = (0..size.tracepoints)
            .map(|i| tracepoint(i, &size))
            .collect();
        fleet::create_all(&client, tracepoints, concurrency).await?;
        let retentions: Vec<Retention> =
            (0..size.retentions).map(|i| retention(i, &size)).collect();
        fleet::create_all(&client, retentions, concurrency).await?;
        let exports: Vec<Export> = (0..size.exports).map(|i| export(i, &size)).collect();
        fleet::create_all(&client, exports, concurrency).await?;
        Ok(Self {
            cluster,
            client,
            size,
            kubeconfig,
            labels,
        })
    }

    pub fn nodes(&self) -> Vec<String> {
        self.labels.keys().cloned().collect()
    }

    /// What every node should run, from the resources as they are now.
    pub async fn expected(&self) -> anyhow::Result<Expected> {
        let tracepoints = Api::<Tracepoint>::all(self.client.clone())
            .list(&Default::default())
            .await?;
        let retentions = Api::<Retention>::all(self.client.clone())
            .list(&Default::default())
            .await?;
        let exports = Api::<Export>::all(self.client.clone())
            .list(&Default::default())
            .await?;
        let mut everywhere = BTreeMap::new();
        for r in &retentions {
            everywhere.insert(
                key(AssignmentKind::Retention, r),
                r.metadata.generation.unwrap_or(0),
            );
        }
        for e in &exports {
            everywhere.insert(
                key(AssignmentKind::Export, e),
                e.metadata.generation.unwrap_or(0),
            );
        }
        let mut expected = Expected::new();
        for (node, labels) in &self.labels {
            let mut runs = everywhere.clone();
            for tp in &tracepoints {
                let selected = tp
                    .spec
                    .node_selector
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v));
                if selected && tp.metadata.deletion_timestamp.is_none() {
                    runs.insert(
                        key(AssignmentKind::Tracepoint, tp),
                        tp.metadata.generation.unwrap_or(0),
                    );
                }
            }
            expected.insert(node.clone(), runs);
        }
        Ok(expected)
    }

    /// Each ProbeNode's generation and assignments.
    pub async fn probe_nodes(&self) -> anyhow::Result<BTreeMap<String, (i64, Runs)>> {
        let list = Api::<ProbeNode>::all(self.client.clone())
            .list(&Default::default())
            .await?;
        Ok(list.iter().map(assigned).collect())
    }

    /// Waits until every ProbeNode assigns what `expected` says; returns
    /// each node's generation then. See [`ProbeNodeWatch`].
    pub async fn wait_current(
        &self,
        expected: &Expected,
        within: Duration,
    ) -> anyhow::Result<BTreeMap<String, i64>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut watch = ProbeNodeWatch::start(&self.client, deadline).await?;
        watch.wait_current(expected, deadline).await
    }

    /// Sets a node's labels (the fleet's record too).
    pub async fn label_node(
        &mut self,
        node: &str,
        labels: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let mut all = labels.clone();
        all.insert("kubernetes.io/hostname".to_owned(), node.to_owned());
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut object = nodes.get(node).await?;
        object.metadata.labels = Some(all);
        nodes.replace(node, &Default::default(), &object).await?;
        self.labels.insert(node.to_owned(), labels);
        Ok(())
    }
}

fn key(kind: AssignmentKind, resource: &impl ResourceExt) -> (AssignmentKind, String, String) {
    (
        kind,
        resource.namespace().unwrap_or_default(),
        resource.name_any(),
    )
}

/// The ProbeNodes as a watch shows them: one list, then their changes.
/// Waiting on it rather than listing them again and again matters: a list
/// of a thousand is seconds of the apiserver's time, which would slow
/// what is being waited for; and a watch started before a change times
/// that change alone.
pub struct ProbeNodeWatch {
    events: futures::stream::BoxStream<'static, Result<watcher::Event<ProbeNode>, watcher::Error>>,
    seen: BTreeMap<String, (i64, Runs)>,
    listing: Option<BTreeMap<String, (i64, Runs)>>,
}

impl ProbeNodeWatch {
    /// Starts watching and returns once the first list is in.
    pub async fn start(client: &Client, deadline: tokio::time::Instant) -> anyhow::Result<Self> {
        let events = watcher::watcher(
            Api::<ProbeNode>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed();
        let mut watch = Self {
            events,
            seen: BTreeMap::new(),
            listing: None,
        };
        while watch.next(deadline).await?.is_none() {}
        Ok(watch)
    }

    /// Applies the next event; returns the nodes it may have changed,
    /// `None` while a list is in progress.
    async fn next(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let event = match tokio::time::timeout_at(deadline, self.events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => bail!("the watch of ProbeNodes ended"),
            Err(_) => bail!("timed out watching ProbeNodes"),
        };
        // A failed watch is retried with backoff.
        let Ok(event) = event else {
            return Ok(Some(Vec::new()));
        };
        Ok(match event {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                None
            }
            watcher::Event::InitApply(pn) => {
                let (node, state) = assigned(&pn);
                self.listing.get_or_insert_default().insert(node, state);
                None
            }
            watcher::Event::InitDone => {
                self.seen = self.listing.take().unwrap_or_default();
                Some(self.seen.keys().cloned().collect())
            }
            watcher::Event::Apply(pn) => {
                let (node, state) = assigned(&pn);
                self.seen.insert(node.clone(), state);
                Some(vec![node])
            }
            watcher::Event::Delete(pn) => {
                let node = pn.name_any();
                self.seen.remove(&node);
                Some(vec![node])
            }
        })
    }

    /// Waits until every ProbeNode assigns what `expected` says; returns
    /// each node's generation then.
    pub async fn wait_current(
        &mut self,
        expected: &Expected,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<BTreeMap<String, i64>> {
        let is_stale = |seen: &BTreeMap<String, (i64, Runs)>, node: &String| {
            seen.get(node).map(|(_, runs)| runs) != expected.get(node)
        };
        let mut stale: BTreeSet<String> = expected
            .keys()
            .filter(|node| is_stale(&self.seen, node))
            .cloned()
            .collect();
        while !stale.is_empty() {
            let changed = match self.next(deadline).await {
                Ok(changed) => changed.unwrap_or_default(),
                Err(e) => bail!(
                    "{} ProbeNodes not current, such as {}: {e:#}",
                    stale.len(),
                    stale.first().map_or("", String::as_str)
                ),
            };
            for node in changed.into_iter().filter(|n| expected.contains_key(n)) {
                if is_stale(&self.seen, &node) {
                    stale.insert(node);
                } else {
                    stale.remove(&node);
                }
            }
        }
        Ok(self
            .seen
            .iter()
            .map(|(n, (g, _))| (n.clone(), *g))
            .collect())
    }
}

/// Nodes whose generation differs between two readings (or is new).
pub fn rewritten(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeSet<String> {
    after
        .iter()
        .filter(|(node, generation)| before.get(*node) != Some(*generation))
        .map(|(node, _)| node.clone())
        .collect()
}

/// Nodes whose assignments differ between two expectations.
pub fn changed(before: &Expected, after: &Expected) -> BTreeSet<String> {
    after
        .iter()
        .filter(|(node, runs)| before.get(*node) != Some(*runs))
        .map(|(node, _)| node.clone())
        .collect()
}

/// The operator binary, leader election off; killed on drop.
pub struct Operator {
    child: Child,
    pub metrics_addr: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Operator {
    pub fn start(kubeconfig: &Path, dir: &Path, grace: &str) -> anyhow::Result<Self> {
        let metrics_addr = format!("127.0.0.1:{}", e2e::free_port()?);
        // SONDE_OPERATOR_LOG_FILE keeps the log past the cluster's
        // directory, which is removed at the end.
        let log = std::env::var_os("SONDE_OPERATOR_LOG_FILE")
            .map_or_else(|| dir.join("operator.log"), PathBuf::from);
        // SONDE_OPERATOR_BIN runs another build (to compare two).
        let binary =
            std::env::var_os("SONDE_OPERATOR_BIN").map_or_else(|| OPERATOR.into(), PathBuf::from);
        // It dies with the bench or test, killed or not.
        let child = e2e::die_with_parent(&binary)
            .args([
                "--leader-elect=false",
                "--metrics-addr",
                &metrics_addr,
                "--heartbeat-grace",
                grace,
            ])
            .env("KUBECONFIG", kubeconfig)
            // The log level of the operator under test: `warn` unless
            // SONDE_OPERATOR_LOG says otherwise (`operator=debug`).
            .env(
                "RUST_LOG",
                std::env::var("SONDE_OPERATOR_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting sonde-operator")?;
        Ok(Self {
            child,
            metrics_addr,
            http: reqwest::Client::builder().no_proxy().build()?,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the operator's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await?
            .text()
            .await?)
    }

    /// One sample of `/metrics`; 0 if the series does not exist yet.
    pub async fn sample(&self, series: &str) -> anyhow::Result<f64> {
        Ok(e2e::sample_value(&self.metrics().await?, series).unwrap_or(0.0))
    }

    pub async fn probe_node_writes(&self) -> anyhow::Result<u64> {
        Ok(self
            .sample("sonde_operator_probe_node_writes_total")
            .await? as u64)
    }

    /// The histogram of how long objects queued for `controller` waited
    /// for their reconcile: (upper bound in seconds, cumulative count).
    pub async fn queue_waits(&self, controller: &str) -> anyhow::Result<Vec<(f64, f64)>> {
        self.buckets(
            "sonde_operator_queue_wait_seconds",
            &format!("controller=\"{controller}\","),
        )
        .await
    }

    /// A histogram's cumulative buckets, (upper bound, count); `labels`
    /// are the ones before `le`, each followed by a comma.
    pub async fn buckets(&self, histogram: &str, labels: &str) -> anyhow::Result<Vec<(f64, f64)>> {
        let body = self.metrics().await?;
        let prefix = format!("{histogram}_bucket{{{labels}le=\"");
        Ok(body
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect())
    }

    /// Polls until no node reconcile is queued or running.
    pub async fn wait_idle(&self, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(body) = self.metrics().await {
                let value = |s: &str| e2e::sample_value(&body, s);
                if value("sonde_operator_queue_depth{controller=\"node\"}") == Some(0.0)
                    && value("sonde_operator_reconciles_in_flight{controller=\"node\"}")
                        .unwrap_or(0.0)
                        == 0.0
                {
                    return Ok(());
                }
            }
            if start.elapsed() > within {
                bail!("the node controller is not idle after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident memory, from /proc.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS")?;
        Ok(kib * 1024)
    }

    /// CPU time used so far (user + system), from /proc (USER_HZ is 100).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        e2e::cpu_time(self.pid()).context("the operator's CPU time")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Each ProbeNode's generation, by node.
pub fn generations(probe_nodes: &BTreeMap<String, (i64, impl Sized)>) -> BTreeMap<String, i64> {
    probe_nodes
        .iter()
        .map(|(n, (g, _))| (n.clone(), *g))
        .collect()
}

/// Tracepoints whose status has `phase` (by name), polled until all do.
pub async fn wait_phase(
    client: &Client,
    phase: crds::v1alpha1::Phase,
    within: Duration,
) -> anyhow::Result<HashMap<String, crds::v1alpha1::TracepointStatus>> {
    let start = Instant::now();
    loop {
        let list = Api::<Tracepoint>::all(client.clone())
            .list(&Default::default())
            .await?;
        let mut statuses = HashMap::new();
        let mut others = Vec::new();
        for tp in list {
            match tp.status.clone() {
                Some(status) if status.phase == Some(phase) => {
                    statuses.insert(tp.name_any(), status);
                }
                status => others.push((tp.name_any(), status.and_then(|s| s.phase))),
            }
        }
        if others.is_empty() {
            return Ok(statuses);
        }
        if start.elapsed() > within {
            bail!(
                "{} Tracepoints not {phase:?} within {within:?}: {:?}",
                others.len(),
                &others[..others.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
