//! `sonde.process_stats`: every process's resource use, sampled from
//! `/proc` on an interval, one row per process per sample.
//!
//! The values are the kernel's cumulative counters as of the sample
//! (CPU time, faults, I/O bytes) and gauges (memory, threads), named as
//! Pixie names them; rates are differences between a process's rows.
//! Buffers and builders are kept from one sample to the next, so a sample
//! allocates little beyond the batch it produces.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::File,
    io::{self, Read as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use probe_capture::{identity::ContainerIdentity, rows::standard_fields};

use super::{
    columns::{Columns, RowSource},
    pods::PodDirectory,
    proc::{parse_io, parse_stat, unified_cgroup},
};

/// The table's own columns, after the standard ones.
const COLUMNS: [(&str, DataType, bool); 11] = [
    ("cpu_utime_ns", DataType::UInt64, false),
    ("cpu_ktime_ns", DataType::UInt64, false),
    ("major_faults", DataType::UInt64, false),
    ("minor_faults", DataType::UInt64, false),
    ("num_threads", DataType::UInt64, false),
    ("vsize_bytes", DataType::UInt64, false),
    ("rss_bytes", DataType::UInt64, false),
    // /proc/<pid>/io needs ptrace access to the process: null without it.
    ("rchar_bytes", DataType::UInt64, true),
    ("wchar_bytes", DataType::UInt64, true),
    ("read_bytes", DataType::UInt64, true),
    ("write_bytes", DataType::UInt64, true),
];

/// The schema of `sonde.process_stats`.
pub fn schema() -> SchemaRef {
    let mut fields = standard_fields();
    fields.extend(
        COLUMNS
            .iter()
            .map(|(name, data_type, nullable)| Field::new(*name, data_type.clone(), *nullable)),
    );
    Arc::new(Schema::new(fields))
}

/// What one sample saw, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleCounts {
    /// Rows produced.
    pub rows: u64,
    /// Processes left out because the sample was full (`--process-stats-max`).
    pub capped: u64,
    /// Processes that exited between the listing of /proc and their reading.
    pub vanished: u64,
    /// Processes whose stat file could not be read for another reason.
    pub unreadable: u64,
    /// Processes whose I/O counters could not be read (their columns are null).
    pub io_unreadable: u64,
}

/// How the host's clock ticks and pages convert to nanoseconds and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostUnits {
    pub clock_ticks_per_second: u64,
    pub page_bytes: u64,
}

impl HostUnits {
    /// This host's `CLK_TCK` and page size.
    pub fn of_this_host() -> Self {
        use nix::unistd::{SysconfVar, sysconf};
        let value = |var, default| {
            sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        Self {
            // 100 on every Linux architecture but Alpha.
            clock_ticks_per_second: value(SysconfVar::CLK_TCK, 100),
            page_bytes: value(SysconfVar::PAGE_SIZE, 4096),
        }
    }
}

/// A cgroup path's id and pod container, looked up once per sample.
struct CgroupEntry {
    id: u64,
    identity: Option<ContainerIdentity>,
}

/// Samples `/proc` into `sonde.process_stats` batches.
pub struct ProcessSampler {
    proc_root: String,
    /// The cgroup v2 hierarchy's root; `None`: cgroup ids are 0.
    cgroup_root: Option<PathBuf>,
    node: String,
    max_processes: usize,
    units: HostUnits,
    schema: SchemaRef,
    // Kept between samples.
    pids: Vec<u32>,
    path: String,
    cgroup_dir: PathBuf,
    stat_text: String,
    io_text: String,
    cgroup_text: String,
    cgroups: HashMap<String, CgroupEntry>,
    columns: Columns<{ COLUMNS.len() }>,
}

impl ProcessSampler {
    pub fn new(
        proc_root: &Path,
        cgroup_root: Option<PathBuf>,
        node: &str,
        max_processes: usize,
        units: HostUnits,
    ) -> Self {
        Self {
            proc_root: proc_root.to_string_lossy().into_owned(),
            cgroup_root,
            node: node.to_owned(),
            max_processes,
            units,
            schema: schema(),
            pids: Vec::new(),
            path: String::new(),
            cgroup_dir: PathBuf::new(),
            stat_text: String::new(),
            io_text: String::new(),
            cgroup_text: String::new(),
            cgroups: HashMap::new(),
            columns: Columns::default(),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Reads every process (up to the limit, lowest pids first) as of
    /// `now_ns` (Unix-epoch nanoseconds, the rows' `time_`). An unreadable
    /// /proc is the only error; processes that vanish are counted.
    pub fn sample(
        &mut self,
        now_ns: i64,
        pods: &PodDirectory,
    ) -> Result<(RecordBatch, SampleCounts), SampleError> {
        let mut counts = SampleCounts::default();
        self.pids.clear();
        let listing = std::fs::read_dir(&self.proc_root).map_err(|source| SampleError::List {
            path: self.proc_root.clone(),
            source,
        })?;
        for entry in listing.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                self.pids.push(pid);
            }
        }
        self.pids.sort_unstable();
        if self.pids.len() > self.max_processes {
            counts.capped = (self.pids.len() - self.max_processes) as u64;
            self.pids.truncate(self.max_processes);
        }
        // Cgroups come and go; ids are only trusted within one sample.
        self.cgroups.clear();
        for i in 0..self.pids.len() {
            let pid = self.pids[i];
            match self.read_process(pid, now_ns, pods) {
                Ok(Read::Row { io }) => {
                    counts.rows += 1;
                    if !io {
                        counts.io_unreadable += 1;
                    }
                }
                Ok(Read::Vanished) => counts.vanished += 1,
                Err(()) => counts.unreadable += 1,
            }
        }
        let batch = self.columns.finish(&self.schema)?;
        Ok((batch, counts))
    }

    /// Reads one process and appends its row. A process whose stat file
    /// is gone or malformed (it was exiting) is reported vanished.
    fn read_process(&mut self, pid: u32, now_ns: i64, pods: &PodDirectory) -> Result<Read, ()> {
        if !read_file(
            &mut self.path,
            &self.proc_root,
            pid,
            "stat",
            &mut self.stat_text,
        )? {
            return Ok(Read::Vanished);
        }
        let io_read = read_file(
            &mut self.path,
            &self.proc_root,
            pid,
            "io",
            &mut self.io_text,
        );
        let io = match io_read {
            Ok(true) => parse_io(&self.io_text),
            Ok(false) => return Ok(Read::Vanished),
            Err(()) => None,
        };
        let cgroup_read = read_file(
            &mut self.path,
            &self.proc_root,
            pid,
            "cgroup",
            &mut self.cgroup_text,
        );
        if let Ok(false) = cgroup_read {
            return Ok(Read::Vanished);
        }
        let Ok(stat) = parse_stat(&self.stat_text) else {
            return Ok(Read::Vanished);
        };
        let cgroup = match unified_cgroup(&self.cgroup_text).filter(|_| cgroup_read.is_ok()) {
            Some(path) => {
                if !self.cgroups.contains_key(path) {
                    let id = cgroup_id(&mut self.cgroup_dir, self.cgroup_root.as_deref(), path);
                    let identity = pods.identity(path);
                    self.cgroups
                        .insert(path.to_owned(), CgroupEntry { id, identity });
                }
                self.cgroups.get(path)
            }
            None => None,
        };
        let ns_per_tick = 1_000_000_000 / self.units.clock_ticks_per_second;
        let c = &mut self.columns;
        c.append_source(&RowSource {
            time_ns: now_ns,
            node: &self.node,
            pid,
            // The row describes the process, so its main thread.
            tid: pid,
            comm: stat.comm,
            cgroup_id: cgroup.map_or(0, |e| e.id),
            identity: cgroup.and_then(|e| e.identity.as_ref()),
        });
        c.values[0].append_value(stat.utime_ticks.saturating_mul(ns_per_tick));
        c.values[1].append_value(stat.stime_ticks.saturating_mul(ns_per_tick));
        c.values[2].append_value(stat.major_faults);
        c.values[3].append_value(stat.minor_faults);
        c.values[4].append_value(stat.num_threads);
        c.values[5].append_value(stat.vsize_bytes);
        c.values[6].append_value(stat.rss_pages.saturating_mul(self.units.page_bytes));
        let io_values = io.map(|io| [io.rchar, io.wchar, io.read_bytes, io.write_bytes]);
        for (k, builder) in c.values[7..].iter_mut().enumerate() {
            builder.append_option(io_values.map(|v| v[k]));
        }
        Ok(Read::Row { io: io.is_some() })
    }
}

enum Read {
    Row { io: bool },
    Vanished,
}

/// Reads `<proc>/<pid>/<file>` into `text`: `Ok(true)` read, `Ok(false)`
/// the process is gone, `Err(())` unreadable for another reason (such as
/// no ptrace access for `io`).
fn read_file(
    path: &mut String,
    proc_root: &str,
    pid: u32,
    file: &str,
    text: &mut String,
) -> Result<bool, ()> {
    path.clear();
    // Writing to a String cannot fail.
    let _ = write!(path, "{proc_root}/{pid}/{file}");
    text.clear();
    match File::open(path.as_str()).and_then(|mut f| f.read_to_string(text)) {
        Ok(_) => Ok(true),
        Err(e) if gone(&e) => Ok(false),
        Err(_) => Err(()),
    }
}

/// Whether an error reading a /proc file means the process exited.
fn gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
        || error.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32)
}

/// The id of a cgroup v2 path: its folder's inode; 0 when it cannot be
/// found (no v2 hierarchy, or removed since).
fn cgroup_id(dir: &mut PathBuf, root: Option<&Path>, path: &str) -> u64 {
    let Some(root) = root else { return 0 };
    dir.clear();
    dir.push(root);
    dir.push(path.trim_start_matches('/'));
    std::fs::metadata(&*dir).map_or(0, |m| m.ino())
}

/// Why a sample produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("cannot list processes in {path}")]
    List {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the process_stats batch")]
    Batch(#[from] ArrowError),
}

#[cfg(test)]
mod tests;
