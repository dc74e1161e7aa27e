//! The Secrets Export assignments name, read from the apiserver with `get`
//! (the agent may not list or watch Secrets). They are fetched when the set
//! of names changes and again every [`REFETCH`], so a Secret created or
//! rotated after its Export is picked up; while the apiserver is away the
//! last values stay.
//!
//! Reads run on the async runtime ([`SecretCache::run`]); the drive thread
//! only reads the values they left ([`SecretValues`]), so a slow or absent
//! apiserver never delays a drain.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use crds::v1alpha1::{Assignment, ExportSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use probe_serve::export::SecretSource;
use sonde_daemon::ShutdownSignal;
use tracing::warn;

use super::watch::ClusterView;

/// How often the assignments are checked for Secrets to read.
const CHECK: Duration = Duration::from_secs(1);

type Values = BTreeMap<Key, Option<BTreeMap<String, Vec<u8>>>>;

/// The Secrets read so far, as the drive thread sees them.
#[derive(Clone, Debug, Default)]
pub struct SecretValues(Arc<RwLock<Values>>);

impl SecretSource for SecretValues {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .flatten()
    }
}

/// How often referenced Secrets are read again.
pub const REFETCH: Duration = Duration::from_secs(10);

/// How long one read may take.
const TIMEOUT: Duration = Duration::from_secs(3);

type Key = (String, String);

/// Secrets by `(namespace, name)`: their keys and values, or `None` for a
/// Secret the apiserver says does not exist.
pub struct SecretCache {
    client: Client,
    values: Values,
    shared: SecretValues,
    fetched: Option<(BTreeSet<Key>, Instant)>,
    /// Errors already logged, so a failing read is logged once.
    logged: BTreeSet<String>,
}

impl SecretCache {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            values: BTreeMap::new(),
            shared: SecretValues::default(),
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
        if changed {
            *self
                .shared
                .0
                .write()
                .unwrap_or_else(PoisonError::into_inner) = self.values.clone();
        }
        changed
    }

    /// The values as the drive thread reads them.
    pub fn values(&self) -> SecretValues {
        self.shared.clone()
    }

    /// Reads what the node's Export assignments name, every [`CHECK`]
    /// (each Secret again every [`REFETCH`]), until `shutdown`; a change
    /// wakes the drive loop through `view`.
    pub async fn run(mut self, view: ClusterView, shutdown: ShutdownSignal) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(CHECK);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticks.tick() => {}
            }
            if !view.ready() {
                continue;
            }
            let assignments = view
                .probe_node()
                .map(|pn| pn.spec.assignments.clone())
                .unwrap_or_default();
            if self.refresh(&assignments).await {
                view.mark_changed();
            }
        }
    }

    fn log_once(&mut self, message: String) {
        if self.logged.insert(message.clone()) {
            warn!("{message}; keeping what was read before");
        }
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
