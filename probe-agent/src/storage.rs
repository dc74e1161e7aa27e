//! The agent's table store as the capture path and the run modes see it:
//! the sink sealed batches go to, the Retentions applied to it, and the
//! upkeep (retention, compaction of cold batches, rollups) that runs on the
//! async runtime's blocking pool, never on the drive thread.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use crds::{Retention, TableName};
use probe_capture::sink::{BatchSink, SinkError};
use probe_store::{DetectionBoard, RollupEngine, StoreError, TableSource, TableStore};
use sonde_daemon::{ShutdownSignal, chain};
use tracing::{error, warn};

/// How often retention is enforced and rollups run.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The table store and the rollups Retention resources ask for.
#[derive(Clone)]
pub struct Storage {
    pub store: TableStore,
    rollups: Arc<Mutex<RollupEngine>>,
    /// Retentions the next upkeep applies to the rollups: the drive thread
    /// hands them over here instead of waiting for a rollup run to end.
    pending: Arc<Mutex<Option<Vec<Retention>>>>,
    /// What the rollups' anomaly detection has done, as of the last upkeep.
    detections: DetectionBoard,
}

impl Storage {
    pub fn new(store: TableStore, node: &str) -> Self {
        Self {
            rollups: Arc::new(Mutex::new(RollupEngine::new(
                store.clone(),
                node,
                RollupEngine::DEFAULT_GRACE,
            ))),
            pending: Arc::new(Mutex::new(None)),
            detections: DetectionBoard::default(),
            store,
        }
    }

    /// What the rollups' anomaly detection has done: for metrics and status.
    pub fn detections(&self) -> DetectionBoard {
        self.detections.clone()
    }

    /// Where the capture path seals its batches.
    pub fn sink(&self) -> Arc<dyn BatchSink> {
        Arc::new(StoreSink(self.store.clone()))
    }

    /// Applies Retentions: table limits at once, rollups from the next
    /// upkeep. Rollups that cannot be defined are logged then; the rest
    /// apply. Never waits for a rollup run: the drive thread calls it.
    pub fn set_retentions(&self, retentions: Vec<Retention>) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(retentions.clone());
        self.store.set_retentions(retentions);
    }

    /// Applies handed-over Retentions to the rollups, enforces retention,
    /// compacts cold batches and runs due rollups, once.
    pub fn upkeep(&self) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut rollups = self.rollups();
        if let Some(retentions) = pending {
            for e in rollups.set_retentions(&retentions) {
                error!("rollup not applied: {}", chain(&e));
            }
        }
        self.store.enforce();
        let compacted = self.store.compact();
        if compacted.failures > 0 {
            warn!(
                runs = compacted.failures,
                "some batches could not be compacted; they stay as they are"
            );
        }
        let now = self.store.now_ns();
        for (table, result) in rollups.tick(now) {
            if let Err(e) = result {
                warn!(table = %table, "rollup failed: {}", chain(&e));
            }
        }
        self.detections.publish(rollups.detection_reports());
    }

    /// Runs [`Self::upkeep`] every [`UPKEEP_INTERVAL`] on the blocking pool
    /// until `shutdown`.
    pub async fn run_upkeep(self, shutdown: ShutdownSignal) {
        let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticks.tick() => {}
            }
            let storage = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || storage.upkeep()).await {
                warn!("table upkeep failed: {e}");
            }
        }
    }

    fn rollups(&self) -> MutexGuard<'_, RollupEngine> {
        // A panicked rollup left its state as it was: keep using it.
        self.rollups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The table store as the capture path's [`BatchSink`].
struct StoreSink(TableStore);

impl BatchSink for StoreSink {
    fn create_table(&self, name: &TableName, schema: SchemaRef) -> Result<(), SinkError> {
        self.0
            .create_table(name.clone(), schema)
            .map_err(|e| sink_error(name, e))
    }

    fn append(&self, name: &TableName, batch: RecordBatch) -> Result<(), SinkError> {
        self.0.append(name, batch).map_err(|e| sink_error(name, e))
    }

    fn drop_table(&self, name: &TableName) -> bool {
        self.0.drop_table(name)
    }

    fn batches(&self, name: &TableName) -> Vec<RecordBatch> {
        self.0
            .snapshot(name)
            .map(|snapshot| snapshot.batches)
            .unwrap_or_default()
    }
}

fn sink_error(name: &TableName, error: StoreError) -> SinkError {
    match error {
        StoreError::SchemaMismatch { .. } => SinkError::SchemaMismatch { name: name.clone() },
        StoreError::UnknownTable { .. } => SinkError::Missing { name: name.clone() },
        other => SinkError::Refused {
            name: name.clone(),
            source: Box::new(other),
        },
    }
}
