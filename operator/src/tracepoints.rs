//! The Tracepoint controller: holds each Tracepoint with a finalizer until
//! every node detached it, ends it when its ttl runs out, and writes its
//! status from the agents' reports, with Events for what changed.

use std::{sync::Arc, time::Duration};

use crds::{
    Tracepoint,
    v1alpha1::{AssignmentKind, Phase, TracepointStatus},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::ObjectRef,
    },
};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    Error,
    context::{Context, FINALIZER, MANAGER},
    nodes::until,
    state::{self, Cluster},
};

/// How often a deletion checks whether the nodes detached.
const DETACH_POLL: Duration = Duration::from_millis(500);

pub async fn reconcile(tp: Arc<Tracepoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.timed("tracepoint", apply(&tp, &ctx)).await
}

async fn apply(tp: &Tracepoint, ctx: &Context) -> Result<Action, Error> {
    let namespace = tp.namespace().ok_or(Error::MissingMetadata {
        kind: "Tracepoint",
        field: "metadata.namespace",
    })?;
    let name = tp.name_any();
    let api: Api<Tracepoint> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();
    let grace = ctx.settings.heartbeat_grace;

    if tp.metadata.deletion_timestamp.is_some() {
        if !tp.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Action::await_change());
        }
        let remaining: Vec<String> = ctx
            .caches
            .probe_nodes
            .state()
            .iter()
            .filter(|pn| {
                state::still_on_node(
                    pn,
                    AssignmentKind::Tracepoint,
                    &namespace,
                    &name,
                    now,
                    grace,
                )
            })
            .map(|pn| pn.name_any())
            .collect();
        if !remaining.is_empty() {
            let mut status = status_of(tp, ctx, now);
            if let Some(ready) = status.conditions.iter_mut().find(|c| c.type_ == "Ready") {
                ready.message = format!("detaching from {}", remaining.join(", "));
            }
            write_status(&api, tp, status, ctx).await?;
            return Ok(Action::requeue(DETACH_POLL));
        }
        let finalizers: Vec<String> = tp
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        set_finalizers(&api, tp, finalizers).await?;
        info!(tracepoint = %format!("{namespace}/{name}"), "detached from every node; finalizer released");
        publish(
            ctx,
            tp,
            false,
            "Detached",
            "detached from every node".to_owned(),
        )
        .await;
        return Ok(Action::await_change());
    }

    if !tp.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = tp.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        set_finalizers(&api, tp, finalizers).await?;
    }

    let status = status_of(tp, ctx, now);
    let phase = status.phase;
    write_status(&api, tp, status, ctx).await?;

    // Silent agents are only noticed by looking again; a ttl ends on time.
    let mut next = grace / 2;
    if phase != Some(Phase::Terminated)
        && let Some(at) = state::expiry(tp)
    {
        next = next.min(until(now, at));
    }
    Ok(Action::requeue(next))
}

/// Replaces the finalizers, if the Tracepoint did not change meanwhile
/// (a conflict is retried by the controller).
async fn set_finalizers(
    api: &Api<Tracepoint>,
    tp: &Tracepoint,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    api.patch(
        &tp.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {
                "resourceVersion": tp.resource_version(),
                "finalizers": finalizers,
            }
        })),
    )
    .await?;
    Ok(())
}

fn status_of(tp: &Tracepoint, ctx: &Context, now: Timestamp) -> TracepointStatus {
    let caches = &ctx.caches;
    let cluster = Cluster {
        nodes: &caches.nodes.state(),
        pods: &caches.pods.state(),
        probe_node: |node: &str| caches.probe_nodes.get(&ObjectRef::new(node)),
        now,
        grace: ctx.settings.heartbeat_grace,
    };
    state::tracepoint_status(tp, &cluster, tp.status.as_ref())
}

/// Writes the status if it changed, and publishes what changed as Events.
async fn write_status(
    api: &Api<Tracepoint>,
    tp: &Tracepoint,
    status: TracepointStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let previous = tp.status.as_ref();
    if previous.map(state::without_times) == Some(state::without_times(&status)) {
        return Ok(());
    }
    let events = state::transitions(previous, &status);
    api.patch_status(
        &tp.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": "sonde.dev/v1alpha1",
            "kind": "Tracepoint",
            "status": status,
        })),
    )
    .await?;
    for (warning, reason, message) in events {
        publish(ctx, tp, warning, reason, message).await;
    }
    Ok(())
}

/// Publishes an Event on the resource; a failure is logged, not fatal.
pub async fn publish<K>(ctx: &Context, resource: &K, warning: bool, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &resource.object_ref(&()))
        .await
    {
        warn!("cannot publish event {reason}: {e}");
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The transition time Kubernetes shows for a condition set now.
pub fn now_time() -> Time {
    Time(Timestamp::now())
}
