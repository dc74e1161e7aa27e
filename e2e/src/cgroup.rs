//! cgroup v2 folders for simulated pods: created, killed and removed.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where cgroup v2 is mounted: the hybrid layout's `/sys/fs/cgroup/unified`
/// when it exists, otherwise a pure v2 `/sys/fs/cgroup`.
pub(crate) fn default_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// Pids of the processes directly in the cgroup.
pub(crate) fn processes(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn populated(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => false,
    }
}

/// Kills every process in the cgroup and below it, waits for them to go (up to
/// `timeout`), and removes the folder and its children.
pub(crate) fn kill_and_remove(dir: &Path, timeout: Duration) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14) signals the whole subtree at once, with no pid races.
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        std::fs::write(&kill, "1")?;
    }
    let start = Instant::now();
    while populated(dir) {
        if start.elapsed() > timeout {
            return Err(io::Error::other(format!(
                "processes {:?} still in {} after {timeout:?}",
                processes(dir),
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_tree(dir)
}

/// cgroup folders are removed with rmdir, children first; their files go with them.
fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
