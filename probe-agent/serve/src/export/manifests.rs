//! Exports from the manifests folder (standalone mode): the Exports and
//! Secrets found there are applied, changed and removed as their files
//! change.

use std::{collections::BTreeMap, path::PathBuf};

use crds::Export;
use k8s_openapi::api::core::v1::Secret;
use tracing::{error, info};

use super::{Exports, ManifestSecrets, resolve_credentials};
use sonde_daemon::chain;

/// Keeps the running Exports in line with the manifests.
#[derive(Debug)]
pub struct ManifestExports {
    exports: Exports,
    /// What was last reported for each Export, so an unchanged problem is
    /// logged once, not at every rescan.
    problems: BTreeMap<(String, String), Option<String>>,
}

impl ManifestExports {
    pub fn new(exports: Exports) -> Self {
        Self {
            exports,
            problems: BTreeMap::new(),
        }
    }

    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    /// Applies `found` (each with its file) with the Secrets `secrets`,
    /// and removes the running Exports no longer found.
    pub fn reconcile(&mut self, found: Vec<(PathBuf, Export)>, secrets: &[Secret]) {
        let source = ManifestSecrets::new(secrets);
        let mut desired = BTreeMap::new();
        for (file, export) in found {
            let namespace = export
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| crds::manifest::DEFAULT_NAMESPACE.to_owned());
            let name = export.metadata.name.clone().unwrap_or_default();
            desired.insert((namespace, name), (file, export));
        }
        for (namespace, name) in self.exports.keys() {
            if !desired.contains_key(&(namespace.clone(), name.clone())) {
                self.exports.remove(&namespace, &name);
                info!(export = %format!("{namespace}/{name}"), "removed");
            }
        }
        self.problems.retain(|key, _| desired.contains_key(key));
        for (key, (file, export)) in desired {
            let (namespace, name) = &key;
            let credentials = resolve_credentials(namespace, &export.spec, &source);
            let problem = credentials.as_ref().err().map(|e| chain(e));
            let result = self
                .exports
                .apply(namespace, name, &export.spec, credentials);
            let problem = match result {
                Ok(()) => problem,
                Err(e) => {
                    // An invalid Export does not run: a previous valid
                    // version of it stops.
                    self.exports.remove(namespace, name);
                    Some(chain(&e))
                }
            };
            if self.problems.get(&key) != Some(&problem)
                && let Some(problem) = &problem
            {
                error!(
                    export = %format!("{namespace}/{name}"),
                    file = %file.display(),
                    "{problem}"
                );
            }
            self.problems.insert(key, problem);
        }
    }
}
