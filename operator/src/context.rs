//! What every reconciler shares: the client, the cache, the event recorder,
//! settings and metrics, and the wrapper every reconcile runs in.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
    },
};
use tracing::{Instrument, debug, info_span, warn};

use crate::{Error, cache::Cache, metrics::Metrics, queue::WorkQueue};

/// The operator's field manager for everything it writes.
pub const MANAGER: &str = "sonde-operator";

/// The finalizer that holds a Tracepoint until every node detached it.
pub const FINALIZER: &str = "sonde.dev/detach";

/// Settings the reconcilers need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A node whose agent has not reported for this long counts as unknown.
    pub heartbeat_grace: Duration,
}

/// Shared by every reconciler.
pub struct Context {
    pub client: Client,
    pub cache: Cache,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, cache: Cache, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cache,
            settings,
            metrics,
        }
    }

    /// Runs one reconcile of `object` by `controller`: takes it off its
    /// queue, counts and times it, inside a span naming the object.
    pub async fn reconcile<K>(
        &self,
        controller: &'static str,
        queue: &WorkQueue<K>,
        object: &K,
        reconcile: impl Future<Output = Result<Action, Error>>,
    ) -> Result<Action, Error>
    where
        K: Resource<DynamicType = ()> + 'static,
    {
        let waited = queue.started(&ObjectRef::from_obj(object));
        if let Some(waited) = waited {
            self.metrics.waited(controller, waited);
        }
        let span = info_span!(
            "reconcile",
            controller,
            namespace = %object.namespace().unwrap_or_default(),
            name = %object.name_any(),
        );
        span.in_scope(|| debug!(?waited, "reconcile starts"));
        self.metrics
            .timed(controller, reconcile)
            .instrument(span)
            .await
    }

    /// Writes `next` as `resource`'s status over `previous`, the status
    /// the cache holds (a merge patch, see [`status_patch`]), and counts
    /// the write under `kind`.
    pub async fn write_status<K, S>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        resource: &K,
        previous: Option<&S>,
        next: &S,
    ) -> Result<(), Error>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        S: serde::Serialize,
    {
        let params = PatchParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(status_patch(previous, next)?);
        let started = std::time::Instant::now();
        api.patch_status(&resource.name_any(), &params, &patch)
            .await?;
        self.metrics.status_written(kind);
        debug!(took = ?started.elapsed(), "status written");
        Ok(())
    }

    /// Publishes an Event on the resource; a failure is logged, not fatal.
    pub async fn publish<K>(&self, resource: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish_related(resource, warning, reason, note, None)
            .await;
    }

    /// [`Self::publish`] with a related object: Events that differ in it are
    /// not folded into one series (the recorder folds Events of the same
    /// object, reason and related object, keeping the first note).
    pub async fn publish_related<K>(
        &self,
        resource: &K,
        warning: bool,
        reason: &str,
        note: String,
        related: Option<k8s_openapi::api::core::v1::ObjectReference>,
    ) where
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
            secondary: related,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &resource.object_ref(&()))
            .await
        {
            warn!("cannot publish event {reason}: {e}");
        }
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

/// The JSON merge patch (RFC 7386) that writes `next` as a resource's
/// status over `previous`, the status the cache holds: `next` whole, with
/// `null` for every key of `previous` (at any depth of objects) that `next`
/// no longer has. The apiserver takes a merge patch at a fraction of the
/// cost of a server-side apply, which on the pod-churn path runs for every
/// change of a Tracepoint's selected nodes. Should the cache lag behind
/// the operator's own last write, a key that write added and `next` drops
/// stays until the write's watch event brings the cache level and the
/// resource is reconciled again, which writes the difference.
pub fn status_patch(
    previous: Option<&impl serde::Serialize>,
    next: &impl serde::Serialize,
) -> Result<serde_json::Value, Error> {
    let mut status = serde_json::to_value(next).map_err(kube::Error::SerdeError)?;
    if let Some(previous) = previous {
        let previous = serde_json::to_value(previous).map_err(kube::Error::SerdeError)?;
        null_removed(&previous, &mut status);
    }
    Ok(serde_json::json!({ "status": status }))
}

fn null_removed(previous: &serde_json::Value, next: &mut serde_json::Value) {
    use serde_json::Value;
    if let (Value::Object(before), Value::Object(after)) = (previous, next) {
        for (key, old) in before {
            match after.get_mut(key) {
                Some(new) => null_removed(old, new),
                None => {
                    after.insert(key.clone(), Value::Null);
                }
            }
        }
    }
}

#[cfg(test)]
mod status_tests {
    use serde_json::json;

    use super::status_patch;

    #[test]
    fn a_status_patch_writes_the_new_status_and_removes_what_it_dropped() -> Result<(), crate::Error>
    {
        let previous = json!({
            "phase": "Running",
            "message": "gone now",
            "nodes": { "selected": 3, "failed": 1 },
            "errors": [{ "node": "a" }],
        });
        let next = json!({
            "phase": "Pending",
            "nodes": { "selected": 2 },
            "errors": [],
        });
        assert_eq!(
            status_patch(Some(&previous), &next)?,
            json!({ "status": {
                "phase": "Pending",
                "message": null,
                "nodes": { "selected": 2, "failed": null },
                "errors": [],
            }})
        );
        assert_eq!(status_patch(None::<&()>, &next)?, json!({ "status": next }));
        Ok(())
    }
}
