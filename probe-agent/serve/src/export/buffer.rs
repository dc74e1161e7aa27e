//! [`RowBuffer`]: the rows one Export holds between the table store and the
//! back end, bounded by `bufferRows`, oldest dropped first.

use std::collections::VecDeque;

use arrow_array::RecordBatch;

use probe_store::TableName;

/// Rows of one table, in append order.
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    pub table: TableName,
    pub batch: RecordBatch,
}

impl Chunk {
    pub fn rows(&self) -> u64 {
        self.batch.num_rows() as u64
    }
}

/// Queued rows plus the rows of the request being sent (`in_flight`),
/// together never more than `capacity`. Pushing past it drops the oldest
/// queued rows, then the oldest rows of what is pushed; the request in
/// flight is kept, so a retried request is never sent and dropped both.
/// Every method that drops returns how many rows it dropped.
#[derive(Debug)]
pub(crate) struct RowBuffer {
    chunks: VecDeque<Chunk>,
    queued: u64,
    in_flight: u64,
    capacity: u64,
}

impl RowBuffer {
    pub fn new(capacity: u64) -> Self {
        Self {
            chunks: VecDeque::new(),
            queued: 0,
            in_flight: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn queued(&self) -> u64 {
        self.queued
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Adds rows at the back; returns the rows dropped to make room.
    pub fn push(&mut self, chunk: Chunk) -> u64 {
        let rows = chunk.rows();
        if rows == 0 {
            return 0;
        }
        let room = self.capacity.saturating_sub(self.in_flight);
        let mut dropped = 0;
        if rows >= room {
            // Everything queued is older than the new rows: it all goes,
            // and only the newest `room` of the new rows stay.
            dropped += self.queued;
            self.chunks.clear();
            self.queued = 0;
            let cut = rows - room;
            dropped += cut;
            if room > 0 {
                let batch = chunk.batch.slice(cut as usize, room as usize);
                self.chunks.push_back(Chunk {
                    table: chunk.table,
                    batch,
                });
                self.queued = room;
            }
            return dropped;
        }
        dropped += self.drop_oldest((self.queued + rows).saturating_sub(room));
        self.queued += rows;
        self.chunks.push_back(chunk);
        dropped
    }

    /// Drops up to `excess` of the oldest queued rows.
    fn drop_oldest(&mut self, mut excess: u64) -> u64 {
        let mut dropped = 0;
        while excess > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let rows = front.rows();
            if rows <= excess {
                self.chunks.pop_front();
                excess -= rows;
                dropped += rows;
            } else {
                front.batch = front.batch.slice(excess as usize, (rows - excess) as usize);
                dropped += excess;
                excess = 0;
            }
        }
        self.queued -= dropped;
        dropped
    }

    /// Takes up to `max` of the oldest rows for a request; they count as in
    /// flight until [`Self::complete`] or [`Self::requeue`].
    pub fn take(&mut self, max: u64) -> Vec<Chunk> {
        let mut taken = Vec::new();
        let mut left = max;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let rows = front.rows();
            if rows <= left {
                left -= rows;
                // The loop just saw the front chunk.
                if let Some(chunk) = self.chunks.pop_front() {
                    taken.push(chunk);
                }
            } else {
                taken.push(Chunk {
                    table: front.table.clone(),
                    batch: front.batch.slice(0, left as usize),
                });
                front.batch = front.batch.slice(left as usize, (rows - left) as usize);
                left = 0;
            }
        }
        let rows = max - left;
        self.queued -= rows;
        self.in_flight += rows;
        taken
    }

    /// The request of `rows` rows is done with (sent, or given up on).
    pub fn complete(&mut self, rows: u64) {
        self.in_flight = self.in_flight.saturating_sub(rows);
    }

    /// Puts a request's rows back at the front, oldest first, as they were.
    pub fn requeue(&mut self, chunks: Vec<Chunk>) {
        let rows: u64 = chunks.iter().map(Chunk::rows).sum();
        for chunk in chunks.into_iter().rev() {
            self.chunks.push_front(chunk);
        }
        self.in_flight = self.in_flight.saturating_sub(rows);
        self.queued += rows;
    }

    /// Changes the bound; returns the oldest rows dropped to fit it.
    pub fn set_capacity(&mut self, capacity: u64) -> u64 {
        self.capacity = capacity.max(1);
        let total = self.queued + self.in_flight;
        self.drop_oldest(total.saturating_sub(self.capacity))
    }

    /// Empties the buffer (queued and in flight); returns the rows it held.
    pub fn discard(&mut self) -> u64 {
        let rows = self.queued + self.in_flight;
        self.chunks.clear();
        self.queued = 0;
        self.in_flight = 0;
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Array, Int64Array};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn chunk(ids: std::ops::Range<i64>) -> Chunk {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let ids = Int64Array::from_iter_values(ids);
        Chunk {
            table: TableName::new("shop", "t"),
            batch: RecordBatch::try_new(schema, vec![Arc::new(ids)]).expect("one column"),
        }
    }

    fn ids(chunks: &[Chunk]) -> Vec<i64> {
        chunks
            .iter()
            .flat_map(|c| {
                let column = c.batch.column(0);
                let ids = column
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("Int64 ids");
                ids.values().to_vec()
            })
            .collect()
    }

    #[test]
    fn overflow_drops_the_oldest_rows_and_counts_them() {
        let mut buffer = RowBuffer::new(10);
        assert_eq!(buffer.push(chunk(0..6)), 0);
        assert_eq!(buffer.push(chunk(6..12)), 2);
        assert_eq!(buffer.queued(), 10);
        assert_eq!(ids(&buffer.take(100)), (2..12).collect::<Vec<_>>());
        assert_eq!(buffer.in_flight(), 10);
    }

    #[test]
    fn a_push_larger_than_the_room_keeps_its_newest_rows() {
        let mut buffer = RowBuffer::new(10);
        buffer.push(chunk(0..3));
        let in_flight = buffer.take(2);
        assert_eq!(ids(&in_flight), vec![0, 1]);
        // Room for 8 beside the 2 in flight: the queued row and 7 new go.
        assert_eq!(buffer.push(chunk(3..18)), 1 + 7);
        assert_eq!(buffer.queued(), 8);
        buffer.requeue(in_flight);
        assert_eq!(buffer.in_flight(), 0);
        let all = buffer.take(100);
        assert_eq!(
            ids(&all),
            [0, 1].into_iter().chain(10..18).collect::<Vec<_>>()
        );
    }

    #[test]
    fn take_splits_batches_and_complete_frees_room() {
        let mut buffer = RowBuffer::new(8);
        buffer.push(chunk(0..5));
        buffer.push(chunk(5..8));
        let first = buffer.take(6);
        assert_eq!(ids(&first), (0..6).collect::<Vec<_>>());
        assert_eq!((buffer.queued(), buffer.in_flight()), (2, 6));
        buffer.complete(6);
        assert_eq!(buffer.push(chunk(8..14)), 0);
        assert_eq!(buffer.set_capacity(5), 3);
        assert_eq!(ids(&buffer.take(100)), (9..14).collect::<Vec<_>>());
        assert_eq!(buffer.discard(), 5);
    }
}
