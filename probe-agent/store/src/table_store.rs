//! [`TableStore`]: the agent's tables in memory, bounded by retention
//! policies and a global budget.
//!
//! Each table is a queue of sealed record batches, oldest first, behind its
//! own short-held mutex. Writers append whole batches (never rows), readers
//! clone the queue's `Arc`ed batches, so neither waits on the other for
//! longer than a queue operation. Eviction drops the oldest batches whole
//! and, where a whole batch would overshoot, copies the surviving rows of
//! one batch into a compact batch so the memory really goes.
//!
//! # Hot and cold batches
//!
//! Batches arrive hot: as the capture path sealed them, ready to serve.
//! [`TableStore::compact`] (run by the agent's upkeep, never by the writer)
//! merges runs of hot batches older than [`Compaction::cold_after`] into
//! cold ones ([`ColdBatch`]): up to [`Compaction::max_rows`] rows, their
//! low-cardinality strings as dictionaries, every buffer compressed. A read
//! decodes cold batches outside the table's lock, through a cache bounded
//! by [`StoreConfig::cache_bytes`], and casts them back to the table's
//! schema, so readers cannot tell hot from cold.
//!
//! # What "bytes" means
//!
//! What is really held. A hot batch's bytes are
//! [`RecordBatch::get_array_memory_size`]: the capacity of every buffer it
//! references (builder slack included) plus the array headers. A batch that
//! is a slice of a larger one would count the whole shared buffer, which is
//! why eviction never keeps a slice: it copies the kept rows. A cold
//! batch's bytes are its compressed message's allocation
//! ([`ColdBatch::bytes`]). Schemas, the queue and the decode cache (bounded
//! on its own, for all tables together) are not counted.
//!
//! Cold batches are evicted whole. Compaction keeps each one to an eighth
//! of the table's maxBytes before compression and to a sixteenth of its
//! maxAge in time, so whole-batch eviction frees at most that much more
//! than asked; rows of a cold batch straddling the maxAge cutoff are held
//! (and counted) until its newest row is too old, but never served.
//!
//! # The global budget
//!
//! When all tables together hold more than the budget, the table holding
//! the most bytes loses its oldest data, one batch (or part of one) at a
//! time, re-choosing the largest table after each step. Largest-first keeps
//! one noisy table from wiping out the history of quiet ones, and leaves
//! rollup tables (small by construction) for last.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arrow_array::{
    BooleanArray, RecordBatch, UInt32Array, cast::AsArray, types::TimestampNanosecondType,
};
use arrow_schema::{ArrowError, DataType, SchemaRef, TimeUnit};
use crds::Retention;
use tokio::sync::broadcast;

use super::{
    LoadBatch, ScanPart, StoreError, TableInfo, TableName, TableScan, TableSnapshot, TableSource,
    cold::{Codec, ColdBatch},
    retention::{RetentionPolicy, policy_for},
};

/// The column whose values say how old a row is.
pub const TIME_COLUMN: &str = "time_";

/// Global budget when none is configured: room for several busy tables at
/// their default bound on a typical node.
pub const DEFAULT_BUDGET_BYTES: u64 = 512 << 20;

/// Batches a follow-mode subscriber may fall behind by before it is told it
/// lagged.
pub const DEFAULT_FOLLOW_CAPACITY: usize = 256;

/// Wall-clock time for retention, injectable so tests need not sleep.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix-epoch nanoseconds.
    fn now_ns(&self) -> i64;
}

/// The system's real-time clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        // Before 1970 only on a broken clock; treat it as the epoch.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told, for tests and replays.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ns: i64) -> Self {
        Self(AtomicI64::new(now_ns))
    }

    pub fn set(&self, now_ns: i64) {
        self.0.store(now_ns, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(duration_ns(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Decoded cold batches kept for reads when none is configured.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// How the store is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Policy of tables no Retention names (and the fallback for axes a
    /// Retention leaves unset).
    pub default_policy: RetentionPolicy,
    /// Most bytes all tables together may hold; `None`: no global bound.
    pub budget_bytes: Option<u64>,
    /// Follow-mode channel depth per table, in batches.
    pub follow_capacity: usize,
    /// How hot batches become cold; `None`: batches stay as appended.
    pub compaction: Option<Compaction>,
    /// Most bytes of decoded cold batches kept for reads, all tables
    /// together (not counted against tables or the budget).
    pub cache_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            default_policy: RetentionPolicy::DEFAULT,
            budget_bytes: Some(DEFAULT_BUDGET_BYTES),
            follow_capacity: DEFAULT_FOLLOW_CAPACITY,
            compaction: Some(Compaction::default()),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// When and how [`TableStore::compact`] turns hot batches cold.
///
/// Hot batches older than `cold_after` are merged in runs up to
/// `max_rows`, `max_input_bytes` and a sixteenth of the table's maxAge; a
/// full run is compacted at once, a run still filling waits until its
/// oldest batch is `merge_for` past `cold_after` (or a sixty-fourth of the
/// table's maxAge, when longer), so a table at 10 rows/s holds a few
/// dozen cold batches an hour rather than 3600 small ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// A hot batch may be compacted once its newest row is this old.
    pub cold_after: Duration,
    /// How much longer a run that is not full waits for more batches.
    pub merge_for: Duration,
    /// Most rows per cold batch.
    pub max_rows: usize,
    /// Most bytes of hot batches merged into one cold batch (a table's
    /// maxBytes / 8 when smaller).
    pub max_input_bytes: u64,
    pub codec: Codec,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            cold_after: Duration::from_secs(30),
            merge_for: Duration::from_secs(300),
            max_rows: 1 << 14,
            max_input_bytes: 16 << 20,
            codec: Codec::Zstd,
        }
    }
}

/// What one [`TableStore::compact`] pass did, over all tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Hot batches replaced.
    pub batches_in: u64,
    /// Cold batches made.
    pub batches_out: u64,
    pub rows: u64,
    /// Bytes held before and after.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Runs that could not be encoded (they stay hot).
    pub failures: u64,
}

/// Why data was evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictionReason {
    /// The table's maxBytes.
    MaxBytes,
    /// The table's maxAge.
    MaxAge,
    /// The global memory budget.
    Budget,
}

/// Data removed for one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub rows: u64,
    pub bytes: u64,
    /// Batches dropped whole (rows cut from a batch that stays count in
    /// `rows` and `bytes` only).
    pub batches: u64,
}

impl Evicted {
    fn add(&mut self, other: Evicted) {
        self.rows += other.rows;
        self.bytes += other.bytes;
        self.batches += other.batches;
    }
}

/// Evictions of one table, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    pub max_bytes: Evicted,
    pub max_age: Evicted,
    pub budget: Evicted,
}

impl Evictions {
    pub fn total(&self) -> Evicted {
        let mut total = self.max_bytes;
        total.add(self.max_age);
        total.add(self.budget);
        total
    }

    fn by(&mut self, reason: EvictionReason) -> &mut Evicted {
        match reason {
            EvictionReason::MaxBytes => &mut self.max_bytes,
            EvictionReason::MaxAge => &mut self.max_age,
            EvictionReason::Budget => &mut self.budget,
        }
    }
}

/// One table's size, limits and history, for metrics and Retention status.
/// Always `appended == held + evicted.total()` for rows, and
/// `appended == held + evicted.total() + compacted_bytes` for bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableStats {
    pub name: TableName,
    /// The policy in force.
    pub policy: RetentionPolicy,
    /// Rows held now.
    pub rows: u64,
    /// Bytes held now (see the module docs for what a byte is).
    pub bytes: u64,
    /// Batches held now, and how many of them are cold.
    pub batches: u64,
    pub cold_batches: u64,
    /// What the rows held now took before compaction (hot batches count
    /// as they are): `plain_bytes / bytes` is the compression ratio.
    pub plain_bytes: u64,
    /// Bytes compaction gave back.
    pub compacted_bytes: u64,
    pub appended_rows: u64,
    pub appended_bytes: u64,
    pub appended_batches: u64,
    pub evicted: Evictions,
    /// Oldest and newest `time_` held, Unix-epoch nanoseconds.
    pub oldest_ns: Option<i64>,
    pub newest_ns: Option<i64>,
    /// The actual retention window: age of the oldest row held.
    pub window: Option<Duration>,
    /// What evicted data most recently; `None` while the table holds
    /// everything it was given.
    pub limited_by: Option<EvictionReason>,
}

/// What [`TableStore::follow_counted`] returns: taken under the table's lock.
#[derive(Debug)]
pub struct CountedFollow {
    /// Rows appended to the table since it was created, up to this instant.
    pub appended_rows: u64,
    /// The rows held at this instant.
    pub snapshot: TableSnapshot,
    /// Every batch appended after this instant.
    pub feed: broadcast::Receiver<RecordBatch>,
}

/// A table's rows: as appended, or compacted.
#[derive(Clone)]
enum Rows {
    Hot(RecordBatch),
    Cold(Arc<ColdBatch>),
}

/// A batch held by a table, with what eviction needs to know about it.
struct Held {
    /// Unique in the store: the decode cache's key, and how compaction
    /// finds the batches it merged.
    id: u64,
    rows: Rows,
    bytes: u64,
    /// Oldest and newest `time_` (the append time for tables without one).
    min_ns: i64,
    max_ns: i64,
    /// Compaction made it no smaller: leave it hot.
    incompressible: bool,
}

impl Held {
    fn num_rows(&self) -> usize {
        match &self.rows {
            Rows::Hot(batch) => batch.num_rows(),
            Rows::Cold(cold) => cold.rows(),
        }
    }

    fn plain_bytes(&self) -> u64 {
        match &self.rows {
            Rows::Hot(_) => self.bytes,
            Rows::Cold(cold) => cold.plain_bytes(),
        }
    }
}

struct TableState {
    batches: VecDeque<Held>,
    rows: u64,
    bytes: u64,
    appended_rows: u64,
    appended_bytes: u64,
    appended_batches: u64,
    evicted: Evictions,
    compacted_bytes: u64,
    /// Set by the owner of the table (rollups); wins over Retentions.
    policy_override: Option<RetentionPolicy>,
    policy: RetentionPolicy,
    limited_by: Option<EvictionReason>,
    /// Set by `drop_table`: a writer still holding the entry gets an error
    /// instead of adding bytes no one will ever evict.
    dropped: bool,
}

struct TableEntry {
    name: TableName,
    schema: SchemaRef,
    /// Index of a `time_` nanosecond timestamp column, if the table has one.
    time_column: Option<usize>,
    state: Mutex<TableState>,
    feed: broadcast::Sender<RecordBatch>,
}

struct Inner {
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    tables: RwLock<BTreeMap<TableName, Arc<TableEntry>>>,
    retentions: RwLock<Vec<Retention>>,
    total_bytes: AtomicU64,
    /// One budget eviction at a time, so two writers over budget do not
    /// both evict the same excess.
    budget_lock: Mutex<()>,
    /// One compaction pass at a time.
    compact_lock: Mutex<()>,
    next_id: AtomicU64,
    cache: Mutex<DecodeCache>,
    /// Cold batches that failed to decode, and their rows (never expected:
    /// the store wrote them).
    unreadable: AtomicU64,
}

/// The agent's tables. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct TableStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableStore")
            .field("config", &self.inner.config)
            .field("total_bytes", &self.total_bytes())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex even if a panicking thread held it: the state is counters
/// and a queue of immutable batches, so serving on beats cascading panics.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl TableStore {
    /// A store on the system clock.
    pub fn new(config: StoreConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(config: StoreConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                clock,
                tables: RwLock::new(BTreeMap::new()),
                retentions: RwLock::new(Vec::new()),
                total_bytes: AtomicU64::new(0),
                budget_lock: Mutex::new(()),
                compact_lock: Mutex::new(()),
                next_id: AtomicU64::new(0),
                cache: Mutex::new(DecodeCache::new(config.cache_bytes)),
                unreadable: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> StoreConfig {
        self.inner.config
    }

    /// Now, on the store's clock.
    pub fn now_ns(&self) -> i64 {
        self.inner.clock.now_ns()
    }

    /// Bytes held by all tables.
    pub fn total_bytes(&self) -> u64 {
        self.inner.total_bytes.load(Ordering::SeqCst)
    }

    /// Creates a table. Creating one that exists with the same columns is a
    /// no-op that keeps its rows, so a probe re-attached after a restart of
    /// its Tracepoint goes on filling the same table.
    pub fn create_table(&self, name: TableName, schema: SchemaRef) -> Result<(), StoreError> {
        let mut tables = self
            .inner
            .tables
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = tables.get(&name) {
            return if existing.schema.fields() == schema.fields() {
                Ok(())
            } else {
                Err(StoreError::SchemaMismatch {
                    table: name,
                    expected: Arc::clone(&existing.schema),
                    found: schema,
                })
            };
        }
        let time_column = schema.index_of(TIME_COLUMN).ok().filter(|&i| {
            matches!(
                schema.field(i).data_type(),
                DataType::Timestamp(TimeUnit::Nanosecond, _)
            )
        });
        let policy = self.resolve_policy(&name, None);
        let (feed, _) = broadcast::channel(self.inner.config.follow_capacity.max(1));
        let entry = TableEntry {
            name: name.clone(),
            schema,
            time_column,
            state: Mutex::new(TableState {
                batches: VecDeque::new(),
                rows: 0,
                bytes: 0,
                appended_rows: 0,
                appended_bytes: 0,
                appended_batches: 0,
                evicted: Evictions::default(),
                compacted_bytes: 0,
                policy_override: None,
                policy,
                limited_by: None,
                dropped: false,
            }),
            feed,
        };
        tables.insert(name, Arc::new(entry));
        Ok(())
    }

    /// Drops a table and what it holds; followers see their stream end.
    /// False if there was no such table.
    pub fn drop_table(&self, name: &TableName) -> bool {
        let removed = self
            .inner
            .tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        let Some(entry) = removed else {
            return false;
        };
        let mut state = lock(&entry.state);
        state.dropped = true;
        self.inner
            .total_bytes
            .fetch_sub(state.bytes, Ordering::SeqCst);
        for held in state.batches.drain(..) {
            self.forget(&held);
        }
        state.bytes = 0;
        state.rows = 0;
        true
    }

    /// Appends a sealed batch, then applies the table's limits and the
    /// global budget. Empty batches are ignored.
    pub fn append(&self, name: &TableName, batch: RecordBatch) -> Result<(), StoreError> {
        let entry = self.entry(name)?;
        if !Arc::ptr_eq(&batch.schema(), &entry.schema)
            && batch.schema().fields() != entry.schema.fields()
        {
            return Err(StoreError::SchemaMismatch {
                table: name.clone(),
                expected: Arc::clone(&entry.schema),
                found: batch.schema(),
            });
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let now = self.now_ns();
        let bytes = batch.get_array_memory_size() as u64;
        let (min_ns, max_ns) = time_bounds(&batch, entry.time_column).unwrap_or((now, now));
        {
            let mut state = lock(&entry.state);
            if state.dropped {
                return Err(StoreError::UnknownTable {
                    table: name.clone(),
                });
            }
            state.appended_rows += batch.num_rows() as u64;
            state.appended_bytes += bytes;
            state.appended_batches += 1;
            state.rows += batch.num_rows() as u64;
            state.bytes += bytes;
            self.inner.total_bytes.fetch_add(bytes, Ordering::SeqCst);
            // Sent under the lock so `follow` can pair a snapshot with
            // exactly the batches after it. No receiver is not an error.
            let _ = entry.feed.send(batch.clone());
            state.batches.push_back(Held {
                id: self.next_id(),
                rows: Rows::Hot(batch),
                bytes,
                min_ns,
                max_ns,
                incompressible: false,
            });
            self.enforce_table(&entry, &mut state, now);
        }
        self.enforce_budget();
        Ok(())
    }

    /// Replaces the Retentions policies come from, and applies them to
    /// every table at once.
    pub fn set_retentions(&self, retentions: Vec<Retention>) {
        *self
            .inner
            .retentions
            .write()
            .unwrap_or_else(PoisonError::into_inner) = retentions;
        let now = self.now_ns();
        for entry in self.entries() {
            let mut state = lock(&entry.state);
            state.policy = self.resolve_policy(&entry.name, state.policy_override);
            self.enforce_table(&entry, &mut state, now);
        }
        self.enforce_budget();
    }

    /// Sets a table's policy regardless of Retentions (`None`: back to what
    /// the Retentions say). Rollups use it for their output tables.
    pub fn set_policy(
        &self,
        name: &TableName,
        policy: Option<RetentionPolicy>,
    ) -> Result<(), StoreError> {
        let entry = self.entry(name)?;
        {
            let mut state = lock(&entry.state);
            state.policy_override = policy;
            state.policy = self.resolve_policy(name, policy);
            self.enforce_table(&entry, &mut state, self.now_ns());
        }
        self.enforce_budget();
        Ok(())
    }

    /// The policy in force for a table.
    pub fn policy(&self, name: &TableName) -> Option<RetentionPolicy> {
        let entry = self.entry(name).ok()?;
        Some(lock(&entry.state).policy)
    }

    /// Applies every table's maxAge as of now, then the budget. Call it
    /// periodically: a table that receives nothing is otherwise only aged
    /// when read.
    pub fn enforce(&self) {
        let now = self.now_ns();
        for entry in self.entries() {
            let mut state = lock(&entry.state);
            self.enforce_table(&entry, &mut state, now);
        }
        self.enforce_budget();
    }

    /// Every table's stats, in name order.
    pub fn stats(&self) -> Vec<TableStats> {
        let now = self.now_ns();
        self.entries()
            .iter()
            .map(|entry| {
                let mut state = lock(&entry.state);
                self.expire(entry, &mut state, now);
                stats_of(entry, &state, now)
            })
            .collect()
    }

    pub fn table_stats(&self, name: &TableName) -> Option<TableStats> {
        let entry = self.entry(name).ok()?;
        let now = self.now_ns();
        let mut state = lock(&entry.state);
        self.expire(&entry, &mut state, now);
        Some(stats_of(&entry, &state, now))
    }

    /// A snapshot and a feed of exactly the batches appended after it, for
    /// follow mode without gaps or duplicates.
    pub fn follow(
        &self,
        name: &TableName,
    ) -> Option<(TableSnapshot, broadcast::Receiver<RecordBatch>)> {
        let entry = self.entry(name).ok()?;
        let now = self.now_ns();
        let mut state = lock(&entry.state);
        self.expire(&entry, &mut state, now);
        let receiver = entry.feed.subscribe();
        let parts = parts_of(&entry, &state, None);
        drop(state);
        Some((self.materialize(&entry, parts, now), receiver))
    }

    /// A snapshot of the batches that may hold rows at or after `since_ns`
    /// (all of them for `None`): readers of recent rows, such as rollups,
    /// need not decode cold history. Its `info` describes the whole table.
    pub fn snapshot_since(&self, name: &TableName, since_ns: Option<i64>) -> Option<TableSnapshot> {
        self.scan_since(name, since_ns).map(loaded)
    }

    /// Like [`Self::snapshot_since`], but cold batches are decoded only
    /// when the reader loads them.
    pub fn scan_since(&self, name: &TableName, since_ns: Option<i64>) -> Option<TableScan> {
        let entry = self.entry(name).ok()?;
        let now = self.now_ns();
        let mut state = lock(&entry.state);
        self.expire(&entry, &mut state, now);
        let parts = parts_of(&entry, &state, since_ns);
        drop(state);
        Some(self.scan_parts(&entry, parts, now))
    }

    /// Cold batches that could not be decoded since start (each read that
    /// met one counts it): their rows were left out of that read.
    pub fn unreadable_batches(&self) -> u64 {
        self.inner.unreadable.load(Ordering::Relaxed)
    }

    /// The decode cache: bytes held now, its bound, hits and misses.
    pub fn cache_stats(&self) -> CacheStats {
        let cache = lock(&self.inner.cache);
        CacheStats {
            bytes: cache.bytes,
            limit: cache.limit,
            hits: cache.hits,
            misses: cache.misses,
        }
    }

    /// Merges each table's hot batches older than
    /// [`Compaction::cold_after`] into compressed cold batches. Encoding
    /// runs outside the table's lock: writers and readers go on meanwhile,
    /// and a run that was evicted in between is left alone. A no-op
    /// without [`StoreConfig::compaction`].
    pub fn compact(&self) -> Compacted {
        let mut done = Compacted::default();
        let Some(config) = self.inner.config.compaction else {
            return done;
        };
        let _one_at_a_time = lock(&self.inner.compact_lock);
        let now = self.now_ns();
        for entry in self.entries() {
            let runs = {
                let state = lock(&entry.state);
                compaction_runs(&state, &config, now)
            };
            for run in runs {
                self.compact_run(&entry, run, config.codec, &mut done);
            }
        }
        done
    }

    fn compact_run(
        &self,
        entry: &TableEntry,
        run: Vec<RunPart>,
        codec: Codec,
        done: &mut Compacted,
    ) {
        let batches: Vec<RecordBatch> = run.iter().map(|p| p.batch.clone()).collect();
        let bytes_in: u64 = run.iter().map(|p| p.bytes).sum();
        let encoded = arrow_select::concat::concat_batches(&entry.schema, &batches)
            .and_then(|merged| ColdBatch::encode(&merged, bytes_in, codec));
        let mut state = lock(&entry.state);
        // Still there, in order? Eviction or a drop may have taken some.
        let Some(start) = state.batches.iter().position(|h| h.id == run[0].id) else {
            return;
        };
        let in_place = state.dropped
            || state.batches.len() < start + run.len()
            || run
                .iter()
                .zip(state.batches.range(start..))
                .any(|(part, held)| part.id != held.id);
        if in_place {
            return;
        }
        let cold = match encoded {
            Ok(cold) if cold.bytes() < bytes_in => cold,
            Ok(_) => {
                for held in state.batches.range_mut(start..start + run.len()) {
                    held.incompressible = true;
                }
                return;
            }
            Err(e) => {
                tracing::warn!(table = %entry.name, error = %e, "compaction failed; the batches stay as they are");
                done.failures += 1;
                for held in state.batches.range_mut(start..start + run.len()) {
                    held.incompressible = true;
                }
                return;
            }
        };
        let replaced: Vec<Held> = state.batches.drain(start..start + run.len()).collect();
        let min_ns = replaced
            .iter()
            .map(|h| h.min_ns)
            .min()
            .unwrap_or(run[0].min_ns);
        let max_ns = replaced
            .iter()
            .map(|h| h.max_ns)
            .max()
            .unwrap_or(run[0].max_ns);
        let bytes_out = cold.bytes();
        done.batches_in += replaced.len() as u64;
        done.batches_out += 1;
        done.rows += cold.rows() as u64;
        done.bytes_in += bytes_in;
        done.bytes_out += bytes_out;
        state.batches.insert(
            start,
            Held {
                id: self.next_id(),
                rows: Rows::Cold(Arc::new(cold)),
                bytes: bytes_out,
                min_ns,
                max_ns,
                incompressible: false,
            },
        );
        let saved = bytes_in - bytes_out;
        state.bytes -= saved;
        state.compacted_bytes += saved;
        self.inner.total_bytes.fetch_sub(saved, Ordering::SeqCst);
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops a batch leaving the table from the decode cache.
    fn forget(&self, held: &Held) {
        if matches!(held.rows, Rows::Cold(_)) {
            lock(&self.inner.cache).remove(held.id);
        }
    }

    /// The batches of a snapshot, cold ones decoded (outside the table's
    /// lock) and cut to the maxAge cutoff of `now`.
    fn materialize(
        &self,
        entry: &Arc<TableEntry>,
        parts: SnapshotParts,
        now: i64,
    ) -> TableSnapshot {
        loaded(self.scan_parts(entry, parts, now))
    }

    /// A scan of a snapshot's batches: hot ones as they are, cold ones
    /// decoded when loaded and cut to the maxAge cutoff of `now`.
    fn scan_parts(&self, entry: &Arc<TableEntry>, parts: SnapshotParts, now: i64) -> TableScan {
        let SnapshotParts {
            info,
            max_age,
            rows,
        } = parts;
        let cutoff = max_age.map(|age| now.saturating_sub(duration_ns(age)));
        // Without a `time_` column the bounds are append times: not for
        // readers.
        let range = |min_ns, max_ns| entry.time_column.map(|_| (min_ns, max_ns));
        let parts = rows
            .into_iter()
            .map(|(id, rows, min_ns, max_ns)| match rows {
                Rows::Hot(batch) => ScanPart::ready(batch, range(min_ns, max_ns)),
                Rows::Cold(cold) => ScanPart::deferred(
                    cold.rows(),
                    range(min_ns, max_ns),
                    Arc::new(ColdPart {
                        inner: Arc::clone(&self.inner),
                        entry: Arc::clone(entry),
                        id,
                        cold,
                        min_ns,
                        cutoff,
                    }),
                ),
            })
            .collect();
        TableScan { info, parts }
    }

    /// [`Self::follow`] plus how many rows the table was ever given, all
    /// read at one instant: every row counted by `appended_rows` is either
    /// in the snapshot, already evicted, or nowhere in the feed, and every
    /// later row comes through the feed. Exports use it to count exactly
    /// the rows a reader never saw.
    pub fn follow_counted(&self, name: &TableName) -> Option<CountedFollow> {
        let entry = self.entry(name).ok()?;
        let now = self.now_ns();
        let mut state = lock(&entry.state);
        self.expire(&entry, &mut state, now);
        let feed = entry.feed.subscribe();
        let appended_rows = state.appended_rows;
        let parts = parts_of(&entry, &state, None);
        drop(state);
        Some(CountedFollow {
            appended_rows,
            snapshot: self.materialize(&entry, parts, now),
            feed,
        })
    }

    fn entry(&self, name: &TableName) -> Result<Arc<TableEntry>, StoreError> {
        self.inner
            .tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownTable {
                table: name.clone(),
            })
    }

    fn entries(&self) -> Vec<Arc<TableEntry>> {
        self.inner
            .tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn resolve_policy(
        &self,
        name: &TableName,
        policy_override: Option<RetentionPolicy>,
    ) -> RetentionPolicy {
        policy_override.unwrap_or_else(|| {
            let retentions = self
                .inner
                .retentions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            policy_for(&retentions, name, self.inner.config.default_policy)
        })
    }

    /// Applies a table's own limits: maxAge first (it may free enough),
    /// then maxBytes.
    fn enforce_table(&self, entry: &TableEntry, state: &mut TableState, now: i64) {
        self.expire(entry, state, now);
        if let Some(max) = state.policy.max_bytes
            && state.bytes > max
        {
            let excess = state.bytes - max;
            self.trim_front(state, excess, EvictionReason::MaxBytes);
        }
    }

    /// Drops rows older than the table's maxAge: whole batches when their
    /// newest row is too old, the old rows of a batch that straddles the
    /// cutoff. Batches are scanned in full because rows from several CPUs
    /// arrive slightly out of order.
    fn expire(&self, entry: &TableEntry, state: &mut TableState, now: i64) {
        let Some(max_age) = state.policy.max_age else {
            return;
        };
        let cutoff = now.saturating_sub(duration_ns(max_age));
        // Cold batches straddling the cutoff stay (see the module docs):
        // they alone do not make the queue worth rebuilding.
        let expired = |h: &Held| match h.rows {
            Rows::Hot(_) => h.min_ns < cutoff,
            Rows::Cold(_) => h.max_ns < cutoff,
        };
        if !state.batches.iter().any(expired) {
            return;
        }
        let mut freed = Evicted::default();
        let mut grown = 0;
        let mut kept = VecDeque::with_capacity(state.batches.len());
        for held in std::mem::take(&mut state.batches) {
            if held.min_ns >= cutoff {
                kept.push_back(held);
                continue;
            }
            let rows = held.num_rows() as u64;
            let survivor = match (&held.rows, entry.time_column) {
                // Straddling the cutoff: held until its newest row is too
                // old, cut on every read (see the module docs).
                (Rows::Cold(_), _) if held.max_ns >= cutoff => {
                    kept.push_back(held);
                    continue;
                }
                (Rows::Hot(batch), Some(column)) if held.max_ns >= cutoff => {
                    keep_newer(batch, column, cutoff)
                }
                _ => None,
            };
            match survivor {
                Some(batch) => {
                    let bytes = batch.get_array_memory_size() as u64;
                    freed.rows += rows - batch.num_rows() as u64;
                    // The copy is exact, so it is smaller than a builder's
                    // batch; a tiny hand-made batch can grow by the padding
                    // of its buffers, which is counted as appended.
                    freed.bytes += held.bytes.saturating_sub(bytes);
                    grown += bytes.saturating_sub(held.bytes);
                    let (min_ns, max_ns) =
                        time_bounds(&batch, entry.time_column).unwrap_or((cutoff, held.max_ns));
                    kept.push_back(Held {
                        id: held.id,
                        rows: Rows::Hot(batch),
                        bytes,
                        min_ns,
                        max_ns,
                        incompressible: held.incompressible,
                    });
                }
                None => {
                    freed.rows += rows;
                    freed.bytes += held.bytes;
                    freed.batches += 1;
                    self.forget(&held);
                }
            }
        }
        state.batches = kept;
        state.bytes += grown;
        state.appended_bytes += grown;
        self.inner.total_bytes.fetch_add(grown, Ordering::SeqCst);
        self.record(state, freed, EvictionReason::MaxAge);
    }

    /// Evicts at least `excess` bytes from the front (oldest) of a table:
    /// whole batches while the excess covers them, then the oldest rows of
    /// the next batch, copied compact so the freed memory is real.
    fn trim_front(&self, state: &mut TableState, mut excess: u64, reason: EvictionReason) {
        let mut freed = Evicted::default();
        while excess > 0 {
            let Some(front) = state.batches.front() else {
                break;
            };
            let rows = front.num_rows();
            let remainder = if front.bytes <= excess {
                None
            } else if let Rows::Hot(batch) = &front.rows {
                // The estimate assumes bytes spread evenly over rows; the
                // loop goes round again if the copy freed too little.
                let drop_rows =
                    (u128::from(excess) * rows as u128).div_ceil(u128::from(front.bytes)) as usize;
                (drop_rows < rows)
                    .then(|| compact(&batch.slice(drop_rows, rows - drop_rows)))
                    .flatten()
                    .filter(|b| (b.get_array_memory_size() as u64) < front.bytes)
            } else {
                // Cold batches go whole.
                None
            };
            // `front()` returned Some above, so the queue is not empty.
            let Some(held) = state.batches.pop_front() else {
                break;
            };
            match remainder {
                Some(batch) => {
                    let bytes = batch.get_array_memory_size() as u64;
                    let gone = held.bytes - bytes;
                    freed.rows += (rows - batch.num_rows()) as u64;
                    freed.bytes += gone;
                    excess = excess.saturating_sub(gone);
                    state.batches.push_front(Held {
                        id: held.id,
                        rows: Rows::Hot(batch),
                        bytes,
                        min_ns: held.min_ns,
                        max_ns: held.max_ns,
                        incompressible: held.incompressible,
                    });
                }
                None => {
                    freed.rows += rows as u64;
                    freed.bytes += held.bytes;
                    freed.batches += 1;
                    excess = excess.saturating_sub(held.bytes);
                    self.forget(&held);
                }
            }
        }
        self.record(state, freed, reason);
    }

    fn record(&self, state: &mut TableState, freed: Evicted, reason: EvictionReason) {
        if freed == Evicted::default() {
            return;
        }
        state.rows -= freed.rows;
        state.bytes -= freed.bytes;
        self.inner
            .total_bytes
            .fetch_sub(freed.bytes, Ordering::SeqCst);
        state.evicted.by(reason).add(freed);
        state.limited_by = Some(reason);
    }

    /// Brings all tables under the global budget, largest table first.
    fn enforce_budget(&self) {
        let Some(budget) = self.inner.config.budget_bytes else {
            return;
        };
        if self.total_bytes() <= budget {
            return;
        }
        let _one_at_a_time = lock(&self.inner.budget_lock);
        loop {
            let total = self.total_bytes();
            if total <= budget {
                break;
            }
            let largest = self
                .entries()
                .into_iter()
                .map(|e| {
                    let bytes = lock(&e.state).bytes;
                    (bytes, e)
                })
                .max_by_key(|(bytes, _)| *bytes);
            let Some((bytes, entry)) = largest.filter(|(bytes, _)| *bytes > 0) else {
                break;
            };
            let mut state = lock(&entry.state);
            // Take the excess from this table, but no more than one batch
            // per step, so the largest table is re-chosen as sizes change.
            let step = (total - budget)
                .min(state.batches.front().map_or(bytes, |h| h.bytes))
                .max(1);
            self.trim_front(&mut state, step, EvictionReason::Budget);
        }
    }
}

impl TableSource for TableStore {
    fn tables(&self) -> Vec<TableInfo> {
        let now = self.now_ns();
        self.entries()
            .iter()
            .map(|entry| {
                let mut state = lock(&entry.state);
                self.expire(entry, &mut state, now);
                info_of(entry, &state)
            })
            .collect()
    }

    /// Ages the table first, so no row older than maxAge is ever served,
    /// then clones the batch list under the lock.
    fn snapshot(&self, name: &TableName) -> Option<TableSnapshot> {
        self.snapshot_since(name, None)
    }

    fn info(&self, name: &TableName) -> Option<TableInfo> {
        let entry = self.entry(name).ok()?;
        let now = self.now_ns();
        let mut state = lock(&entry.state);
        self.expire(&entry, &mut state, now);
        Some(info_of(&entry, &state))
    }

    fn scan(&self, name: &TableName) -> Option<TableScan> {
        self.scan_since(name, None)
    }

    fn subscribe(&self, name: &TableName) -> Option<broadcast::Receiver<RecordBatch>> {
        self.entry(name).ok().map(|e| e.feed.subscribe())
    }

    fn follow(
        &self,
        name: &TableName,
    ) -> Option<(TableSnapshot, broadcast::Receiver<RecordBatch>)> {
        TableStore::follow(self, name)
    }
}

fn info_of(entry: &TableEntry, state: &TableState) -> TableInfo {
    TableInfo {
        name: entry.name.clone(),
        schema: Arc::clone(&entry.schema),
        rows: state.rows,
        bytes: state.bytes,
        time_range: entry.time_column.and_then(|_| time_range(state)),
    }
}

/// What a snapshot takes under the table's lock: cheap clones only.
struct SnapshotParts {
    info: TableInfo,
    max_age: Option<Duration>,
    /// Each batch's id, rows, oldest and newest time.
    rows: Vec<(u64, Rows, i64, i64)>,
}

fn parts_of(entry: &TableEntry, state: &TableState, since_ns: Option<i64>) -> SnapshotParts {
    SnapshotParts {
        info: info_of(entry, state),
        max_age: state.policy.max_age,
        rows: state
            .batches
            .iter()
            .filter(|h| since_ns.is_none_or(|since| h.max_ns >= since))
            .map(|h| (h.id, h.rows.clone(), h.min_ns, h.max_ns))
            .collect(),
    }
}

/// One hot batch of a run to compact.
struct RunPart {
    id: u64,
    batch: RecordBatch,
    bytes: u64,
    min_ns: i64,
    max_ns: i64,
}

/// Runs of consecutive hot batches old enough to go cold, each within the
/// compaction's and the table's limits.
fn compaction_runs(state: &TableState, config: &Compaction, now: i64) -> Vec<Vec<RunPart>> {
    let cold_before = now.saturating_sub(duration_ns(config.cold_after));
    let max_bytes = state
        .policy
        .max_bytes
        .map_or(config.max_input_bytes, |max| {
            config.max_input_bytes.min(max / 8)
        })
        .max(1);
    let max_span = state
        .policy
        .max_age
        .map_or(i64::MAX, |age| (duration_ns(age) / 16).max(1));
    let merge_for = state
        .policy
        .max_age
        .map_or(config.merge_for, |age| config.merge_for.max(age / 64));
    // A run that is not full goes only once its first batch is this old.
    let settled_before = cold_before.saturating_sub(duration_ns(merge_for));
    let settled = |run: &[RunPart]| run.first().is_some_and(|p| p.max_ns < settled_before);
    let mut runs = Vec::new();
    let mut run: Vec<RunPart> = Vec::new();
    let (mut rows, mut bytes, mut min_ns, mut max_ns) = (0usize, 0u64, i64::MAX, i64::MIN);
    for held in &state.batches {
        let Rows::Hot(batch) = &held.rows else {
            // A cold batch ends a run.
            if settled(&run) {
                runs.push(std::mem::take(&mut run));
            }
            run.clear();
            (rows, bytes, min_ns, max_ns) = (0, 0, i64::MAX, i64::MIN);
            continue;
        };
        if held.max_ns >= cold_before {
            // Batches arrive oldest first: the rest are hotter still.
            break;
        }
        if held.incompressible {
            if settled(&run) {
                runs.push(std::mem::take(&mut run));
            }
            run.clear();
            (rows, bytes, min_ns, max_ns) = (0, 0, i64::MAX, i64::MIN);
            continue;
        }
        let fits = rows + held.num_rows() <= config.max_rows
            && bytes + held.bytes <= max_bytes
            && held
                .max_ns
                .max(max_ns)
                .saturating_sub(held.min_ns.min(min_ns))
                <= max_span;
        if !fits && !run.is_empty() {
            // Full: compacted now, whatever its age.
            runs.push(std::mem::take(&mut run));
            (rows, bytes, min_ns, max_ns) = (0, 0, i64::MAX, i64::MIN);
        }
        rows += held.num_rows();
        bytes += held.bytes;
        min_ns = min_ns.min(held.min_ns);
        max_ns = max_ns.max(held.max_ns);
        run.push(RunPart {
            id: held.id,
            batch: batch.clone(),
            bytes: held.bytes,
            min_ns: held.min_ns,
            max_ns: held.max_ns,
        });
    }
    if settled(&run) {
        runs.push(run);
    }
    runs
}

/// Every batch of `scan`, loaded. Loading every column never fails: a cold
/// batch that cannot be decoded is counted and loads as nothing.
fn loaded(scan: TableScan) -> TableSnapshot {
    let batches = scan
        .parts
        .iter()
        .filter_map(|part| part.load(None).ok().flatten())
        .collect();
    TableSnapshot {
        info: scan.info,
        batches,
    }
}

/// A cold batch of a scan, decoded when loaded.
struct ColdPart {
    inner: Arc<Inner>,
    entry: Arc<TableEntry>,
    id: u64,
    cold: Arc<ColdBatch>,
    min_ns: i64,
    /// Rows older than this are past the table's maxAge.
    cutoff: Option<i64>,
}

impl LoadBatch for ColdPart {
    fn load(&self, projection: Option<&[usize]>) -> Result<Option<RecordBatch>, ArrowError> {
        let width = self.entry.schema.fields().len();
        if let Some(bad) = projection.and_then(|p| p.iter().find(|&&i| i >= width)) {
            return Err(ArrowError::SchemaError(format!(
                "table {} has {width} columns, no column {bad}",
                self.entry.name
            )));
        }
        // Rows past maxAge are cut by `time_`, which is decoded for that
        // even when the reader did not ask for it.
        let cutoff = self
            .cutoff
            .filter(|&cutoff| self.min_ns < cutoff)
            .zip(self.entry.time_column);
        let mut decode = projection.map(<[usize]>::to_vec);
        let mut time_at = cutoff.map(|(_, column)| column);
        let mut added_time = false;
        if let (Some(columns), Some((_, time_column))) = (&mut decode, cutoff) {
            time_at = Some(match columns.iter().position(|&i| i == time_column) {
                Some(at) => at,
                None => {
                    columns.push(time_column);
                    added_time = true;
                    columns.len() - 1
                }
            });
        }
        let Some(batch) = decoded(&self.inner, &self.entry, self.id, &self.cold, decode) else {
            return Ok(None);
        };
        let batch = match (cutoff, time_at) {
            (Some((cutoff, _)), Some(at)) => match keep_newer(&batch, at, cutoff) {
                Some(batch) => batch,
                None => return Ok(None),
            },
            _ => batch,
        };
        if added_time {
            let asked: Vec<usize> = (0..batch.num_columns() - 1).collect();
            return batch.project(&asked).map(Some);
        }
        Ok(Some(batch))
    }
}

/// A cold batch's columns `projection` (all for `None`) as the table's
/// types, from the decode cache or decoded now; `None` (counted and
/// logged) if it cannot be decoded.
fn decoded(
    inner: &Inner,
    entry: &TableEntry,
    id: u64,
    cold: &ColdBatch,
    projection: Option<Vec<usize>>,
) -> Option<RecordBatch> {
    let key = (id, projection);
    if let Some(batch) = lock(&inner.cache).get(&key) {
        return Some(batch);
    }
    match cold.decode(&entry.schema, key.1.as_deref()) {
        Ok(batch) => {
            lock(&inner.cache).insert(key, batch.clone());
            Some(batch)
        }
        Err(e) => {
            inner.unreadable.fetch_add(1, Ordering::Relaxed);
            tracing::error!(table = %entry.name, error = %e, rows = cold.rows(), "a cold batch could not be decoded; its rows are left out of this read");
            None
        }
    }
}

/// The decode cache's state, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub bytes: u64,
    pub limit: u64,
    pub hits: u64,
    pub misses: u64,
}

/// A decoded cold batch: its id and the columns decoded (all for `None`).
type CacheKey = (u64, Option<Vec<usize>>);

/// Decoded cold batches, least recently used first out, within a bound.
struct DecodeCache {
    limit: u64,
    bytes: u64,
    hits: u64,
    misses: u64,
    /// Oldest use first.
    entries: VecDeque<(CacheKey, RecordBatch, u64)>,
}

impl DecodeCache {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            bytes: 0,
            hits: 0,
            misses: 0,
            entries: VecDeque::new(),
        }
    }

    fn get(&mut self, key: &CacheKey) -> Option<RecordBatch> {
        let Some(at) = self.entries.iter().position(|(k, _, _)| k == key) else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        let entry = self.entries.remove(at)?;
        let batch = entry.1.clone();
        self.entries.push_back(entry);
        Some(batch)
    }

    fn insert(&mut self, key: CacheKey, batch: RecordBatch) {
        let bytes = batch.get_array_memory_size() as u64;
        if bytes > self.limit {
            return;
        }
        if let Some(at) = self.entries.iter().position(|(k, _, _)| *k == key)
            && let Some((_, _, gone)) = self.entries.remove(at)
        {
            self.bytes -= gone;
        }
        while self.bytes + bytes > self.limit {
            let Some((_, _, gone)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= gone;
        }
        self.bytes += bytes;
        self.entries.push_back((key, batch, bytes));
    }

    /// Drops every decoding of cold batch `id`.
    fn remove(&mut self, id: u64) {
        let mut freed = 0;
        self.entries.retain(|((key, _), _, bytes)| {
            let gone = *key == id;
            if gone {
                freed += bytes;
            }
            !gone
        });
        self.bytes -= freed;
    }
}

fn time_range(state: &TableState) -> Option<(i64, i64)> {
    let oldest = state.batches.iter().map(|h| h.min_ns).min()?;
    let newest = state.batches.iter().map(|h| h.max_ns).max()?;
    Some((oldest, newest))
}

fn stats_of(entry: &TableEntry, state: &TableState, now: i64) -> TableStats {
    let range = time_range(state);
    TableStats {
        name: entry.name.clone(),
        policy: state.policy,
        rows: state.rows,
        bytes: state.bytes,
        batches: state.batches.len() as u64,
        cold_batches: state
            .batches
            .iter()
            .filter(|h| matches!(h.rows, Rows::Cold(_)))
            .count() as u64,
        plain_bytes: state.batches.iter().map(Held::plain_bytes).sum(),
        compacted_bytes: state.compacted_bytes,
        appended_rows: state.appended_rows,
        appended_bytes: state.appended_bytes,
        appended_batches: state.appended_batches,
        evicted: state.evicted,
        oldest_ns: range.map(|r| r.0),
        newest_ns: range.map(|r| r.1),
        window: range.map(|(oldest, _)| {
            Duration::from_nanos(u64::try_from(now.saturating_sub(oldest)).unwrap_or(0))
        }),
        limited_by: state.limited_by,
    }
}

/// Oldest and newest non-null `time_` of a batch.
fn time_bounds(batch: &RecordBatch, time_column: Option<usize>) -> Option<(i64, i64)> {
    let times = batch
        .column(time_column?)
        .as_primitive_opt::<TimestampNanosecondType>()?;
    Some((
        arrow_arith::aggregate::min(times)?,
        arrow_arith::aggregate::max(times)?,
    ))
}

/// The rows of `batch` at or after `cutoff`, copied compact; `None` if none
/// survive (or the copy fails, which drops the batch rather than keep rows
/// past their age).
fn keep_newer(batch: &RecordBatch, time_column: usize, cutoff: i64) -> Option<RecordBatch> {
    let times = batch
        .column(time_column)
        .as_primitive_opt::<TimestampNanosecondType>()?;
    let keep = BooleanArray::from_unary(times, |t| t >= cutoff);
    if keep.true_count() == 0 {
        return None;
    }
    arrow_select::filter::filter_record_batch(batch, &keep).ok()
}

/// A copy of `batch` in buffers of its own, so a slice stops pinning the
/// memory of the rows it left out.
fn compact(batch: &RecordBatch) -> Option<RecordBatch> {
    let rows = u32::try_from(batch.num_rows()).ok()?;
    let indices = UInt32Array::from_iter_values(0..rows);
    arrow_select::take::take_record_batch(batch, &indices).ok()
}

#[cfg(test)]
mod tests;
