//! The node controller: one `ProbeNode` per `Node`, whose spec lists what
//! that node's agent must run. It is recomputed from the caches whenever a
//! resource, a pod or the node changes, and written with server-side apply,
//! so an agent only ever sees a complete, consistent list.

use std::{sync::Arc, time::Duration};

use crds::v1alpha1::{ProbeNode, ProbeNodeSpec};
use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef},
};
use serde_json::json;
use tracing::info;

use crate::{
    Error,
    context::{Context, MANAGER},
    state,
};

/// How often a node is recomputed with nothing changing, as a safety net.
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.timed("node", apply(&node, &ctx)).await
}

async fn apply(node: &Node, ctx: &Context) -> Result<Action, Error> {
    let name = node.name_any();
    let now = Timestamp::now();
    let caches = &ctx.caches;
    let tracepoints = caches.tracepoints.state();
    let assignments = state::assignments_for_node(
        node,
        &tracepoints,
        &caches.retentions.state(),
        &caches.exports.state(),
        &caches.pods.state(),
        now,
    );
    let owner = node
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata {
            kind: "Node",
            field: "metadata.uid",
        })?;
    let current = caches.probe_nodes.get(&ObjectRef::new(&name));
    let unchanged = current.as_ref().is_some_and(|pn| {
        pn.spec.assignments == assignments
            && pn.spec.node == name
            && pn.owner_references().iter().any(|o| o.uid == owner.uid)
    });
    if !unchanged {
        let count = assignments.len();
        let patch = json!({
            "apiVersion": "sonde.dev/v1alpha1",
            "kind": "ProbeNode",
            "metadata": {"name": name, "ownerReferences": [owner]},
            "spec": ProbeNodeSpec { node: name.clone(), assignments },
        });
        Api::<ProbeNode>::all(ctx.client.clone())
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await?;
        info!(node = %name, assignments = count, "node assignments written");
    }
    // A ttl running out changes what the node runs without any watch event.
    let next_expiry = tracepoints
        .iter()
        .filter_map(|tp| state::expiry(tp))
        .filter(|at| *at > now)
        .min();
    Ok(match next_expiry {
        Some(at) => Action::requeue(until(now, at).min(RESYNC)),
        None => Action::requeue(RESYNC),
    })
}

/// Time from `now` to `at`, plus a little so that `at` has passed by then.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    let wait = at.duration_since(now);
    Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(100)
}
