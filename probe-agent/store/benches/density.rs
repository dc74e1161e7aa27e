//! How much history a node holds per MiB: the same rows in a store that
//! keeps batches as the capture path seals them (the plain representation)
//! and in one that compacts them into dictionary-encoded, compressed cold
//! batches, side by side in one run. Also what it costs: append and
//! compaction time per row, and a full-table GROUP BY over each.
//!
//! `cargo bench --locked -p probe-store --bench density [-- --out DIR]`
//! (or `make bench`, which passes `--out` and joins `DIR/storage.md` and
//! `DIR/storage.json` into its report). It measures and prints; it asserts
//! nothing.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        Int32Builder, Int64Builder, StringBuilder, TimestampNanosecondBuilder, UInt32Builder,
        UInt64Builder,
    },
    cast::AsArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use crds::AggregateFn;
use probe_store::{
    AggregateSpec, Compaction, ManualClock, RetentionPolicy, RollupEngine, RollupSpec, StoreConfig,
    TableName, TableSource, TableStore,
};

thread_local! {
    /// What was printed, for the report's Markdown part.
    static TEXT: RefCell<String> = const { RefCell::new(String::new()) };
    /// `"key": value` pairs for the report's JSON part.
    static FIGURES: RefCell<Vec<(String, f64)>> = const { RefCell::new(Vec::new()) };
}

/// Prints a line and keeps it for the report.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        TEXT.with(|t| {
            let mut t = t.borrow_mut();
            t.push_str(&line);
            t.push('\n');
        });
    }};
}

fn figure(key: String, value: f64) {
    FIGURES.with(|f| f.borrow_mut().push((key, value)));
}

const SEC: i64 = 1_000_000_000;
/// A minute boundary, so rollup windows line up.
const T0: i64 = 28_333_333 * 60 * SEC;
const MIB: f64 = (1 << 20) as f64;
/// The capture path seals a batch every 8192 rows or every second.
const BATCH_ROWS: usize = 8192;

/// The columns every Tracepoint table starts with (as `probe_capture::rows`).
fn standard_fields() -> Vec<Field> {
    vec![
        Field::new(
            "time_",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("node", DataType::Utf8, false),
        Field::new("pid", DataType::UInt32, false),
        Field::new("tid", DataType::UInt32, false),
        Field::new("comm", DataType::Utf8, false),
        Field::new("cgroup_id", DataType::UInt64, false),
        Field::new("namespace", DataType::Utf8, true),
        Field::new("pod", DataType::Utf8, true),
        Field::new("container", DataType::Utf8, true),
    ]
}

/// A process in a pod: what its rows' standard columns say.
struct Process {
    pid: u32,
    comm: &'static str,
    cgroup_id: u64,
    namespace: String,
    pod: String,
    container: &'static str,
}

fn processes(pods: usize) -> Vec<Process> {
    let comms = ["nginx", "envoy", "java", "python3"];
    let containers = ["app", "sidecar"];
    (0..pods * 2)
        .map(|i| {
            let pod = i / 2;
            Process {
                pid: 4000 + 37 * i as u32,
                comm: comms[i % comms.len()],
                cgroup_id: 9000 + i as u64,
                namespace: ["shop", "payments", "search"][pod % 3].to_owned(),
                pod: format!("web-7c9f8d6b5-{pod:05x}"),
                container: containers[i % 2],
            }
        })
        .collect()
}

/// A xorshift generator: the same rows every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Builders as the capture path fills them, one batch at a time.
struct Rows {
    schema: SchemaRef,
    time: TimestampNanosecondBuilder,
    node: StringBuilder,
    pid: UInt32Builder,
    tid: UInt32Builder,
    comm: StringBuilder,
    cgroup_id: UInt64Builder,
    namespace: StringBuilder,
    pod: StringBuilder,
    container: StringBuilder,
    filename: Option<(StringBuilder, Int32Builder, Int64Builder, UInt64Builder)>,
}

impl Rows {
    fn new(with_files: bool) -> Self {
        let mut fields = standard_fields();
        if with_files {
            fields.extend([
                Field::new("filename", DataType::Utf8, false),
                Field::new("flags", DataType::Int32, false),
                Field::new("ret", DataType::Int64, false),
                Field::new("latency", DataType::UInt64, false),
            ]);
        }
        Self {
            schema: Arc::new(Schema::new(fields)),
            time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            node: StringBuilder::new(),
            pid: UInt32Builder::new(),
            tid: UInt32Builder::new(),
            comm: StringBuilder::new(),
            cgroup_id: UInt64Builder::new(),
            namespace: StringBuilder::new(),
            pod: StringBuilder::new(),
            container: StringBuilder::new(),
            filename: with_files.then(|| {
                (
                    StringBuilder::new(),
                    Int32Builder::new(),
                    Int64Builder::new(),
                    UInt64Builder::new(),
                )
            }),
        }
    }

    fn append(&mut self, time: i64, process: &Process, rng: &mut Rng) {
        self.time.append_value(time);
        self.node
            .append_value("ip-10-0-12-34.eu-west-1.compute.internal");
        self.pid.append_value(process.pid);
        self.tid.append_value(process.pid + (rng.next() % 4) as u32);
        self.comm.append_value(process.comm);
        self.cgroup_id.append_value(process.cgroup_id);
        self.namespace.append_value(&process.namespace);
        self.pod.append_value(&process.pod);
        self.container.append_value(process.container);
        if let Some((filename, flags, ret, latency)) = &mut self.filename {
            let r = rng.next();
            // Mostly the same config and library files; one in ten unique.
            if r.is_multiple_of(10) {
                filename.append_value(format!("/tmp/upload-{:016x}", rng.next()));
            } else {
                filename.append_value(format!(
                    "/srv/{}/static/asset-{}.js",
                    process.comm,
                    (r >> 8) % 150
                ));
            }
            flags.append_value([0, 0o100, 0o2000][(r >> 20) as usize % 3]);
            ret.append_value(3 + ((r >> 24) % 40) as i64);
            latency.append_value(800 + (r >> 32) % 20_000);
        }
    }

    fn seal(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.node.finish()),
            Arc::new(self.pid.finish()),
            Arc::new(self.tid.finish()),
            Arc::new(self.comm.finish()),
            Arc::new(self.cgroup_id.finish()),
            Arc::new(self.namespace.finish()),
            Arc::new(self.pod.finish()),
            Arc::new(self.container.finish()),
        ];
        if let Some((filename, flags, ret, latency)) = &mut self.filename {
            columns.push(Arc::new(filename.finish()));
            columns.push(Arc::new(flags.finish()));
            columns.push(Arc::new(ret.finish()));
            columns.push(Arc::new(latency.finish()));
        }
        #[allow(clippy::expect_used)] // The builders follow the schema.
        RecordBatch::try_new(Arc::clone(&self.schema), columns).expect("builders match the schema")
    }
}

/// One store and the clock it runs on.
struct Subject {
    store: TableStore,
    clock: Arc<ManualClock>,
    append: Duration,
    compact: Duration,
    compacted_rows: u64,
    compaction_failures: u64,
}

impl Subject {
    fn new(compaction: Option<Compaction>) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let config = StoreConfig {
            default_policy: RetentionPolicy::UNBOUNDED,
            budget_bytes: None,
            compaction,
            ..StoreConfig::default()
        };
        Self {
            store: TableStore::with_clock(config, clock.clone()),
            clock,
            append: Duration::ZERO,
            compact: Duration::ZERO,
            compacted_rows: 0,
            compaction_failures: 0,
        }
    }

    fn append(&mut self, name: &TableName, batch: RecordBatch) {
        let start = Instant::now();
        if let Err(e) = self.store.append(name, batch) {
            eprintln!("append to {name} failed: {e}");
        }
        self.append += start.elapsed();
    }

    /// What the agent's upkeep does every second.
    fn upkeep(&mut self) {
        let start = Instant::now();
        let done = self.store.compact();
        self.compact += start.elapsed();
        self.compacted_rows += done.rows;
        self.compaction_failures += done.failures;
    }
}

/// Feeds both subjects the same batches: `rate` rows a second for `span`.
fn fill(
    subjects: &mut [&mut Subject],
    name: &TableName,
    with_files: bool,
    rate: usize,
    span: Duration,
    pods: usize,
) {
    let processes = processes(pods);
    let mut rows = Rows::new(with_files);
    for subject in subjects.iter() {
        if let Err(e) = subject
            .store
            .create_table(name.clone(), Arc::clone(&rows.schema))
        {
            eprintln!("creating {name} failed: {e}");
        }
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for second in 0..span.as_secs() as i64 {
        let start = T0 + second * SEC;
        let mut pending = 0;
        for i in 0..rate {
            let jitter = (rng.next() % 1000) as i64;
            let time = start + (i as i64 * SEC) / rate as i64 + jitter;
            let process = &processes[(rng.next() % processes.len() as u64) as usize];
            rows.append(time, process, &mut rng);
            pending += 1;
            if pending == BATCH_ROWS {
                let batch = rows.seal();
                subjects
                    .iter_mut()
                    .for_each(|s| s.append(name, batch.clone()));
                pending = 0;
            }
        }
        if pending > 0 {
            let batch = rows.seal();
            subjects
                .iter_mut()
                .for_each(|s| s.append(name, batch.clone()));
        }
        for subject in subjects.iter_mut() {
            subject.clock.set(start + SEC);
            subject.upkeep();
        }
    }
}

/// `SELECT namespace, pod, comm, count(*) ... GROUP BY namespace, pod, comm`
/// over a snapshot of the whole table; returns the groups and the time.
fn group_by(store: &TableStore, name: &TableName) -> (usize, u64, Duration) {
    let start = Instant::now();
    let Some(snapshot) = store.snapshot(name) else {
        return (0, 0, start.elapsed());
    };
    let mut groups: HashMap<String, u64> = HashMap::new();
    let mut key = String::new();
    let mut rows = 0;
    for batch in &snapshot.batches {
        let column = |n: &str| {
            batch
                .column_by_name(n)
                .map(|c| c.as_string::<i32>().clone())
        };
        let (Some(ns), Some(pod), Some(comm)) =
            (column("namespace"), column("pod"), column("comm"))
        else {
            continue;
        };
        for i in 0..batch.num_rows() {
            key.clear();
            key.push_str(ns.value(i));
            key.push('/');
            key.push_str(pod.value(i));
            key.push('/');
            key.push_str(comm.value(i));
            match groups.get_mut(key.as_str()) {
                Some(count) => *count += 1,
                None => {
                    groups.insert(key.clone(), 1);
                }
            }
            rows += 1;
        }
    }
    (groups.len(), rows, start.elapsed())
}

fn per_row(d: Duration, rows: u64) -> f64 {
    d.as_nanos() as f64 / rows.max(1) as f64
}

fn report(label: &str, name: &TableName, plain: &Subject, dense: &Subject) {
    let (Some(p), Some(d)) = (plain.store.table_stats(name), dense.store.table_stats(name)) else {
        say!("{label}: no table");
        return;
    };
    let rows_per_mib = |rows: u64, bytes: u64| rows as f64 / (bytes.max(1) as f64 / MIB);
    let plain_density = rows_per_mib(p.rows, p.bytes);
    let dense_density = rows_per_mib(d.rows, d.bytes);
    say!("{label}");
    say!(
        "  plain: {:>10} rows in {:>8.2} MiB, {:>4} batches: {:>9.0} rows/MiB",
        p.rows,
        p.bytes as f64 / MIB,
        p.batches,
        plain_density
    );
    if dense.compaction_failures > 0 {
        say!(
            "  COMPACTION FAILED {} times: the dense figures are not valid",
            dense.compaction_failures
        );
    }
    say!(
        "  dense: {:>10} rows in {:>8.2} MiB, {:>4} batches ({} cold): {:>9.0} rows/MiB  = {:.1}x plain",
        d.rows,
        d.bytes as f64 / MIB,
        d.batches,
        d.cold_batches,
        dense_density,
        dense_density / plain_density
    );
    let key = label.split_whitespace().next().unwrap_or(label);
    let key = key.trim_matches(|c| c == '(' || c == ')');
    figure(format!("{key}_plain_rows_per_mib"), plain_density);
    figure(format!("{key}_dense_rows_per_mib"), dense_density);
    figure(
        format!("{key}_density_ratio"),
        dense_density / plain_density,
    );
}

fn costs(label: &str, name: &TableName, plain: &Subject, dense: &Subject, appended: u64) {
    say!(
        "  append: plain {:.0} ns/row, dense {:.0} ns/row; compaction (upkeep, off the drain thread): {:.0} ns/row",
        per_row(plain.append, appended),
        per_row(dense.append, appended),
        per_row(dense.compact, dense.compacted_rows)
    );
    let (groups, rows, plain_time) = group_by(&plain.store, name);
    let (dense_groups, dense_rows, first) = group_by(&dense.store, name);
    let (_, _, again) = group_by(&dense.store, name);
    let cache = dense.store.cache_stats();
    say!(
        "  full-table GROUP BY namespace, pod, comm ({groups} groups, {rows} rows): plain {:.1} ms, compressed {:.1} ms, again {:.1} ms (decode cache {:.0} of {:.0} MiB){}",
        plain_time.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        again.as_secs_f64() * 1e3,
        cache.bytes as f64 / MIB,
        cache.limit as f64 / MIB,
        if (groups, rows) == (dense_groups, dense_rows) {
            ""
        } else {
            "  RESULTS DIFFER"
        }
    );
    let key = label.trim_matches(|c| c == '(' || c == ')');
    figure(
        format!("{key}_append_ns_per_row_plain"),
        per_row(plain.append, appended),
    );
    figure(
        format!("{key}_append_ns_per_row_dense"),
        per_row(dense.append, appended),
    );
    figure(
        format!("{key}_group_by_compressed_over_plain"),
        first.as_secs_f64() / plain_time.as_secs_f64().max(1e-9),
    );
}

fn main() {
    let hour = Duration::from_secs(3600);
    say!("Rows held per MiB: batches as sealed (plain) vs compacted cold batches (dense),");
    say!("the same rows in one run; cold after 30 s, as the agent's default.\n");

    // (a) getppid: the standard columns only.
    let getppid = TableName::new("shop", "getppid");
    let (mut plain, mut dense) = (
        Subject::new(None),
        Subject::new(Some(Compaction::default())),
    );
    fill(
        &mut [&mut plain, &mut dense],
        &getppid,
        false,
        500,
        hour,
        24,
    );
    report(
        "(a) getppid, standard columns, 500 rows/s for 1 h, 24 pods",
        &getppid,
        &plain,
        &dense,
    );
    costs("(a)", &getppid, &plain, &dense, 500 * 3600);

    // (b) file_opens with file names, flags, return value and latency.
    let opens = TableName::new("shop", "file_opens");
    let (mut plain, mut dense) = (
        Subject::new(None),
        Subject::new(Some(Compaction::default())),
    );
    fill(&mut [&mut plain, &mut dense], &opens, true, 200, hour, 24);
    report(
        "(b) file_opens with filenames, 200 rows/s for 1 h, 24 pods",
        &opens,
        &plain,
        &dense,
    );
    costs("(b)", &opens, &plain, &dense, 200 * 3600);

    // (c) a per-minute rollup of file_opens by pod, six hours of it.
    let rollup = TableName::new("shop", "file_opens_1m");
    let (mut plain, mut dense) = (
        Subject::new(None),
        Subject::new(Some(Compaction::default())),
    );
    let spec = RollupSpec {
        source: opens.clone(),
        output: rollup.clone(),
        interval: Duration::from_secs(60),
        group_by: vec!["namespace".into(), "pod".into()],
        aggregates: [
            (AggregateFn::Count, None),
            (AggregateFn::P50, Some("latency")),
            (AggregateFn::P99, Some("latency")),
            (AggregateFn::Sum, Some("latency")),
        ]
        .into_iter()
        .map(
            |(function, column): (AggregateFn, Option<&str>)| AggregateSpec {
                function,
                column: column.map(str::to_owned),
                output: match column {
                    Some(c) => format!("{function}_{c}"),
                    None => function.to_string(),
                },
            },
        )
        .collect(),
        keep: Duration::from_secs(7 * 24 * 3600),
        detect: Vec::new(),
        keep_raw: None,
    };
    let mut engines: Vec<RollupEngine> = [&plain, &dense]
        .iter()
        .map(|s| {
            let mut engine = RollupEngine::new(s.store.clone(), "node-a", Duration::ZERO);
            engine.set_rollups(vec![spec.clone()]);
            engine
        })
        .collect();
    for hour_index in 0..24 {
        // An hour of source rows at a time, rolled up minute by minute.
        for subject in [&mut plain, &mut dense] {
            subject.clock.set(T0 + hour_index * 3600 * SEC);
        }
        fill_hour(&mut plain, &mut dense, &opens, hour_index, &mut engines);
    }
    report(
        "(c) file_opens_1m rollup (count, p50, p99, sum by pod), 24 h",
        &rollup,
        &plain,
        &dense,
    );
    let rows = plain
        .store
        .table_stats(&rollup)
        .map_or(0, |s| s.appended_rows);
    say!("  ({rows} rollup rows, one batch a minute as the rollup writes them)");
    write_report();
}

/// With `--out DIR`: the printed lines as `DIR/storage.md`, the figures as
/// `DIR/storage.json`.
fn write_report() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
    else {
        return;
    };
    let text = TEXT.with(|t| t.borrow().clone());
    let markdown = format!("## Storage density\n\n```text\n{text}```\n\n");
    let json = FIGURES.with(|f| {
        let pairs: Vec<String> = f
            .borrow()
            .iter()
            .map(|(k, v)| format!("\"{k}\": {}", if v.is_finite() { *v } else { 0.0 }))
            .collect();
        format!("{{{}}}\n", pairs.join(", "))
    });
    let dir = std::path::Path::new(dir);
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join("storage.md"), markdown))
        .and_then(|()| std::fs::write(dir.join("storage.json"), json));
    if let Err(e) = written {
        eprintln!("cannot write the report to {}: {e}", dir.display());
        std::process::exit(1);
    }
}

/// An hour of low-rate source rows for the rollup, with a rollup tick and
/// an upkeep every simulated minute.
fn fill_hour(
    plain: &mut Subject,
    dense: &mut Subject,
    source: &TableName,
    hour_index: i64,
    engines: &mut [RollupEngine],
) {
    let processes = processes(24);
    let mut rows = Rows::new(true);
    for subject in [&*plain, &*dense] {
        let _ = subject
            .store
            .create_table(source.clone(), Arc::clone(&rows.schema));
        // The source is not what is measured here: keep it small.
        let _ = subject.store.set_policy(
            source,
            Some(RetentionPolicy {
                max_bytes: None,
                max_age: Some(Duration::from_secs(300)),
            }),
        );
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ hour_index as u64);
    let start = T0 + hour_index * 3600 * SEC;
    for minute in 0..60 {
        let minute_start = start + minute * 60 * SEC;
        for i in 0..600 {
            let time = minute_start + i * (60 * SEC / 600);
            let process = &processes[(rng.next() % processes.len() as u64) as usize];
            rows.append(time, process, &mut rng);
        }
        let batch = rows.seal();
        plain.append(source, batch.clone());
        dense.append(source, batch);
        let now = minute_start + 60 * SEC;
        for (subject, engine) in [&mut *plain, &mut *dense]
            .into_iter()
            .zip(engines.iter_mut())
        {
            subject.clock.set(now);
            for (table, result) in engine.tick(now) {
                if let Err(e) = result {
                    eprintln!("rollup {table} failed: {e}");
                }
            }
            subject.upkeep();
        }
    }
}
