//! The agent under measurement: the release `probe-agent` run standalone on
//! a manifests folder the bench writes, its `/metrics` scraped and its
//! memory read from `/proc`. Stopped with SIGINT (then SIGKILL) by pid.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// How long the agent may take to attach its probe.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a stopped agent may take to detach and exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    pid: u32,
    flight_port: u16,
    metrics_port: u16,
    log: PathBuf,
}

impl Agent {
    /// Starts `binary --standalone --manifests DIR` on free loopback ports,
    /// without baseline tables, plus `extra`, and waits until its one
    /// Tracepoint is attached.
    pub fn start(
        binary: &Path,
        manifests: &Path,
        log: PathBuf,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let flight_port = e2e::free_port()?;
        let metrics_port = e2e::free_port()?;
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = e2e::die_with_parent(binary)
            .arg("--standalone")
            .arg("--manifests")
            .arg(manifests)
            .args(["--flight-addr", &format!("127.0.0.1:{flight_port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--baseline-tables", "none"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut agent = Self {
            pid: child.id(),
            child: Some(child),
            flight_port,
            metrics_port,
            log,
        };
        agent.wait_attached()?;
        Ok(agent)
    }

    fn wait_attached(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.ensure_running()?;
            if let Ok(metrics) = self.metrics() {
                if metrics.sum("sonde_probes", &[("state", "attached")]) >= 1.0 {
                    return Ok(());
                }
                let failed = metrics.sum("sonde_probes", &[("state", "failed")])
                    + metrics.sum("sonde_probes", &[("state", "unsupported")]);
                if failed > 0.0 {
                    bail!(
                        "the agent could not attach the bench's Tracepoint; last lines of {}:\n{}",
                        self.log.display(),
                        self.log_tail()
                    );
                }
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "the agent attached nothing within {START_TIMEOUT:?}; last lines of {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Fails, with the log's last lines, if the agent has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the agent was stopped");
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "the agent exited ({status}); last lines of {}:\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Where pyarrow and ADBC reach its Flight endpoint.
    pub fn flight_uri(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.flight_port)
    }

    /// One scrape of `/metrics` (Prometheus text format).
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        http_get(self.metrics_port, "/metrics").map(Metrics)
    }

    /// Resident memory now (VmRSS) and at its peak (VmHWM), in bytes.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("read the agent's /proc status")?;
        let kib = |key: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .map(|n| n * 1024)
                .with_context(|| format!("no {key} in /proc/{}/status", self.pid))
        };
        Ok(Memory {
            rss: kib("VmRSS:")?,
            peak: kib("VmHWM:")?,
        })
    }

    /// CPU time the agent used so far (user and system), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let cpu = e2e::cpu_time(self.pid)
            .with_context(|| format!("the agent's CPU time (pid {})", self.pid))?;
        Ok(cpu.as_secs_f64())
    }

    /// Where the resident memory is, from `/proc/<pid>/smaps`.
    pub fn resident(&self) -> anyhow::Result<Resident> {
        let path = format!("/proc/{}/smaps", self.pid);
        let smaps = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        Ok(Resident::parse(&smaps))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Ctrl-C (the agent detaches its programs), then SIGKILL after a grace
    /// period.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid as i32), Signal::SIGINT)?;
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill()?;
        child.wait()?;
        bail!(
            "the agent did not exit within {STOP_TIMEOUT:?} of SIGINT and was killed; see {}",
            self.log.display()
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Only on an error path: `stop` reports what went wrong otherwise.
        let _ = self.shutdown();
    }
}

/// The agent's memory, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

/// Resident bytes by kind of mapping.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// Anonymous memory (heap, stacks): what the agent allocates.
    pub anon: u64,
    /// Mapped files: the agent's code and the shared libraries'.
    pub files: u64,
    /// BPF maps mapped into the agent: the ring buffers, whose data pages
    /// the kernel maps twice (so records can wrap), and so count twice.
    pub bpf: u64,
}

impl Resident {
    fn parse(smaps: &str) -> Self {
        let mut resident = Self::default();
        let mut kind: Option<fn(&mut Self) -> &mut u64> = None;
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let Some(first) = fields.next() else { continue };
            if first == "Rss:" {
                let kib: u64 = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                if let Some(kind) = kind {
                    *kind(&mut resident) += kib * 1024;
                }
            } else if first.contains('-') && !first.ends_with(':') {
                // A mapping's header: range, perms, offset, dev, inode, [path].
                let path = fields.nth(4).unwrap_or("");
                kind = Some(if path.contains("bpf") {
                    |r| &mut r.bpf
                } else if path.starts_with('/') {
                    |r| &mut r.files
                } else {
                    |r| &mut r.anon
                });
            }
        }
        resident
    }
}

/// A plain HTTP/1.0 GET on loopback: the body, if the status is 200.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers in the response")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("GET {path}: {status}");
    }
    Ok(body.to_owned())
}

/// One exposition of `/metrics`.
pub struct Metrics(String);

impl Metrics {
    /// The sum of the samples of `name` that carry every one of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let (series, value) = rest.rsplit_once(' ')?;
                let plain = series.is_empty();
                let labelled = series.starts_with('{') && series.ends_with('}');
                if !(plain || labelled) {
                    return None; // another metric whose name starts with `name`
                }
                let all = labels.iter().all(|(key, value)| {
                    let pair = format!("{key}=\"{value}\"");
                    series.contains(&format!("{{{pair}")) || series.contains(&format!(",{pair}"))
                });
                all.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::Resident;

    #[test]
    fn resident_memory_is_told_apart_by_mapping() {
        let smaps = "\
55d0c0a00000-55d0c3e00000 r-xp 00000000 08:01 1234 /usr/bin/probe-agent
Size:              53248 kB
Rss:               40000 kB
55d0c5000000-55d0c6000000 rw-p 00000000 00:00 0 [heap]
Rss:               10000 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                2000 kB
VmFlags: rd wr mr mw me ac
7f1000000000-7f1001000000 r--s 00001000 00:0e 77 anon_inode:bpf-map
Rss:               16388 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  24 kB
";
        assert_eq!(
            Resident::parse(smaps),
            Resident {
                anon: (10000 + 2000 + 24) * 1024,
                files: 40000 * 1024,
                bpf: 16388 * 1024,
            }
        );
    }
}
