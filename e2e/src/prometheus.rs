//! A real Prometheus scraping given targets every second, queried through its HTTP API.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::json;

use crate::{
    Component, Installation,
    cluster::loopback_http,
    ports::port_for,
    process::{ManagedProcess, args, log_tail},
};

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// One series of an instant query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone)]
struct Job {
    name: String,
    metrics_path: String,
    targets: Vec<String>,
}

/// Options of a [`Prometheus`].
#[derive(Debug, Clone)]
pub struct PrometheusBuilder {
    name: Option<String>,
    installation: Installation,
    port: Option<u16>,
    scrape_interval: Duration,
    jobs: Vec<Job>,
    ready_timeout: Duration,
}

impl Default for PrometheusBuilder {
    fn default() -> Self {
        Self {
            name: None,
            installation: Installation::from_env(),
            port: None,
            scrape_interval: Duration::from_secs(1),
            jobs: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl PrometheusBuilder {
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn installation(mut self, installation: Installation) -> Self {
        self.installation = installation;
        self
    }

    /// The web port on 127.0.0.1 (default: a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// How often every target is scraped (default 1 s).
    pub fn scrape_interval(mut self, interval: Duration) -> Self {
        self.scrape_interval = interval;
        self
    }

    /// A scrape job: `targets` are `host:port`, scraped at `metrics_path`.
    pub fn job(mut self, name: &str, metrics_path: &str, targets: &[&str]) -> Self {
        self.jobs.push(Job {
            name: name.to_owned(),
            metrics_path: metrics_path.to_owned(),
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        });
        self
    }

    pub async fn start(self) -> anyhow::Result<Prometheus> {
        let name = self.name.clone().unwrap_or_else(|| {
            format!(
                "prometheus-{}-{}",
                std::process::id(),
                INSTANCES.fetch_add(1, Ordering::Relaxed)
            )
        });
        let bin = self.installation.binary(Component::Prometheus)?;
        let port = port_for(Component::Prometheus, self.port)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("sonde-e2e-{name}-"))
            .tempdir()?;
        let interval = format!("{}ms", self.scrape_interval.as_millis().max(1));
        let jobs: Vec<_> = self
            .jobs
            .iter()
            .map(|j| {
                json!({
                    "job_name": j.name,
                    "metrics_path": j.metrics_path,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{ "targets": j.targets }],
                })
            })
            .collect();
        // JSON is YAML, which Prometheus reads.
        let config = json!({
            "global": { "scrape_interval": interval, "evaluation_interval": interval },
            "scrape_configs": jobs,
        });
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let mut process = ManagedProcess::spawn(
            &name,
            Component::Prometheus,
            &bin,
            &args([
                format!("--config.file={}", config_path.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--storage.tsdb.retention.time=1h".to_owned(),
            ]),
            dir.path().join("prometheus.log"),
        )?;
        let http = loopback_http()?;
        let url = format!("http://127.0.0.1:{port}");
        let ready_url = format!("{url}/-/ready");
        process
            .wait_ready(self.ready_timeout, "GET /-/ready", || {
                let (http, ready_url) = (http.clone(), ready_url.clone());
                async move {
                    matches!(http.get(&ready_url).send().await, Ok(r) if r.status().is_success())
                }
            })
            .await?;
        Ok(Prometheus {
            name,
            url,
            http,
            process: Some(process),
            dir: Some(dir),
        })
    }
}

/// A running Prometheus; stopped and its storage removed on drop.
#[derive(Debug)]
pub struct Prometheus {
    name: String,
    url: String,
    http: reqwest::Client,
    process: Option<ManagedProcess>,
    dir: Option<tempfile::TempDir>,
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: Vec<VectorEntry>,
}

#[derive(Deserialize)]
struct VectorEntry {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of each `host:port` target every second.
    pub async fn scraping(targets: &[&str]) -> anyhow::Result<Self> {
        Self::builder()
            .job("sonde-e2e", "/metrics", targets)
            .start()
            .await
    }

    pub fn builder() -> PrometheusBuilder {
        PrometheusBuilder::default()
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// An instant query; the result must be a vector (one sample per series).
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let resp: ApiResponse = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .with_context(|| format!("querying prometheus: {promql}"))?
            .json()
            .await?;
        if resp.status != "success" {
            bail!(
                "prometheus rejected {promql:?}: {}",
                resp.error.unwrap_or_default()
            );
        }
        let data = resp.data.context("prometheus answered without data")?;
        if data.result_type != "vector" {
            bail!("{promql:?} gave a {}, not a vector", data.result_type);
        }
        data.result
            .into_iter()
            .map(|e| {
                let value = match e.value.1.as_str() {
                    "NaN" => f64::NAN,
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse()?,
                };
                Ok(Sample {
                    metric: e.metric,
                    value,
                })
            })
            .collect()
    }

    /// Repeats `query` until it returns at least one sample, or fails after `timeout`.
    pub async fn wait_for(&self, promql: &str, timeout: Duration) -> anyhow::Result<Vec<Sample>> {
        let start = Instant::now();
        loop {
            let samples = self.query(promql).await?;
            if !samples.is_empty() {
                return Ok(samples);
            }
            if start.elapsed() > timeout {
                bail!("no result for {promql:?} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The scrape targets and their health, as `/api/v1/targets` reports them.
    pub async fn targets(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("{}/api/v1/targets", self.url))
            .send()
            .await?
            .json()
            .await?)
    }

    /// The folder holding the config, the storage and the log.
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_owned())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
            if std::thread::panicking() {
                eprintln!(
                    "--- prometheus {} (last lines of its log):\n{}",
                    self.name,
                    log_tail(p.log_path(), 30)
                );
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Runs `promtool check metrics` on an exposition text: it must exit 0 and
/// find nothing to say. The error carries what it said and the text.
pub fn promtool_check(text: &str) -> anyhow::Result<()> {
    let prometheus = crate::Installation::from_env().path_of(crate::Component::Prometheus);
    let promtool = prometheus.with_file_name("promtool");
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "running {} (scripts/install-harness.sh installs it)",
                promtool.display()
            )
        })?;
    std::io::Write::write_all(
        &mut check.stdin.take().context("promtool's stdin")?,
        text.as_bytes(),
    )?;
    let output = check.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Lint findings are printed even when promtool exits 0: none allowed.
    if !output.status.success() || !said.trim().is_empty() {
        bail!(
            "promtool check metrics (exit {}): {said}\n{text}",
            output.status
        );
    }
    Ok(())
}

/// The value of the first sample whose line starts with `series` (a name,
/// or a name and its labels as exposed), in an exposition text.
pub fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
