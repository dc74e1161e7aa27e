//! The traced load: `sonde-demo-app` calling `handle_request(id, size)`,
//! captured by a uprobe with both arguments. The app runs under four names
//! (hard links of one copy, so one inode and one uprobe), which become four
//! `comm` values, each with its own ids and size.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The four commands: name, share of the rows in tenths, and `size`.
pub const GROUPS: [(&str, u64, u32); 4] = [
    ("bench-api", 4, 64),
    ("bench-db", 3, 256),
    ("bench-cache", 2, 1024),
    ("bench-auth", 1, 4096),
];

/// Ids of a group start here: group `g` counts up from `g * ID_STRIDE + 1`.
const ID_STRIDE: u64 = 1 << 40;

/// The demo app under the group names, in a folder of the bench's own.
pub struct Workload {
    binary: PathBuf,
    names: Vec<PathBuf>,
}

impl Workload {
    /// Copies `demo_app` into `dir` (a build replacing the original cannot
    /// disturb the run) and links it under each group's name.
    pub fn new(dir: &Path, demo_app: &Path) -> anyhow::Result<Self> {
        let binary = dir.join("sonde-demo-app");
        std::fs::copy(demo_app, &binary).with_context(|| {
            format!(
                "copy {} (build it with `cargo build --release -p probe-capture --bin sonde-demo-app`)",
                demo_app.display()
            )
        })?;
        let names = GROUPS
            .iter()
            .map(|(name, _, _)| {
                let link = dir.join(name);
                std::fs::hard_link(&binary, &link)
                    .with_context(|| format!("link {}", link.display()))?;
                Ok(link)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { binary, names })
    }

    /// The Tracepoint (namespace `bench`, table `requests`): a uprobe on
    /// `handle_request` with `request_id` (arg0, u64) and `size` (arg1, u32).
    pub fn tracepoint(&self) -> String {
        format!(
            "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: requests
  namespace: bench
spec:
  probe:
    uprobe:
      binary: {:?}
      symbol: handle_request
  fields:
    - name: request_id
      source: arg0
      type: u64
    - name: size
      source: arg1
      type: u32
  table: requests
",
            self.binary.display().to_string()
        )
    }

    /// Runs `requests` calls as group `group`, ids from `first`, to the end.
    fn run(&self, group: usize, first: u64, requests: u64) -> anyhow::Result<()> {
        let (name, _, size) = GROUPS[group];
        let status = e2e::die_with_parent(&self.names[group])
            .args(["--requests", &requests.to_string()])
            .args([
                "--start-id",
                &(group as u64 * ID_STRIDE + 1 + first).to_string(),
            ])
            .args(["--size", &size.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("run {name}"))?;
        if !status.success() {
            bail!("{name} --requests {requests} failed: {status}");
        }
        Ok(())
    }

    /// Makes `rows` calls in all, split over the groups by their shares,
    /// one group after the other (the other core stays with the agent).
    /// Returns the calls per group.
    pub fn burst(&self, rows: u64) -> anyhow::Result<Vec<u64>> {
        let counts = split(rows);
        for (group, &count) in counts.iter().enumerate() {
            eprintln!("  {} makes {count} calls", GROUPS[group].0);
            self.run(group, 0, count)?;
        }
        Ok(counts)
    }

    /// Calls at `rate` per second until `stop` is raised or `deadline`
    /// passes: every 100 ms one run of `rate / 10` calls, the groups in
    /// turn. A tick that runs late is not made up for.
    pub fn paced(
        self: &Arc<Self>,
        rate: u64,
        deadline: Instant,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<anyhow::Result<Paced>> {
        const TICK: Duration = Duration::from_millis(100);
        let workload = Arc::clone(self);
        std::thread::spawn(move || {
            let per_tick = (rate / 10).max(1);
            let start = Instant::now();
            let mut next = start;
            let mut calls = 0u64;
            let mut tick = 0u64;
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                let group = (tick % GROUPS.len() as u64) as usize;
                workload.run(group, tick * per_tick, per_tick)?;
                calls += per_tick;
                tick += 1;
                next += TICK;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Ok(Paced {
                calls,
                seconds: start.elapsed().as_secs_f64(),
            })
        })
    }
}

/// What a paced load did.
#[derive(Clone, Copy, Debug)]
pub struct Paced {
    pub calls: u64,
    pub seconds: f64,
}

/// `rows` split by the groups' shares (the first group takes the rest).
pub fn split(rows: u64) -> Vec<u64> {
    let mut counts: Vec<u64> = GROUPS
        .iter()
        .map(|(_, tenths, _)| rows * tenths / 10)
        .collect();
    counts[0] += rows - counts.iter().sum::<u64>();
    counts
}

/// The exact p99 (linear interpolation between closest ranks) of the ids a
/// burst gave group `group`: `count` consecutive integers.
pub fn expected_p99(group: usize, count: u64) -> f64 {
    let first = (group as u64 * ID_STRIDE + 1) as f64;
    first + 0.99 * count.saturating_sub(1) as f64
}
