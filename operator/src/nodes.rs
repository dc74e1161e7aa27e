//! The node controller: one `ProbeNode` per `Node`, whose spec lists what
//! that node's agent must run. A node is reconciled when it appears, its
//! labels change, its `ProbeNode` changes under it, or a resource's
//! assignment to it changes (see `cache`); the spec is written with
//! server-side apply only when it differs from the current one, so an agent
//! only ever sees a complete, consistent list, and only real changes.

use std::{sync::Arc, time::Duration};

use crds::v1alpha1::{ProbeNode, ProbeNodeSpec};
use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
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
    ctx.reconcile("node", &ctx.cache.queues.nodes, &*node, apply(&node, &ctx))
        .await
}

async fn apply(node: &Node, ctx: &Context) -> Result<Action, Error> {
    let name = node.name_any();
    let now = Timestamp::now();
    let cache = &ctx.cache;
    let assignments = state::assignments_for_node(
        node,
        &cache.tracepoints.state(),
        &cache.retentions.state(),
        &cache.exports.state(),
        now,
    );
    let owner = node
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata {
            kind: "Node",
            field: "metadata.uid",
        })?;
    let spec = ProbeNodeSpec {
        node: name.clone(),
        assignments,
    };
    let digest = state::spec_digest(&spec);
    let unchanged = cache
        .spec(&name)
        .is_some_and(|current| current.digest == digest && current.owners.contains(&owner.uid));
    if !unchanged {
        let count = spec.assignments.len();
        let patch = json!({
            "apiVersion": "sonde.dev/v1alpha1",
            "kind": "ProbeNode",
            "metadata": {"name": name, "ownerReferences": [owner]},
            "spec": spec,
        });
        let written = Api::<ProbeNode>::all(ctx.client.clone())
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await?;
        ctx.metrics.probe_node_written();
        cache.wrote(&written);
        info!(node = %name, assignments = count, "node assignments written");
    }
    // A ttl running out is the Tracepoint controller's to notice.
    Ok(Action::requeue(RESYNC))
}
