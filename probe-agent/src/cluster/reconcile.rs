//! What to do about one Tracepoint assignment, decided from what the node
//! should run and what it runs now: a pure function, so every transition
//! (attach, retarget, detach to idle, reattach on an edit, remove) is
//! tested without a kernel.

use std::collections::BTreeSet;

use crds::v1alpha1::TracepointSpec;

/// A Tracepoint assignment as the node should run it now.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredProbe<'a> {
    pub uid: &'a str,
    pub generation: i64,
    pub spec: &'a TracepointSpec,
    /// Cgroup ids of the selected containers on this node.
    pub targets: BTreeSet<u64>,
}

/// Where an applied Tracepoint stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppliedState {
    /// Attached, limited to these cgroups.
    Attached(BTreeSet<u64>),
    /// Nothing attached: no selected container.
    Idle,
    /// Attaching failed with these targets; tried again when they change.
    Failed(BTreeSet<u64>),
    /// The node cannot run it; tried again only for a new spec.
    Unsupported,
}

/// A Tracepoint assignment as the node runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedProbe<'a> {
    pub uid: &'a str,
    pub generation: i64,
    pub spec: &'a TracepointSpec,
    pub state: &'a AppliedState,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changed.
    Keep,
    /// Attach with the desired targets.
    Attach,
    /// Record the assignment as idle without attaching.
    Idle,
    /// Change the in-kernel target set of the attached probe.
    Retarget { add: Vec<u64>, remove: Vec<u64> },
    /// Detach: no selected container is left (the state becomes idle).
    Detach,
    /// The spec changed: release the old probe, then attach anew (or go
    /// idle without targets).
    Reattach,
    /// The assignment is gone: release it.
    Remove,
}

pub fn decide(desired: Option<&DesiredProbe<'_>>, applied: Option<&AppliedProbe<'_>>) -> Decision {
    let (desired, applied) = match (desired, applied) {
        (None, None) => return Decision::Keep,
        (None, Some(_)) => return Decision::Remove,
        (Some(desired), None) => {
            return if desired.targets.is_empty() {
                Decision::Idle
            } else {
                Decision::Attach
            };
        }
        (Some(desired), Some(applied)) => (desired, applied),
    };
    let edited = desired.uid != applied.uid
        || desired.generation != applied.generation
        || desired.spec != applied.spec;
    if edited {
        return Decision::Reattach;
    }
    match applied.state {
        AppliedState::Attached(_) if desired.targets.is_empty() => Decision::Detach,
        AppliedState::Attached(current) => {
            let add: Vec<u64> = desired.targets.difference(current).copied().collect();
            let remove: Vec<u64> = current.difference(&desired.targets).copied().collect();
            if add.is_empty() && remove.is_empty() {
                Decision::Keep
            } else {
                Decision::Retarget { add, remove }
            }
        }
        AppliedState::Idle if desired.targets.is_empty() => Decision::Keep,
        AppliedState::Idle => Decision::Attach,
        AppliedState::Failed(_) if desired.targets.is_empty() => Decision::Idle,
        AppliedState::Failed(tried) if *tried == desired.targets => Decision::Keep,
        AppliedState::Failed(_) => Decision::Attach,
        AppliedState::Unsupported => Decision::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TracepointSpec {
        serde_json::from_value(serde_json::json!({
            "probe": {"tracepoint": {"group": "syscalls", "name": name}},
            "table": "calls",
        }))
        .expect("a spec")
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn desired<'a>(spec: &'a TracepointSpec, generation: i64, targets: &[u64]) -> DesiredProbe<'a> {
        DesiredProbe {
            uid: "u1",
            generation,
            spec,
            targets: set(targets),
        }
    }

    fn applied<'a>(
        spec: &'a TracepointSpec,
        generation: i64,
        state: &'a AppliedState,
    ) -> AppliedProbe<'a> {
        AppliedProbe {
            uid: "u1",
            generation,
            spec,
            state,
        }
    }

    #[test]
    fn new_assignments_attach_or_idle() {
        let s = spec("sys_enter_getppid");
        assert_eq!(decide(Some(&desired(&s, 1, &[7])), None), Decision::Attach);
        assert_eq!(decide(Some(&desired(&s, 1, &[])), None), Decision::Idle);
        assert_eq!(decide(None, None), Decision::Keep);
    }

    #[test]
    fn attached_probes_follow_their_containers() {
        let s = spec("sys_enter_getppid");
        let state = AppliedState::Attached(set(&[7, 8]));
        let now = applied(&s, 1, &state);
        assert_eq!(
            decide(Some(&desired(&s, 1, &[7, 8])), Some(&now)),
            Decision::Keep
        );
        assert_eq!(
            decide(Some(&desired(&s, 1, &[8, 9])), Some(&now)),
            Decision::Retarget {
                add: vec![9],
                remove: vec![7]
            }
        );
        assert_eq!(
            decide(Some(&desired(&s, 1, &[])), Some(&now)),
            Decision::Detach
        );
        assert_eq!(decide(None, Some(&now)), Decision::Remove);
        let idle = AppliedState::Idle;
        let now = applied(&s, 1, &idle);
        assert_eq!(
            decide(Some(&desired(&s, 1, &[9])), Some(&now)),
            Decision::Attach
        );
        assert_eq!(
            decide(Some(&desired(&s, 1, &[])), Some(&now)),
            Decision::Keep
        );
    }

    #[test]
    fn edits_reattach() {
        let old = spec("sys_enter_getppid");
        let new = spec("sys_enter_getpid");
        let state = AppliedState::Attached(set(&[7]));
        let now = applied(&old, 1, &state);
        assert_eq!(
            decide(Some(&desired(&new, 2, &[7])), Some(&now)),
            Decision::Reattach
        );
        // A new generation with the same spec (a label edit) reattaches too:
        // the status must name the generation it runs.
        assert_eq!(
            decide(Some(&desired(&old, 2, &[7])), Some(&now)),
            Decision::Reattach
        );
        // A re-created resource (new uid) as well.
        let mut again = desired(&old, 1, &[7]);
        again.uid = "u2";
        assert_eq!(decide(Some(&again), Some(&now)), Decision::Reattach);
        let unsupported = AppliedState::Unsupported;
        let now = applied(&old, 1, &unsupported);
        assert_eq!(
            decide(Some(&desired(&new, 2, &[7])), Some(&now)),
            Decision::Reattach
        );
    }

    #[test]
    fn failures_retry_only_when_the_targets_change() {
        let s = spec("sys_enter_getppid");
        let state = AppliedState::Failed(set(&[7]));
        let now = applied(&s, 1, &state);
        assert_eq!(
            decide(Some(&desired(&s, 1, &[7])), Some(&now)),
            Decision::Keep
        );
        assert_eq!(
            decide(Some(&desired(&s, 1, &[7, 8])), Some(&now)),
            Decision::Attach
        );
        assert_eq!(
            decide(Some(&desired(&s, 1, &[])), Some(&now)),
            Decision::Idle
        );
        let unsupported = AppliedState::Unsupported;
        let now = applied(&s, 1, &unsupported);
        assert_eq!(
            decide(Some(&desired(&s, 1, &[9])), Some(&now)),
            Decision::Keep
        );
    }
}
