//! What anomaly detection costs: CPU per series per rollup interval, for
//! each method, with a series history as the agent keeps it (warm, past its
//! warm-up). Detection runs on the upkeep thread after each rollup tick, so
//! this is the time one interval of N series adds to that tick.
//!
//! `cargo bench --locked -p probe-store --bench detection [-- --out DIR]`
//! (or `make bench`, which passes `--out` and joins `DIR/detection.md` and
//! `DIR/detection.json` into its report). It measures and prints; it
//! asserts nothing.

use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use crds::{DEFAULT_SENSITIVITY, DEFAULT_WARM_UP, DetectionMethod};
use probe_store::{DetectionSpec, RollupDetector};

const MINUTE: i64 = 60_000_000_000;
/// Series per run: pods of one workload (siblings compare them all).
const SERIES: usize = 200;
/// Intervals fed before measuring: past warm-up, history full.
const WARM: i64 = 70;
/// Intervals measured.
const MEASURED: i64 = 10;

/// xorshift64*: the same noise every run.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn window(minute: i64, pods: &[String], noise: &mut Noise) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "time_",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("node", DataType::Utf8, false),
        Field::new("pod", DataType::Utf8, true),
        Field::new("p99_latency", DataType::Float64, true),
    ]));
    let columns: Vec<arrow_array::ArrayRef> = vec![
        Arc::new(
            TimestampNanosecondArray::from_iter_values(pods.iter().map(|_| minute * MINUTE))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(pods.iter().map(|_| "node-a"))),
        Arc::new(StringArray::from_iter_values(
            pods.iter().map(String::as_str),
        )),
        Arc::new(Float64Array::from_iter_values(pods.iter().map(|_| {
            1000.0 * (1.0 + 0.1 * (noise.next() + noise.next() - 1.0))
        }))),
    ];
    match RecordBatch::try_new(schema, columns) {
        Ok(batch) => batch,
        Err(e) => panic!("the bench's batch does not match its schema: {e}"),
    }
}

/// Mean time per series per interval over the measured intervals.
fn cost(method: DetectionMethod, season: Option<usize>) -> Duration {
    let spec = DetectionSpec {
        column: "p99_latency".into(),
        method,
        sensitivity: f64::from(DEFAULT_SENSITIVITY) / 100.0,
        warm_up: DEFAULT_WARM_UP as usize,
        across: (method == DetectionMethod::Siblings).then(|| "pod".into()),
        season,
    };
    let mut detector = RollupDetector::new(vec![spec], vec!["pod".into()], Duration::from_secs(60));
    let pods: Vec<String> = (0..SERIES).map(|i| format!("web-{i}")).collect();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let warm = WARM + season.map_or(0, |s| 2 * s as i64);
    let batches: Vec<RecordBatch> = (0..warm + MEASURED)
        .map(|minute| window(minute, &pods, &mut noise))
        .collect();
    let mut spent = Duration::ZERO;
    for (minute, batch) in batches.iter().enumerate() {
        let start = Instant::now();
        if let Err(e) = detector.observe(batch) {
            panic!("detection failed: {e}");
        }
        if minute as i64 >= warm {
            spent += start.elapsed();
        }
    }
    spent / (SERIES as u32 * MEASURED as u32)
}

fn main() {
    let mut text = String::new();
    let mut figures = Vec::new();
    let _ = writeln!(
        text,
        "CPU per series per rollup interval ({SERIES} series, history warm, \
         sensitivity {DEFAULT_SENSITIVITY}, one thread):"
    );
    for (name, method, season) in [
        ("level_shift", DetectionMethod::LevelShift, None),
        ("forecast_band", DetectionMethod::ForecastBand, None),
        (
            "forecast_band_seasonal_60",
            DetectionMethod::ForecastBand,
            Some(60),
        ),
        ("siblings", DetectionMethod::Siblings, None),
    ] {
        let per_series = cost(method, season);
        let _ = writeln!(
            text,
            "  {name:<28} {:>10.1} µs",
            per_series.as_secs_f64() * 1e6
        );
        figures.push((
            format!("{name}_us_per_series"),
            per_series.as_secs_f64() * 1e6,
        ));
    }
    print!("{text}");
    write_report(&text, &figures);
}

/// With `--out DIR`: the printed lines as `DIR/detection.md`, the figures
/// as `DIR/detection.json`.
fn write_report(text: &str, figures: &[(String, f64)]) {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
    else {
        return;
    };
    let markdown = format!("## Anomaly detection cost\n\n```text\n{text}```\n\n");
    let pairs: Vec<String> = figures
        .iter()
        .map(|(k, v)| format!("\"{k}\": {}", if v.is_finite() { *v } else { 0.0 }))
        .collect();
    let json = format!("{{{}}}\n", pairs.join(", "));
    let dir = std::path::Path::new(dir);
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join("detection.md"), markdown))
        .and_then(|()| std::fs::write(dir.join("detection.json"), json));
    if let Err(e) = written {
        eprintln!("cannot write the report to {}: {e}", dir.display());
        std::process::exit(1);
    }
}
