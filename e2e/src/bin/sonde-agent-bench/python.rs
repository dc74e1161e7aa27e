//! The Arrow clients, in Python (`scripts/bench-flight.py`): the bench's
//! own virtualenv, pyarrow's Flight server holding one table, and a client
//! answering one JSON command at a time.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

/// The client script, written next to the bench's other files at start.
pub const SCRIPT: &str = include_str!("../../../../scripts/bench-flight.py");

/// The versions the test harness pins for its virtualenv; the bench's own
/// uses the same ones.
const VERSIONS: &str = include_str!("../../../../scripts/harness/versions.env");

/// DuckDB, only ever installed into the bench's virtualenv.
const DUCKDB_VERSION: &str = "2.0.1";

/// How long one command may take before the bench gives up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

fn pinned(key: &str) -> anyhow::Result<&'static str> {
    VERSIONS
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .with_context(|| format!("{key} is missing in scripts/harness/versions.env"))
}

/// `$SONDE_CACHE/venv-bench`'s interpreter, with pyarrow and the ADBC Flight
/// SQL driver at the harness's versions plus DuckDB; created (or
/// recreated when the versions changed) if needed. The test harness's
/// virtualenv is left alone.
pub fn bench_python() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("SONDE_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/sonde"), PathBuf::from);
    let venv = cache.join("venv-bench");
    let python = venv.join("bin/python");
    let marker = venv.join(".sonde-requirements");
    let adbc = pinned("ADBC_VERSION")?;
    let want = format!(
        "pyarrow=={} adbc-driver-manager=={adbc} adbc-driver-flightsql=={adbc} duckdb=={DUCKDB_VERSION}",
        pinned("PYARROW_VERSION")?
    );
    if python.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == want) {
        return Ok(python);
    }
    eprintln!("bench venv: installing {want} into {}", venv.display());
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(want.split(' ')))?;
    run(Command::new(&python).args([
        "-c",
        "import pyarrow.flight, adbc_driver_flightsql.dbapi, duckdb",
    ]))?;
    std::fs::write(&marker, format!("{want}\n"))?;
    Ok(python)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// A Python process that answers JSON lines; killed and reaped on drop.
struct JsonProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    what: &'static str,
}

impl JsonProcess {
    fn start(
        python: &Path,
        script: &Path,
        args: &[&str],
        what: &'static str,
    ) -> anyhow::Result<Self> {
        let mut child = e2e::die_with_parent(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start the {what}"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
            what,
        })
    }

    fn reply(&mut self) -> anyhow::Result<Value> {
        let line = self.lines.recv_timeout(REPLY_TIMEOUT).map_err(|_| {
            anyhow::anyhow!(
                "the {} ended or gave no answer within {REPLY_TIMEOUT:?} (its errors are above)",
                self.what
            )
        })?;
        let value: Value =
            serde_json::from_str(&line).with_context(|| format!("{} said: {line}", self.what))?;
        if let Some(error) = value.get("error") {
            bail!("{}: {error}", self.what);
        }
        Ok(value)
    }
}

impl Drop for JsonProcess {
    fn drop(&mut self) {
        // Closing stdin ends both roles; kill in case it hangs.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pyarrow's Flight server holding one table read from the agent.
pub struct TableServer {
    _process: JsonProcess,
    pub uri: String,
    pub rows: u64,
}

impl TableServer {
    pub fn start(
        python: &Path,
        script: &Path,
        agent_uri: &str,
        ticket: &str,
    ) -> anyhow::Result<Self> {
        let mut process = JsonProcess::start(
            python,
            script,
            &["serve", agent_uri, ticket],
            "pyarrow Flight server",
        )?;
        let ready = process.reply()?;
        let port = ready["port"].as_u64().context("the server named no port")?;
        Ok(Self {
            uri: format!("grpc://127.0.0.1:{port}"),
            rows: ready["rows"].as_u64().unwrap_or_default(),
            _process: process,
        })
    }
}

/// The pyarrow / ADBC / DuckDB client.
pub struct ArrowClient(JsonProcess);

impl ArrowClient {
    pub fn start(python: &Path, script: &Path) -> anyhow::Result<Self> {
        JsonProcess::start(python, script, &["client"], "Arrow client").map(Self)
    }

    /// Sends one command and waits for its answer.
    pub fn call(&mut self, command: Value) -> anyhow::Result<Value> {
        let stdin = self
            .0
            .stdin
            .as_mut()
            .context("the client's stdin is closed")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        self.0.reply()
    }
}
