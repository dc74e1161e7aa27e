//! The two tasks of one Export: [`read_tables`] follows the selected tables
//! into the buffer, [`send`] turns buffered rows into requests and delivers
//! them. Both read the Export's configuration from a watch channel and end
//! when it closes (or are aborted).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arrow_array::RecordBatch;
use tokio::{
    sync::{Notify, broadcast::error::RecvError, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{error, info, warn};

use super::{
    ExportConfig, ExportReport,
    buffer::{Chunk, RowBuffer},
    encode::{Encoder, record_count},
    transport::{OtlpClient, SendError},
};
use probe_store::{TableName, TableSource, TableStore};

/// How often the reader looks for tables that appeared.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// Backoff bounds between retries of one request.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While a back end stays down, how often the failure is logged again.
const REPEAT_WARNING: Duration = Duration::from_secs(30);

/// What the tasks and the handle share about one Export.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the sender when a full batch is buffered.
    full: Notify,
}

pub(crate) struct State {
    pub buffer: RowBuffer,
    pub report: ExportReport,
    batch_size: u64,
}

impl Shared {
    pub fn new(namespace: &str, name: &str, buffer: RowBuffer) -> Self {
        Self {
            state: Mutex::new(State {
                buffer,
                report: ExportReport {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    ..ExportReport::default()
                },
                batch_size: u64::MAX,
            }),
            full: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn report(&self) -> ExportReport {
        let state = self.lock();
        let mut report = state.report.clone();
        report.rows_buffered = state.buffer.queued() + state.buffer.in_flight();
        report
    }

    fn push(&self, table: &TableName, batch: RecordBatch) {
        let mut state = self.lock();
        let dropped = state.buffer.push(Chunk {
            table: table.clone(),
            batch,
        });
        state.report.dropped.buffer_full += dropped;
        let full = state.buffer.queued() >= state.batch_size;
        drop(state);
        if full {
            self.full.notify_one();
        }
    }

    fn fell_behind(&self, rows: u64) {
        self.lock().report.dropped.fell_behind += rows;
    }

    fn error(&self, message: String) {
        let mut state = self.lock();
        state.report.last_error = Some(message);
        state.report.last_error_time = Some(SystemTime::now());
    }
}

fn key(shared: &Shared) -> String {
    let state = shared.lock();
    format!("{}/{}", state.report.namespace, state.report.name)
}

/// Follows every table of the Export's namespace its patterns select, and
/// moves each appended batch into the buffer.
pub(crate) async fn read_tables(
    shared: Arc<Shared>,
    store: TableStore,
    mut config: watch::Receiver<Arc<ExportConfig>>,
) {
    let namespace = shared.lock().report.namespace.clone();
    let mut followers = Followers(BTreeMap::new());
    let followers = &mut followers.0;
    loop {
        let patterns = config.borrow_and_update().spec.tables.clone();
        let selected = |name: &TableName| {
            name.schema == namespace && patterns.iter().any(|p| crds::table_matches(p, &name.table))
        };
        followers.retain(|name, task| {
            let keep = selected(name) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        // Tables there when the configuration (re)starts give only new
        // rows; tables that appear later give every row they ever had.
        let mut from_creation = false;
        loop {
            for table in store.tables() {
                if selected(&table.name) && !followers.contains_key(&table.name) {
                    let task = tokio::spawn(follow(
                        Arc::clone(&shared),
                        store.clone(),
                        table.name.clone(),
                        from_creation,
                    ));
                    followers.insert(table.name, task);
                }
            }
            followers.retain(|_, task| !task.is_finished());
            from_creation = true;
            tokio::select! {
                () = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
                changed = config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

/// Aborts the table followers when the reader ends, aborted or not.
struct Followers(BTreeMap<TableName, JoinHandle<()>>);

/// Moves one table's appended batches into the buffer until the table is
/// dropped, counting exactly what it misses if it falls behind.
async fn follow(shared: Arc<Shared>, store: TableStore, table: TableName, from_creation: bool) {
    let Some(start) = store.follow_counted(&table) else {
        return;
    };
    // Rows of the table counted from `base` on are either seen here or lost.
    let mut base = start.appended_rows;
    let mut seen = 0;
    if from_creation {
        for batch in start.snapshot.batches {
            seen += batch.num_rows() as u64;
            shared.push(&table, batch);
        }
        // Evicted before this reader saw the table.
        let lost = start.appended_rows.saturating_sub(seen);
        if lost > 0 {
            shared.fell_behind(lost);
            warn!(export = %key(&shared), table = %table, rows = lost, "rows evicted before the export saw the table; counted as dropped");
        }
        base = start.appended_rows;
        seen = 0;
    }
    let mut feed = start.feed;
    loop {
        match feed.recv().await {
            Ok(batch) => {
                seen += batch.num_rows() as u64;
                shared.push(&table, batch);
            }
            Err(RecvError::Lagged(batches)) => {
                let Some(again) = store.follow_counted(&table) else {
                    return;
                };
                let lost = again.appended_rows.saturating_sub(base + seen);
                shared.fell_behind(lost);
                warn!(
                    export = %key(&shared),
                    table = %table,
                    batches,
                    rows = lost,
                    "the export fell behind the table; rows counted as dropped"
                );
                base = again.appended_rows;
                seen = 0;
                feed = again.feed;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Jittered exponential backoff: each delay is drawn between half and all
/// of a ceiling that doubles up to [`MAX_BACKOFF`].
struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            ceiling: FIRST_BACKOFF,
        }
    }

    fn next(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(MAX_BACKOFF);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// How a delivery ended.
enum Outcome {
    Done,
    /// The configuration changed or closed: the rows went back to the
    /// buffer.
    Interrupted,
}

/// Takes rows from the buffer and delivers them, until the configuration
/// closes.
pub(crate) async fn send(
    shared: Arc<Shared>,
    node: String,
    mut config: watch::Receiver<Arc<ExportConfig>>,
) {
    let export = key(&shared);
    let mut failing = Failing::default();
    loop {
        let current = Arc::clone(&config.borrow_and_update());
        let batch_size = u64::from(current.spec.batch_size);
        shared.lock().batch_size = batch_size;
        let client = current
            .credentials
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|credentials| {
                OtlpClient::new(&current.spec.destination.otlp, credentials)
                    .map_err(|e| sonde_daemon::chain(&e))
            });
        let client = match client {
            Ok(client) => client,
            Err(message) => {
                error!(export = %export, "cannot send: {message}; rows are buffered until the Export or its Secret changes");
                shared.error(message);
                if config.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let mut next_flush = Instant::now() + current.interval;
        'batches: loop {
            let flush = {
                let queued = shared.lock().buffer.queued();
                if queued >= batch_size {
                    false
                } else {
                    tokio::select! {
                        () = shared.full.notified() => false,
                        () = tokio::time::sleep_until(next_flush) => true,
                        changed = config.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break 'batches;
                        }
                    }
                }
            };
            if flush {
                next_flush = Instant::now() + current.interval;
            }
            // Full batches always go; on the timer, the rest too.
            loop {
                let chunks = {
                    let mut state = shared.lock();
                    if state.buffer.queued() == 0 || (!flush && state.buffer.queued() < batch_size)
                    {
                        break;
                    }
                    state.buffer.take(batch_size)
                };
                let outcome = deliver(
                    &shared,
                    &node,
                    &current,
                    &client,
                    chunks,
                    &mut config,
                    &mut failing,
                    &export,
                )
                .await;
                if let Outcome::Interrupted = outcome {
                    if config.has_changed().is_err() {
                        return;
                    }
                    break 'batches;
                }
            }
        }
    }
}

/// A run of failed attempts, for logging.
#[derive(Default)]
struct Failing {
    attempts: u64,
    last_warning: Option<Instant>,
}

#[allow(clippy::too_many_arguments)]
async fn deliver(
    shared: &Shared,
    node: &str,
    config: &ExportConfig,
    client: &OtlpClient,
    chunks: Vec<Chunk>,
    watch: &mut watch::Receiver<Arc<ExportConfig>>,
    failing: &mut Failing,
    export: &str,
) -> Outcome {
    let rows: u64 = chunks.iter().map(Chunk::rows).sum();
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let encoder = Encoder {
        signal: config.spec.destination.otlp.signal,
        mapping: &config.spec.mapping,
        node,
        now_ns,
    };
    let (request, failed) = encoder.encode(&chunks);
    let in_request = record_count(&request);
    let unmappable = rows - in_request;
    let mapping_error = failed.first().map(|(_, e)| e.to_string()).or_else(|| {
        (unmappable > 0).then(|| format!("{unmappable} rows had a null value or duration"))
    });
    if in_request == 0 {
        finish(shared, rows, 0, 0, unmappable, mapping_error, export);
        return Outcome::Done;
    }
    let mut backoff = Backoff::new();
    loop {
        let result = tokio::select! {
            result = client.send(&request) => result,
            _ = watch.changed() => {
                shared.lock().buffer.requeue(chunks);
                return Outcome::Interrupted;
            }
        };
        match result {
            Ok(delivered) => {
                if failing.attempts > 0 {
                    info!(
                        export = %export,
                        target = client.target(),
                        failed_attempts = failing.attempts,
                        "delivering again"
                    );
                    *failing = Failing::default();
                }
                let error = match delivered.message {
                    Some(message) if delivered.rejected > 0 => Some(format!(
                        "the back end rejected {} of {in_request} records: {message}",
                        delivered.rejected
                    )),
                    _ => mapping_error,
                };
                let rejected = delivered.rejected.min(in_request);
                finish(
                    shared,
                    rows,
                    in_request - rejected,
                    rejected,
                    unmappable,
                    error,
                    export,
                );
                shared.lock().report.last_success = Some(SystemTime::now());
                return Outcome::Done;
            }
            Err(SendError::Permanent(message)) => {
                let message = format!("{}: {message}", client.target());
                error!(export = %export, rows = in_request, "the back end refused the rows; counted as dropped: {message}");
                shared.lock().report.failed_requests += 1;
                finish(
                    shared,
                    rows,
                    0,
                    in_request,
                    unmappable,
                    Some(message),
                    export,
                );
                return Outcome::Done;
            }
            Err(SendError::Retryable(message)) => {
                let message = format!("{}: {message}", client.target());
                failing.attempts += 1;
                let now = Instant::now();
                if failing
                    .last_warning
                    .is_none_or(|at| now.duration_since(at) >= REPEAT_WARNING)
                {
                    warn!(
                        export = %export,
                        failed_attempts = failing.attempts,
                        "cannot deliver, retrying with backoff: {message}"
                    );
                    failing.last_warning = Some(now);
                }
                {
                    let mut state = shared.lock();
                    state.report.failed_requests += 1;
                    state.report.last_error = Some(message);
                    state.report.last_error_time = Some(SystemTime::now());
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => {}
                    _ = watch.changed() => {
                        shared.lock().buffer.requeue(chunks);
                        return Outcome::Interrupted;
                    }
                }
            }
        }
    }
}

/// Settles a request of `rows` rows: `sent` accepted, `rejected` refused,
/// `unmappable` never in it.
fn finish(
    shared: &Shared,
    rows: u64,
    sent: u64,
    rejected: u64,
    unmappable: u64,
    error: Option<String>,
    export: &str,
) {
    if unmappable > 0 {
        warn!(export = %export, rows = unmappable, "rows do not fit the mapping; counted as dropped: {}", error.as_deref().unwrap_or_default());
    }
    let mut state = shared.lock();
    state.buffer.complete(rows);
    state.report.rows_exported += sent;
    state.report.dropped.rejected += rejected;
    state.report.dropped.unmappable += unmappable;
    if let Some(error) = error {
        state.report.last_error = Some(error);
        state.report.last_error_time = Some(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_with_jitter() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
        assert!(delays[0] >= FIRST_BACKOFF / 2 && delays[0] <= FIRST_BACKOFF);
        assert!(delays[1] >= FIRST_BACKOFF && delays[1] <= FIRST_BACKOFF * 2);
        for delay in &delays[5..] {
            assert!(
                *delay >= MAX_BACKOFF / 2 && *delay <= MAX_BACKOFF,
                "{delay:?}"
            );
        }
    }
}
