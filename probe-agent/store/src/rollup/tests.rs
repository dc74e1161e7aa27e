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
        detect: Vec::new(),
        keep_raw: None,
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

/// Rows of `requests`: (time_, pod, latency), as a traced server would
/// leave them.
fn request_batch(rows: &[(i64, String, f64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("pod", DataType::Utf8, false),
        Field::new("latency", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(
                TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.0))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(arrow_array::Float64Array::from_iter_values(
                rows.iter().map(|r| r.2),
            )),
        ],
    )
    .expect("columns match the schema")
}

/// A Retention on `requests` with a per-minute p99 by pod that detects
/// level shifts and keeps raw rows two minutes around each.
fn detecting_retention(kept_bytes: &str) -> Retention {
    let yaml = format!(
        "{{tables: [requests], maxAge: 5m, rollups: [{{name: requests_1m, interval: 1m, \
         groupBy: [pod], aggregates: [{{fn: count}}, {{fn: p99, column: latency}}], keep: 24h, \
         detect: [{{column: p99_latency, method: levelShift}}], \
         keepRaw: {{around: 2m, maxBytes: {kept_bytes}}}}}]}}"
    );
    let mut retention = Retention::new(
        "requests",
        serde_yaml::from_str(&yaml).expect("valid RetentionSpec"),
    );
    retention.metadata.namespace = Some("shop".into());
    retention
}

/// Feeds minutes `from..to` of four pods' requests (40 a minute each,
/// latency around 1000 with 5% noise, times `slow(pod, minute)`) and rolls
/// each minute up as it ends. Returns every row appended, by minute.
fn feed_requests(
    store: &TableStore,
    clock: &ManualClock,
    engine: &mut RollupEngine,
    minutes: std::ops::Range<i64>,
    slow: &dyn Fn(usize, i64) -> f64,
) -> Vec<(i64, String, f64)> {
    let source = TableName::new("shop", "requests");
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut all = Vec::new();
    for minute in minutes {
        let mut rows = Vec::new();
        for pod in 0..4 {
            for i in 0..40 {
                // Triangular noise, about ±5%.
                let noise = (uniform() + uniform() - 1.0) * 0.1;
                rows.push((
                    T0 + minute * MINUTE + i * (MINUTE / 40) + pod as i64,
                    format!("web-{pod}"),
                    1000.0 * slow(pod, minute) * (1.0 + noise),
                ));
            }
        }
        if store.snapshot(&source).is_none() {
            store
                .create_table(source.clone(), request_batch(&rows).schema())
                .expect("creates");
        }
        store
            .append(&source, request_batch(&rows))
            .expect("appends");
        all.extend(rows);
        // The minute has ended, and the grace period after it.
        clock.set(T0 + (minute + 1) * MINUTE + 3 * SEC);
        for (table, result) in engine.tick(store.now_ns()) {
            result.unwrap_or_else(|e| panic!("{table}: {e}"));
        }
    }
    all
}

fn detection_store() -> (TableStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let config = StoreConfig {
        default_policy: RetentionPolicy::UNBOUNDED,
        budget_bytes: None,
        follow_capacity: 4,
        compaction: None,
        cache_bytes: DEFAULT_CACHE_BYTES,
    };
    (TableStore::with_clock(config, clock.clone()), clock)
}

fn kept_rows(store: &TableStore, table: &TableName) -> Vec<(i64, String, i64)> {
    let Some(snapshot) = store.snapshot(table) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for batch in &snapshot.batches {
        let times = batch.column(0).as_primitive::<TimestampNanosecondType>();
        let pods = batch.column(1).as_string::<i32>();
        let anomaly = batch
            .column_by_name(crate::ANOMALY_TIME_COLUMN)
            .expect("kept rows say which anomaly kept them")
            .as_primitive::<TimestampNanosecondType>();
        for row in 0..batch.num_rows() {
            rows.push((
                times.value(row),
                pods.value(row).to_owned(),
                anomaly.value(row),
            ));
        }
    }
    rows.sort();
    rows
}

#[test]
fn a_latency_step_is_an_anomaly_and_its_raw_rows_outlive_max_age() {
    let (store, clock) = detection_store();
    let retention = detecting_retention("16Mi");
    store.set_retentions(vec![retention.clone()]);
    let mut engine = RollupEngine::new(store.clone(), "node-a", RollupEngine::DEFAULT_GRACE);
    assert!(engine.set_retentions(&[retention]).is_empty());
    let step = 30;
    let slow = |pod: usize, minute: i64| if pod == 1 && minute >= step { 3.0 } else { 1.0 };
    let rows = feed_requests(&store, &clock, &mut engine, 0..step + 2, &slow);

    // Within two intervals of the step: one anomaly, on web-1.
    let anomalies = store
        .snapshot(&TableName::new("shop", "requests_1m_anomalies"))
        .expect("the anomalies table exists");
    let batch =
        concat_batches(&anomalies.batches[0].schema(), &anomalies.batches).expect("one schema");
    assert_eq!(batch.num_rows(), 1, "{batch:?}");
    let column = |name: &str| batch.column_by_name(name).expect("column present").clone();
    let time = column("time_")
        .as_primitive::<TimestampNanosecondType>()
        .value(0);
    assert!(
        [step, step + 1].contains(&((time - T0) / MINUTE)),
        "at minute {}",
        (time - T0) / MINUTE
    );
    assert_eq!(column("pod").as_string::<i32>().value(0), "web-1");
    assert_eq!(column("node").as_string::<i32>().value(0), "node-a");
    assert_eq!(column("column").as_string::<i32>().value(0), "p99_latency");
    assert_eq!(column("method").as_string::<i32>().value(0), "levelShift");
    let f = |name: &str| {
        column(name)
            .as_primitive::<arrow_array::types::Float64Type>()
            .value(0)
    };
    // The old level: the median of web-1's per-minute p99 (nearest rank)
    // before the step, computed from the rows fed.
    let mut p99s: Vec<f64> = (0..step)
        .map(|minute| {
            let mut latencies: Vec<f64> = rows
                .iter()
                .filter(|r| r.1 == "web-1" && (r.0 - T0) / MINUTE == minute)
                .map(|r| r.2)
                .collect();
            latencies.sort_by(f64::total_cmp);
            latencies[(99 * latencies.len()).div_ceil(100) - 1]
        })
        .collect();
    p99s.sort_by(f64::total_cmp);
    let old_level = p99s[p99s.len() / 2];
    assert!(
        (f("expected") - old_level).abs() < 0.02 * old_level,
        "expected {} vs old level {old_level}",
        f("expected")
    );
    assert!(f("lower") < old_level && old_level < f("upper"));
    assert!(f("upper") < 2.0 * old_level);
    assert!(f("value") > 2.5 * old_level);

    // Keep going past the kept window's end, then past maxAge (5m).
    let mut fed = rows;
    fed.extend(feed_requests(
        &store,
        &clock,
        &mut engine,
        step + 2..step + 12,
        &slow,
    ));
    let source = store
        .snapshot(&TableName::new("shop", "requests"))
        .expect("source");
    let oldest = source.info.time_range.expect("rows").0;
    assert!(
        oldest > time + 3 * MINUTE,
        "maxAge evicted the anomaly's rows"
    );
    // Exactly web-1's rows from 2m before the anomalous minute to 2m after
    // its end are kept, computed from what was fed.
    let want: Vec<(i64, String, i64)> = fed
        .iter()
        .filter(|r| r.1 == "web-1" && r.0 >= time - 2 * MINUTE && r.0 < time + 3 * MINUTE)
        .map(|r| (r.0, r.1.clone(), time))
        .collect();
    assert_eq!(want.len(), 5 * 40);
    let kept = kept_rows(&store, &TableName::new("shop", "requests_1m_kept"));
    assert_eq!(kept, want);

    let reports = engine.detection_reports();
    assert_eq!(reports.len(), 1);
    let kept_stats = reports[0].kept.expect("keepRaw is set");
    assert_eq!((kept_stats.windows, kept_stats.windows_evicted), (1, 0));
    assert_eq!(reports[0].recent.len(), 1);
    assert_eq!(reports[0].recent[0].group, "pod=web-1");
}

#[test]
fn past_the_kept_budget_the_oldest_window_goes_first_and_is_counted() {
    let (store, clock) = detection_store();
    // About two windows of 200 rows fit.
    let retention = detecting_retention("16Ki");
    store.set_retentions(vec![retention.clone()]);
    let mut engine = RollupEngine::new(store.clone(), "node-a", RollupEngine::DEFAULT_GRACE);
    assert!(engine.set_retentions(&[retention]).is_empty());
    // Each pod steps up in its turn, six minutes apart.
    let slow = |pod: usize, minute: i64| {
        if minute >= 20 + 6 * pod as i64 {
            3.0
        } else {
            1.0
        }
    };
    feed_requests(&store, &clock, &mut engine, 0..50, &slow);

    let reports = engine.detection_reports();
    let stats = reports[0].kept.expect("keepRaw is set");
    let anomalies =
        reports[0].stats.anomalies[&("p99_latency".to_owned(), crds::DetectionMethod::LevelShift)];
    assert_eq!(anomalies, 4, "{:?}", reports[0].recent);
    assert_eq!(stats.windows, 4);
    let kept_table = TableName::new("shop", "requests_1m_kept");
    let kept = kept_rows(&store, &kept_table);
    let windows_left: BTreeMap<i64, Vec<&str>> = kept.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.2).or_default().push(r.1.as_str());
        m
    });
    assert!(stats.windows_evicted >= 1, "{stats:?}");
    assert_eq!(
        stats.windows_evicted,
        stats.windows - windows_left.len() as u64,
        "{stats:?}, left: {:?}",
        windows_left.keys().collect::<Vec<_>>()
    );
    // The oldest (web-0's) went first; the newest (web-3's) is whole.
    let pods_left: Vec<&str> = windows_left.values().map(|pods| pods[0]).collect();
    assert!(!pods_left.contains(&"web-0"), "{pods_left:?}");
    assert_eq!(pods_left.last(), Some(&"web-3"));
    assert_eq!(windows_left.values().last().map(Vec::len), Some(200));
    let bytes = store.table_stats(&kept_table).expect("kept table").bytes;
    assert!(bytes <= 16 * 1024, "{bytes}");
}

#[test]
fn a_steady_workload_gives_no_anomalies_in_200_intervals() {
    // levelShift at the default sensitivity (25: 4.39 robust standard
    // deviations) and warm-up (10), four pods, ±10% noise on each request.
    let (store, clock) = detection_store();
    let retention = detecting_retention("16Mi");
    store.set_retentions(vec![retention.clone()]);
    let mut engine = RollupEngine::new(store.clone(), "node-a", RollupEngine::DEFAULT_GRACE);
    assert!(engine.set_retentions(&[retention]).is_empty());
    feed_requests(&store, &clock, &mut engine, 0..200, &|_, _| 1.0);
    let rollup = store
        .snapshot(&TableName::new("shop", "requests_1m"))
        .expect("rolled up");
    assert_eq!(rollup.info.rows, 200 * 4, "every interval was judged");
    let anomalies = store
        .snapshot(&TableName::new("shop", "requests_1m_anomalies"))
        .expect("the anomalies table exists, empty");
    assert_eq!(anomalies.info.rows, 0);
    let reports = engine.detection_reports();
    assert!(reports[0].stats.anomalies.is_empty());
    assert_eq!(reports[0].stats.model_failures, 0);
    assert_eq!(reports[0].kept.map(|k| k.windows), Some(0));
}
