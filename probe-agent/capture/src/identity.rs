//! Which pod container a cgroup belongs to, for the `namespace`, `pod` and
//! `container` columns every row gets at capture time.
//!
//! Cluster mode keeps [`CgroupIdentities`] current as containers start and
//! stop; the capture path only looks cgroup ids up. Identities are interned
//! once per container, and the last lookup is cached: consecutive records
//! usually come from the same container, so most lookups are one compare.

use std::collections::HashMap;

/// The pod container a cgroup belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerIdentity {
    namespace: String,
    pod: String,
    container: String,
}

impl ContainerIdentity {
    pub fn new(namespace: &str, pod: &str, container: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            container: container.to_owned(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    pub fn container(&self) -> &str {
        &self.container
    }
}

/// Cgroup id → container identity. Empty in standalone mode, where the
/// columns stay null.
#[derive(Debug, Default)]
pub struct CgroupIdentities {
    /// Interned identities; a removed one leaves a hole reused later.
    entries: Vec<Option<ContainerIdentity>>,
    free: Vec<usize>,
    by_cgroup: HashMap<u64, usize>,
    /// The last lookup: cgroup id and its entry.
    last: Option<(u64, Option<usize>)>,
}

impl CgroupIdentities {
    /// Records (or replaces) the identity of a cgroup.
    pub fn insert(&mut self, cgroup_id: u64, identity: ContainerIdentity) {
        self.last = None;
        if let Some(&at) = self.by_cgroup.get(&cgroup_id) {
            self.entries[at] = Some(identity);
            return;
        }
        let at = match self.free.pop() {
            Some(at) => {
                self.entries[at] = Some(identity);
                at
            }
            None => {
                self.entries.push(Some(identity));
                self.entries.len() - 1
            }
        };
        self.by_cgroup.insert(cgroup_id, at);
    }

    /// Forgets a cgroup (its container is gone).
    pub fn remove(&mut self, cgroup_id: u64) {
        self.last = None;
        if let Some(at) = self.by_cgroup.remove(&cgroup_id) {
            self.entries[at] = None;
            self.free.push(at);
        }
    }

    /// The cgroup ids known, in no particular order.
    pub fn cgroups(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_cgroup.keys().copied()
    }

    pub fn get(&self, cgroup_id: u64) -> Option<&ContainerIdentity> {
        let &at = self.by_cgroup.get(&cgroup_id)?;
        self.entries.get(at)?.as_ref()
    }

    /// Like [`Self::get`], remembering the answer for the next call: the
    /// capture path's lookup.
    pub fn lookup(&mut self, cgroup_id: u64) -> Option<&ContainerIdentity> {
        let at = match self.last {
            Some((id, at)) if id == cgroup_id => at,
            _ => {
                let at = self.by_cgroup.get(&cgroup_id).copied();
                self.last = Some((cgroup_id, at));
                at
            }
        };
        self.entries.get(at?)?.as_ref()
    }

    pub fn len(&self) -> usize {
        self.by_cgroup.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cgroup.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_follow_inserts_and_removals() {
        let mut ids = CgroupIdentities::default();
        assert_eq!(ids.lookup(7), None);
        ids.insert(7, ContainerIdentity::new("shop", "web", "main"));
        // The cached miss is forgotten by the insert.
        assert_eq!(ids.lookup(7).map(ContainerIdentity::pod), Some("web"));
        assert_eq!(ids.lookup(7).map(ContainerIdentity::pod), Some("web"));
        ids.insert(8, ContainerIdentity::new("shop", "web", "sidecar"));
        assert_eq!(
            ids.lookup(8).map(ContainerIdentity::container),
            Some("sidecar")
        );
        ids.remove(7);
        assert_eq!(ids.lookup(7), None);
        // The hole is reused; the other entry is untouched.
        ids.insert(9, ContainerIdentity::new("bank", "api", "main"));
        assert_eq!(ids.entries.len(), 2);
        assert_eq!(
            ids.lookup(9).map(ContainerIdentity::namespace),
            Some("bank")
        );
        assert_eq!(
            ids.get(8).map(ContainerIdentity::container),
            Some("sidecar")
        );
        assert_eq!(ids.len(), 2);
    }
}
