//! `sonde.network_stats`: packets and bytes every cgroup's sockets sent and
//! received, counted in the kernel by `cgroup_skb` programs on the cgroup
//! v2 root ([`NetStats`]) and read on an interval, one row per cgroup per
//! sample. Pods share the host's network namespace or have their own; the
//! socket's cgroup names the pod container either way.
//!
//! Counters are cumulative since the agent attached its programs. Bytes are
//! the packets' length from the network header on, as the kernel hands
//! them to the socket layer.
//!
//! Drops and errors are the network interfaces' own counters, so they
//! exist only for a cgroup whose processes have a network namespace of
//! their own (a pod with its own network): the sums over that namespace's
//! interfaces but `lo`, from `/proc/<pid>/net/dev`, cumulative since the
//! interfaces were made. A cgroup in the host's network namespace (or
//! with no process left) has them null: the host's interfaces are not
//! its.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use probe_capture::{
    net::{NetCounters, NetStats},
    rows::standard_fields,
};

use super::{
    columns::{Columns, RowSource},
    pods::PodDirectory,
};

const COLUMNS: [&str; 4] = ["rx_bytes", "rx_packets", "tx_bytes", "tx_packets"];
/// From the interfaces of the cgroup's own network namespace; nullable.
const INTERFACE_COLUMNS: [&str; 4] = ["rx_drops", "rx_errors", "tx_drops", "tx_errors"];

/// The schema of `sonde.network_stats`.
pub fn schema() -> SchemaRef {
    let mut fields = standard_fields();
    fields.extend(
        COLUMNS
            .iter()
            .map(|name| Field::new(*name, DataType::UInt64, false)),
    );
    fields.extend(
        INTERFACE_COLUMNS
            .iter()
            .map(|name| Field::new(*name, DataType::UInt64, true)),
    );
    Arc::new(Schema::new(fields))
}

/// Drops and errors summed over a network namespace's interfaces (`lo`
/// left out), in [`INTERFACE_COLUMNS`] order.
fn interface_counters(net_dev: &str) -> [u64; 4] {
    let mut sums = [0; 4];
    for line in net_dev.lines().skip(2) {
        let Some((name, values)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let values: Vec<u64> = values
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if values.len() < 16 {
            continue;
        }
        // rx: bytes packets errs drop ...; tx (from the ninth): bytes
        // packets errs drop ...
        for (sum, at) in sums.iter_mut().zip([3, 2, 11, 10]) {
            *sum += values[at];
        }
    }
    sums
}

/// What one sample saw, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSampleCounts {
    pub rows: u64,
    /// Packets the kernel could not count since the last sample because
    /// its map was full.
    pub overflow: u64,
}

/// Reads the kernel's per-cgroup counters into `sonde.network_stats` batches.
pub struct NetworkSampler {
    stats: NetStats,
    cgroup_root: PathBuf,
    node: String,
    schema: SchemaRef,
    /// Cgroup id → path under the root, as of the last sample.
    paths: HashMap<u64, String>,
    /// The host's network namespace (its inode), if readable.
    host_netns: Option<u64>,
    read: Vec<(u64, NetCounters)>,
    last_overflow: u64,
}

impl NetworkSampler {
    pub fn new(stats: NetStats, cgroup_root: PathBuf, node: &str) -> Self {
        Self {
            stats,
            cgroup_root,
            node: node.to_owned(),
            schema: schema(),
            paths: HashMap::new(),
            host_netns: host_netns(),
            read: Vec::new(),
            last_overflow: 0,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One row per cgroup with traffic, as of `now_ns`. Cgroups removed
    /// since the last sample get their last row, then their kernel entry is
    /// deleted.
    pub fn sample(
        &mut self,
        now_ns: i64,
        pods: &PodDirectory,
    ) -> Result<(RecordBatch, NetSampleCounts), ArrowError> {
        self.stats.read(&mut self.read);
        // Walked after the read, so every cgroup read that still exists is
        // found: ids are inode numbers, and one not found is gone.
        self.paths = cgroup_paths(&self.cgroup_root);
        let mut columns = Columns::<{ COLUMNS.len() + INTERFACE_COLUMNS.len() }>::default();
        // Each network namespace's interfaces, read once per sample.
        let mut namespaces: HashMap<u64, Option<[u64; 4]>> = HashMap::new();
        for (id, counters) in &self.read {
            let path = self.paths.get(id);
            let interfaces = path.and_then(|p| self.own_interfaces(p, &mut namespaces));
            let identity = path.and_then(|p| pods.identity(p));
            // Per cgroup, not per process: no pid, thread or command.
            columns.append_source(&RowSource {
                time_ns: now_ns,
                node: &self.node,
                pid: 0,
                tid: 0,
                comm: "",
                cgroup_id: *id,
                identity: identity.as_ref(),
            });
            let values = [
                counters.rx_bytes,
                counters.rx_packets,
                counters.tx_bytes,
                counters.tx_packets,
            ];
            for (builder, value) in columns.values.iter_mut().zip(values) {
                builder.append_value(value);
            }
            for (at, builder) in columns.values[COLUMNS.len()..].iter_mut().enumerate() {
                builder.append_option(interfaces.map(|i| i[at]));
            }
        }
        // Entries of cgroups gone from the tree have had their last row
        // (id 0 is traffic without a socket: no cgroup to be gone).
        let gone: Vec<u64> = self
            .read
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id != 0 && !self.paths.contains_key(id))
            .collect();
        for id in gone {
            self.stats.remove(id);
        }
        let overflow = self.stats.overflow();
        let counts = NetSampleCounts {
            rows: self.read.len() as u64,
            overflow: overflow.saturating_sub(self.last_overflow),
        };
        self.last_overflow = overflow;
        Ok((columns.finish(&self.schema)?, counts))
    }
}

/// The host's network namespace: init's (the agent sees the host's
/// processes), or where init's is not readable, the agent's own (standalone,
/// on the host).
fn host_netns() -> Option<u64> {
    ["/proc/1/ns/net", "/proc/self/ns/net"]
        .iter()
        .find_map(|path| std::fs::metadata(path).ok())
        .map(|m| m.ino())
}

impl NetworkSampler {
    /// Drops and errors of the network namespace of the cgroup at `path`
    /// (its first process's), if it is not the host's.
    fn own_interfaces(
        &self,
        path: &str,
        namespaces: &mut HashMap<u64, Option<[u64; 4]>>,
    ) -> Option<[u64; 4]> {
        let host = self.host_netns?;
        let procs = self
            .cgroup_root
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs");
        let pid: u32 = std::fs::read_to_string(procs)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        let netns = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
        if netns == host {
            return None;
        }
        *namespaces.entry(netns).or_insert_with(|| {
            std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
                .ok()
                .map(|text| interface_counters(&text))
        })
    }
}

/// Every cgroup folder under `root`, by id (inode), as the path
/// `/proc/<pid>/cgroup` would show it.
pub(super) fn cgroup_paths(root: &Path) -> HashMap<u64, String> {
    let mut paths = HashMap::new();
    if let Ok(meta) = std::fs::metadata(root) {
        paths.insert(meta.ino(), "/".to_owned());
    }
    // Bounded by the tree itself; folders removed meanwhile are skipped.
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            let path = entry.path();
            if let Ok(relative) = path.strip_prefix(root) {
                paths.insert(meta.ino(), format!("/{}", relative.to_string_lossy()));
            }
            pending.push(path);
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_drops_and_errors_over_interfaces_but_lo() {
        let net_dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 100 2 9 9 0 0 0 0 100 2 9 9 0 0 0 0
  eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0
  eth1: 10 1 10 20 0 0 0 0 10 1 30 40 0 0 0 0
";
        assert_eq!(interface_counters(net_dev), [22, 11, 44, 33]);
        assert_eq!(interface_counters(""), [0; 4]);
    }

    #[test]
    fn maps_cgroup_folders_to_their_inodes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pod = dir.path().join("kubepods/podu1/c1");
        std::fs::create_dir_all(&pod).expect("folders");
        let paths = cgroup_paths(dir.path());
        let inode = |p: &Path| std::fs::metadata(p).expect("exists").ino();
        assert_eq!(
            paths.get(&inode(&pod)).map(String::as_str),
            Some("/kubepods/podu1/c1")
        );
        assert_eq!(paths.get(&inode(dir.path())).map(String::as_str), Some("/"));
        assert_eq!(paths.len(), 4);
    }
}
