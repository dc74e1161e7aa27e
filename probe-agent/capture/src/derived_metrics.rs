//! Prometheus metrics a Tracepoint derives from its events (`spec.metrics`):
//! counters and histograms updated on the capture path, read at scrape time.
//!
//! Each metric resolves its label columns to places in the record once, when
//! the Tracepoint is attached. Per event, the labels' raw bytes are copied
//! into a fixed-width key, hashed, and looked up in a small open-addressing
//! [`SeriesTable`]: an existing series costs a few integer additions, a new
//! one allocates its key and counters once. The cap on series (`maxSeries`)
//! is hard: an event whose label combination would be one series too many
//! goes into no series and is counted as rejected.
//!
//! The counters are plain integers owned by the drive loop that drains the
//! ring; a scrape asks that loop for [`MetricSample`]s (`probe-serve`'s
//! `ProbeReport`).

use crds::{
    FieldType,
    v1alpha1::{MetricKind, MetricSpec},
};

use crate::{
    clock::WallClock,
    identity::ContainerIdentity,
    plan::{ColumnLayout, RecordSchema},
    ring::{RawEvent, u64_at},
};

/// Why a Tracepoint's metrics cannot be derived from its table.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("metric {metric}: label column {column} is not a column of the table")]
    UnknownLabel { metric: String, column: String },
    #[error("metric {metric}: value column {column} is not a numeric field of the table")]
    BadValue { metric: String, column: String },
}

/// Marks an empty slot of the index.
const EMPTY: u32 = u32::MAX;

/// Series of one metric, keyed by their labels' raw bytes.
///
/// Keys have one fixed width, so they sit in one flat buffer and compare as
/// byte slices; each series has `counts_per_series` integer counters and
/// `sums_per_series` float sums. The index is open-addressed with linear
/// probing and kept at most half full, so a lookup ends at an empty slot
/// after a few probes.
pub struct SeriesTable {
    key_len: usize,
    counts_per_series: usize,
    sums_per_series: usize,
    max_series: usize,
    index: Vec<u32>,
    hashes: Vec<u64>,
    keys: Vec<u8>,
    counts: Vec<u64>,
    sums: Vec<f64>,
    hash: fn(&[u8]) -> u64,
}

impl SeriesTable {
    /// An empty table of series keyed by `key_len` bytes, each with
    /// `counts` counters and `sums` sums, holding at most `max_series`.
    pub fn new(key_len: usize, counts: usize, sums: usize, max_series: usize) -> Self {
        Self::with_hash(key_len, counts, sums, max_series, hash_key)
    }

    /// The same with another hash function (tests force collisions).
    pub fn with_hash(
        key_len: usize,
        counts: usize,
        sums: usize,
        max_series: usize,
        hash: fn(&[u8]) -> u64,
    ) -> Self {
        Self {
            key_len,
            counts_per_series: counts,
            sums_per_series: sums,
            max_series,
            index: vec![EMPTY; 16],
            hashes: Vec::new(),
            keys: Vec::new(),
            counts: Vec::new(),
            sums: Vec::new(),
            hash,
        }
    }

    /// Series so far.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The series of `key` (exactly `key_len` bytes), created if new. `None`
    /// when it is new and the table already holds `max_series`.
    pub fn series(&mut self, key: &[u8]) -> Option<usize> {
        debug_assert_eq!(key.len(), self.key_len);
        let hash = (self.hash)(key);
        let mask = self.index.len() - 1;
        let mut at = (hash as usize) & mask;
        loop {
            let slot = self.index[at];
            if slot == EMPTY {
                break;
            }
            let series = slot as usize;
            if self.hashes[series] == hash && same_key(self.key(series), key) {
                return Some(series);
            }
            at = (at + 1) & mask;
        }
        if self.len() >= self.max_series {
            return None;
        }
        Some(self.insert(key, hash, at))
    }

    /// Adds a series whose key is not in the table; `at` is the empty slot
    /// its lookup ended on.
    fn insert(&mut self, key: &[u8], hash: u64, mut at: usize) -> usize {
        let series = self.len();
        self.hashes.push(hash);
        self.keys.extend_from_slice(key);
        self.counts
            .resize(self.counts.len() + self.counts_per_series, 0);
        self.sums
            .resize(self.sums.len() + self.sums_per_series, 0.0);
        // At most half full, so probing always finds an empty slot soon.
        if (series + 1) * 2 > self.index.len() {
            self.grow();
            at = self.free_slot(hash);
        }
        // Series numbers stay below `MAX_SERIES`, far below `EMPTY`.
        self.index[at] = u32::try_from(series).unwrap_or(EMPTY - 1);
        series
    }

    fn grow(&mut self) {
        self.index = vec![EMPTY; self.index.len() * 2];
        for series in 0..self.len() {
            let at = self.free_slot(self.hashes[series]);
            self.index[at] = u32::try_from(series).unwrap_or(EMPTY - 1);
        }
    }

    fn free_slot(&self, hash: u64) -> usize {
        let mask = self.index.len() - 1;
        let mut at = (hash as usize) & mask;
        while self.index[at] != EMPTY {
            at = (at + 1) & mask;
        }
        at
    }

    /// The key of a series.
    pub fn key(&self, series: usize) -> &[u8] {
        &self.keys[series * self.key_len..(series + 1) * self.key_len]
    }

    /// The counters of a series.
    pub fn counts(&self, series: usize) -> &[u64] {
        let n = self.counts_per_series;
        &self.counts[series * n..(series + 1) * n]
    }

    pub fn counts_mut(&mut self, series: usize) -> &mut [u64] {
        let n = self.counts_per_series;
        &mut self.counts[series * n..(series + 1) * n]
    }

    /// The sums of a series.
    pub fn sums(&self, series: usize) -> &[f64] {
        let n = self.sums_per_series;
        &self.sums[series * n..(series + 1) * n]
    }

    pub fn sums_mut(&mut self, series: usize) -> &mut [f64] {
        let n = self.sums_per_series;
        &mut self.sums[series * n..(series + 1) * n]
    }

    /// Bytes the table has reserved, for showing that known series
    /// allocate nothing.
    pub fn reserved(&self) -> [usize; 5] {
        [
            self.index.capacity(),
            self.hashes.capacity(),
            self.keys.capacity(),
            self.counts.capacity(),
            self.sums.capacity(),
        ]
    }
}

/// Compares keys word by word, inline: keys are short and their length a
/// multiple of 8, and a call to `memcmp` cost more than the comparison
/// (with empty keys, far more: see the decode-path figures of sonde-bench).
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.chunks_exact(8).zip(b.chunks_exact(8)).all(|(x, y)| {
            let mut xw = [0; 8];
            let mut yw = [0; 8];
            xw.copy_from_slice(x);
            yw.copy_from_slice(y);
            u64::from_ne_bytes(xw) == u64::from_ne_bytes(yw)
        })
        && a.chunks_exact(8)
            .remainder()
            .iter()
            .zip(b.chunks_exact(8).remainder())
            .all(|(x, y)| x == y)
}

/// A fast 64-bit hash of a key whose length is a multiple of 8 (the rest,
/// if any, is hashed byte by byte). Not for untrusted input in general,
/// but the cap on series bounds what colliding keys could cost.
pub fn hash_key(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut hash = key.len() as u64;
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        hash = (hash ^ u64::from_ne_bytes(bytes))
            .wrapping_mul(K)
            .rotate_left(31);
    }
    for &byte in words.remainder() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(K).rotate_left(31);
    }
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(K);
    hash ^ (hash >> 32)
}

/// Where a label's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LabelSource {
    /// An integer field: the 8-byte word at `offset`, shown as `ty`.
    Int {
        offset: usize,
        ty: FieldType,
    },
    /// A NUL-terminated string field in `area` bytes at `offset`.
    Str {
        offset: usize,
        area: usize,
    },
    Pid,
    Tid,
    Comm,
    CgroupId,
    /// `time_`, as Unix nanoseconds.
    Time,
    /// The row's namespace, pod or container, resolved on the node (cluster
    /// mode); its name fills the key, empty where it is not resolved.
    Identity(IdentityPart),
    /// The same on every event: `node`, and the columns this agent does
    /// not resolve yet (`namespace`, `pod`, `container`), which are empty.
    Constant,
}

/// One label of a metric: its column, where its bytes sit in the key.
#[derive(Clone, Debug)]
struct Label {
    name: String,
    source: LabelSource,
    key_at: usize,
    key_len: usize,
    constant: String,
}

/// The numeric field a metric adds or observes.
#[derive(Clone, Copy, Debug)]
struct ValueSource {
    offset: usize,
    ty: FieldType,
}

impl ValueSource {
    /// The field's value as the kernel cut it to its type.
    fn read(self, record: &[u8]) -> Number {
        let word = u64_at(record, self.offset);
        match self.ty {
            FieldType::I8 => Number::Signed(i64::from(word as i8)),
            FieldType::I16 => Number::Signed(i64::from(word as i16)),
            FieldType::I32 => Number::Signed(i64::from(word as i32)),
            FieldType::I64 => Number::Signed(word as i64),
            FieldType::U8 => Number::Unsigned(u64::from(word as u8)),
            FieldType::U16 => Number::Unsigned(u64::from(word as u16)),
            FieldType::U32 => Number::Unsigned(u64::from(word as u32)),
            FieldType::U64 | FieldType::Bool | FieldType::String => Number::Unsigned(word),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Number {
    Signed(i64),
    Unsigned(u64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Self::Signed(n) => n as f64,
            Self::Unsigned(n) => n as f64,
        }
    }
}

/// Which name of a container's identity a label shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdentityPart {
    Namespace,
    Pod,
    Container,
}

/// Key bytes for a namespace or container name (at most 63 characters).
const NAME_KEY_LEN: usize = 64;
/// Key bytes for a pod name (at most 253 characters).
const POD_KEY_LEN: usize = 256;

/// One metric of a Tracepoint with its series.
pub struct EventMetric {
    name: String,
    kind: MetricKind,
    labels: Vec<Label>,
    value: Option<ValueSource>,
    buckets: Vec<f64>,
    /// The current event's key, rebuilt in place per event.
    key: Vec<u8>,
    series: SeriesTable,
    rejected_series: u64,
    negative_values: u64,
}

impl EventMetric {
    /// Resolves `spec` against the table's record layout.
    pub fn compile(
        spec: &MetricSpec,
        schema: &RecordSchema,
        node: &str,
    ) -> Result<Self, MetricError> {
        let mut labels = Vec::with_capacity(spec.labels.len());
        let mut key_len = 0;
        for column in &spec.labels {
            let (source, len, constant) = match column.as_str() {
                "pid" => (LabelSource::Pid, 8, String::new()),
                "tid" => (LabelSource::Tid, 8, String::new()),
                "comm" => (LabelSource::Comm, probe_common::COMM_LEN, String::new()),
                "cgroup_id" => (LabelSource::CgroupId, 8, String::new()),
                "time_" => (LabelSource::Time, 8, String::new()),
                "node" => (LabelSource::Constant, 0, node.to_owned()),
                "namespace" => (
                    LabelSource::Identity(IdentityPart::Namespace),
                    NAME_KEY_LEN,
                    String::new(),
                ),
                "pod" => (
                    LabelSource::Identity(IdentityPart::Pod),
                    POD_KEY_LEN,
                    String::new(),
                ),
                "container" => (
                    LabelSource::Identity(IdentityPart::Container),
                    NAME_KEY_LEN,
                    String::new(),
                ),
                field => {
                    let plan =
                        schema
                            .columns
                            .iter()
                            .find(|c| c.name == field)
                            .ok_or_else(|| MetricError::UnknownLabel {
                                metric: spec.name.clone(),
                                column: column.clone(),
                            })?;
                    let offset = usize::from(plan.offset);
                    match plan.layout {
                        ColumnLayout::String { area } => (
                            LabelSource::Str {
                                offset,
                                area: usize::from(area),
                            },
                            usize::from(area),
                            String::new(),
                        ),
                        ColumnLayout::Int(FieldType::String) => {
                            (LabelSource::Str { offset, area: 8 }, 8, String::new())
                        }
                        ColumnLayout::Int(ty) => {
                            (LabelSource::Int { offset, ty }, 8, String::new())
                        }
                    }
                }
            };
            labels.push(Label {
                name: column.clone(),
                source,
                key_at: key_len,
                key_len: len,
                constant,
            });
            key_len += len;
        }
        // Whole words hash fastest; the padding stays zero.
        let key_len = key_len.next_multiple_of(8);
        let value = match &spec.value {
            None => None,
            Some(column) => {
                let bad = || MetricError::BadValue {
                    metric: spec.name.clone(),
                    column: column.clone(),
                };
                let plan = schema
                    .columns
                    .iter()
                    .find(|c| &c.name == column)
                    .ok_or_else(bad)?;
                match plan.layout {
                    ColumnLayout::Int(ty) if !matches!(ty, FieldType::String | FieldType::Bool) => {
                        Some(ValueSource {
                            offset: usize::from(plan.offset),
                            ty,
                        })
                    }
                    _ => return Err(bad()),
                }
            }
        };
        let (counts, sums) = match spec.kind {
            MetricKind::Counter => (1, 0),
            // One count per bucket and one for +Inf; one sum.
            MetricKind::Histogram => (spec.buckets.len() + 1, 1),
        };
        Ok(Self {
            name: spec.name.clone(),
            kind: spec.kind,
            labels,
            value,
            buckets: spec.buckets.clone(),
            key: vec![0; key_len],
            series: SeriesTable::new(key_len, counts, sums, spec.max_series as usize),
            rejected_series: 0,
            negative_values: 0,
        })
    }

    /// Counts one event. Allocates only when the event starts a new series.
    pub fn observe(
        &mut self,
        event: &RawEvent<'_>,
        identity: Option<&ContainerIdentity>,
        clock: &WallClock,
    ) {
        let value = self.value.map(|v| v.read(event.record));
        let add = match (self.kind, value) {
            (MetricKind::Counter, None) => 1,
            (MetricKind::Counter, Some(Number::Unsigned(n))) => n,
            (MetricKind::Counter, Some(Number::Signed(n))) => match u64::try_from(n) {
                Ok(n) => n,
                Err(_) => {
                    // A counter only goes up: a negative value is refused.
                    self.negative_values += 1;
                    return;
                }
            },
            (MetricKind::Histogram, _) => 1,
        };
        self.fill_key(event, identity, clock);
        let Some(series) = self.series.series(&self.key) else {
            self.rejected_series += 1;
            return;
        };
        match self.kind {
            MetricKind::Counter => self.series.counts_mut(series)[0] += add,
            MetricKind::Histogram => {
                let v = value.map_or(0.0, Number::as_f64);
                // The first bucket whose upper bound is at least v; +Inf last.
                let bucket = self.buckets.partition_point(|&bound| bound < v);
                self.series.counts_mut(series)[bucket] += 1;
                self.series.sums_mut(series)[0] += v;
            }
        }
    }

    fn fill_key(
        &mut self,
        event: &RawEvent<'_>,
        identity: Option<&ContainerIdentity>,
        clock: &WallClock,
    ) {
        for label in &self.labels {
            let key = &mut self.key[label.key_at..label.key_at + label.key_len];
            match label.source {
                LabelSource::Int { offset, .. } => {
                    key.copy_from_slice(&event.record[offset..offset + 8]);
                }
                LabelSource::Str { offset, area } => {
                    copy_c_string(key, &event.record[offset..offset + area]);
                }
                LabelSource::Pid => key.copy_from_slice(&u64::from(event.pid).to_ne_bytes()),
                LabelSource::Tid => key.copy_from_slice(&u64::from(event.tid).to_ne_bytes()),
                LabelSource::Comm => copy_c_string(key, &event.comm),
                LabelSource::CgroupId => key.copy_from_slice(&event.cgroup_id.to_ne_bytes()),
                LabelSource::Time => {
                    key.copy_from_slice(&clock.to_unix_ns(event.ktime_ns).to_ne_bytes());
                }
                LabelSource::Identity(part) => {
                    let name = identity.map_or("", |id| match part {
                        IdentityPart::Namespace => id.namespace(),
                        IdentityPart::Pod => id.pod(),
                        IdentityPart::Container => id.container(),
                    });
                    copy_c_string(key, name.as_bytes());
                }
                LabelSource::Constant => {}
            }
        }
    }

    /// The label value a series has for `label`.
    fn label_value(&self, label: &Label, key: &[u8]) -> String {
        let bytes = &key[label.key_at..label.key_at + label.key_len];
        let word = || {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[..8]);
            u64::from_ne_bytes(word)
        };
        match label.source {
            LabelSource::Int { ty, .. } => match ty {
                FieldType::I8 => (word() as i8).to_string(),
                FieldType::I16 => (word() as i16).to_string(),
                FieldType::I32 => (word() as i32).to_string(),
                FieldType::I64 => (word() as i64).to_string(),
                FieldType::U8 => (word() as u8).to_string(),
                FieldType::U16 => (word() as u16).to_string(),
                FieldType::U32 => (word() as u32).to_string(),
                FieldType::U64 | FieldType::String => word().to_string(),
                FieldType::Bool => (word() != 0).to_string(),
            },
            LabelSource::Str { .. } | LabelSource::Comm | LabelSource::Identity(_) => {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                String::from_utf8_lossy(&bytes[..end]).into_owned()
            }
            LabelSource::Pid | LabelSource::Tid | LabelSource::CgroupId => word().to_string(),
            LabelSource::Time => (word() as i64).to_string(),
            LabelSource::Constant => label.constant.clone(),
        }
    }

    /// The metric's name, as exposed.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything the metric counted so far.
    pub fn sample(&self) -> MetricSample {
        let series = (0..self.series.len())
            .map(|series| {
                let key = self.series.key(series);
                SeriesSample {
                    labels: self
                        .labels
                        .iter()
                        .map(|label| self.label_value(label, key))
                        .collect(),
                    counts: self.series.counts(series).to_vec(),
                    sum: self.series.sums(series).first().copied().unwrap_or(0.0),
                }
            })
            .collect();
        MetricSample {
            name: self.name.clone(),
            kind: self.kind,
            label_names: self.labels.iter().map(|l| l.name.clone()).collect(),
            buckets: self.buckets.clone(),
            series,
            rejected_series: self.rejected_series,
            negative_values: self.negative_values,
        }
    }

    /// The series table, for measurements.
    pub fn series_table(&self) -> &SeriesTable {
        &self.series
    }
}

/// Copies a NUL-terminated string into `key` and zeroes the rest, so that
/// bytes left after the NUL (by an earlier, longer string) never split one
/// label value into several series.
fn copy_c_string(key: &mut [u8], source: &[u8]) {
    let len = source
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(source.len())
        .min(key.len());
    key[..len].copy_from_slice(&source[..len]);
    key[len..].fill(0);
}

/// The metrics of one Tracepoint.
#[derive(Default)]
pub struct EventMetrics(Vec<EventMetric>);

impl EventMetrics {
    /// Resolves every metric of a spec against its table's layout.
    pub fn compile(
        specs: &[MetricSpec],
        schema: &RecordSchema,
        node: &str,
    ) -> Result<Self, MetricError> {
        specs
            .iter()
            .map(|spec| EventMetric::compile(spec, schema, node))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Counts one event in every metric.
    #[inline]
    pub fn observe(
        &mut self,
        event: &RawEvent<'_>,
        identity: Option<&ContainerIdentity>,
        clock: &WallClock,
    ) {
        for metric in &mut self.0 {
            metric.observe(event, identity, clock);
        }
    }

    pub fn samples(&self) -> Vec<MetricSample> {
        self.0.iter().map(EventMetric::sample).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &EventMetric> {
        self.0.iter()
    }
}

/// One metric at the moment of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub kind: MetricKind,
    /// The label columns, in the spec's order.
    pub label_names: Vec<String>,
    /// Histogram bucket upper bounds (without +Inf).
    pub buckets: Vec<f64>,
    pub series: Vec<SeriesSample>,
    /// Events of label combinations beyond `maxSeries`: in no series.
    pub rejected_series: u64,
    /// Counter events whose value was negative: in no series.
    pub negative_values: u64,
}

/// One series of a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSample {
    /// Values of the label columns, in [`MetricSample::label_names`]' order.
    pub labels: Vec<String>,
    /// Counters: the total. Histograms: events per bucket (not cumulative),
    /// the +Inf bucket last.
    pub counts: Vec<u64>,
    /// Histograms: the sum of the observed values.
    pub sum: f64,
}

impl SeriesSample {
    /// Events in the series (a histogram's `_count`).
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]
mod tests {
    use super::*;
    use crate::plan::ColumnPlan;

    fn key(n: u64) -> [u8; 8] {
        n.to_ne_bytes()
    }

    #[test]
    fn a_known_key_finds_its_series_and_a_new_one_gets_the_next() {
        let mut table = SeriesTable::new(8, 1, 0, 100);
        for n in 0..50 {
            assert_eq!(table.series(&key(n)), Some(n as usize));
        }
        for n in (0..50).rev() {
            assert_eq!(table.series(&key(n)), Some(n as usize));
        }
        assert_eq!(table.len(), 50);
        assert_eq!(table.key(7), &key(7));
    }

    #[test]
    fn the_cap_is_hard_and_known_series_still_count() {
        let mut table = SeriesTable::new(8, 1, 0, 3);
        for n in 0..3 {
            assert!(table.series(&key(n)).is_some());
        }
        assert_eq!(table.series(&key(3)), None);
        assert_eq!(table.series(&key(99)), None);
        assert_eq!(table.series(&key(1)), Some(1));
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn colliding_hashes_keep_keys_apart() {
        // Every key hashes alike: only the key comparison tells them apart.
        let mut table = SeriesTable::with_hash(8, 1, 0, 1000, |_| 42);
        for n in 0..200 {
            let series = table.series(&key(n)).unwrap();
            table.counts_mut(series)[0] += n;
        }
        for n in 0..200 {
            let series = table.series(&key(n)).unwrap();
            assert_eq!(table.counts(series), &[n]);
            assert_eq!(table.key(series), &key(n));
        }
        assert_eq!(table.len(), 200);
    }

    #[test]
    fn known_series_reserve_nothing_more() {
        let mut table = SeriesTable::new(8, 3, 1, 1000);
        for n in 0..300 {
            table.series(&key(n)).unwrap();
        }
        let reserved = table.reserved();
        for round in 0..10_000u64 {
            let series = table.series(&key(round % 300)).unwrap();
            table.counts_mut(series)[1] += 1;
            table.sums_mut(series)[0] += 1.5;
        }
        assert_eq!(table.reserved(), reserved);
    }

    /// A record: the 48-byte header, then `code` (i32 at 48), `path` (a
    /// 16-byte string at 56) and `latency` (u64 at 72).
    fn record(pid: u32, code: i32, path: &[u8], latency: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 80];
        let header = probe_common::RecordHeader {
            kind: probe_common::RECORD_KIND_EVENT,
            probe_id: 0,
            ktime_ns: 0,
            pid_tgid: (u64::from(pid) << 32) | 1,
            cgroup_id: 0,
            comm: probe_common::RecordHeader::comm_from(b"cat"),
        };
        bytes[..48].copy_from_slice(&header.to_bytes());
        bytes[48..56].copy_from_slice(&i64::from(code).to_ne_bytes());
        // Garbage after the NUL must not make another series.
        bytes[56..72].fill(b'x');
        bytes[56..56 + path.len()].copy_from_slice(path);
        bytes[56 + path.len()] = 0;
        bytes[72..80].copy_from_slice(&latency.to_ne_bytes());
        bytes
    }

    fn schema() -> RecordSchema {
        RecordSchema {
            columns: vec![
                ColumnPlan {
                    name: "code".into(),
                    offset: 48,
                    layout: ColumnLayout::Int(FieldType::I32),
                },
                ColumnPlan {
                    name: "path".into(),
                    offset: 56,
                    layout: ColumnLayout::String { area: 16 },
                },
                ColumnPlan {
                    name: "latency".into(),
                    offset: 72,
                    layout: ColumnLayout::Int(FieldType::U64),
                },
            ],
            record_len: 80,
        }
    }

    fn spec(yaml: &str) -> MetricSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_histogram_counts_per_bucket_and_sums_per_series() {
        let mut metric = EventMetric::compile(
            &spec("{name: lat, kind: histogram, value: latency, buckets: [10, 100], labels: [code, comm, node]}"),
            &schema(),
            "node-a",
        )
        .unwrap();
        let clock = WallClock::now();
        for (code, path, latency) in [
            (0, &b"/a"[..], 5),
            (0, b"/bb", 10),
            (0, b"/a", 11),
            (-2, b"/a", 1000),
            (0, b"/a", 100),
        ] {
            let bytes = record(7, code, path, latency);
            metric.observe(&crate::ring::decode(&bytes).unwrap(), None, &clock);
        }
        let sample = metric.sample();
        assert_eq!(sample.label_names, ["code", "comm", "node"]);
        assert_eq!(sample.series.len(), 2);
        let ok = &sample.series[0];
        assert_eq!(ok.labels, ["0", "cat", "node-a"]);
        assert_eq!(ok.counts, [2, 2, 0]);
        assert_eq!(ok.sum, 126.0);
        let failed = &sample.series[1];
        assert_eq!(failed.labels, ["-2", "cat", "node-a"]);
        assert_eq!(failed.counts, [0, 0, 1]);
        assert_eq!(failed.count(), 1);
        assert_eq!(failed.sum, 1000.0);
    }

    #[test]
    fn a_counter_over_the_cap_counts_rejected_events() {
        let mut metric = EventMetric::compile(
            &spec("{name: opens, kind: counter, labels: [path], maxSeries: 2}"),
            &schema(),
            "node-a",
        )
        .unwrap();
        let clock = WallClock::now();
        for path in [&b"/a"[..], b"/b", b"/c", b"/a", b"/d", b"/c", b"/abcdefgh"] {
            let bytes = record(7, 0, path, 0);
            metric.observe(&crate::ring::decode(&bytes).unwrap(), None, &clock);
        }
        let sample = metric.sample();
        let series: Vec<_> = sample
            .series
            .iter()
            .map(|s| (s.labels[0].as_str(), s.counts[0]))
            .collect();
        assert_eq!(series, [("/a", 2), ("/b", 1)]);
        assert_eq!(sample.rejected_series, 4);
    }

    #[test]
    fn pod_labels_come_from_the_rows_container() {
        let mut metric = EventMetric::compile(
            &spec("{name: calls, kind: counter, labels: [namespace, pod, container]}"),
            &schema(),
            "node-a",
        )
        .unwrap();
        let clock = WallClock::now();
        let web = ContainerIdentity::new("shop", "web-7f9c", "main");
        let sidecar = ContainerIdentity::new("shop", "web-7f9c", "proxy");
        for identity in [Some(&web), Some(&sidecar), Some(&web), None] {
            let bytes = record(7, 0, b"/", 0);
            metric.observe(&crate::ring::decode(&bytes).unwrap(), identity, &clock);
        }
        let sample = metric.sample();
        let series: Vec<_> = sample
            .series
            .iter()
            .map(|s| (s.labels.join("/"), s.counts[0]))
            .collect();
        // A row of no known container (standalone) has empty labels.
        assert_eq!(
            series,
            [
                ("shop/web-7f9c/main".to_owned(), 2),
                ("shop/web-7f9c/proxy".to_owned(), 1),
                ("//".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn a_counter_adds_its_value_and_refuses_negative_ones() {
        let mut metric = EventMetric::compile(
            &spec("{name: codes, kind: counter, value: code}"),
            &schema(),
            "node-a",
        )
        .unwrap();
        let clock = WallClock::now();
        for code in [3, 4, -1] {
            let bytes = record(7, code, b"/", 0);
            metric.observe(&crate::ring::decode(&bytes).unwrap(), None, &clock);
        }
        let sample = metric.sample();
        assert_eq!(sample.series.len(), 1);
        assert_eq!(sample.series[0].counts, [7]);
        assert_eq!(sample.negative_values, 1);
    }

    #[test]
    fn labels_and_values_must_be_columns() {
        let error = EventMetric::compile(
            &spec("{name: x, kind: counter, labels: [nope]}"),
            &schema(),
            "node-a",
        )
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "metric x: label column nope is not a column of the table"
        );
        let error = EventMetric::compile(
            &spec("{name: x, kind: histogram, value: path, buckets: [1]}"),
            &schema(),
            "node-a",
        )
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "metric x: value column path is not a numeric field of the table"
        );
    }
}
