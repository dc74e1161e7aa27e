//! Processes the harness starts: logged to a file, recorded by pid, killed and
//! reaped on drop, and tied to the test process so they die with it.

use std::{
    ffi::OsString,
    fs::File,
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::{Component, HarnessError};

/// How often start-up probes run.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// A process the harness started, as recorded when it was spawned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnedProcess {
    /// The name of the cluster, Prometheus or collector that started it.
    pub instance: String,
    pub component: Component,
    pub pid: u32,
}

fn spawned() -> &'static Mutex<Vec<SpawnedProcess>> {
    static SPAWNED: OnceLock<Mutex<Vec<SpawnedProcess>>> = OnceLock::new();
    SPAWNED.get_or_init(Default::default)
}

/// Every process the harness has started in this test process, running or not.
/// Tests use it to prove that nothing was left behind.
pub fn spawned_processes() -> Vec<SpawnedProcess> {
    spawned().lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Adds a started process to [`spawned_processes`].
pub(crate) fn record(instance: &str, component: Component, pid: u32) {
    spawned()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(SpawnedProcess {
            instance: instance.to_owned(),
            component,
            pid,
        });
}

/// Whether `pid` names a live process (not gone, not a zombie).
pub fn process_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X") | Some("x"))
}

/// CPU time `pid` has used so far, user and system, from `/proc`.
pub fn cpu_time(pid: u32) -> std::io::Result<std::time::Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)?;
    // utime and stime are fields 14 and 15; the command name before them
    // is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> std::io::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no field {} in {path}", i + 3),
            )
        })
    };
    let ticks = ticks(11)? + ticks(12)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|hz| *hz > 0)
        .unwrap_or(100) as u64;
    Ok(std::time::Duration::from_nanos(
        ticks * (1_000_000_000 / per_second),
    ))
}

/// Prefixes a command so the kernel kills it when the thread that started it
/// dies: a test process killed outright leaves no component behind.
pub fn die_with_parent(program: &Path) -> Command {
    const SETPRIV: &str = "/usr/bin/setpriv";
    if Path::new(SETPRIV).exists() {
        let mut cmd = Command::new(SETPRIV);
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read(path) else {
        return format!("(no log at {})", path.display());
    };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        "(log is empty)".to_owned()
    } else {
        tail
    }
}

/// A running component: killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    component: Component,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `program` with its output in `log` and records its pid under `instance`.
    pub fn spawn(
        instance: &str,
        component: Component,
        program: &Path,
        args: &[OsString],
        log: PathBuf,
    ) -> Result<Self, HarnessError> {
        let spawn_error = |source| HarnessError::Spawn {
            component,
            path: program.to_owned(),
            source,
        };
        let out = File::create(&log).map_err(spawn_error)?;
        let err = out.try_clone().map_err(spawn_error)?;
        let child = die_with_parent(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(spawn_error)?;
        let pid = child.id();
        record(instance, component, pid);
        Ok(Self {
            component,
            child: Some(child),
            pid,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn component(&self) -> Component {
        self.component
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status, if the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn exited_error(&self, status: ExitStatus) -> HarnessError {
        HarnessError::Exited {
            component: self.component,
            status: status.to_string(),
            log: self.log.clone(),
            tail: log_tail(&self.log, 20),
        }
    }

    /// Polls `probe` until it answers true, the process exits, or `timeout` passes.
    pub async fn wait_ready<F, Fut>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: F,
    ) -> Result<(), HarnessError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Err(self.exited_error(status));
            }
            let remaining = timeout.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(HarnessError::NotReady {
                    component: self.component,
                    waited: timeout,
                    probe: what.to_owned(),
                    log: self.log.clone(),
                    tail: log_tail(&self.log, 20),
                });
            }
            // A probe that hangs must not stretch the deadline.
            if let Ok(true) = tokio::time::timeout(remaining, probe()).await {
                return Ok(());
            }
            tokio::time::sleep(PROBE_INTERVAL.min(remaining)).await;
        }
    }

    /// Kills the process and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means it already exited; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Command-line arguments from strings.
pub(crate) fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    items.into_iter().map(Into::into).collect()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_running_and_unused_pid_is_not() {
        assert!(process_running(std::process::id()));
        // Above the kernel's pid_max limit (4194304), so never a process.
        assert!(!process_running(4_194_305));
    }

    #[tokio::test]
    async fn exited_process_is_reported_with_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = ManagedProcess::spawn(
            "unit",
            Component::Etcd,
            Path::new("/bin/sh"),
            &args(["-c", "echo boom-from-test >&2; exit 3"]),
            dir.path().join("sh.log"),
        )
        .unwrap();
        let err = p
            .wait_ready(Duration::from_secs(10), "never", || async { false })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("etcd exited during start-up"), "{text}");
        assert!(text.contains("boom-from-test"), "{text}");
        let pid = p.pid();
        drop(p);
        assert!(!process_running(pid));
    }
}
