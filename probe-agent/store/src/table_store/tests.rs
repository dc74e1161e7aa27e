use std::{sync::atomic::AtomicBool, thread};

use arrow_array::{StringArray, TimestampNanosecondArray, UInt64Array};
use arrow_schema::{Field, Schema};

use super::*;

const SEC: i64 = 1_000_000_000;
const KI: u64 = 1 << 10;
const MI: u64 = 1 << 20;
/// A fixed start, so times are realistic Unix-epoch nanoseconds.
const T0: i64 = 1_700_000_000 * SEC;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("comm", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
    ]))
}

/// Rows `seq` numbered from `first`, at the given times.
fn batch(first: u64, times: &[i64]) -> RecordBatch {
    let n = times.len() as u64;
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampNanosecondArray::from(times.to_vec()).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(
                (first..first + n).map(|i| format!("proc-{}", i % 7)),
            )),
            Arc::new(UInt64Array::from_iter_values(first..first + n)),
        ],
    )
    .expect("columns match the schema")
}

fn seqs(batches: &[RecordBatch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("seq")
                .expect("seq column")
                .as_primitive::<arrow_array::types::UInt64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

fn config(policy: RetentionPolicy, budget: Option<u64>) -> StoreConfig {
    StoreConfig {
        default_policy: policy,
        budget_bytes: budget,
        follow_capacity: 16,
        compaction: None,
        cache_bytes: DEFAULT_CACHE_BYTES,
    }
}

fn store_at(config: StoreConfig, now: i64) -> (TableStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(now));
    (TableStore::with_clock(config, clock.clone()), clock)
}

fn assert_balanced(stats: &TableStats) {
    let evicted = stats.evicted.total();
    assert_eq!(stats.appended_rows, stats.rows + evicted.rows, "{stats:?}");
    assert_eq!(
        stats.appended_bytes,
        stats.bytes + evicted.bytes + stats.compacted_bytes,
        "{stats:?}"
    );
}

#[test]
fn max_bytes_holds_within_ten_percent_while_ten_times_the_volume_flows() {
    let limit = MI;
    let policy = RetentionPolicy {
        max_bytes: Some(limit),
        max_age: None,
    };
    let (store, _) = store_at(config(policy, None), T0);
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    let mut seq = 0;
    let mut rounds = 0;
    // Batches of varied sizes, a few larger than the limit on their own.
    while store.table_stats(&name).expect("table").appended_bytes < 10 * limit {
        let rows = match rounds % 10 {
            9 => 40_000,
            r => 500 + r * 700,
        };
        let times: Vec<i64> = (0..rows).map(|i| T0 + (seq + i) as i64).collect();
        store.append(&name, batch(seq, &times)).expect("append");
        seq += rows;
        rounds += 1;
        let stats = store.table_stats(&name).expect("table");
        assert!(
            stats.bytes as f64 <= limit as f64 * 1.1,
            "{} bytes over {limit} + 10%",
            stats.bytes
        );
        if stats.appended_bytes >= limit {
            assert!(
                stats.bytes as f64 >= limit as f64 * 0.9,
                "{} bytes: evicted far below {limit}",
                stats.bytes
            );
        }
        assert_balanced(&stats);
        assert_eq!(store.total_bytes(), stats.bytes);
    }
    let stats = store.table_stats(&name).expect("table");
    assert!(stats.evicted.max_bytes.rows > 0 && stats.evicted.max_bytes.batches > 0);
    assert_eq!(stats.evicted.max_age, Evicted::default());
    assert_eq!(stats.limited_by, Some(EvictionReason::MaxBytes));
    // What is held is exactly the newest rows, in order.
    let snapshot = store.snapshot(&name).expect("table");
    let held = seqs(&snapshot.batches);
    assert_eq!(held.len() as u64, stats.rows);
    assert_eq!(held.last().copied(), Some(seq - 1));
    assert!(held.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(snapshot.info.bytes, stats.bytes);
}

#[test]
fn max_age_never_serves_rows_older_than_the_limit() {
    let max_age = Duration::from_secs(10);
    let policy = RetentionPolicy {
        max_bytes: None,
        max_age: Some(max_age),
    };
    let (store, clock) = store_at(config(policy, None), T0);
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    let mut appended: Vec<i64> = Vec::new();
    let mut seq = 0;
    // One batch a second (the batch interval) with rows from the second
    // before, slightly out of order; readers look every 100 ms.
    for step in 0..600 {
        clock.advance(Duration::from_millis(100));
        let now = clock.now_ns();
        if step % 10 == 0 {
            let times: Vec<i64> = (0..97)
                .map(|i| now - SEC + ((i * 37) % 97) * (SEC / 97))
                .collect();
            store.append(&name, batch(seq, &times)).expect("append");
            seq += times.len() as u64;
            appended.extend(&times);
        }
        let snapshot = store.snapshot(&name).expect("table");
        let cutoff = now - duration_ns(max_age);
        let served: Vec<i64> = snapshot
            .batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<TimestampNanosecondType>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert!(
            served.iter().all(|&t| t >= cutoff),
            "served a row older than maxAge at step {step}"
        );
        // Nothing young enough was evicted.
        let young = appended.iter().filter(|&&t| t >= cutoff).count();
        assert_eq!(served.len(), young, "step {step}");
        let stats = store.table_stats(&name).expect("table");
        assert_balanced(&stats);
        if let Some(window) = stats.window {
            assert!(window <= max_age);
        }
    }
    let stats = store.table_stats(&name).expect("table");
    assert!(stats.evicted.max_age.rows > 0 && stats.evicted.max_age.batches > 0);
    assert_eq!(stats.evicted.max_bytes, Evicted::default());
    assert_eq!(stats.limited_by, Some(EvictionReason::MaxAge));
}

#[test]
fn enforce_ages_tables_that_receive_nothing() {
    let policy = RetentionPolicy {
        max_bytes: None,
        max_age: Some(Duration::from_secs(5)),
    };
    let (store, clock) = store_at(config(policy, None), T0);
    let name = TableName::new("shop", "quiet");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    store
        .append(&name, batch(0, &[T0, T0 + SEC]))
        .expect("append");
    // The row at T0 + 1 s is exactly maxAge old: kept; the other goes.
    clock.advance(Duration::from_secs(6));
    store.enforce();
    assert_eq!(store.table_stats(&name).expect("table").rows, 1);
    clock.advance(Duration::from_nanos(1));
    store.enforce();
    assert_eq!(store.total_bytes(), 0);
    let stats = store.table_stats(&name).expect("table");
    assert_eq!(stats.rows, 0);
    assert_eq!(stats.evicted.max_age.rows, 2);
    assert_balanced(&stats);
}

#[test]
fn tables_without_time_age_by_append_time() {
    let policy = RetentionPolicy {
        max_bytes: None,
        max_age: Some(Duration::from_secs(5)),
    };
    let (store, clock) = store_at(config(policy, None), T0);
    let name = TableName::new("sonde", "untimed");
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
    store
        .create_table(name.clone(), schema.clone())
        .expect("new table");
    let rows = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![1, 2]))])
        .expect("valid batch");
    store.append(&name, rows).expect("append");
    clock.advance(Duration::from_secs(4));
    assert_eq!(store.snapshot(&name).expect("table").info.rows, 2);
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.snapshot(&name).expect("table").info.rows, 0);
}

#[test]
fn global_budget_takes_from_the_largest_table() {
    let budget = 2 * MI;
    let (store, _) = store_at(config(RetentionPolicy::UNBOUNDED, Some(budget)), T0);
    let noisy = TableName::new("shop", "noisy");
    let quiet = TableName::new("shop", "quiet");
    store
        .create_table(noisy.clone(), schema())
        .expect("new table");
    store
        .create_table(quiet.clone(), schema())
        .expect("new table");
    let times: Vec<i64> = (0..2000).map(|i| T0 + i).collect();
    store.append(&quiet, batch(0, &times)).expect("append");
    let quiet_bytes = store.table_stats(&quiet).expect("table").bytes;
    assert!(quiet_bytes < 200 * KI);
    let mut seq = 0;
    while store.table_stats(&noisy).expect("table").appended_bytes < 10 * budget {
        store.append(&noisy, batch(seq, &times)).expect("append");
        seq += times.len() as u64;
        assert!(
            store.total_bytes() <= budget,
            "{} over budget",
            store.total_bytes()
        );
    }
    let noisy_stats = store.table_stats(&noisy).expect("table");
    let quiet_stats = store.table_stats(&quiet).expect("table");
    assert!(noisy_stats.evicted.budget.rows > 0);
    assert_eq!(noisy_stats.limited_by, Some(EvictionReason::Budget));
    assert_eq!(quiet_stats.evicted.total(), Evicted::default());
    assert_eq!(quiet_stats.bytes, quiet_bytes);
    assert_eq!(store.total_bytes(), noisy_stats.bytes + quiet_stats.bytes);
    assert!(store.total_bytes() as f64 >= budget as f64 * 0.9);
    assert_balanced(&noisy_stats);
}

#[test]
fn snapshots_are_consistent_while_a_writer_appends() {
    let policy = RetentionPolicy {
        max_bytes: Some(256 * KI),
        max_age: None,
    };
    let store = TableStore::new(config(policy, None));
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, name, done) = (store.clone(), name.clone(), done.clone());
            thread::spawn(move || {
                let mut checked = 0u64;
                let mut last_newest = 0;
                while !done.load(Ordering::SeqCst) || checked == 0 {
                    let snapshot = store.snapshot(&name).expect("table");
                    let held = seqs(&snapshot.batches);
                    // Row count and bytes describe exactly the batches given.
                    assert_eq!(held.len() as u64, snapshot.info.rows);
                    let bytes: usize = snapshot
                        .batches
                        .iter()
                        .map(RecordBatch::get_array_memory_size)
                        .sum();
                    assert_eq!(bytes as u64, snapshot.info.bytes);
                    // A contiguous run of rows, never going back in time.
                    assert!(held.windows(2).all(|w| w[1] == w[0] + 1));
                    if let Some(&newest) = held.last() {
                        assert!(newest >= last_newest);
                        last_newest = newest;
                    }
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    let mut seq = 0;
    for _ in 0..2000 {
        let times: Vec<i64> = (0..100).map(|i| T0 + seq as i64 + i).collect();
        store.append(&name, batch(seq, &times)).expect("append");
        seq += 100;
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        assert!(reader.join().expect("reader did not panic") > 0);
    }
    let stats = store.table_stats(&name).expect("table");
    assert_eq!(stats.appended_rows, seq);
    assert_balanced(&stats);
}

#[test]
fn followers_get_exactly_the_batches_after_their_snapshot() {
    let (store, _) = store_at(config(RetentionPolicy::DEFAULT, None), T0);
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    store
        .append(&name, batch(0, &[T0, T0 + 1]))
        .expect("append");
    let mut plain = store.subscribe(&name).expect("table");
    let (snapshot, mut follower) = TableSource::follow(&store, &name).expect("table");
    assert_eq!(seqs(&snapshot.batches), vec![0, 1]);
    store.append(&name, batch(2, &[T0 + 2])).expect("append");
    store
        .append(&name, batch(3, &[T0 + 3, T0 + 4]))
        .expect("append");
    for receiver in [&mut plain, &mut follower] {
        let first = receiver.try_recv().expect("first batch");
        let second = receiver.try_recv().expect("second batch");
        assert_eq!(seqs(&[first, second]), vec![2, 3, 4]);
        assert!(receiver.try_recv().is_err());
    }
    assert!(store.subscribe(&TableName::new("shop", "none")).is_none());
    // Dropping the table ends the stream.
    assert!(store.drop_table(&name));
    assert!(matches!(
        follower.try_recv(),
        Err(broadcast::error::TryRecvError::Closed)
    ));
}

#[test]
fn retentions_set_policies_and_apply_at_once() {
    let (store, _) = store_at(config(RetentionPolicy::DEFAULT, None), T0);
    let opens = TableName::new("shop", "opens");
    let execs = TableName::new("shop", "execs");
    store
        .create_table(opens.clone(), schema())
        .expect("new table");
    store
        .create_table(execs.clone(), schema())
        .expect("new table");
    let times: Vec<i64> = (0..5000).map(|i| T0 + i).collect();
    store.append(&opens, batch(0, &times)).expect("append");
    let before = store.table_stats(&opens).expect("table").bytes;
    let spec: crds::RetentionSpec =
        serde_yaml::from_str("{tables: ['open*'], maxBytes: '50000'}").expect("valid spec");
    let mut retention = Retention::new("small", spec);
    retention.metadata.namespace = Some("shop".into());
    store.set_retentions(vec![retention]);
    let policy = store.policy(&opens).expect("table");
    assert_eq!(policy.max_bytes, Some(50_000));
    assert_eq!(policy.max_age, RetentionPolicy::DEFAULT.max_age);
    assert_eq!(store.policy(&execs), Some(RetentionPolicy::DEFAULT));
    let after = store.table_stats(&opens).expect("table");
    assert!(before > 50_000 && after.bytes <= 50_000 && after.bytes >= 45_000);
    assert_balanced(&after);
    // An explicit policy wins over Retentions, and None goes back to them.
    store
        .set_policy(&opens, Some(RetentionPolicy::UNBOUNDED))
        .expect("table");
    assert_eq!(store.policy(&opens), Some(RetentionPolicy::UNBOUNDED));
    store.set_policy(&opens, None).expect("table");
    assert_eq!(store.policy(&opens).and_then(|p| p.max_bytes), Some(50_000));
}

#[test]
fn bad_writes_are_refused() {
    let (store, _) = store_at(config(RetentionPolicy::DEFAULT, None), T0);
    let name = TableName::new("shop", "opens");
    assert!(matches!(
        store.append(&name, batch(0, &[T0])),
        Err(StoreError::UnknownTable { .. })
    ));
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    // Same columns again: kept; other columns: refused.
    store.append(&name, batch(0, &[T0])).expect("append");
    store
        .create_table(name.clone(), schema())
        .expect("same schema");
    assert_eq!(store.table_stats(&name).expect("table").rows, 1);
    let other = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
    assert!(matches!(
        store.create_table(name.clone(), other.clone()),
        Err(StoreError::SchemaMismatch { .. })
    ));
    let wrong = RecordBatch::try_new(other, vec![Arc::new(UInt64Array::from(vec![1]))])
        .expect("valid batch");
    assert!(matches!(
        store.append(&name, wrong),
        Err(StoreError::SchemaMismatch { .. })
    ));
    assert!(store.total_bytes() > 0);
    assert!(store.drop_table(&name));
    assert!(!store.drop_table(&name));
    assert_eq!(store.total_bytes(), 0);
    assert!(store.tables().is_empty());
}

#[test]
fn tables_are_listed_in_name_order_with_their_time_range() {
    let (store, _) = store_at(config(RetentionPolicy::DEFAULT, None), T0);
    for table in ["b", "a"] {
        store
            .create_table(TableName::new("shop", table), schema())
            .expect("new table");
    }
    store
        .append(
            &TableName::new("shop", "a"),
            batch(0, &[T0 + 5, T0 - 5, T0]),
        )
        .expect("append");
    let tables = store.tables();
    let names: Vec<String> = tables.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["shop.a", "shop.b"]);
    assert_eq!(tables[0].rows, 3);
    assert_eq!(tables[0].time_range, Some((T0 - 5, T0 + 5)));
    assert_eq!(tables[1].time_range, None);
}

/// A store that compacts batches as soon as their newest row is a second old.
fn compacting(policy: RetentionPolicy, budget: Option<u64>) -> StoreConfig {
    StoreConfig {
        compaction: Some(Compaction {
            cold_after: Duration::from_secs(1),
            merge_for: Duration::ZERO,
            ..Compaction::default()
        }),
        ..config(policy, budget)
    }
}

/// Small batches as the capture path seals them at a low rate: a few rows
/// each, one per 100 ms of `time_`.
fn trickle(store: &TableStore, clock: &ManualClock, name: &TableName, batches: u64, seq: &mut u64) {
    for _ in 0..batches {
        clock.advance(Duration::from_millis(100));
        let now = clock.now_ns();
        let times: Vec<i64> = (0..10)
            .map(|i| now - 100_000_000 + i * 10_000_000)
            .collect();
        store.append(name, batch(*seq, &times)).expect("append");
        *seq += times.len() as u64;
    }
}

#[test]
fn compaction_serves_the_same_rows_from_fewer_smaller_batches() {
    let (store, clock) = store_at(compacting(RetentionPolicy::UNBOUNDED, None), T0);
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    let mut seq = 0;
    trickle(&store, &clock, &name, 600, &mut seq);
    let before = store.table_stats(&name).expect("table");
    let rows_before = seqs(&store.snapshot(&name).expect("table").batches);

    let done = store.compact();
    let after = store.table_stats(&name).expect("table");
    assert!(done.batches_in > 500 && done.batches_out >= 1, "{done:?}");
    assert_eq!(done.bytes_in - done.bytes_out, after.compacted_bytes);
    // The newest second stays hot.
    assert!(after.batches < before.batches / 50, "{after:?}");
    assert!(after.cold_batches >= 1);
    // Unique sequence numbers and times compress least; still 5x.
    assert!(
        after.bytes * 5 < before.bytes,
        "{} bytes held after compaction, {} before",
        after.bytes,
        before.bytes
    );
    assert_eq!(after.plain_bytes, before.bytes);
    assert_eq!(after.rows, before.rows);
    assert_balanced(&after);
    assert_eq!(store.total_bytes(), after.bytes);

    // Readers see the same rows in the same order and the same schema,
    // once from the codec and once from the cache.
    for _ in 0..2 {
        let snapshot = store.snapshot(&name).expect("table");
        assert_eq!(seqs(&snapshot.batches), rows_before);
        assert!(snapshot.batches.iter().all(|b| b.schema() == schema()));
        let comms: Vec<String> = snapshot
            .batches
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_string::<i32>()
                    .iter()
                    .map(|c| c.unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            comms
                .iter()
                .zip(&rows_before)
                .all(|(c, s)| *c == format!("proc-{}", s % 7))
        );
    }
    let cache = store.cache_stats();
    assert!(
        cache.hits >= 1 && cache.misses >= 1 && cache.bytes <= cache.limit,
        "{cache:?}"
    );
    assert_eq!(store.unreadable_batches(), 0);
    // Compacting again finds nothing new.
    assert_eq!(store.compact().batches_out, 0);
}

#[test]
fn max_bytes_holds_with_compressed_batches_and_eviction_stays_exact() {
    let limit = 256 * KI;
    let policy = RetentionPolicy {
        max_bytes: Some(limit),
        max_age: None,
    };
    let (store, clock) = store_at(compacting(policy, None), T0);
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    let mut seq = 0;
    let mut most_rows = 0;
    // Compressible rows, compacted every second as the agent's upkeep does,
    // until ten times the bound has gone in.
    while store.table_stats(&name).expect("table").appended_bytes < 10 * limit {
        trickle(&store, &clock, &name, 10, &mut seq);
        let stats = store.table_stats(&name).expect("table");
        assert!(stats.bytes as f64 <= limit as f64 * 1.1, "{stats:?}");
        store.compact();
        let stats = store.table_stats(&name).expect("table");
        assert!(stats.bytes as f64 <= limit as f64 * 1.1, "{stats:?}");
        assert_balanced(&stats);
        assert_eq!(stats.appended_rows, seq);
        assert_eq!(store.total_bytes(), stats.bytes);
        most_rows = most_rows.max(stats.rows);
    }
    let stats = store.table_stats(&name).expect("table");
    assert!(stats.evicted.max_bytes.rows > 0, "{stats:?}");
    assert_eq!(stats.limited_by, Some(EvictionReason::MaxBytes));
    assert!(
        stats.cold_batches > 0 && stats.compacted_bytes > 0,
        "{stats:?}"
    );
    // What is held is exactly the newest rows, in order...
    let held = seqs(&store.snapshot(&name).expect("table").batches);
    assert_eq!(held.len() as u64, stats.rows);
    assert_eq!(held.last().copied(), Some(seq - 1));
    assert!(held.windows(2).all(|w| w[1] == w[0] + 1));
    // ...and far more of them than the bound holds uncompressed.
    assert!(
        stats.plain_bytes > 3 * limit,
        "{} plain bytes held in {limit}",
        stats.plain_bytes
    );
}

/// A compacting store with one table bounded only by `max_age`.
fn aging_table(max_age: Duration) -> (TableStore, Arc<ManualClock>, TableName) {
    let policy = RetentionPolicy {
        max_bytes: None,
        max_age: Some(max_age),
    };
    let (store, clock) = store_at(compacting(policy, None), T0);
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    (store, clock, name)
}

#[test]
fn cold_batches_never_serve_rows_past_max_age() {
    let max_age = Duration::from_secs(32);
    let (store, clock, name) = aging_table(max_age);
    let mut seq = 0;
    for step in 0..120 {
        trickle(&store, &clock, &name, 10, &mut seq);
        store.compact();
        let now = clock.now_ns();
        let cutoff = now - duration_ns(max_age);
        let snapshot = store.snapshot(&name).expect("table");
        let served: Vec<i64> = snapshot
            .batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<TimestampNanosecondType>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert!(served.iter().all(|&t| t >= cutoff), "step {step}");
        let stats = store.table_stats(&name).expect("table");
        assert_balanced(&stats);
        // Whole cold batches span at most maxAge / 16: the window overshoots
        // by no more than that.
        if let Some(window) = stats.window {
            assert!(
                window <= max_age + max_age / 16 + Duration::from_millis(100),
                "{window:?}"
            );
        }
    }
    let stats = store.table_stats(&name).expect("table");
    assert!(
        stats.evicted.max_age.batches > 0 && stats.cold_batches > 0,
        "{stats:?}"
    );
}

#[test]
fn scans_decode_cold_batches_when_loaded_and_only_the_columns_asked() {
    let max_age = Duration::from_secs(32);
    let (store, clock, name) = aging_table(max_age);
    let mut seq = 0;
    for _ in 0..60 {
        trickle(&store, &clock, &name, 10, &mut seq);
        store.compact();
    }
    // A moment later the maxAge cutoff falls inside a cold batch.
    clock.advance(Duration::from_millis(1_050));
    let misses = store.cache_stats().misses;
    let scan = store.scan(&name).expect("table");
    assert!(!scan.all_ready());
    assert_eq!(store.cache_stats().misses, misses, "nothing decoded yet");
    assert_eq!(
        scan.parts.iter().map(ScanPart::rows).sum::<usize>() as u64,
        scan.info.rows
    );
    assert_eq!(
        store.info(&name).map(|i| i.rows),
        Some(scan.info.rows),
        "info without reading"
    );

    let whole = store.snapshot(&name).expect("table");
    let cutoff = clock.now_ns() - duration_ns(max_age);
    let served = seqs(&whole.batches);
    assert!(
        (served.len() as u64) < scan.info.rows,
        "some held rows are past maxAge: {} served of {}",
        served.len(),
        scan.info.rows
    );
    // Loading only `seq` (not `time_`) still leaves out rows past maxAge.
    let mut projected = Vec::new();
    for part in &scan.parts {
        if let Some(batch) = part.load(Some(&[2])).expect("loads") {
            assert_eq!(batch.num_columns(), 1);
            projected.push(batch);
        }
    }
    assert_eq!(seqs(&projected), served);
    let times = scan.load_all().expect("loads");
    assert!(times.iter().all(|b| {
        b.column(0)
            .as_primitive::<TimestampNanosecondType>()
            .values()
            .iter()
            .all(|&t| t >= cutoff)
    }));
    assert!(store.cache_stats().misses > misses);
    // A column the table does not have is an error, not an empty read.
    let cold = scan.parts.iter().find(|p| !p.is_ready()).expect("cold");
    assert!(cold.load(Some(&[3])).is_err());
    assert_eq!(store.unreadable_batches(), 0);
}

#[test]
fn the_budget_evicts_cold_batches_whole_and_counts_them() {
    let budget = 128 * KI;
    let (store, clock) = store_at(compacting(RetentionPolicy::UNBOUNDED, Some(budget)), T0);
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    let mut seq = 0;
    for _ in 0..200 {
        trickle(&store, &clock, &name, 10, &mut seq);
        store.compact();
        assert!(store.total_bytes() <= budget);
    }
    let stats = store.table_stats(&name).expect("table");
    assert!(
        stats.evicted.budget.batches > 0 && stats.cold_batches > 0,
        "{stats:?}"
    );
    assert_balanced(&stats);
    assert_eq!(stats.appended_rows, seq);
    let held = seqs(&store.snapshot(&name).expect("table").batches);
    assert_eq!(held.len() as u64, stats.rows);
    assert_eq!(held.last().copied(), Some(seq - 1));
}

#[test]
fn followers_and_rollup_readers_see_compacted_tables_whole() {
    let (store, clock) = store_at(compacting(RetentionPolicy::UNBOUNDED, None), T0);
    let name = TableName::new("shop", "opens");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    let mut seq = 0;
    trickle(&store, &clock, &name, 100, &mut seq);
    store.compact();
    let (snapshot, mut feed) = store.follow(&name).expect("table");
    assert_eq!(seqs(&snapshot.batches), (0..seq).collect::<Vec<_>>());
    let held_before = seq;
    // Fewer batches than the feed's depth (16).
    trickle(&store, &clock, &name, 12, &mut seq);
    store.compact();
    let mut fed = Vec::new();
    while let Ok(batch) = feed.try_recv() {
        fed.extend(seqs(&[batch]));
    }
    assert_eq!(fed, (held_before..seq).collect::<Vec<_>>());
    // Recent rows only: the cold history before them is skipped.
    let since = clock.now_ns() - SEC;
    let recent = store.snapshot_since(&name, Some(since)).expect("table");
    let all = store.snapshot(&name).expect("table");
    assert!(recent.batches.len() < all.batches.len());
    assert_eq!(recent.info.rows, seq);
    assert_eq!(seqs(&recent.batches).last().copied(), Some(seq - 1));
}

#[test]
fn a_slow_table_is_merged_into_few_cold_batches() {
    // The agent's defaults: cold after 30 s, runs wait five minutes to fill.
    let config = StoreConfig {
        compaction: Some(Compaction::default()),
        ..config(RetentionPolicy::DEFAULT, None)
    };
    let (store, clock) = store_at(config, T0);
    let name = TableName::new("shop", "slow");
    store
        .create_table(name.clone(), schema())
        .expect("new table");
    let mut seq = 0;
    // One 10-row batch a second for twenty minutes, upkeep every second.
    for _ in 0..1200 {
        clock.advance(Duration::from_secs(1));
        let now = clock.now_ns();
        let times: Vec<i64> = (0..10).map(|i| now - SEC + i * (SEC / 10)).collect();
        store.append(&name, batch(seq, &times)).expect("append");
        seq += 10;
        store.compact();
    }
    let stats = store.table_stats(&name).expect("table");
    // At most 5.5 minutes hot (330 batches); the rest in runs of about five
    // minutes each.
    assert!(stats.batches <= 340, "{stats:?}");
    assert!(
        stats.cold_batches >= 2 && stats.cold_batches <= 6,
        "{stats:?}"
    );
    assert_eq!(stats.rows, seq);
    assert_eq!(
        seqs(&store.snapshot(&name).expect("table").batches),
        (0..seq).collect::<Vec<_>>()
    );
}
