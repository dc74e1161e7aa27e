//! Writes the agent's `ProbeNode` status: server-side apply of the status
//! subresource, field manager `sonde-agent`, forced. A burst of state
//! changes is written once, after [`DEBOUNCE`]; the loop also publishes a
//! fresh status every heartbeat interval.

use std::time::Duration;

use crds::v1alpha1::{ProbeNode, ProbeNodeStatus};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "sonde-agent";

/// How long a state change waits for others before the status is written.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How soon a failed write is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Writes each status published on `statuses` to node `node`'s
/// `ProbeNode`, stamping the heartbeat time at the write. Returns when the
/// sender is dropped.
pub async fn write_statuses(
    client: Client,
    node: String,
    mut statuses: watch::Receiver<Option<ProbeNodeStatus>>,
) {
    let api: Api<ProbeNode> = Api::all(client);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut failing: Option<String> = None;
    let mut pending = false;
    loop {
        if !pending && statuses.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(DEBOUNCE).await;
        let Some(mut status) = statuses.borrow_and_update().clone() else {
            pending = false;
            continue;
        };
        status.heartbeat_time = Some(Time(Timestamp::now()));
        let patch = json!({
            "apiVersion": crds::v1alpha1::API_VERSION,
            "kind": "ProbeNode",
            "status": status,
        });
        match api
            .patch_status(&node, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                if failing.take().is_some() {
                    info!(node = %node, "status written again");
                }
                debug!(node = %node, attached = status.attached, "status written");
                pending = false;
            }
            Err(e) => {
                let missing = matches!(&e, kube::Error::Api(s) if s.code == 404);
                let message = if missing {
                    format!(
                        "ProbeNode {node} does not exist yet (the operator creates it); retrying"
                    )
                } else {
                    format!(
                        "cannot write ProbeNode {node}'s status, retrying: {}",
                        sonde_daemon::chain(&e)
                    )
                };
                // Said once per kind of failure, not once a second.
                if failing.as_deref() != Some(message.as_str()) {
                    if missing {
                        info!("{message}");
                    } else {
                        warn!("{message}");
                    }
                    failing = Some(message);
                }
                pending = true;
                // A newer status ends the wait early.
                let _ = tokio::time::timeout(RETRY, statuses.changed()).await;
            }
        }
    }
}
