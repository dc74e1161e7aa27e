//! Work queues between the operator's watches and its controllers: a set of
//! objects to reconcile per controller, so a burst of changes to one object
//! is one entry and a queue never holds more entries than there are
//! objects. Each controller drains its queue through
//! `Controller::reconcile_on`; its scheduler then adds the debounce and
//! never runs two reconciles of one object at once.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::Stream;
use kube::{Resource, runtime::reflector::ObjectRef};
use tokio::sync::Notify;

/// The objects of kind `K` waiting for a reconcile.
pub struct WorkQueue<K: Resource> {
    state: Mutex<QueueState<K>>,
    notify: Notify,
}

struct QueueState<K: Resource> {
    /// Not yet handed to the controller, in arrival order.
    waiting: VecDeque<ObjectRef<K>>,
    /// Queued since their last reconcile started (handed over or not),
    /// with when they were first pushed: the queue's depth.
    queued: HashMap<ObjectRef<K>, Instant>,
}

impl<K> WorkQueue<K>
where
    K: Resource + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                queued: HashMap::new(),
            }),
            notify: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, QueueState<K>> {
        // A panic while holding the lock leaves the sets consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a reconcile of `object`; one already waiting is not added
    /// twice.
    pub fn push(&self, object: ObjectRef<K>) {
        let mut state = self.state();
        if let std::collections::hash_map::Entry::Vacant(entry) = state.queued.entry(object.clone())
        {
            entry.insert(Instant::now());
            state.waiting.push_back(object);
            drop(state);
            self.notify.notify_one();
        }
    }

    pub fn push_all(&self, objects: impl IntoIterator<Item = ObjectRef<K>>) {
        for object in objects {
            self.push(object);
        }
    }

    /// A reconcile of `object` started: later changes queue it again.
    /// Returns how long it waited since it was queued, if it was (a
    /// controller's own requeue after a delay does not pass through here).
    pub fn started(&self, object: &ObjectRef<K>) -> Option<Duration> {
        let queued = self.state().queued.remove(object)?;
        Some(queued.elapsed())
    }

    /// `object` is gone: no reconcile of it will start.
    pub fn forget(&self, object: &ObjectRef<K>) {
        let mut state = self.state();
        if state.queued.remove(object).is_some() {
            state.waiting.retain(|o| o != object);
        }
    }

    /// Objects queued whose reconcile has not started yet.
    pub fn depth(&self) -> usize {
        self.state().queued.len()
    }

    /// The queue's objects in arrival order, waiting for more when empty;
    /// for `Controller::reconcile_on`.
    pub fn stream(self: &Arc<Self>) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
    where
        K: Send + Sync,
        K::DynamicType: Send + Sync,
    {
        futures::stream::unfold(self.clone(), |queue| async move {
            loop {
                let next = queue.state().waiting.pop_front();
                if let Some(object) = next {
                    return Some((object, queue));
                }
                queue.notify.notified().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Node;

    use super::*;

    #[tokio::test]
    async fn an_object_waits_once_until_its_reconcile_starts() {
        let queue = WorkQueue::<Node>::new();
        let (a, b) = (ObjectRef::new("a"), ObjectRef::new("b"));
        queue.push_all([a.clone(), b.clone(), a.clone()]);
        assert_eq!(queue.depth(), 2);
        let mut stream = std::pin::pin!(queue.stream());
        assert_eq!(stream.next().await, Some(a.clone()));
        assert_eq!(stream.next().await, Some(b.clone()));
        // Handed over but not started: still queued, not handed twice.
        queue.push(a.clone());
        assert_eq!(queue.depth(), 2);
        assert!(queue.started(&a).is_some());
        assert_eq!(queue.started(&a), None);
        queue.forget(&b);
        assert_eq!(queue.depth(), 0);
        // Queued again once its reconcile started.
        queue.push(a.clone());
        assert_eq!(stream.next().await, Some(a));
    }
}
