//! Which containers on this node a Tracepoint assignment captures from,
//! decided from the agent's own watch of its node's pods (so pods that
//! start while the operator is away are still picked up).
//!
//! Tenancy: only pods of the assignment's own namespace are ever selected;
//! an absent or empty selector means every pod of that namespace.

use crds::v1alpha1::TracepointSpec;
use k8s_openapi::api::core::v1::Pod;

/// A running container of a selected pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SelectedContainer {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// As the pod status gives it, such as `containerd://4f3c…`.
    pub container_id: String,
}

/// The containers of `pods` that a Tracepoint of `namespace` selects, in
/// pod then container order. Pods must be Pending or Running; containers
/// must have started (an id) and not terminated.
pub fn selected_containers<'a>(
    namespace: &str,
    spec: &TracepointSpec,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<SelectedContainer> {
    let mut selected = Vec::new();
    for pod in pods {
        if pod.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        let empty = Default::default();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        if !crds::selector::matches(spec.selector.as_ref(), labels) {
            continue;
        }
        let Some(status) = &pod.status else {
            continue;
        };
        if !matches!(status.phase.as_deref(), Some("Pending" | "Running")) {
            continue;
        }
        let (Some(name), Some(uid)) = (&pod.metadata.name, &pod.metadata.uid) else {
            continue;
        };
        for container in status.container_statuses.iter().flatten() {
            if !spec.selects_container(&container.name) {
                continue;
            }
            let terminated = container
                .state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some());
            let Some(id) = container
                .container_id
                .as_deref()
                .filter(|id| !id.is_empty())
            else {
                continue;
            };
            if terminated {
                continue;
            }
            selected.push(SelectedContainer {
                namespace: namespace.to_owned(),
                pod: name.clone(),
                pod_uid: uid.clone(),
                container: container.name.clone(),
                container_id: id.to_owned(),
            });
        }
    }
    selected.sort();
    selected
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(namespace: &str, name: &str, app: &str, phase: &str, containers: &[&str]) -> Pod {
        let statuses: Vec<_> = containers
            .iter()
            .map(|c| {
                json!({
                    "name": c, "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                    "containerID": format!("containerd://{name}-{c}"),
                    "state": {"running": {}},
                })
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name, "uid": format!("uid-{name}"),
                         "labels": {"app": app}},
            "status": {"phase": phase, "containerStatuses": statuses},
        }))
        .expect("a pod")
    }

    fn spec(extra: serde_json::Value) -> TracepointSpec {
        let mut spec = json!({
            "probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}},
            "table": "calls",
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(spec).expect("a spec")
    }

    fn names(selected: &[SelectedContainer]) -> Vec<String> {
        selected
            .iter()
            .map(|s| format!("{}/{}/{}", s.namespace, s.pod, s.container))
            .collect()
    }

    #[test]
    fn selects_by_labels_within_the_namespace_only() {
        let pods = [
            pod("shop", "web", "web", "Running", &["main"]),
            pod("shop", "other", "other", "Running", &["main"]),
            pod("bank", "web", "web", "Running", &["main"]),
        ];
        let web = spec(json!({"selector": {"matchLabels": {"app": "web"}}}));
        let selected = selected_containers("shop", &web, &pods);
        assert_eq!(names(&selected), ["shop/web/main"]);
        assert_eq!(selected[0].container_id, "containerd://web-main");
        assert_eq!(selected[0].pod_uid, "uid-web");
        // No selector: every pod of the namespace, never the others.
        let all = spec(json!({}));
        assert_eq!(
            names(&selected_containers("shop", &all, &pods)),
            ["shop/other/main", "shop/web/main"]
        );
        let empty = spec(json!({"selector": {}}));
        assert_eq!(
            names(&selected_containers("bank", &empty, &pods)),
            ["bank/web/main"]
        );
        assert!(selected_containers("empty", &all, &pods).is_empty());
    }

    #[test]
    fn filters_containers_and_phases() {
        let mut finished = pod("shop", "done", "web", "Succeeded", &["main"]);
        let pods = [
            pod("shop", "web", "web", "Running", &["main", "sidecar"]),
            pod("shop", "starting", "web", "Pending", &["main"]),
        ];
        let only_main = spec(json!({"containers": ["main"]}));
        assert_eq!(
            names(&selected_containers("shop", &only_main, &pods)),
            ["shop/starting/main", "shop/web/main"]
        );
        let sidecar = spec(json!({"containers": ["sidecar"]}));
        assert_eq!(
            names(&selected_containers("shop", &sidecar, &pods)),
            ["shop/web/sidecar"]
        );
        let all = spec(json!({}));
        assert!(selected_containers("shop", &all, [&finished]).is_empty());
        // A container not started yet (no id) or already terminated is skipped.
        finished.status.as_mut().expect("status").phase = Some("Running".into());
        let statuses = finished
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
            .expect("statuses");
        statuses[0].container_id = None;
        assert!(selected_containers("shop", &all, [&finished]).is_empty());
        let mut terminated = pod("shop", "t", "web", "Running", &["main"]);
        let statuses = terminated
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
            .expect("statuses");
        statuses[0].state =
            serde_json::from_value(json!({"terminated": {"exitCode": 0}})).expect("a state");
        assert!(selected_containers("shop", &all, [&terminated]).is_empty());
    }
}
