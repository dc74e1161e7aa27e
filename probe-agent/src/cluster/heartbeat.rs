//! The agent's heartbeat: a `coordination.k8s.io` Lease named after the
//! node, in the agent's namespace, renewed every heartbeat interval.
//!
//! A heartbeat written into the `ProbeNode` status rewrites the whole
//! object, the copies of every assigned resource's spec included, and sends
//! it to every watcher of ProbeNodes: at a thousand nodes that is more than
//! a small apiserver keeps up with. A Lease renewal is a few hundred bytes.
//! With a Lease the status is written when a state changes and, for the
//! counters, every `--status-interval`.
//!
//! The agent applies its whole Lease once, then renews it with a merge
//! patch of `spec.renewTime` alone, far cheaper for the apiserver than
//! applying the whole Lease every time; a renewal that finds the Lease gone
//! applies it again.
//!
//! The Lease is renewed only while the drive loop turns: an agent whose
//! capture is stuck stops heartbeating, and the operator counts it as not
//! reporting. When the Lease cannot be written (RBAC of an older install,
//! a missing namespace) the agent says so once and heartbeats through its
//! status instead, as agents without a Lease do.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crds::v1alpha1::{heartbeat_lease, heartbeat_renewal};
use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use sonde_daemon::ShutdownSignal;
use tracing::{debug, info, warn};

use super::report::FIELD_MANAGER;

/// How long a clean stop waits for the Lease's deletion.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the drive loop and the heartbeat task tell each other.
#[derive(Debug, Default)]
pub struct Pulse {
    /// Turns of the drive loop so far.
    turns: AtomicU64,
    /// Whether the last renewal of the Lease succeeded.
    leased: AtomicBool,
}

impl Pulse {
    /// The drive loop turned once more.
    pub fn beat(&self) {
        self.turns.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the Lease carries the heartbeat (else the status must).
    pub fn leased(&self) -> bool {
        self.leased.load(Ordering::Relaxed)
    }

    fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }
}

/// Renews node `node`'s Lease in `namespace` every `interval` while the
/// drive loop turns, until `stop`; then deletes it, so that nothing of the
/// agent stays behind.
pub async fn renew(
    client: Client,
    namespace: String,
    node: String,
    interval: Duration,
    pulse: Arc<Pulse>,
    stop: ShutdownSignal,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let renewal = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    // Whether this process's Lease is in place, so a renewal patch does.
    let mut applied = false;
    // Three missed renewals: the grace period the operator uses by default.
    let duration = interval.saturating_mul(3);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    let mut stalled = false;
    let mut last_turns = None;
    let wait = stop.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut wait => break,
        }
        let turns = pulse.turns();
        if last_turns == Some(turns) {
            if !stalled {
                warn!(
                    node = %node,
                    "the drive loop has not turned for {interval:?}; the heartbeat Lease is not \
                     renewed until it does"
                );
                stalled = true;
            }
            continue;
        }
        if std::mem::take(&mut stalled) {
            info!(node = %node, "the drive loop turns again; heartbeat renewed");
        }
        last_turns = Some(turns);
        let now = Timestamp::now();
        let renewed = if applied {
            match api
                .patch(&node, &renewal, &Patch::Merge(heartbeat_renewal(now)))
                .await
            {
                // Deleted under the agent: apply it again.
                Err(kube::Error::Api(e)) if e.code == 404 => None,
                other => Some(other),
            }
        } else {
            None
        };
        let renewed = match renewed {
            Some(renewed) => renewed,
            None => {
                let lease = heartbeat_lease(&node, duration, now);
                api.patch(&node, &apply, &Patch::Apply(&lease)).await
            }
        };
        applied = renewed.is_ok();
        match renewed {
            Ok(_) => {
                pulse.leased.store(true, Ordering::Relaxed);
                if failing.take().is_some() {
                    info!(node = %node, "heartbeat Lease {namespace}/{node} renewed again");
                }
                debug!(node = %node, "heartbeat Lease renewed");
            }
            Err(e) => {
                pulse.leased.store(false, Ordering::Relaxed);
                let message = format!(
                    "cannot renew the heartbeat Lease {namespace}/{node}, so the ProbeNode status \
                     carries the heartbeat instead: {}",
                    sonde_daemon::chain(&e)
                );
                if failing.as_deref() != Some(message.as_str()) {
                    warn!("{message}");
                    failing = Some(message);
                }
            }
        }
    }
    if pulse.leased() {
        let deleted =
            tokio::time::timeout(DELETE_TIMEOUT, api.delete(&node, &DeleteParams::default())).await;
        match deleted {
            Ok(Ok(_)) => debug!(node = %node, "heartbeat Lease deleted"),
            Ok(Err(e)) => warn!(
                node = %node,
                "cannot delete the heartbeat Lease {namespace}/{node}; it expires: {}",
                sonde_daemon::chain(&e)
            ),
            Err(_) => warn!(
                node = %node,
                "the heartbeat Lease {namespace}/{node} was not deleted within \
                 {DELETE_TIMEOUT:?}; it expires"
            ),
        }
    }
}
