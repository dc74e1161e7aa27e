//! Status of Retention and Export resources, summed over the nodes' reports.
//! Both run on every node; nothing needs detaching before they go (a node
//! dropping the assignment stops them), so they carry no finalizer.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crds::{
    Export, Retention,
    units::parse_duration,
    v1alpha1::{
        AssignmentKind, AssignmentState, ExportStatus, MAX_RECENT_ANOMALIES, ProbeNode,
        RecentAnomaly, RetentionStatus, TableHeld, TableRetention,
    },
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::controller::Action};

use crate::{
    Error,
    context::{Context, now_time},
    state::{self, Liveness},
};

/// What the reporting nodes say about one resource.
#[derive(Debug, Default, PartialEq)]
struct Reports {
    reporting: u32,
    attached: u32,
    events: u64,
    lost: u64,
    /// The first failure: node and message.
    failure: Option<(String, String)>,
    /// The first message of any state (an Export that runs but cannot
    /// deliver reports its last error so): node and message.
    message: Option<(String, String)>,
    /// What each node said its tables hold (Retentions).
    tables: Vec<TableHeld>,
    /// The latest anomalies each node's rollups flagged (Retentions).
    anomalies: Vec<RecentAnomaly>,
}

/// What the nodes whose agent reports say of `resource` (of `kind`).
fn reports(resource: &impl ResourceExt, kind: AssignmentKind, ctx: &Context) -> Reports {
    let namespace = resource.namespace().unwrap_or_default();
    let name = resource.name_any();
    let generation = resource.meta().generation.unwrap_or_default();
    let probe_nodes: Vec<Arc<ProbeNode>> = ctx.cache.probe_nodes();
    let (namespace, name) = (namespace.as_str(), name.as_str());
    let now = Timestamp::now();
    let mut out = Reports::default();
    for pn in &probe_nodes {
        if state::liveness(Some(pn), now, ctx.settings.heartbeat_grace) != Liveness::Reporting {
            continue;
        }
        out.reporting += 1;
        let Some(report) = state::reported(Some(pn), kind, namespace, name) else {
            continue;
        };
        out.events += report.events;
        out.lost += report.lost;
        out.tables.extend(report.tables.iter().cloned());
        out.anomalies.extend(report.anomalies.iter().cloned());
        if let (None, Some(message)) = (&out.message, &report.message) {
            out.message = Some((pn.name_any(), message.clone()));
        }
        if report.generation != generation {
            continue;
        }
        match report.state {
            AssignmentState::Attached => out.attached += 1,
            AssignmentState::Failed | AssignmentState::Unsupported => {
                if out.failure.is_none() {
                    out.failure = Some((pn.name_any(), report.message.clone().unwrap_or_default()));
                }
            }
            AssignmentState::Idle => {}
        }
    }
    out
}

/// The newest anomalies of all nodes, newest first, at most
/// [`MAX_RECENT_ANOMALIES`].
fn latest_anomalies(mut anomalies: Vec<RecentAnomaly>) -> Vec<RecentAnomaly> {
    let time = |a: &RecentAnomaly| a.time.parse::<Timestamp>().ok();
    anomalies.sort_by(|a, b| {
        time(b)
            .cmp(&time(a))
            .then_with(|| (&a.node, &a.rollup, &a.group).cmp(&(&b.node, &b.rollup, &b.group)))
    });
    anomalies.dedup();
    anomalies.truncate(MAX_RECENT_ANOMALIES);
    anomalies
}

/// What an anomaly is about, as its Event's related object: the pod of its
/// group when it has one, else the node that found it. Anomalies of
/// different pods are separate Events; repeats of one pod are a series.
fn anomaly_subject(
    anomaly: &RecentAnomaly,
    retention: &Retention,
) -> k8s_openapi::api::core::v1::ObjectReference {
    let pod = anomaly
        .group
        .split(',')
        .find_map(|pair| pair.strip_prefix("pod="))
        .filter(|pod| !pod.is_empty());
    match pod {
        Some(pod) => k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            namespace: retention.namespace(),
            name: Some(pod.to_owned()),
            ..Default::default()
        },
        None => k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(anomaly.node.clone()),
            ..Default::default()
        },
    }
}

/// An anomaly as an Event says it.
fn describe_anomaly(a: &RecentAnomaly) -> String {
    format!(
        "{method} on {column} of {group} in {rollup} on node {node} at {time}: {value} \
         (expected {expected}, band {lower} to {upper})",
        method = a.method,
        column = a.column,
        group = if a.group.is_empty() {
            "all rows"
        } else {
            &a.group
        },
        rollup = a.rollup,
        node = a.node,
        time = a.time,
        value = a.value,
        expected = a.expected,
        lower = a.lower,
        upper = a.upper,
    )
}

/// Each table's retention over the nodes that hold it: the window of the
/// node that keeps the least (and what limits it there), the bytes of the
/// node that holds the most, and rows, bytes and compression all nodes
/// together. In table order.
fn table_retentions(held: &[TableHeld]) -> Vec<TableRetention> {
    let mut by_table: BTreeMap<&str, Vec<&TableHeld>> = BTreeMap::new();
    for table in held {
        by_table.entry(&table.table).or_default().push(table);
    }
    by_table
        .into_iter()
        .map(|(table, nodes)| {
            let window = |t: &TableHeld| t.window.as_deref().and_then(|w| parse_duration(w).ok());
            let shortest = nodes
                .iter()
                .filter(|t| window(t).is_some())
                .min_by_key(|t| window(t).unwrap_or(Duration::MAX));
            let total_bytes: u64 = nodes.iter().map(|t| t.bytes).sum();
            let uncompressed: u64 = nodes.iter().map(|t| t.uncompressed_bytes).sum();
            TableRetention {
                table: table.to_owned(),
                window: shortest.and_then(|t| t.window.clone()),
                bytes: nodes.iter().map(|t| t.bytes).max(),
                limited_by: shortest.or(nodes.first()).and_then(|t| t.limited_by),
                rows: Some(nodes.iter().map(|t| t.rows).sum()),
                total_bytes: Some(total_bytes),
                compression_ratio: (total_bytes > 0)
                    .then(|| format!("{:.1}", uncompressed as f64 / total_bytes as f64)),
                nodes: Some(u32::try_from(nodes.len()).unwrap_or(u32::MAX)),
            }
        })
        .collect()
}

fn conditions(valid: Result<(), String>, reports: &Reports) -> Vec<Condition> {
    match valid {
        Err(message) => vec![
            state::condition("Accepted", false, "InvalidSpec", &message),
            state::condition("Ready", false, "InvalidSpec", "the spec is invalid"),
        ],
        Ok(()) => {
            let ready = match &reports.failure {
                Some((node, message)) => {
                    state::condition("Ready", false, "NodeFailed", &format!("{node}: {message}"))
                }
                None => state::condition(
                    "Ready",
                    reports.attached == reports.reporting,
                    "Applied",
                    &format!(
                        "applied on {} of {} reporting nodes",
                        reports.attached, reports.reporting
                    ),
                ),
            };
            vec![
                state::condition("Accepted", true, "Valid", "the spec is valid"),
                ready,
            ]
        }
    }
}

/// Writes a resource's status over `previous`, the cached one, and
/// publishes an InvalidSpec Event with `invalid`'s message.
async fn write_status<K, S: serde::Serialize>(
    ctx: &Context,
    kind: &'static str,
    resource: &K,
    previous: Option<&S>,
    status: &S,
    invalid: Option<String>,
) -> Result<(), Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        &resource.namespace().unwrap_or_default(),
    );
    ctx.write_status(&api, kind, resource, previous, status)
        .await?;
    if let Some(message) = invalid {
        ctx.publish(resource, true, "InvalidSpec", message).await;
    }
    Ok(())
}

pub async fn reconcile_retention(
    retention: Arc<Retention>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.reconcile(
        "retention",
        &ctx.cache.queues.retentions,
        &*retention,
        retention_status(&retention, &ctx),
    )
    .await
}

async fn retention_status(retention: &Retention, ctx: &Context) -> Result<Action, Error> {
    let reports = reports(retention, AssignmentKind::Retention, ctx);
    let valid = retention.spec.validate().map_err(|e| e.to_string());
    let mut status = RetentionStatus {
        observed_generation: retention.metadata.generation,
        tables: table_retentions(&reports.tables),
        anomalies: latest_anomalies(reports.anomalies.clone()),
        conditions: conditions(valid.clone(), &reports),
    };
    let previous = retention.status.as_ref();
    let new_anomalies: Vec<&RecentAnomaly> = status
        .anomalies
        .iter()
        .filter(|a| previous.is_none_or(|p| !p.anomalies.contains(a)))
        .collect();
    state::carry_transition_times(
        &mut status.conditions,
        previous
            .map(|p| p.conditions.as_slice())
            .unwrap_or_default(),
    );
    if previous != Some(&status) {
        let invalid = valid.err().filter(|_| {
            previous.is_none_or(|p| p.observed_generation != status.observed_generation)
        });
        write_status(ctx, "Retention", retention, previous, &status, invalid).await?;
    }
    // Oldest first, so the Events read in the order things happened.
    for anomaly in new_anomalies.into_iter().rev() {
        ctx.publish_related(
            retention,
            true,
            "AnomalyDetected",
            describe_anomaly(anomaly),
            Some(anomaly_subject(anomaly, retention)),
        )
        .await;
    }
    Ok(Action::requeue(ctx.settings.heartbeat_grace / 2))
}

pub async fn reconcile_export(export: Arc<Export>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.reconcile(
        "export",
        &ctx.cache.queues.exports,
        &*export,
        export_status(&export, &ctx),
    )
    .await
}

async fn export_status(export: &Export, ctx: &Context) -> Result<Action, Error> {
    let reports = reports(export, AssignmentKind::Export, ctx);
    let valid = export.spec.validate().map_err(|e| e.to_string());
    let previous = export.status.as_ref();
    let last_error = reports
        .failure
        .as_ref()
        .or(reports.message.as_ref())
        .map(|(node, message)| format!("{node}: {message}"));
    let mut status = ExportStatus {
        observed_generation: export.metadata.generation,
        // Each node counts from its agent's start.
        rows_exported: reports.events,
        rows_dropped: reports.lost,
        last_error_time: match (&last_error, previous) {
            (Some(e), Some(p)) if p.last_error.as_ref() == Some(e) => p.last_error_time.clone(),
            (Some(_), _) => Some(now_time()),
            (None, p) => p.and_then(|p| p.last_error_time.clone()),
        },
        last_error: last_error.or_else(|| previous.and_then(|p| p.last_error.clone())),
        last_success_time: previous.and_then(|p| p.last_success_time.clone()),
        conditions: conditions(valid.clone(), &reports),
    };
    if reports.events > previous.map_or(0, |p| p.rows_exported) {
        status.last_success_time = Some(now_time());
    }
    state::carry_transition_times(
        &mut status.conditions,
        previous
            .map(|p| p.conditions.as_slice())
            .unwrap_or_default(),
    );
    if previous != Some(&status) {
        let invalid = valid.err().filter(|_| {
            previous.is_none_or(|p| p.observed_generation != status.observed_generation)
        });
        write_status(ctx, "Export", export, previous, &status, invalid).await?;
    }
    Ok(Action::requeue(ctx.settings.heartbeat_grace / 2))
}

#[cfg(test)]
mod tests {
    use crds::v1alpha1::RetentionLimit;

    use super::*;

    fn held(table: &str, rows: u64, bytes: u64, window: &str, limit: RetentionLimit) -> TableHeld {
        TableHeld {
            table: table.to_owned(),
            rows,
            bytes,
            uncompressed_bytes: bytes * 8,
            window: Some(window.to_owned()),
            limited_by: Some(limit),
        }
    }

    #[test]
    fn tables_sum_over_nodes_with_the_shortest_window() {
        let tables = table_retentions(&[
            held("opens", 100, 4096, "1h0m0s", RetentionLimit::MaxAge),
            held("getppid", 10, 100, "5s", RetentionLimit::None),
            held("opens", 300, 1024, "12m30s", RetentionLimit::MaxBytes),
        ]);
        assert_eq!(
            tables,
            vec![
                TableRetention {
                    table: "getppid".into(),
                    window: Some("5s".into()),
                    bytes: Some(100),
                    limited_by: Some(RetentionLimit::None),
                    rows: Some(10),
                    total_bytes: Some(100),
                    compression_ratio: Some("8.0".into()),
                    nodes: Some(1),
                },
                TableRetention {
                    table: "opens".into(),
                    window: Some("12m30s".into()),
                    bytes: Some(4096),
                    limited_by: Some(RetentionLimit::MaxBytes),
                    rows: Some(400),
                    total_bytes: Some(5120),
                    compression_ratio: Some("8.0".into()),
                    nodes: Some(2),
                },
            ]
        );
        assert!(table_retentions(&[]).is_empty());
    }
}
