//! A real OpenTelemetry Collector: OTLP in over gRPC and HTTP, and what it
//! received written as JSON lines (one OTLP export request per line) that the
//! test reads back.

use std::{
    net::{Ipv4Addr, TcpStream},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    Component, Installation,
    cluster::loopback_http,
    ports::port_for,
    process::{ManagedProcess, args, log_tail},
};

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// The OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Logs,
    Metrics,
    Traces,
}

impl Signal {
    const ALL: [Signal; 3] = [Signal::Logs, Signal::Metrics, Signal::Traces];

    fn name(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
            Signal::Traces => "traces",
        }
    }
}

/// Options of a [`Collector`].
#[derive(Debug, Clone)]
pub struct CollectorBuilder {
    name: Option<String>,
    installation: Installation,
    grpc_port: Option<u16>,
    http_port: Option<u16>,
    ready_timeout: Duration,
}

impl Default for CollectorBuilder {
    fn default() -> Self {
        Self {
            name: None,
            installation: Installation::from_env(),
            grpc_port: None,
            http_port: None,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl CollectorBuilder {
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn installation(mut self, installation: Installation) -> Self {
        self.installation = installation;
        self
    }

    /// The OTLP/gRPC port on 127.0.0.1 (default: a free one).
    pub fn grpc_port(mut self, port: u16) -> Self {
        self.grpc_port = Some(port);
        self
    }

    /// The OTLP/HTTP port on 127.0.0.1 (default: a free one).
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    pub async fn start(self) -> anyhow::Result<Collector> {
        let name = self.name.clone().unwrap_or_else(|| {
            format!(
                "collector-{}-{}",
                std::process::id(),
                INSTANCES.fetch_add(1, Ordering::Relaxed)
            )
        });
        let bin = self.installation.binary(Component::Collector)?;
        let grpc_port = port_for(Component::Collector, self.grpc_port)?;
        let http_port = port_for(Component::Collector, self.http_port)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("sonde-e2e-{name}-"))
            .tempdir()?;
        let mut exporters = serde_json::Map::new();
        let mut pipelines = serde_json::Map::new();
        for signal in Signal::ALL {
            let exporter = format!("file/{}", signal.name());
            exporters.insert(
                exporter.clone(),
                json!({
                    "path": dir.path().join(format!("{}.jsonl", signal.name())),
                    "format": "json",
                    // Tests poll the file; a short flush keeps them quick.
                    "flush_interval": "100ms",
                }),
            );
            pipelines.insert(
                signal.name().to_owned(),
                json!({ "receivers": ["otlp"], "exporters": [exporter] }),
            );
        }
        // JSON is YAML, which the collector reads.
        let config = json!({
            "receivers": { "otlp": { "protocols": {
                "grpc": { "endpoint": format!("127.0.0.1:{grpc_port}") },
                "http": { "endpoint": format!("127.0.0.1:{http_port}") },
            } } },
            "exporters": exporters,
            "service": {
                // Its own metrics would listen on a fixed port shared by every collector.
                "telemetry": { "metrics": { "level": "none" } },
                "pipelines": pipelines,
            },
        });
        let config_path = dir.path().join("otelcol.yaml");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let mut process = ManagedProcess::spawn(
            &name,
            Component::Collector,
            &bin,
            &args([format!("--config={}", config_path.display())]),
            dir.path().join("otelcol.log"),
        )?;
        process
            .wait_ready(
                self.ready_timeout,
                "OTLP gRPC and HTTP ports accept connections",
                || async move { listening(grpc_port) && listening(http_port) },
            )
            .await?;
        Ok(Collector {
            name,
            grpc_port,
            http_port,
            http: loopback_http()?,
            process: Some(process),
            dir: Some(dir),
        })
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A running collector; stopped and its files removed on drop.
#[derive(Debug)]
pub struct Collector {
    name: String,
    grpc_port: u16,
    http_port: u16,
    http: reqwest::Client,
    process: Option<ManagedProcess>,
    dir: Option<tempfile::TempDir>,
}

impl Collector {
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    pub fn builder() -> CollectorBuilder {
        CollectorBuilder::default()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// `127.0.0.1:<port>` of the OTLP/gRPC receiver.
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:<port>` of the OTLP/HTTP receiver (append `/v1/logs` etc.).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Where the file exporter writes what arrived for `signal`.
    pub fn output_path(&self, signal: Signal) -> PathBuf {
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .unwrap_or_default();
        dir.join(format!("{}.jsonl", signal.name()))
    }

    /// Sends an OTLP/JSON export request to the HTTP receiver.
    pub async fn send_json(&self, signal: Signal, request: &Value) -> anyhow::Result<()> {
        let url = format!("{}/v1/{}", self.otlp_http_endpoint(), signal.name());
        let resp = self
            .http
            .post(&url)
            .json(request)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !resp.status().is_success() {
            bail!(
                "the collector answered {} to POST {url}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Every export request received for `signal` so far, as OTLP/JSON.
    pub fn received(&self, signal: Signal) -> anyhow::Result<Vec<Value>> {
        let path = self.output_path(signal);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // The last line may still be being written; only complete lines count.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad JSON line: {l}")))
            .collect()
    }

    /// Every log record received so far, across resources and scopes.
    pub fn log_records(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .received(Signal::Logs)?
            .iter()
            .flat_map(|req| items(req, "resourceLogs", "scopeLogs", "logRecords"))
            .collect())
    }

    /// Every metric received so far, across resources and scopes.
    pub fn metrics(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .received(Signal::Metrics)?
            .iter()
            .flat_map(|req| items(req, "resourceMetrics", "scopeMetrics", "metrics"))
            .collect())
    }

    /// Every span received so far, across resources and scopes.
    pub fn spans(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .received(Signal::Traces)?
            .iter()
            .flat_map(|req| items(req, "resourceSpans", "scopeSpans", "spans"))
            .collect())
    }

    /// Polls `read` (e.g. [`Collector::log_records`]) until an item matches `pred`,
    /// and returns it; fails after `timeout`.
    pub async fn wait_for<R, P>(&self, timeout: Duration, read: R, pred: P) -> anyhow::Result<Value>
    where
        R: Fn(&Self) -> anyhow::Result<Vec<Value>>,
        P: Fn(&Value) -> bool,
    {
        let start = Instant::now();
        loop {
            if let Some(found) = read(self)?.into_iter().find(|v| pred(v)) {
                return Ok(found);
            }
            if start.elapsed() > timeout {
                bail!(
                    "the collector {} received nothing matching after {timeout:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn items(request: &Value, resources: &str, scopes: &str, list: &str) -> Vec<Value> {
    let array = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    array(request, resources)
        .iter()
        .flat_map(|r| array(r, scopes))
        .flat_map(|s| array(&s, list))
        .collect()
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
            if std::thread::panicking() {
                eprintln!(
                    "--- collector {} (last lines of its log):\n{}",
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
