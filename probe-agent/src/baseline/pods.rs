//! Which pod container a process belongs to, for the baseline tables'
//! `namespace`, `pod` and `container` columns: the process's cgroup path,
//! read as the kubelet lays it out ([`parse_cgroup_path`]), names a pod
//! UID and a container id, and the pods on the node name those.

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::core::v1::Pod;
use probe_capture::identity::ContainerIdentity;

use crate::cluster::{
    cgroups::{ContainerId, parse_cgroup_path},
    watch::ClusterView,
};

/// Where the pods on the node come from (cluster mode).
pub trait PodSource: Send + Sync {
    fn pods(&self) -> Vec<Arc<Pod>>;
}

impl PodSource for ClusterView {
    fn pods(&self) -> Vec<Arc<Pod>> {
        ClusterView::pods(self)
    }
}

/// One pod's names and its containers' ids.
#[derive(Debug)]
struct PodNames {
    namespace: String,
    name: String,
    /// Container id (without scheme) → container name.
    containers: HashMap<String, String>,
}

/// The pods on the node by UID, as of one sample. Empty in standalone
/// mode, where the identity columns stay null.
#[derive(Debug, Default)]
pub struct PodDirectory {
    pods: HashMap<String, PodNames>,
}

impl PodDirectory {
    pub fn from_pods(pods: &[Arc<Pod>]) -> Self {
        let mut directory = HashMap::new();
        for pod in pods {
            let (Some(uid), Some(name)) = (&pod.metadata.uid, &pod.metadata.name) else {
                continue;
            };
            let mut containers = HashMap::new();
            if let Some(status) = &pod.status {
                let statuses = [
                    &status.container_statuses,
                    &status.init_container_statuses,
                    &status.ephemeral_container_statuses,
                ];
                for container in statuses.into_iter().flatten().flatten() {
                    // A container not started yet has no id (and no cgroup).
                    let Some(Ok(id)) = container.container_id.as_deref().map(ContainerId::parse)
                    else {
                        continue;
                    };
                    containers.insert(id.id, container.name.clone());
                }
            }
            directory.insert(
                uid.clone(),
                PodNames {
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: name.clone(),
                    containers,
                },
            );
        }
        Self { pods: directory }
    }

    /// The pod container of a cgroup path (as `/proc/<pid>/cgroup` shows
    /// it); `None` outside pods or for a pod this node does not know (yet).
    /// A pod's own cgroup (its sandbox) has the pod's names and an empty
    /// container name.
    pub fn identity(&self, cgroup_path: &str) -> Option<ContainerIdentity> {
        let found = parse_cgroup_path(cgroup_path)?;
        let pod = self.pods.get(&found.pod_uid)?;
        let container = pod
            .containers
            .get(&found.container_id)
            .map_or("", String::as_str);
        Some(ContainerIdentity::new(&pod.namespace, &pod.name, container))
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str, uid: &str, containers: &[(&str, &str)]) -> Arc<Pod> {
        let statuses: Vec<_> = containers
            .iter()
            .map(|(name, id)| {
                serde_json::json!({
                    "name": name, "image": "x", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": id,
                })
            })
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": namespace, "name": name, "uid": uid},
                "status": {"phase": "Running", "containerStatuses": statuses},
            }))
            .expect("a valid pod"),
        )
    }

    #[test]
    fn names_containers_from_cgroup_paths_in_both_layouts() {
        let directory = PodDirectory::from_pods(&[
            pod(
                "shop",
                "web-1",
                "0b1c-22",
                &[
                    ("main", "containerd://abc123"),
                    ("proxy", "containerd://def456"),
                ],
            ),
            pod("bank", "api-0", "77aa", &[("app", "cri-o://fff")]),
        ]);
        let web = directory
            .identity("/kubepods/burstable/pod0b1c-22/abc123")
            .expect("a pod container");
        assert_eq!(
            (web.namespace(), web.pod(), web.container()),
            ("shop", "web-1", "main")
        );
        let proxy = directory
            .identity(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b1c_22.slice/\
                 cri-containerd-def456.scope",
            )
            .expect("systemd layout");
        assert_eq!(proxy.container(), "proxy");
        let api = directory
            .identity("/kubepods/pod77aa/crio-fff")
            .expect("cri-o");
        assert_eq!((api.namespace(), api.container()), ("bank", "app"));
        // Outside pods, and pods the node does not know.
        assert_eq!(directory.identity("/system.slice/ssh.service"), None);
        assert_eq!(directory.identity("/kubepods/podffff/abc123"), None);
        // A container not in the status yet: the pod, no container name.
        let unknown = directory
            .identity("/kubepods/pod77aa/cafe")
            .expect("the pod is known");
        assert_eq!((unknown.pod(), unknown.container()), ("api-0", ""));
    }
}
