use std::collections::BTreeMap;

use arrow_array::{Int32Array, types::UInt64Type};

use super::*;
use crate::{DEFAULT_CACHE_BYTES, ManualClock, StoreConfig, TableSource};

const SEC: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SEC;
/// A minute boundary, so windows are easy to name.
const T0: i64 = 28_333_333 * MINUTE;

fn source_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("comm", DataType::Utf8, false),
        Field::new("latency", DataType::UInt64, false),
        Field::new("delta", DataType::Int32, false),
    ]))
}

/// A raw row, as the test keeps it to compute expectations on its own.
#[derive(Clone, Debug)]
struct Row {
    time: i64,
    comm: &'static str,
    latency: u64,
    delta: i32,
}

fn to_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        source_schema(),
        vec![
            Arc::new(
                TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.time))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.comm))),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.latency),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.delta))),
        ],
    )
    .expect("columns match the schema")
}

/// Deterministic pseudo-random rows from `start` for `span` nanoseconds:
/// skewed latencies so p99 differs from max, times out of order.
fn raw_rows(start: i64, span: i64, count: usize) -> Vec<Row> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let r = next();
            let latency = if r % 200 == 0 {
                1_000_000 + r % 9_000_000
            } else {
                r % 50_000
            };
            Row {
                time: start + (next() % span as u64) as i64,
                comm: ["cat", "nginx", "postgres"][(next() % 3) as usize],
                latency,
                delta: (next() % 2001) as i32 - 1000,
            }
        })
        .collect()
}

fn spec() -> RollupSpec {
    let aggregate = |function, column: Option<&str>| AggregateSpec {
        function,
        column: column.map(str::to_owned),
        output: match column {
            Some(c) => format!("{function}_{c}"),
            None => function.to_string(),
        },
    };
    RollupSpec {
        source: TableName::new("shop", "opens"),
        output: TableName::new("shop", "opens_1m"),
        interval: Duration::from_secs(60),
        group_by: vec!["comm".into()],
        aggregates: vec![
            aggregate(AggregateFn::Count, None),
            aggregate(AggregateFn::P99, Some("latency")),
            aggregate(AggregateFn::P50, Some("latency")),
            aggregate(AggregateFn::P90, Some("latency")),
            aggregate(AggregateFn::Sum, Some("latency")),
            aggregate(AggregateFn::Min, Some("delta")),
            aggregate(AggregateFn::Max, Some("delta")),
            aggregate(AggregateFn::Sum, Some("delta")),
        ],
        keep: Duration::from_secs(24 * 3600),
    }
}

fn store() -> TableStore {
    let config = StoreConfig {
        default_policy: RetentionPolicy::UNBOUNDED,
        budget_bytes: None,
        follow_capacity: 4,
        compaction: None,
        cache_bytes: DEFAULT_CACHE_BYTES,
    };
    TableStore::with_clock(config, Arc::new(ManualClock::new(T0 + 10 * MINUTE)))
}

/// Expected per (window, comm): count, p50/p90/p99 and sum of latency,
/// min/max/sum of delta — computed with plain loops and floats.
type Expected = BTreeMap<(i64, String), (u64, [u64; 3], u64, i64, i64, i64)>;

fn expected(rows: &[Row], before: i64) -> Expected {
    let mut groups: BTreeMap<(i64, String), Vec<&Row>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.time < before) {
        let window = row.time - row.time.rem_euclid(MINUTE);
        groups
            .entry((window, row.comm.to_owned()))
            .or_default()
            .push(row);
    }
    groups
        .into_iter()
        .map(|(key, rows)| {
            let mut latencies: Vec<u64> = rows.iter().map(|r| r.latency).collect();
            latencies.sort_unstable();
            let n = latencies.len() as f64;
            let pick = |p: f64| latencies[((p / 100.0 * n).ceil() as usize).max(1) - 1];
            let deltas = rows.iter().map(|r| i64::from(r.delta));
            let value = (
                rows.len() as u64,
                [pick(50.0), pick(90.0), pick(99.0)],
                latencies.iter().sum(),
                deltas.clone().min().unwrap_or_default(),
                deltas.clone().max().unwrap_or_default(),
                deltas.sum(),
            );
            (key, value)
        })
        .collect()
}

fn actual(store: &TableStore) -> Expected {
    let snapshot = store.snapshot(&spec().output).expect("output table");
    let mut out = Expected::new();
    for batch in &snapshot.batches {
        let u64s = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("column {name}"))
                .as_primitive::<UInt64Type>()
                .clone()
        };
        let i64s = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("column {name}"))
                .as_primitive::<Int64Type>()
                .clone()
        };
        let times = batch.column(0).as_primitive::<TimestampNanosecondType>();
        let nodes = batch.column(1).as_string::<i32>();
        let comms = batch.column(2).as_string::<i32>();
        let (count, p99, p50, p90, sum) = (
            u64s("count"),
            u64s("p99_latency"),
            u64s("p50_latency"),
            u64s("p90_latency"),
            u64s("sum_latency"),
        );
        let (min, max, sum_delta) = (i64s("min_delta"), i64s("max_delta"), i64s("sum_delta"));
        for i in 0..batch.num_rows() {
            assert_eq!(nodes.value(i), "node-a");
            let key = (times.value(i), comms.value(i).to_owned());
            let value = (
                count.value(i),
                [p50.value(i), p90.value(i), p99.value(i)],
                sum.value(i),
                min.value(i),
                max.value(i),
                sum_delta.value(i),
            );
            assert!(out.insert(key, value).is_none(), "a group rolled up twice");
        }
    }
    out
}

#[test]
fn per_minute_counts_and_percentiles_match_the_raw_rows() {
    let store = store();
    store
        .create_table(spec().source, source_schema())
        .expect("new table");
    // Five and a half minutes of rows, appended in shuffled chunks.
    let rows = raw_rows(T0, 5 * MINUTE + 30 * SEC, 20_000);
    for chunk in rows.chunks(1500) {
        store
            .append(&spec().source, to_batch(chunk))
            .expect("append");
    }
    let mut engine = RollupEngine::new(store.clone(), "node-a", Duration::from_secs(2));
    engine.set_rollups(vec![spec()]);

    // 1 s after minute 5 ends: inside the grace period, so minutes 0-3 only.
    let results = engine.tick(T0 + 5 * MINUTE + SEC);
    assert!(matches!(results[0].1, Ok(12)), "{results:?}");
    assert_eq!(actual(&store), expected(&rows, T0 + 4 * MINUTE));

    // Past the grace period: minute 4 too, once; minute 5 is not over.
    engine.tick(T0 + 5 * MINUTE + 3 * SEC);
    engine.tick(T0 + 5 * MINUTE + 4 * SEC);
    let got = actual(&store);
    let want = expected(&rows, T0 + 5 * MINUTE);
    assert_eq!(got.len(), 15);
    assert_eq!(got, want);
    // p99 is not just the max: the test data has a heavy tail.
    assert!(got.values().any(|v| v.1[2] < 1_000_000));
    assert!(got.values().all(|v| v.1[0] <= v.1[1] && v.1[1] <= v.1[2]));

    // Re-applying the same rollup keeps progress: nothing is written twice.
    engine.set_rollups(vec![spec()]);
    let results = engine.tick(T0 + 5 * MINUTE + 5 * SEC);
    assert!(matches!(results[0].1, Ok(0)), "{results:?}");

    // The output table is kept for `keep`, not the raw table's limits.
    let policy = store.policy(&spec().output).expect("output table");
    assert_eq!(policy.max_age, Some(Duration::from_secs(24 * 3600)));
    let info = store.snapshot(&spec().output).expect("output table").info;
    assert_eq!(info.time_range, Some((T0, T0 + 4 * MINUTE)));
}

#[test]
fn one_row_per_window_without_group_by() {
    let store = store();
    store
        .create_table(spec().source, source_schema())
        .expect("new table");
    let rows = raw_rows(T0, 3 * MINUTE, 3000);
    store
        .append(&spec().source, to_batch(&rows))
        .expect("append");
    let mut rollup = spec();
    rollup.group_by.clear();
    rollup.aggregates.truncate(2);
    let mut engine = RollupEngine::new(store.clone(), "node-a", Duration::ZERO);
    engine.set_rollups(vec![rollup.clone()]);
    let results = engine.tick(T0 + 3 * MINUTE);
    assert!(matches!(results[0].1, Ok(3)), "{results:?}");
    let batch = &store
        .snapshot(&rollup.output)
        .expect("output table")
        .batches[0];
    let counts = batch.column_by_name("count").expect("count");
    let counts = counts.as_primitive::<UInt64Type>().values().to_vec();
    let mut want = [0u64; 3];
    for row in &rows {
        want[((row.time - T0) / MINUTE) as usize] += 1;
    }
    assert_eq!(counts, want);
}

#[test]
fn bad_columns_are_reported_and_nothing_is_written() {
    let store = store();
    store
        .create_table(spec().source, source_schema())
        .expect("new table");
    store
        .append(&spec().source, to_batch(&raw_rows(T0, MINUTE, 10)))
        .expect("append");
    let mut engine = RollupEngine::new(store.clone(), "node-a", Duration::ZERO);
    let mut unknown = spec();
    unknown.group_by = vec!["pod".into()];
    let mut text = spec();
    text.output = TableName::new("shop", "opens_text");
    text.aggregates[1].column = Some("comm".into());
    engine.set_rollups(vec![unknown, text]);
    let results = engine.tick(T0 + 2 * MINUTE);
    assert!(matches!(
        &results[0].1,
        Err(StoreError::UnknownColumn { column, .. }) if column == "pod"
    ));
    assert!(matches!(
        &results[1].1,
        Err(StoreError::NotNumeric { column, .. }) if column == "comm"
    ));
    assert!(store.snapshot(&spec().output).is_none());
    // A rollup whose source does not exist yet waits without error.
    let mut missing = spec();
    missing.source = TableName::new("shop", "later");
    engine.set_rollups(vec![missing]);
    assert!(matches!(engine.tick(T0 + 2 * MINUTE)[0].1, Ok(0)));
}

#[test]
fn rollups_come_from_retentions() {
    let spec_yaml = "{tables: [opens], maxAge: 10m, rollups: [{name: opens_1m, interval: 1m, \
                     groupBy: [comm], aggregates: [{fn: count}, {fn: p99, column: latency}], \
                     keep: 168h}]}";
    let mut retention = Retention::new(
        "opens",
        serde_yaml::from_str(spec_yaml).expect("valid RetentionSpec"),
    );
    retention.metadata.namespace = Some("shop".into());
    let specs = RollupSpec::from_retention(&retention).expect("valid Retention");
    assert_eq!(specs.len(), 1);
    let rollup = &specs[0];
    assert_eq!(rollup.source, TableName::new("shop", "opens"));
    assert_eq!(rollup.output, TableName::new("shop", "opens_1m"));
    assert_eq!(rollup.interval, Duration::from_secs(60));
    assert_eq!(rollup.keep, Duration::from_secs(168 * 3600));
    assert_eq!(rollup.group_by, ["comm"]);
    let outputs: Vec<&str> = rollup
        .aggregates
        .iter()
        .map(|a| a.output.as_str())
        .collect();
    assert_eq!(outputs, ["count", "p99_latency"]);

    let invalid: crds::RetentionSpec = serde_yaml::from_str(
        "{tables: ['op*'], rollups: [{name: x, interval: 1m, aggregates: [{fn: count}], keep: 1h}]}",
    )
    .expect("parses");
    let mut engine = RollupEngine::new(store(), "node-a", RollupEngine::DEFAULT_GRACE);
    let errors = engine.set_retentions(&[retention, Retention::new("bad", invalid)]);
    assert!(matches!(
        errors.as_slice(),
        [StoreError::InvalidRetention { name, .. }] if name == "bad"
    ));
    assert_eq!(engine.rollups().count(), 1);
}
