//! `sonde.network_stats`: packets and bytes every cgroup's sockets sent and
//! received, counted in the kernel by `cgroup_skb` programs on the cgroup
//! v2 root ([`NetStats`]) and read on an interval, one row per cgroup per
//! sample. Pods share the host's network namespace or have their own; the
//! socket's cgroup names the pod container either way.
//!
//! Counters are cumulative since the agent attached its programs. Bytes are
//! the packets' length from the network header on, as the kernel hands
//! them to the socket layer.

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

/// The schema of `sonde.network_stats`.
pub fn schema() -> SchemaRef {
    let mut fields = standard_fields();
    fields.extend(
        COLUMNS
            .iter()
            .map(|name| Field::new(*name, DataType::UInt64, false)),
    );
    Arc::new(Schema::new(fields))
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
        let mut columns = Columns::<{ COLUMNS.len() }>::default();
        for (id, counters) in &self.read {
            let path = self.paths.get(id);
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
