//! The Secrets Export assignments name, read from the apiserver with `get`
//! (the agent may not list or watch Secrets). They are fetched when the set
//! of names changes and again every [`REFETCH`], so a Secret created or
//! rotated after its Export is picked up; while the apiserver is away the
//! last values stay.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crds::v1alpha1::{Assignment, ExportSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tracing::warn;

use crate::export::SecretSource;

/// How often referenced Secrets are read again.
pub const REFETCH: Duration = Duration::from_secs(10);

/// How long one read may take.
const TIMEOUT: Duration = Duration::from_secs(3);

type Key = (String, String);

/// Secrets by `(namespace, name)`: their keys and values, or `None` for a
/// Secret the apiserver says does not exist.
pub struct SecretCache {
    client: Client,
    values: BTreeMap<Key, Option<BTreeMap<String, Vec<u8>>>>,
    fetched: Option<(BTreeSet<Key>, Instant)>,
    /// Errors already logged, so a failing read is logged once.
    logged: BTreeSet<String>,
}

impl SecretCache {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            values: BTreeMap::new(),
            fetched: None,
            logged: BTreeSet::new(),
        }
    }

    /// Reads the Secrets `assignments` name if the names changed or the
    /// last read is older than [`REFETCH`]. Returns whether a value changed.
    pub async fn refresh(&mut self, assignments: &[Assignment]) -> bool {
        let wanted: BTreeSet<Key> = assignments
            .iter()
            .filter_map(|a| Some((a.namespace.as_str(), a.export.as_ref()?)))
            .flat_map(|(namespace, spec)| {
                referenced(spec)
                    .into_iter()
                    .map(move |name| (namespace.to_owned(), name))
            })
            .collect();
        let due = match &self.fetched {
            Some((names, at)) => *names != wanted || at.elapsed() >= REFETCH,
            None => true,
        };
        if !due {
            return false;
        }
        self.values.retain(|key, _| wanted.contains(key));
        let mut changed = false;
        for (namespace, name) in &wanted {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let read = tokio::time::timeout(TIMEOUT, api.get_opt(name)).await;
            let value = match read {
                Ok(Ok(secret)) => secret.map(values),
                Ok(Err(e)) => {
                    self.log_once(format!("cannot read Secret {namespace}/{name}: {e}"));
                    continue;
                }
                Err(_) => {
                    self.log_once(format!(
                        "cannot read Secret {namespace}/{name}: no answer within {TIMEOUT:?}"
                    ));
                    continue;
                }
            };
            let key = (namespace.clone(), name.clone());
            if self.values.get(&key) != Some(&value) {
                changed = true;
                self.values.insert(key, value);
            }
        }
        self.fetched = Some((wanted, Instant::now()));
        changed
    }

    fn log_once(&mut self, message: String) {
        if self.logged.insert(message.clone()) {
            warn!("{message}; keeping what was read before");
        }
    }
}

impl SecretSource for SecretCache {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.values
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .flatten()
    }
}

/// The names of the Secrets an Export's destination refers to.
pub fn referenced(spec: &ExportSpec) -> BTreeSet<String> {
    let otlp = &spec.destination.otlp;
    let mut names = BTreeSet::new();
    if let Some(headers) = &otlp.headers_from {
        names.insert(headers.name.clone());
    }
    if let Some(tls) = &otlp.tls {
        for key in [&tls.ca_from, &tls.cert_from, &tls.key_from]
            .into_iter()
            .flatten()
        {
            names.insert(key.name.clone());
        }
    }
    names
}

/// A Secret's keys with their values: `data` decoded, `stringData` (which
/// the apiserver folds into `data` on write) on top.
fn values(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut values: BTreeMap<String, Vec<u8>> = secret
        .data
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.into_iter().flatten() {
        values.insert(k, v.into_bytes());
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_referenced_secret_is_named_once() {
        let spec: ExportSpec = serde_yaml::from_str(
            "tables: [t]\ndestination:\n  otlp:\n    endpoint: https://collector:4318\n    \
             protocol: http\n    signal: logs\n    headersFrom: {name: token}\n    \
             tls: {caFrom: {name: tls, key: ca.crt}, certFrom: {name: tls, key: tls.crt}, \
             keyFrom: {name: tls, key: tls.key}}\n",
        )
        .expect("an Export spec");
        assert_eq!(
            referenced(&spec).into_iter().collect::<Vec<_>>(),
            vec!["tls".to_owned(), "token".to_owned()]
        );
    }
}
