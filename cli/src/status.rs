//! `sonde status`: what runs where, read from the cluster (the kubeconfig
//! kubectl uses): one row per Tracepoint with its phase, node counts and
//! problems, or with `--nodes` one row per node with its agent's report.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{Field, Schema};
use crds::{
    Tracepoint,
    v1alpha1::{AssignmentState, ProbeNode},
};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client, ResourceExt, api::ListParams};

use crate::CliError;

/// Reads the Tracepoints of `namespace` (all namespaces: `None`).
pub async fn tracepoints(client: Client, namespace: Option<&str>) -> Result<RecordBatch, CliError> {
    let api: Api<Tracepoint> = match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let mut list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| CliError::Kube { source })?
        .items;
    list.sort_by_key(|tp| (tp.namespace(), tp.name_any()));
    Ok(tracepoint_rows(&list))
}

/// One row per Tracepoint.
pub fn tracepoint_rows(list: &[Tracepoint]) -> RecordBatch {
    let text = |f: &dyn Fn(&Tracepoint) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(list.iter().map(f)))
    };
    let count = |f: &dyn Fn(&crds::v1alpha1::NodeCounts) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(list.iter().map(|tp| {
            tp.status
                .as_ref()
                .and_then(|s| s.nodes.as_ref())
                .map_or(0, f)
        })))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("namespace", text(&|tp| tp.namespace().unwrap_or_default())),
        ("name", text(&|tp| tp.name_any())),
        (
            "phase",
            text(&|tp| {
                tp.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .map_or_else(|| "-".to_owned(), |p| format!("{p:?}"))
            }),
        ),
        ("selected", count(&|n| n.selected)),
        ("running", count(&|n| n.running)),
        ("failed", count(&|n| n.failed)),
        ("unknown", count(&|n| n.unknown)),
        (
            "table",
            text(&|tp| format!("{}.{}", tp.namespace().unwrap_or_default(), tp.spec.table)),
        ),
        ("problems", text(&problems)),
    ];
    batch(columns)
}

/// Why a Tracepoint is not Running everywhere, on one line.
fn problems(tp: &Tracepoint) -> String {
    let Some(status) = &tp.status else {
        return "no status yet: is the operator running?".to_owned();
    };
    let mut out: Vec<String> = status
        .conditions
        .iter()
        .filter(|c| c.status == "False")
        .map(|c| format!("{}: {}", c.reason, c.message))
        .collect();
    out.extend(
        status
            .node_errors
            .iter()
            .map(|e| format!("{}: {}: {}", e.node, e.reason, e.message)),
    );
    out.join("; ")
}

/// Reads every node's ProbeNode.
pub async fn nodes(client: Client) -> Result<RecordBatch, CliError> {
    let mut list = Api::<ProbeNode>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(|source| CliError::Kube { source })?
        .items;
    list.sort_by_key(ResourceExt::name_any);
    Ok(node_rows(&list, Timestamp::now()))
}

/// One row per node: its agent's last report.
pub fn node_rows(list: &[ProbeNode], now: Timestamp) -> RecordBatch {
    let text = |f: &dyn Fn(&ProbeNode) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(list.iter().map(f)))
    };
    let in_state = |state: AssignmentState| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(list.iter().map(|pn| {
            pn.status.as_ref().map_or(0, |s| {
                s.assignments.iter().filter(|a| a.state == state).count() as u32
            })
        })))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("node", text(&|pn| pn.name_any())),
        (
            "heartbeat",
            text(
                &|pn| match pn.status.as_ref().and_then(|s| s.heartbeat_time.as_ref()) {
                    Some(at) => format!("{}s ago", now.duration_since(at.0).as_secs()),
                    None => "never".to_owned(),
                },
            ),
        ),
        (
            "agent",
            text(&|pn| {
                pn.status
                    .as_ref()
                    .and_then(|s| s.agent_version.clone())
                    .unwrap_or_default()
            }),
        ),
        (
            "kernel",
            text(&|pn| {
                pn.status
                    .as_ref()
                    .and_then(|s| s.kernel_version.clone())
                    .unwrap_or_default()
            }),
        ),
        (
            "assigned",
            Arc::new(UInt32Array::from_iter_values(
                list.iter().map(|pn| pn.spec.assignments.len() as u32),
            )),
        ),
        ("attached", in_state(AssignmentState::Attached)),
        ("idle", in_state(AssignmentState::Idle)),
        ("failed", in_state(AssignmentState::Failed)),
        ("unsupported", in_state(AssignmentState::Unsupported)),
    ];
    batch(columns)
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), false))
        .collect();
    let arrays = columns.into_iter().map(|(_, array)| array).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .unwrap_or_else(|_| RecordBatch::new_empty(Arc::new(Schema::empty())))
}

/// A client from the kubeconfig kubectl would use.
pub async fn client() -> Result<Client, CliError> {
    // The Kubernetes client's TLS; installing fails only if one already is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .map_err(|source| CliError::Kube { source })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]
mod tests {
    use arrow_cast::pretty::pretty_format_batches;
    use serde_json::json;

    use super::*;

    #[test]
    fn tracepoints_show_phase_counts_and_problems() {
        let tp: Tracepoint = serde_json::from_value(json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "Tracepoint",
            "metadata": {"namespace": "shop", "name": "calls"},
            "spec": {"probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}},
                     "table": "calls"},
            "status": {"phase": "Degraded",
                       "nodes": {"selected": 2, "running": 1, "failed": 1, "unknown": 0},
                       "nodeErrors": [{"node": "node-b", "reason": "BinaryNotFound",
                                       "message": "no /bin/app"}]}
        }))
        .unwrap();
        let mut pending = tp.clone();
        pending.metadata.name = Some("fresh".to_owned());
        pending.status = None;
        let text = pretty_format_batches(&[tracepoint_rows(&[tp, pending])])
            .unwrap()
            .to_string();
        assert!(
            text.contains("| shop      | calls | Degraded | 2        | 1       | 1      | 0       | shop.calls | node-b: BinaryNotFound: no /bin/app "),
            "{text}"
        );
        assert!(
            text.contains("no status yet: is the operator running?"),
            "{text}"
        );
    }
}
