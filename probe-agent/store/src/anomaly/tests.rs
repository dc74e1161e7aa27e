use std::sync::Arc;

use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use super::*;

const MINUTE: i64 = 60_000_000_000;

/// Deterministic noise: xorshift64* and Box-Muller, so every run sees the
/// same series.
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (bits as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A normal draw with mean 0 and standard deviation 1.
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One rollup window's rows: (pod, p99_latency).
fn window(minute: i64, rows: &[(&str, f64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("node", DataType::Utf8, false),
        Field::new("pod", DataType::Utf8, true),
        Field::new("p99_latency", DataType::Float64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(
                TimestampNanosecondArray::from_iter_values(rows.iter().map(|_| minute * MINUTE))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "node-a"))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .expect("columns match the schema")
}

fn spec(method: DetectionMethod) -> DetectionSpec {
    DetectionSpec {
        column: "p99_latency".into(),
        method,
        sensitivity: f64::from(crds::DEFAULT_SENSITIVITY) / 100.0,
        warm_up: crds::DEFAULT_WARM_UP as usize,
        across: (method == DetectionMethod::Siblings).then(|| "pod".into()),
        season: None,
    }
}

fn detector(method: DetectionMethod) -> RollupDetector {
    RollupDetector::new(
        vec![spec(method)],
        vec!["pod".into()],
        Duration::from_secs(60),
    )
}

/// A pod's p99 around `level` with 5% noise, one value per minute.
fn steady(noise: &mut Noise, level: f64) -> f64 {
    level * (1.0 + 0.05 * noise.normal())
}

/// Feeds `minutes` windows of four pods; `slow(pod, minute)` multiplies a
/// pod's level. Returns every anomaly with the minute it was reported at.
fn run(
    detector: &mut RollupDetector,
    minutes: i64,
    seed: u64,
    slow: impl Fn(usize, i64) -> f64,
) -> Vec<(i64, Anomaly)> {
    let mut noise = Noise(seed);
    let pods = ["web-0", "web-1", "web-2", "web-3"];
    let mut found = Vec::new();
    for minute in 0..minutes {
        let rows: Vec<(&str, f64)> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| (*pod, steady(&mut noise, 1000.0 * slow(i, minute))))
            .collect();
        let anomalies = detector
            .observe(&window(minute, &rows))
            .expect("the batch has the rollup's columns");
        found.extend(anomalies.into_iter().map(|a| (minute, a)));
    }
    found
}

fn pod(anomaly: &Anomaly) -> &str {
    anomaly.group[0].as_deref().unwrap_or("")
}

#[test]
fn sensitivity_maps_to_a_threshold_like_augurs_mad() {
    // augurs documents 0.5 -> 2.92.
    assert!((threshold(0.5) - 2.92).abs() < 0.01);
    assert!((threshold(0.25) - 4.39).abs() < 0.01);
    assert!(threshold(0.9) < threshold(0.1));
}

#[test]
fn level_shift_flags_a_3x_step_within_two_intervals_on_the_right_pod() {
    let mut detector = detector(DetectionMethod::LevelShift);
    let step = 40;
    let found = run(&mut detector, 60, 7, |pod, minute| {
        if pod == 1 && minute >= step { 3.0 } else { 1.0 }
    });
    assert_eq!(found.len(), 1, "one shift, one anomaly: {found:?}");
    let (reported_at, anomaly) = &found[0];
    assert_eq!(pod(anomaly), "web-1");
    // Reported when the step's first or second interval was rolled up.
    assert!(
        (step..step + 2).contains(reported_at),
        "reported at minute {reported_at}, step at {step}"
    );
    assert_eq!(anomaly.time_ns, reported_at * MINUTE);
    assert_eq!(anomaly.method, DetectionMethod::LevelShift);
    // The band is around the old level, and the value at the new one.
    assert!((anomaly.expected - 1000.0).abs() < 50.0, "{anomaly:?}");
    assert!(
        anomaly.lower < 1000.0 && 1000.0 < anomaly.upper,
        "{anomaly:?}"
    );
    assert!(anomaly.upper < 2000.0, "{anomaly:?}");
    assert!(anomaly.value > 2500.0, "{anomaly:?}");
    assert!(anomaly.score > detector.specs()[0].threshold());
    let stats = detector.stats();
    assert_eq!(
        stats.anomalies[&("p99_latency".to_owned(), DetectionMethod::LevelShift)],
        1
    );
    assert_eq!(stats.scores.len(), 4);
}

#[test]
fn forecast_band_flags_a_3x_step_at_once_with_the_band_around_the_old_level() {
    let mut detector = detector(DetectionMethod::ForecastBand);
    let step = 40;
    let found = run(&mut detector, 42, 11, |pod, minute| {
        if pod == 2 && minute >= step { 3.0 } else { 1.0 }
    });
    assert_eq!(found.len(), 1, "{found:?}");
    let (reported_at, anomaly) = &found[0];
    assert_eq!((*reported_at, pod(anomaly)), (step, "web-2"));
    assert!((anomaly.expected - 1000.0).abs() < 100.0, "{anomaly:?}");
    assert!(
        anomaly.lower < 1000.0 && 1000.0 < anomaly.upper,
        "{anomaly:?}"
    );
    assert!(anomaly.upper < 2000.0, "{anomaly:?}");
}

#[test]
fn steady_workloads_give_no_anomalies_in_200_intervals() {
    // Default sensitivity (25, a threshold of 4.39 robust standard
    // deviations) and warm-up (10 intervals), four pods with 5% noise,
    // several seeds.
    for method in [
        DetectionMethod::LevelShift,
        DetectionMethod::ForecastBand,
        DetectionMethod::Siblings,
    ] {
        for seed in [1, 2, 3] {
            let mut detector = detector(method);
            let found = run(&mut detector, 200, seed, |_, _| 1.0);
            assert!(found.is_empty(), "{method} seed {seed}: {found:?}");
            assert_eq!(detector.stats().model_failures, 0, "{method} seed {seed}");
        }
    }
}

#[test]
fn siblings_flag_only_the_slowed_pod() {
    let mut detector = detector(DetectionMethod::Siblings);
    let step = 30;
    let found = run(&mut detector, step + 1, 5, |pod, minute| {
        if pod == 3 && minute >= step { 3.0 } else { 1.0 }
    });
    assert_eq!(found.len(), 1, "{found:?}");
    let (reported_at, anomaly) = &found[0];
    assert_eq!((*reported_at, pod(anomaly)), (step, "web-3"));
    assert!((anomaly.expected - 1000.0).abs() < 100.0, "{anomaly:?}");
    assert!(anomaly.upper < 2000.0, "{anomaly:?}");
    // The slow pod's score is high, the others' low.
    let stats = detector.stats();
    for s in &stats.scores {
        let slow = s.group == "pod=web-3";
        assert_eq!(s.score > 4.39, slow, "{s:?}");
    }
}

#[test]
fn series_beyond_the_bound_are_counted_not_judged() {
    let mut detector = detector(DetectionMethod::LevelShift);
    let pods: Vec<String> = (0..MAX_SERIES + 5).map(|i| format!("pod-{i}")).collect();
    let rows: Vec<(&str, f64)> = pods.iter().map(|p| (p.as_str(), 1.0)).collect();
    detector
        .observe(&window(0, &rows))
        .expect("the batch has the rollup's columns");
    let stats = detector.stats();
    assert_eq!(stats.scores.len(), MAX_SERIES);
    assert_eq!(stats.series_capped, 5);
}

#[test]
fn anomalies_batch_carries_the_group_columns() {
    let mut detector = detector(DetectionMethod::ForecastBand);
    let mut found = Vec::new();
    let mut last = None;
    let mut noise = Noise(3);
    for minute in 0..25 {
        let level = if minute >= 20 { 5000.0 } else { 1000.0 };
        let batch = window(minute, &[("web-0", steady(&mut noise, level))]);
        found.extend(detector.observe(&batch).expect("columns present"));
        if minute == 20 {
            last = Some(batch);
        }
    }
    let rollup = last.expect("minute 20 was fed");
    let flagged: Vec<Anomaly> = found
        .into_iter()
        .filter(|a| a.time_ns == 20 * MINUTE)
        .collect();
    assert_eq!(flagged.len(), 1);
    let schema = anomalies_schema(&rollup.schema(), &["pod".to_owned()]);
    let batch =
        anomalies_batch(&schema, &rollup, "node-a", &["pod".to_owned()], &flagged).expect("builds");
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "time_", "node", "pod", "column", "value", "expected", "lower", "upper", "score",
            "method"
        ]
    );
    assert_eq!(batch.column(2).as_string::<i32>().value(0), "web-0");
    assert_eq!(batch.column(9).as_string::<i32>().value(0), "forecastBand");
}
