//! Which pods and nodes a Tracepoint selects. The operator (to assign a
//! Tracepoint to nodes and count them) and the agent (to fill the in-kernel
//! target set from the pods on its node) both decide with these functions,
//! so the two can never disagree.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::v1alpha1::TracepointSpec;

/// Whether a pod with these labels matches `selector`. An absent or empty
/// selector matches every pod (of the resource's namespace: the caller
/// restricts the namespace). A selector `validate()` refuses matches nothing.
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    match Selector::try_from(selector.clone()) {
        Ok(selector) => selector.matches(labels),
        Err(_) => false,
    }
}

impl TracepointSpec {
    /// Whether a pod of the Tracepoint's own namespace with these labels is
    /// selected. Pods of other namespaces never are: check that first.
    pub fn selects_pod(&self, labels: &BTreeMap<String, String>) -> bool {
        matches(self.selector.as_ref(), labels)
    }

    /// Whether a container of a selected pod is captured from.
    pub fn selects_container(&self, name: &str) -> bool {
        self.containers.is_empty() || self.containers.iter().any(|c| c == name)
    }

    /// Whether a node with these labels runs the probe.
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn absent_and_empty_selectors_match_every_pod() {
        assert!(matches(None, &labels(&[])));
        assert!(matches(
            Some(&LabelSelector::default()),
            &labels(&[("app", "x")])
        ));
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                requirement("tier", "In", &["front", "edge"]),
                requirement("canary", "DoesNotExist", &[]),
            ]),
        };
        assert!(matches(
            Some(&selector),
            &labels(&[("app", "web"), ("tier", "edge")])
        ));
        assert!(!matches(
            Some(&selector),
            &labels(&[("app", "web"), ("tier", "back")])
        ));
        assert!(!matches(
            Some(&selector),
            &labels(&[("app", "web"), ("tier", "edge"), ("canary", "1")])
        ));
        assert!(!matches(Some(&selector), &labels(&[("tier", "edge")])));
    }

    #[test]
    fn an_invalid_selector_matches_nothing() {
        let selector = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![requirement("app", "Like", &["web"])]),
        };
        assert!(!matches(Some(&selector), &labels(&[("app", "web")])));
    }

    #[test]
    fn containers_and_nodes() {
        let mut spec: TracepointSpec = serde_json::from_value(serde_json::json!({
            "probe": {"tracepoint": {"group": "syscalls", "name": "sys_enter_getppid"}},
            "table": "calls",
            "containers": ["web"],
            "nodeSelector": {"pool": "a"}
        }))
        .expect("valid spec");
        assert!(spec.selects_container("web"));
        assert!(!spec.selects_container("sidecar"));
        assert!(spec.selects_node(&labels(&[("pool", "a"), ("zone", "1")])));
        assert!(!spec.selects_node(&labels(&[("pool", "b")])));
        spec.containers.clear();
        spec.node_selector.clear();
        assert!(spec.selects_container("sidecar"));
        assert!(spec.selects_node(&labels(&[])));
    }
}
