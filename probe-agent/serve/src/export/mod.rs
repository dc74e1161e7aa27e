//! OTLP export: the agent's side of `Export` resources.
//!
//! [`Exports`] runs every Export applied to this node. Each one has two
//! tasks: a reader that follows the selected tables of the store (names and
//! glob patterns; tables that appear later included) and moves every new
//! batch into the Export's [`RowBuffer`](buffer::RowBuffer), and a sender
//! that takes up to `batchSize` rows, turns them into one OTLP request
//! ([`encode`]) and delivers it over gRPC or HTTP ([`transport`]) — when a
//! batch is full or every `interval` — retrying with bounded, jittered
//! exponential backoff while the back end is unavailable.
//!
//! # Where every row goes
//!
//! Every row appended to a selected table after the Export started (or,
//! for a table that appears later, since that table was created) ends in
//! exactly one of: sent (`rows_exported`), still buffered, or dropped with a
//! reason ([`DroppedRows`]):
//! - `buffer_full`: the buffer held `bufferRows` rows and newer ones came;
//!   the oldest go first. The request being sent stays.
//! - `rejected`: the back end refused the request for good (a
//!   non-retryable status) or rejected records in a partial success.
//! - `unmappable`: the rows do not fit the mapping (a missing or
//!   non-numeric value or duration column, a null value).
//! - `fell_behind`: the reader was not scheduled while more than the
//!   store's follow capacity of batches were appended; the count is exact.
//!   Store retention (maxBytes, maxAge, the memory budget) never takes rows
//!   from an Export: the reader takes its own reference to each batch as it
//!   is appended, and the buffer is what bounds what an Export holds. Only
//!   a table that appears while the Export runs and loses rows to eviction
//!   before the reader first sees it (within a second) counts them here.
//! - `removed`: the Export was removed, or the agent stopped, with rows
//!   still buffered.
//!
//! Secrets are resolved outside this module: callers pass [`Credentials`],
//! or the reason they could not be had (an Export without them buffers, and
//! overflows, but does not send, and reports why).

mod buffer;
mod collector;
mod encode;
mod manifests;
mod secrets;
mod transport;
mod worker;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use crds::v1alpha1::ExportSpec;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use self::{buffer::RowBuffer, worker::Shared};
pub use self::{
    collector::ExportCollector,
    encode::MappingError,
    manifests::ManifestExports,
    secrets::{ManifestSecrets, SecretSource, resolve_credentials},
};
use probe_store::TableStore;

/// Header values and TLS material an Export's Secrets hold, resolved.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Request headers (`headersFrom`: every key of the Secret).
    pub headers: Vec<(String, String)>,
    /// PEM CA certificates to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key, for mutual TLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Credentials {
    // Header values and keys are secrets: never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_identity", &self.client_identity.is_some())
            .finish()
    }
}

/// What can go wrong setting up an Export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid Export: {source}")]
    Invalid {
        #[source]
        source: crds::ValidationError,
    },

    #[error("Secret {namespace}/{name} does not exist")]
    MissingSecret { namespace: String, name: String },

    #[error("Secret {namespace}/{name} has no key {key:?}")]
    MissingSecretKey {
        namespace: String,
        name: String,
        key: String,
    },

    #[error("Secret {namespace}/{name}: key {key:?} is not UTF-8 text")]
    SecretNotText {
        namespace: String,
        name: String,
        key: String,
    },

    #[error("header {key:?} from the Secret: {reason}")]
    Header { key: String, reason: &'static str },

    #[error("endpoint {endpoint}: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("the {what} is not valid PEM")]
    Pem { what: &'static str },

    #[error("TLS {what}: {source}")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },

    #[error("cannot build the HTTP client: {source}")]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },
}

/// Rows an Export gave up on, by reason (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedRows {
    pub buffer_full: u64,
    pub rejected: u64,
    pub unmappable: u64,
    pub fell_behind: u64,
    pub removed: u64,
}

impl DroppedRows {
    pub fn total(&self) -> u64 {
        self.buffer_full + self.rejected + self.unmappable + self.fell_behind + self.removed
    }

    /// Each reason with the label the metrics use.
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("buffer_full", self.buffer_full),
            ("rejected", self.rejected),
            ("unmappable", self.unmappable),
            ("fell_behind", self.fell_behind),
            ("removed", self.removed),
        ]
    }
}

/// One Export's results on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub namespace: String,
    pub name: String,
    /// Rows the back end accepted.
    pub rows_exported: u64,
    pub dropped: DroppedRows,
    /// Requests that failed, retried or not.
    pub failed_requests: u64,
    /// Rows waiting or being sent now.
    pub rows_buffered: u64,
    pub last_error: Option<String>,
    pub last_error_time: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
}

impl ExportReport {
    /// Rows given up on, for every reason.
    pub fn rows_dropped(&self) -> u64 {
        self.dropped.total()
    }
}

/// One Export as the tasks see it; replaced whole on every apply.
#[derive(Debug, PartialEq)]
struct ExportConfig {
    spec: ExportSpec,
    interval: Duration,
    /// The resolved Secrets, or why they could not be.
    credentials: Result<Credentials, String>,
}

struct Running {
    shared: Arc<Shared>,
    config: watch::Sender<Arc<ExportConfig>>,
    tasks: [JoinHandle<()>; 2],
}

impl Running {
    fn stop(self) -> ExportReport {
        for task in &self.tasks {
            task.abort();
        }
        // Aborted tasks hold nothing back: rows in flight are still in the
        // buffer's count, so discarding it counts them too.
        let mut state = self.shared.lock();
        let left = state.buffer.discard();
        state.report.dropped.removed += left;
        state.report.rows_buffered = 0;
        state.report.clone()
    }
}

/// Every Export this agent runs. Cheap to clone; clones share the Exports.
#[derive(Clone)]
pub struct Exports {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: tokio::runtime::Handle,
    store: TableStore,
    node: String,
    running: Mutex<BTreeMap<(String, String), Running>>,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exports")
            .field("node", &self.inner.node)
            .field("exports", &self.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Exports {
    /// Exports of `store`'s tables from node `node`. Their tasks run on
    /// the tokio runtime this is called on, wherever Exports are applied
    /// from (the drive thread, in both run modes).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(store: TableStore, node: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime: tokio::runtime::Handle::current(),
                store,
                node: node.into(),
                running: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Running>> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts or reconfigures an Export. A reconfigured Export keeps its
    /// buffered rows, its counters and the tables it follows that it still
    /// selects. `credentials`: the Secrets' contents, or why they could not
    /// be read — the Export then buffers without sending and reports it.
    pub fn apply(
        &self,
        namespace: &str,
        name: &str,
        spec: &ExportSpec,
        credentials: Result<Credentials, ExportError>,
    ) -> Result<(), ExportError> {
        spec.validate()
            .map_err(|source| ExportError::Invalid { source })?;
        // Validation checked the duration.
        let interval = crds::units::parse_duration(&spec.interval)
            .unwrap_or(Duration::from_secs(10))
            .max(Duration::from_millis(10));
        let config = Arc::new(ExportConfig {
            spec: spec.clone(),
            interval,
            credentials: credentials.map_err(|e| sonde_daemon::chain(&e)),
        });
        let key = (namespace.to_owned(), name.to_owned());
        let mut running = self.lock();
        if let Some(existing) = running.get(&key) {
            let changed = existing.config.send_if_modified(|current| {
                if **current == *config {
                    return false;
                }
                *current = Arc::clone(&config);
                true
            });
            if changed {
                let mut state = existing.shared.lock();
                let dropped = state.buffer.set_capacity(spec.buffer_rows.into());
                state.report.dropped.buffer_full += dropped;
                drop(state);
                info!(export = %format!("{namespace}/{name}"), "reconfigured");
            }
            return Ok(());
        }
        let shared = Arc::new(Shared::new(
            namespace,
            name,
            RowBuffer::new(spec.buffer_rows.into()),
        ));
        let (config_tx, config_rx) = watch::channel(config);
        let reader = self.inner.runtime.spawn(worker::read_tables(
            Arc::clone(&shared),
            self.inner.store.clone(),
            config_rx.clone(),
        ));
        let sender = self.inner.runtime.spawn(worker::send(
            Arc::clone(&shared),
            self.inner.node.clone(),
            config_rx,
        ));
        info!(
            export = %format!("{namespace}/{name}"),
            endpoint = %spec.destination.otlp.endpoint,
            signal = %spec.destination.otlp.signal,
            tables = ?spec.tables,
            "export started"
        );
        running.insert(
            key,
            Running {
                shared,
                config: config_tx,
                tasks: [reader, sender],
            },
        );
        Ok(())
    }

    /// Stops an Export; rows it still held are counted as dropped
    /// (`removed`). Returns its final report, or `None` if it was not running.
    pub fn remove(&self, namespace: &str, name: &str) -> Option<ExportReport> {
        let running = self
            .lock()
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        let report = running.stop();
        log_final(&report);
        Some(report)
    }

    /// One Export's report.
    pub fn status(&self, namespace: &str, name: &str) -> Option<ExportReport> {
        let running = self.lock();
        let export = running.get(&(namespace.to_owned(), name.to_owned()))?;
        Some(export.shared.report())
    }

    /// Every Export's report, in namespace and name order.
    pub fn reports(&self) -> Vec<ExportReport> {
        self.lock().values().map(|r| r.shared.report()).collect()
    }

    /// `namespace/name` of every running Export.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.lock().keys().cloned().collect()
    }

    /// Stops every Export (the agent is stopping), counting what they still
    /// held as dropped.
    pub fn shutdown(&self) {
        let running = std::mem::take(&mut *self.lock());
        for (_, export) in running {
            log_final(&export.stop());
        }
    }
}

fn log_final(report: &ExportReport) {
    let export = format!("{}/{}", report.namespace, report.name);
    if report.dropped.removed > 0 {
        warn!(
            export = %export,
            rows_exported = report.rows_exported,
            rows_dropped = report.rows_dropped(),
            unsent = report.dropped.removed,
            "export stopped with rows not sent; counted as dropped"
        );
    } else {
        info!(
            export = %export,
            rows_exported = report.rows_exported,
            rows_dropped = report.rows_dropped(),
            "export stopped"
        );
    }
}
