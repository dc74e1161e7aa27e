//! Reading one table: snapshot batches, then (in follow mode) batches as
//! they are appended, each filtered by `time_`, projected and cut to the
//! limit without copying what passes whole. Compacted batches are decoded
//! as the stream is read, a few ahead of the client on blocking threads,
//! and skipped undecoded when the time range leaves them out.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch,
    cast::AsArray,
    types::{Int64Type, TimestampNanosecondType},
};
use arrow_flight::error::FlightError as ArrowFlightError;
use arrow_schema::ArrowError;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::Status;

use super::{error::RequestError, provider::may_hold, ticket::TableRead};
use probe_store::{ScanPart, TableScan, TableSnapshot, TableSource};

pub(crate) type BatchStream = BoxStream<'static, Result<RecordBatch, ArrowFlightError>>;

/// The batches a validated read returns. In follow mode the subscription is
/// taken before the snapshot, so nothing appended in between is missed;
/// batches that reached both are sent once.
pub(crate) fn read_table(
    source: &dyn TableSource,
    read: TableRead,
) -> Result<BatchStream, RequestError> {
    let unknown = || RequestError::UnknownTable {
        table: read.name.to_string(),
    };
    if !read.follow {
        let scan = source.scan(&read.name).ok_or_else(unknown)?;
        return Ok(stream_scan(scan, BatchShaper::new(read)));
    }
    let live = source.subscribe(&read.name).ok_or_else(unknown)?;
    let snapshot = source.snapshot(&read.name).ok_or_else(unknown)?;
    let seen = SnapshotIdentity::of(&snapshot);
    let mut shaper = BatchShaper::new(read);

    let mut head = Vec::with_capacity(snapshot.batches.len());
    for batch in &snapshot.batches {
        if shaper.done() {
            break;
        }
        if let Some(batch) = shaper.shape(batch)? {
            head.push(Ok(batch));
        }
    }
    let head = futures::stream::iter(head);
    if shaper.done() {
        return Ok(head.boxed());
    }
    Ok(head.chain(follow(live, seen, shaper)).boxed())
}

/// How many compacted batches a stream decodes ahead of its client: one
/// decoding while one is sent keeps a core busy on each side.
const READ_AHEAD: usize = 2;

/// Streams a scan's parts, decoding deferred ones on blocking threads
/// [`READ_AHEAD`] ahead of the client; parts outside the read's time range
/// are never loaded.
fn stream_scan(scan: TableScan, shaper: BatchShaper) -> BatchStream {
    let table = shaper.read.name.to_string();
    let parts: Vec<ScanPart> = scan
        .parts
        .into_iter()
        .filter(|part| shaper.may_want(part))
        .collect();
    let loads = futures::stream::iter(parts)
        .map(move |part| {
            let table = table.clone();
            async move {
                let loaded = if part.is_ready() {
                    part.load(None)
                } else {
                    tokio::task::spawn_blocking(move || part.load(None))
                        .await
                        .unwrap_or_else(|join| Err(ArrowError::ExternalError(Box::new(join))))
                };
                loaded.map_err(|source| RequestError::Read { table, source })
            }
        })
        .buffered(READ_AHEAD)
        .boxed();
    futures::stream::unfold(Some((loads, shaper)), |state| async move {
        let (mut loads, mut shaper) = state?;
        loop {
            if shaper.done() {
                return None;
            }
            let shaped = match loads.next().await? {
                Ok(Some(batch)) => shaper.shape(&batch),
                Ok(None) => continue,
                Err(error) => Err(error),
            };
            match shaped {
                Ok(Some(batch)) => return Some((Ok(batch), Some((loads, shaper)))),
                Ok(None) => continue,
                Err(error) => {
                    let status = Status::from(error);
                    return Some((Err(ArrowFlightError::Tonic(Box::new(status))), None));
                }
            }
        }
    })
    .boxed()
}

/// The batches a (non-follow) read wants, shaped; parts outside its time
/// range are not loaded.
pub(crate) fn read_snapshot(
    source: &dyn TableSource,
    read: TableRead,
) -> Result<Vec<RecordBatch>, RequestError> {
    let scan = source
        .scan(&read.name)
        .ok_or_else(|| RequestError::UnknownTable {
            table: read.name.to_string(),
        })?;
    let mut shaper = BatchShaper::new(read);
    let mut out = Vec::with_capacity(scan.parts.len());
    for part in &scan.parts {
        if shaper.done() {
            break;
        }
        if !shaper.may_want(part) {
            continue;
        }
        let loaded = part.load(None).map_err(|source| RequestError::Read {
            table: shaper.read.name.to_string(),
            source,
        })?;
        if let Some(batch) = loaded
            && let Some(batch) = shaper.shape(&batch)?
        {
            out.push(batch);
        }
    }
    Ok(out)
}

/// Batches appended after the snapshot, shaped like the snapshot's. Ends
/// when the limit is reached or the table goes away; dropping the stream
/// (the client cancelled) drops the subscription.
fn follow(
    live: broadcast::Receiver<RecordBatch>,
    seen: SnapshotIdentity,
    shaper: BatchShaper,
) -> BatchStream {
    futures::stream::unfold(Some((live, seen, shaper)), |state| async move {
        let (mut live, seen, mut shaper) = state?;
        loop {
            if shaper.done() {
                return None;
            }
            let batch = match live.recv().await {
                Ok(batch) => batch,
                Err(RecvError::Closed) => return None,
                Err(RecvError::Lagged(missed)) => {
                    // Skipping rows silently would make a tail lie:
                    // end the stream with a status that says so.
                    let error = RequestError::Lagged {
                        table: shaper.read.name.to_string(),
                        missed,
                    };
                    tracing::warn!(%error, "ending a follow stream");
                    let status = Status::from(error);
                    return Some((Err(ArrowFlightError::Tonic(Box::new(status))), None));
                }
            };
            if seen.contains(&batch) {
                continue;
            }
            match shaper.shape(&batch) {
                Ok(Some(batch)) => return Some((Ok(batch), Some((live, seen, shaper)))),
                Ok(None) => continue,
                Err(error) => {
                    let status = Status::from(error);
                    return Some((Err(ArrowFlightError::Tonic(Box::new(status))), None));
                }
            }
        }
    })
    .boxed()
}

/// Recognizes batches that were already sent from the snapshot: the store
/// hands the same arrays to the snapshot and to subscribers.
struct SnapshotIdentity {
    first_columns: Vec<ArrayRef>,
}

impl SnapshotIdentity {
    fn of(snapshot: &TableSnapshot) -> Self {
        Self {
            first_columns: snapshot
                .batches
                .iter()
                .filter(|b| b.num_columns() > 0)
                .map(|b| Arc::clone(b.column(0)))
                .collect(),
        }
    }

    fn contains(&self, batch: &RecordBatch) -> bool {
        batch.num_columns() > 0
            && self
                .first_columns
                .iter()
                .any(|c| Arc::ptr_eq(c, batch.column(0)))
    }
}

/// Applies a read's time range, projection and limit to batches in order.
struct BatchShaper {
    read: TableRead,
    sent: usize,
}

impl BatchShaper {
    fn new(read: TableRead) -> Self {
        Self { read, sent: 0 }
    }

    fn done(&self) -> bool {
        self.read.limit.is_some_and(|limit| self.sent >= limit)
    }

    /// Whether `part` may hold rows in the read's time range.
    fn may_want(&self, part: &ScanPart) -> bool {
        self.read.time_column.is_none() || may_hold(part, (self.read.since, self.read.until))
    }

    /// The part of `batch` the read wants, or `None` if it wants no row.
    fn shape(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>, RequestError> {
        let mut batch = match self.read.time_column {
            Some(index) => match self.time_filter(batch.column(index))? {
                TimeFilter::All => batch.clone(),
                TimeFilter::None => return Ok(None),
                TimeFilter::Some(mask) => arrow_select::filter::filter_record_batch(batch, &mask)
                    .map_err(|source| RequestError::Arrow { source })?,
            },
            // Cloning a batch clones its `Arc`s, not its buffers.
            None => batch.clone(),
        };
        if let Some(indices) = &self.read.projection {
            batch = batch
                .project(indices)
                .map_err(|source| RequestError::Arrow { source })?;
        }
        if let Some(limit) = self.read.limit {
            let room = limit.saturating_sub(self.sent);
            if batch.num_rows() > room {
                batch = batch.slice(0, room);
            }
        }
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        if batch.schema().fields() != self.read.output_schema.fields() {
            // Dictionary columns asked for.
            batch = probe_store::cast_to(&batch, &self.read.output_schema)
                .map_err(|source| RequestError::Arrow { source })?;
        }
        self.sent += batch.num_rows();
        Ok(Some(batch))
    }

    fn time_filter(&self, column: &ArrayRef) -> Result<TimeFilter, RequestError> {
        // The column was checked to be Timestamp(ns); its values are i64
        // nanoseconds, compared without copying.
        let nanos: Int64Array = column
            .as_primitive::<TimestampNanosecondType>()
            .reinterpret_cast::<Int64Type>();
        let (Some(min), Some(max)) = (
            arrow_arith::aggregate::min(&nanos),
            arrow_arith::aggregate::max(&nanos),
        ) else {
            return Ok(TimeFilter::None);
        };
        let since = self.read.since.unwrap_or(i64::MIN);
        let until = self.read.until;
        let all_in = min >= since && until.is_none_or(|u| max < u) && nanos.null_count() == 0;
        if all_in {
            return Ok(TimeFilter::All);
        }
        if max < since || until.is_some_and(|u| min >= u) {
            return Ok(TimeFilter::None);
        }
        let arrow_error = |source| RequestError::Arrow { source };
        let mut mask: BooleanArray = match self.read.since {
            Some(since) => arrow_ord::cmp::gt_eq(&nanos, &Int64Array::new_scalar(since))
                .map_err(arrow_error)?,
            None => BooleanArray::from(vec![true; nanos.len()]),
        };
        if let Some(until) = until {
            let before =
                arrow_ord::cmp::lt(&nanos, &Int64Array::new_scalar(until)).map_err(arrow_error)?;
            mask = arrow_arith::boolean::and(&mask, &before).map_err(arrow_error)?;
        }
        Ok(TimeFilter::Some(mask))
    }
}

enum TimeFilter {
    All,
    None,
    Some(BooleanArray),
}
