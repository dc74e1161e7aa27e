//! The operator at scale, measured (not a test: it prints figures and
//! asserts nothing). `make bench-operator`, or
//! `cargo bench -p operator --bench scale [-- nodes pods heartbeat-seconds]`.
//!
//! A real apiserver from the e2e harness holds 1,000 Node objects, 20,000
//! pods in 50 namespaces, 100 Tracepoints (a third without nodeSelector, a
//! third on a zone of 100 nodes, a third on a rack of 10), 20 Retentions and
//! 5 Exports; simulated agents renew every node's heartbeat Lease every
//! 10 s and write its ProbeNode status on change and every 60 s, as agents
//! do. Measured: initial sync time, the operator's RSS and CPU per
//! heartbeat, 1,000 pod changes in 60 s (ProbeNode writes, and latency to
//! the Tracepoint's status), a Tracepoint edit on one rack, and the
//! latency from an agent's report to the Tracepoint's status.
//!
//! `SONDE_OPERATOR_LOG` sets the operator's log filter (`operator=debug`
//! logs each report, reconcile and status write with its timing),
//! `SONDE_OPERATOR_LOG_FILE` where its log goes (it outlives the cluster's
//! folder), and `SONDE_OPERATOR_BIN` runs another build of the operator.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crds::{
    Tracepoint,
    v1alpha1::{AssignmentState, Phase},
};
use e2e::fleet::{SimulatedAgents, api_pod};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use support::fleet::{self, Fleet, Operator, ProbeNodeWatch, Size};

const SETTLE: Duration = Duration::from_secs(600);
const CHURN_EVENTS: usize = 1_000;
const CHURN_SPAN: Duration = Duration::from_secs(60);
/// The agent's default `--status-interval`.
const STATUS_INTERVAL: Duration = Duration::from_secs(300);

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; numbers are the size.
    let numbers: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    // Agents heartbeat every 10 s; the grace period is three heartbeats.
    let heartbeat = Duration::from_secs(numbers.get(2).copied().unwrap_or(10) as u64);
    let size = Size {
        nodes: numbers.first().copied().unwrap_or(1_000),
        pods: numbers.get(1).copied().unwrap_or(20_000),
        namespaces: 50,
        tracepoints: 100,
        retentions: 20,
        exports: 5,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(size, heartbeat))
}

async fn bench(size: Size, heartbeat: Duration) -> anyhow::Result<()> {
    println!("fleet: {size:?}");
    let started = Instant::now();
    let fleet = Fleet::create(size, 64).await?;
    let client = fleet.client.clone();
    println!(
        "created the fleet through the apiserver in {:.1?}",
        started.elapsed()
    );

    // Initial sync.
    let expected = fleet.expected().await?;
    let started = Instant::now();
    let grace = format!("{}s", 3 * heartbeat.as_secs());
    let operator = Operator::start(&fleet.kubeconfig, fleet.cluster.dir(), &grace)?;
    let generations = fleet.wait_current(&expected, SETTLE).await?;
    let synced = started.elapsed();
    let with_status = wait_all_statuses(&client).await?;
    operator.wait_idle(SETTLE).await?;
    let writes = operator.probe_node_writes().await?;
    println!(
        "initial sync: all {} ProbeNodes current after {synced:.1?}, every Tracepoint with a status after {:.1?}; {writes} ProbeNode writes ({:.2} per node)",
        size.nodes,
        synced + with_status,
        writes as f64 / size.nodes as f64,
    );

    // Steady state with agents reporting.
    let agents = SimulatedAgents::start(
        &client,
        fleet::NAMESPACE,
        fleet.nodes(),
        heartbeat,
        STATUS_INTERVAL,
    )
    .await?;
    let started = Instant::now();
    // Every agent's first status is a write of its whole ProbeNode: while
    // a thousand of them land the apiserver may time a list out; ask again.
    let mut running = fleet::wait_phase(&client, Phase::Running, Duration::from_secs(180)).await;
    while running.is_err() && started.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        running = fleet::wait_phase(&client, Phase::Running, Duration::from_secs(180)).await;
    }
    match running {
        Ok(_) => println!(
            "agents report (every {heartbeat:?}): every Tracepoint Running after {:.1?}",
            started.elapsed()
        ),
        Err(e) => println!(
            "agents report (every {heartbeat:?}): {e:#}; {} heartbeats written in {:.0?} (the apiserver's pace here)",
            agents.heartbeats(),
            started.elapsed()
        ),
    }
    let (cpu, beats, statuses) = (
        operator.cpu_time()?,
        agents.heartbeats(),
        agents.status_writes(),
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (cpu, beats, statuses) = (
        operator.cpu_time()? - cpu,
        agents.heartbeats() - beats,
        agents.status_writes() - statuses,
    );
    println!(
        "steady state: RSS {:.1} MiB; {beats} Lease heartbeats and {statuses} status writes in 30 s cost {cpu:.2?} CPU, {:.0} µs per heartbeat or status",
        operator.rss_bytes()? as f64 / (1024.0 * 1024.0),
        cpu.as_micros() as f64 / (beats + statuses).max(1) as f64,
    );
    println!("{}", apiserver_load(&client).await?);

    // A failed step (the apiserver here is near its limit) is reported,
    // and the next one still runs.
    if let Err(e) = churn(&fleet, &operator, &generations).await {
        println!("pod churn: {e:#}");
    }
    if let Err(e) = rack_edit(&fleet, &operator).await {
        println!("Tracepoint edit on one rack: {e:#}");
    }
    if let Err(e) = report_latency(&fleet, &operator, &agents, heartbeat).await {
        println!("agent report → Tracepoint status: {e:#}");
    }

    println!("{}", apiserver_load(&client).await?);
    let body = operator.metrics().await?;
    for line in body.lines().filter(|l| {
        l.starts_with("sonde_operator_reconcile_duration_seconds_sum")
            || l.starts_with("sonde_operator_reconcile_duration_seconds_count")
            || l.starts_with("sonde_operator_status_writes_total")
            || l.starts_with("sonde_operator_cache_objects")
            || l.starts_with("sonde_operator_watch_events_total")
            || l.starts_with("sonde_operator_relists_total")
    }) {
        println!("  {line}");
    }
    println!(
        "final RSS {:.1} MiB",
        operator.rss_bytes()? as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// 1,000 pod changes in 60 s: app-0 pods of team-00 (tp-000's, which has
/// no nodeSelector) created on nodes that had none, then deleted. Each
/// one changes tp-000's selected nodes by one; none changes a ProbeNode.
async fn churn(
    fleet: &Fleet,
    operator: &Operator,
    generations: &std::collections::BTreeMap<String, i64>,
) -> anyhow::Result<()> {
    let client = &fleet.client;
    let tracepoints: Api<Tracepoint> = Api::namespaced(client.clone(), "team-00");
    let observed: Arc<Mutex<Vec<(Instant, u32)>>> = Arc::default();
    let watch = {
        let observed = observed.clone();
        let config = watcher::Config::default().fields("metadata.name=tp-000");
        tokio::spawn(
            watcher(tracepoints.clone(), config)
                .default_backoff()
                .applied_objects()
                .for_each(move |tp| {
                    if let Ok(tp) = tp
                        && let Some(n) = tp.status.and_then(|s| s.nodes)
                    {
                        observed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((Instant::now(), n.selected));
                    }
                    std::future::ready(())
                }),
        )
    };
    let base = tracepoints
        .get("tp-000")
        .await?
        .status
        .and_then(|s| s.nodes)
        .map(|n| n.selected)
        .unwrap_or_default();
    let writes = operator.probe_node_writes().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-00");
    let half = CHURN_EVENTS / 2;
    // Odd nodes: tp-000's pods are on multiples of 100 only.
    let nodes: Vec<String> = (0..half)
        .map(|k| fleet::node_name((2 * k + 1) % fleet.size.nodes))
        .collect();
    let every = CHURN_SPAN / CHURN_EVENTS as u32;
    let mut tick = tokio::time::interval(every);
    let mut events = Vec::with_capacity(CHURN_EVENTS);
    for (k, node) in nodes.iter().enumerate() {
        tick.tick().await;
        let at = Instant::now();
        pods.create(
            &PostParams::default(),
            &api_pod("team-00", &format!("churn-{k}"), node, &[("app", "app-0")]),
        )
        .await?;
        events.push((at, Instant::now(), base + k as u32 + 1, true));
    }
    for k in 0..half {
        tick.tick().await;
        let at = Instant::now();
        pods.delete(
            &format!("churn-{k}"),
            &DeleteParams::default().grace_period(0),
        )
        .await?;
        events.push((at, Instant::now(), base + (half - k - 1) as u32, false));
    }
    let sent = Instant::now();
    // Wait for the last change to show.
    let deadline = Instant::now() + Duration::from_secs(60);
    while observed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last()
        .is_none_or(|(_, n)| *n != base)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.abort();
    let observed = observed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // From the request, and from its response: the apiserver has stored
    // the change by then, so the second is the operator's part (and the
    // watches'), the first adds the apiserver's time to take the change.
    let mut latencies = Vec::new();
    let mut from_stored = Vec::new();
    let mut calls: Vec<Duration> = events.iter().map(|(at, done, ..)| *done - *at).collect();
    for (at, done, count, grows) in &events {
        if let Some((seen, _)) = observed
            .iter()
            .find(|(seen, n)| seen >= at && if *grows { n >= count } else { n <= count })
        {
            latencies.push(*seen - *at);
            from_stored.push(seen.saturating_duration_since(*done));
        }
    }
    let seen = latencies.len();
    latencies.sort();
    from_stored.sort();
    calls.sort();
    operator.wait_idle(SETTLE).await?;
    let churn_writes = operator.probe_node_writes().await? - writes;
    let after = fleet.wait_current(&fleet.expected().await?, SETTLE).await?;
    let rewritten = fleet::rewritten(generations, &after);
    println!(
        "pod churn: {CHURN_EVENTS} pod changes in {:.1?}; ProbeNode writes {churn_writes}, ProbeNodes whose generation changed {}, nodes whose assignments changed 0 (pods are not part of a ProbeNode)",
        sent.duration_since(events[0].0),
        rewritten.len(),
    );
    println!(
        "pod change → Tracepoint status (selected nodes) current: {seen} of {} changes seen; from the request p50 {:.2?}, p99 {:.2?}, max {:.2?}; from the apiserver's response (change stored) p50 {:.2?}, p99 {:.2?}, max {:.2?}; the pod calls themselves p50 {:.2?}, p99 {:.2?}",
        events.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        percentile(&from_stored, 0.50),
        percentile(&from_stored, 0.99),
        from_stored.last().copied().unwrap_or_default(),
        percentile(&calls, 0.50),
        percentile(&calls, 0.99),
    );
    Ok(())
}

/// tp-002 is on rack r2 (ten nodes): an edit writes those ten.
async fn rack_edit(fleet: &Fleet, operator: &Operator) -> anyhow::Result<()> {
    let before_expected = fleet.expected().await?;
    let before = fleet::generations(&fleet.probe_nodes().await?);
    let writes = operator.probe_node_writes().await?;
    let team = fleet::namespace_name(2 % fleet.size.namespaces);
    // Watching from before the edit: the wait times the edit alone.
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut watch = ProbeNodeWatch::start(&fleet.client, deadline).await?;
    let started = Instant::now();
    Api::<Tracepoint>::namespaced(fleet.client.clone(), &team)
        .patch(
            "tp-002",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sampling": {"oneIn": 10}}})),
        )
        .await?;
    let expected = fleet.expected().await?;
    let after = watch.wait_current(&expected, deadline).await?;
    let took = started.elapsed();
    drop(watch);
    operator.wait_idle(SETTLE).await?;
    let written = operator.probe_node_writes().await? - writes;
    let changed = fleet::changed(&before_expected, &expected);
    let rewritten: BTreeSet<String> = fleet::rewritten(&before, &after);
    println!(
        "Tracepoint edit on one rack: {} nodes' assignments changed; {written} ProbeNode writes, {} ProbeNodes rewritten ({}), all current after {took:.2?}",
        changed.len(),
        rewritten.len(),
        if rewritten == changed {
            "exactly those nodes"
        } else {
            "NOT those nodes"
        },
    );
    Ok(())
}

/// An agent reports tp-000 Failed on one of its nodes, then Attached
/// again: time until the Tracepoint's status says so, ten times each.
async fn report_latency(
    fleet: &Fleet,
    operator: &Operator,
    agents: &SimulatedAgents,
    heartbeat: Duration,
) -> anyhow::Result<()> {
    let waits_before = operator.queue_waits("tracepoint").await?;
    let delays_before = operator
        .buckets("sonde_operator_report_delay_seconds", "")
        .await?;
    let relists_before = relists(operator).await?;
    let tracepoints: Api<Tracepoint> = Api::namespaced(fleet.client.clone(), "team-00");
    let mut latencies = Vec::new();
    // Each report: its total, the ProbeNode status write alone, when the
    // bench's own ProbeNode watch saw the write, what, where, when.
    let mut reports: Vec<Report> = Vec::new();
    for round in 0..10 {
        // tp-000's pods: nodes 0, 100, 200, ...
        let node = fleet::node_name((round * 100) % fleet.size.nodes);
        for (state, phase) in [
            (AssignmentState::Failed, Phase::Failed),
            (AssignmentState::Attached, Phase::Running),
        ] {
            let started = Instant::now();
            let at = jiff::Timestamp::now();
            agents
                .report(
                    &node,
                    "team-00",
                    "tp-000",
                    state,
                    if state == AssignmentState::Failed {
                        "BinaryNotFound"
                    } else {
                        ""
                    },
                )
                .await?;
            let written = started.elapsed();
            let mut watched = None;
            loop {
                if watched.is_none()
                    && agents.watched_state(&node, "team-00", "tp-000") == Some(state)
                {
                    watched = Some(started.elapsed());
                }
                let tp = tracepoints.get("tp-000").await?;
                let status = tp.status.unwrap_or_default();
                let shows = match state {
                    AssignmentState::Failed => status.node_errors.iter().any(|e| e.node == node),
                    _ => status.phase == Some(phase),
                };
                if shows {
                    latencies.push(started.elapsed());
                    reports.push(Report {
                        total: started.elapsed(),
                        written,
                        watched,
                        state,
                        node: node.clone(),
                        at,
                    });
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    anyhow::bail!("tp-000's status did not show {state:?} on {node}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    latencies.sort();
    println!(
        "agent report → Tracepoint status current ({} reports, heartbeats from {} nodes every {heartbeat:?} meanwhile): p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        latencies.len(),
        fleet.size.nodes,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    // The slowest, with the agent's status write apart: a slow write is the
    // apiserver's time, the rest the operator's and its watches'.
    reports.sort_by_key(|r| std::cmp::Reverse(r.total));
    let slowest: Vec<String> = reports
        .iter()
        .take(3)
        .map(|r| {
            let watched = r
                .watched
                .map_or_else(|| "not seen".to_owned(), |w| format!("{w:.2?}"));
            format!(
                "{:?} on {} at {} {:.2?} (its status write {:.2?}, in the bench's own ProbeNode watch at {watched})",
                r.state, r.node, r.at, r.total, r.written
            )
        })
        .collect();
    println!("  slowest reports: {}", slowest.join("; "));
    // Meanwhile, every Tracepoint the operator queued for a change (these
    // reports, and every other agent's): how long each waited for its
    // reconcile to start.
    let waits_after = operator.queue_waits("tracepoint").await?;
    let count_within = |bound| within(&waits_before, &waits_after, bound);
    let queued = count_within(f64::INFINITY);
    println!(
        "  Tracepoints queued by a change meanwhile: {queued:.0}; waited over 0.256 s: {:.0}, over 1.02 s: {:.0}, over 4.10 s: {:.0}",
        queued - count_within(0.256),
        queued - count_within(1.024),
        queued - count_within(4.096),
    );
    // Every agent's report (heartbeats too), from its write to the
    // operator's watch; the times are whole seconds, so "over 2 s" is at
    // least 1 s late.
    let delays_after = operator
        .buckets("sonde_operator_report_delay_seconds", "")
        .await?;
    let count_within = |bound| within(&delays_before, &delays_after, bound);
    let seen = count_within(f64::INFINITY);
    let relisted: Vec<String> = relists(operator)
        .await?
        .into_iter()
        .filter_map(|(kind, n)| {
            let more = n - relists_before.get(&kind).copied().unwrap_or(0.0);
            (more > 0.0).then(|| format!("{kind} {more:.0}"))
        })
        .collect();
    println!(
        "  agent reports the operator saw meanwhile: {seen:.0}; after over 2 s: {:.0}, over 4 s: {:.0}, over 8 s: {:.0}; watches listed again: {}",
        seen - count_within(2.0),
        seen - count_within(4.0),
        seen - count_within(8.0),
        if relisted.is_empty() {
            "none".to_owned()
        } else {
            relisted.join(", ")
        },
    );
    Ok(())
}

/// Of a histogram's cumulative buckets, the observations between two
/// scrapes up to `bound`.
fn within(before: &[(f64, f64)], after: &[(f64, f64)], bound: f64) -> f64 {
    let at = |buckets: &[(f64, f64)]| {
        buckets
            .iter()
            .find(|(le, _)| *le >= bound)
            .map_or(0.0, |(_, count)| *count)
    };
    at(after) - at(before)
}

/// The operator's relists so far, by kind.
async fn relists(operator: &Operator) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let body = operator.metrics().await?;
    Ok(body
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("sonde_operator_relists_total{kind=\"")?;
            let (kind, count) = rest.split_once("\"} ")?;
            Some((kind.to_owned(), count.trim().parse().ok()?))
        })
        .collect())
}

/// One agent report of `report_latency`, timed from its start.
struct Report {
    total: Duration,
    /// The ProbeNode status write alone.
    written: Duration,
    /// When the bench's own watch of ProbeNodes showed the write.
    watched: Option<Duration>,
    state: AssignmentState,
    node: String,
    at: jiff::Timestamp,
}

/// Where the apiserver's time went so far, from its own metrics: the
/// requests that took longest in total, what its watches sent, and the
/// watches it closed because their client read too slowly.
async fn apiserver_load(client: &kube::Client) -> anyhow::Result<String> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let body = client.request_text(request).await?;
    let label = |line: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        line.split_once(&key)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_default()
    };
    let value = |line: &str| -> f64 {
        line.rsplit_once(' ')
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0)
    };
    // (verb, resource, subresource) -> (seconds, requests)
    let mut requests: std::collections::BTreeMap<(String, String, String), (f64, f64)> =
        std::collections::BTreeMap::new();
    let mut watched: Vec<(String, f64)> = Vec::new();
    let mut closed: Vec<String> = Vec::new();
    for line in body.lines() {
        let sum = line.starts_with("apiserver_request_duration_seconds_sum{");
        let count = line.starts_with("apiserver_request_duration_seconds_count{");
        if (sum || count) && !line.contains("verb=\"WATCH\"") {
            let key = (
                label(line, "verb"),
                label(line, "resource"),
                label(line, "subresource"),
            );
            let entry = requests.entry(key).or_default();
            if sum {
                entry.0 += value(line);
            } else {
                entry.1 += value(line);
            }
        } else if line.starts_with("apiserver_watch_events_sizes_sum{") {
            watched.push((label(line, "resource"), value(line)));
        } else if line.starts_with("apiserver_terminated_watchers_total{") {
            closed.push(format!("{} {}", label(line, "resource"), value(line)));
        }
    }
    let mut requests: Vec<_> = requests.into_iter().collect();
    requests.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    watched.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = requests
        .iter()
        .take(5)
        .map(|((verb, resource, sub), (seconds, n))| {
            let what = if sub.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{sub}")
            };
            format!(
                "{verb} {what} {n:.0} in {seconds:.0} s (mean {:.0} ms)",
                1000.0 * seconds / n.max(1.0)
            )
        })
        .collect();
    let sent: Vec<String> = watched
        .iter()
        .take(3)
        .map(|(resource, bytes)| format!("{resource} {:.0} MB", bytes / 1e6))
        .collect();
    Ok(format!(
        "apiserver so far: longest requests in total: {}; watch events sent: {}; watches closed for reading too slowly: {}",
        top.join(", "),
        sent.join(", "),
        if closed.is_empty() {
            "none".to_owned()
        } else {
            closed.join(", ")
        },
    ))
}

/// Polls until every Tracepoint has a status; returns how long it took.
async fn wait_all_statuses(client: &kube::Client) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let list = Api::<Tracepoint>::all(client.clone())
            .list(&Default::default())
            .await?;
        if list
            .iter()
            .all(|tp| tp.status.as_ref().is_some_and(|s| s.phase.is_some()))
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > SETTLE {
            anyhow::bail!("not every Tracepoint has a status after {SETTLE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}
