//! The Tracepoint controller: holds each Tracepoint with a finalizer
//! (`kube::runtime::finalizer`) until every node whose agent reports has
//! detached it, ends it when its ttl runs out, and writes its status from
//! the agents' reports, with Events for what changed.

use std::{sync::Arc, time::Duration};

use crds::{
    Tracepoint,
    v1alpha1::{AssignmentKind, Phase, TracepointStatus},
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{self, finalizer},
        reflector::ObjectRef,
    },
};
use tracing::info;

use crate::{
    Error,
    context::{Context, FINALIZER},
    state::{self, Cluster},
};

pub async fn reconcile(tp: Arc<Tracepoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.reconcile(
        "tracepoint",
        &ctx.cache.queues.tracepoints,
        &*tp,
        with_finalizer(tp.clone(), &ctx),
    )
    .await
}

async fn with_finalizer(tp: Arc<Tracepoint>, ctx: &Context) -> Result<Action, Error> {
    let namespace = tp.namespace().ok_or(Error::MissingMetadata {
        kind: "Tracepoint",
        field: "metadata.namespace",
    })?;
    let api: Api<Tracepoint> = Api::namespaced(ctx.client.clone(), &namespace);
    if tp.metadata.deletion_timestamp.is_some()
        && tp.finalizers().iter().any(|f| f == FINALIZER)
        && let Some(recheck) = detaching(&tp, &api, ctx).await?
    {
        // Nodes report the detach (or fall silent): either queues this
        // Tracepoint again; the requeue is for the latter.
        return Ok(Action::requeue(recheck));
    }
    let api = &api;
    finalizer(api, FINALIZER, tp.clone(), |event| async move {
        match event {
            finalizer::Event::Apply(tp) => apply(&tp, api, ctx).await,
            finalizer::Event::Cleanup(tp) => {
                info!("detached from every node; finalizer released");
                ctx.publish(
                    &*tp,
                    false,
                    "Detached",
                    "detached from every node".to_owned(),
                )
                .await;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::finalizer(&tp, e))
}

/// While a deleted Tracepoint still runs on nodes whose agent reports, says
/// so in its status and returns when to look again: when the first of those
/// agents would count as silent.
async fn detaching(
    tp: &Tracepoint,
    api: &Api<Tracepoint>,
    ctx: &Context,
) -> Result<Option<Duration>, Error> {
    let (namespace, name) = (tp.namespace().unwrap_or_default(), tp.name_any());
    let now = Timestamp::now();
    let grace = ctx.settings.heartbeat_grace;
    let remaining: Vec<_> =
        ctx.cache
            .probe_nodes()
            .into_iter()
            .filter(|pn| {
                let assigned = ctx.cache.spec(&pn.name_any()).is_some_and(|spec| {
                    spec.assigns(AssignmentKind::Tracepoint, &namespace, &name)
                });
                state::still_on_node(
                    pn,
                    assigned,
                    AssignmentKind::Tracepoint,
                    &namespace,
                    &name,
                    now,
                    grace,
                )
            })
            .collect();
    let Some(silent_at) = remaining
        .iter()
        .filter_map(|pn| state::silent_at(pn, grace))
        .min()
    else {
        return Ok(None);
    };
    ctx.cache.queue_nodes_for_tracepoint(tp, now);
    let mut status = status_of(tp, ctx, now);
    if let Some(ready) = status.conditions.iter_mut().find(|c| c.type_ == "Ready") {
        let nodes: Vec<String> = remaining.iter().map(|pn| pn.name_any()).collect();
        ready.message = format!("detaching from {}", nodes.join(", "));
    }
    write_status(api, tp, status, ctx).await?;
    Ok(Some(state::until(now, silent_at)))
}

async fn apply(tp: &Tracepoint, api: &Api<Tracepoint>, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    // Nodes whose assignment is not current yet, as when the ttl ran out.
    ctx.cache.queue_nodes_for_tracepoint(tp, now);
    let status = status_of(tp, ctx, now);
    let phase = status.phase;
    write_status(api, tp, status, ctx).await?;

    // Silent agents are only noticed by looking again; a ttl ends on time.
    let mut next = ctx.settings.heartbeat_grace / 2;
    if phase != Some(Phase::Terminated)
        && let Some(at) = state::expiry(tp)
    {
        next = next.min(state::until(now, at));
    }
    Ok(Action::requeue(next))
}

fn status_of(tp: &Tracepoint, ctx: &Context, now: Timestamp) -> TracepointStatus {
    let cache = &ctx.cache;
    let nodes_with_pods = cache.nodes_with_pods(&ObjectRef::from_obj(tp));
    let cluster = Cluster {
        nodes_with_pods: &nodes_with_pods,
        node: |node: &str| cache.nodes.get(&ObjectRef::new(node)),
        probe_node: |node: &str| cache.probe_node(node),
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
    ctx.write_status(api, "Tracepoint", tp, previous, &status)
        .await?;
    for (warning, reason, message) in events {
        ctx.publish(tp, warning, reason, message).await;
    }
    Ok(())
}
