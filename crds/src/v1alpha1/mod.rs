//! The `sonde.dev/v1alpha1` API: `Tracepoint`, `Retention`, `Export` and the
//! per-node `ProbeNode`.

mod common;
pub(crate) mod error;
mod export;
mod probe_node;
mod retention;
mod tracepoint;

pub use common::{
    ColumnType, FieldType, FilterValue, MAX_NAME_LENGTH, NAME_PATTERN, STANDARD_COLUMNS,
    SecretKeyRef, SecretRef, StandardColumn, is_dns_label, is_valid_name, standard_column,
};
pub use error::ValidationError;
pub use export::{
    DEFAULT_BATCH_SIZE, DEFAULT_BUFFER_ROWS, DEFAULT_INTERVAL, Destination, Export, ExportSpec,
    ExportStatus, Mapping, OtlpDestination, OtlpProtocol, Signal, Tls,
};
pub use probe_node::{
    AssignedSpec, Assignment, AssignmentKind, AssignmentState, AssignmentStatus,
    BaselineTableState, BaselineTableStatus, ProbeNode, ProbeNodeSpec, ProbeNodeStatus, TableHeld,
};
pub use retention::{
    ANOMALIES_SUFFIX, Aggregate, AggregateFn, DEFAULT_SENSITIVITY, DEFAULT_WARM_UP, Detection,
    DetectionMethod, KEPT_SUFFIX, KeepRaw, MAX_DETECTIONS, MAX_RECENT_ANOMALIES, MAX_ROLLUPS,
    MAX_SEASON_INTERVALS, MAX_TABLES, RecentAnomaly, Retention, RetentionLimit, RetentionSpec,
    RetentionStatus, Rollup, TableRetention, WARM_UP_RANGE, table_matches,
};
pub use tracepoint::{
    ColumnStatus, DEFAULT_MAX_SERIES, DEFAULT_STRING_LENGTH, FieldSpec, FilterOp, FilterSpec,
    KernelProbe, KernelTracepoint, MAX_FIELDS, MAX_FILTERS, MAX_METRIC_LABELS, MAX_METRICS,
    MAX_SERIES, MAX_STRING_LENGTH, MetricKind, MetricSpec, NodeCounts, NodeError, Phase, Probe,
    ProbeKind, ProbeSpec, RateLimit, RawTracepoint, Sampling, Tracepoint, TracepointSpec,
    TracepointStatus, Usdt, UserProbe,
};

/// The API group of every Sonde kind.
pub const GROUP: &str = "sonde.dev";
/// This API version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "sonde.dev/v1alpha1";

/// The label of an agent's heartbeat: a `coordination.k8s.io` Lease named
/// after its node, in the agents' namespace, with `spec.holderIdentity` the
/// node and `spec.renewTime` renewed every heartbeat interval. The operator
/// watches Leases with this label (value `"true"`) to tell which agents
/// report, so that a heartbeat is a small write rather than a rewrite of the
/// node's whole `ProbeNode`.
pub const HEARTBEAT_LEASE_LABEL: &str = "sonde.dev/agent-heartbeat";

/// Node `node`'s heartbeat Lease, renewed at `now` and lasting `duration`:
/// what an agent applies when it starts heartbeating (and whenever a
/// renewal finds the Lease gone); its renewals are
/// [`heartbeat_renewal`]s.
pub fn heartbeat_lease(
    node: &str,
    duration: std::time::Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> k8s_openapi::api::coordination::v1::Lease {
    use k8s_openapi::{
        api::coordination::v1::{Lease, LeaseSpec},
        apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    };
    Lease {
        metadata: ObjectMeta {
            name: Some(node.to_owned()),
            labels: Some([(HEARTBEAT_LEASE_LABEL.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_owned()),
            lease_duration_seconds: Some(
                i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

/// The JSON merge patch that renews a heartbeat Lease at `now`: only
/// `spec.renewTime`. The apiserver takes it at a fraction of the cost of a
/// server-side apply of the whole Lease (no structured merge, a smaller
/// request), which matters at a renewal per node every few seconds; the
/// Lease's other fields stay as [`heartbeat_lease`] applied them.
pub fn heartbeat_renewal(now: k8s_openapi::jiff::Timestamp) -> serde_json::Value {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    serde_json::json!({ "spec": { "renewTime": MicroTime(now) } })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::jiff::Timestamp;

    use super::*;

    #[test]
    fn a_renewal_patches_the_renew_time_the_lease_carries_and_nothing_else()
    -> Result<(), Box<dyn std::error::Error>> {
        let now: Timestamp = "2026-12-02T10:11:12.345678Z".parse()?;
        let lease = serde_json::to_value(heartbeat_lease("node-a", Duration::from_secs(30), now))?;
        let renewal = heartbeat_renewal(now);
        assert_eq!(
            renewal,
            serde_json::json!({ "spec": { "renewTime": lease["spec"]["renewTime"] } })
        );
        assert_eq!(renewal["spec"]["renewTime"], "2026-12-02T10:11:12.345678Z");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 30);
        assert_eq!(lease["spec"]["holderIdentity"], "node-a");
        Ok(())
    }
}
