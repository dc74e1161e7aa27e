//! Traffic per cgroup: the `cgroup_skb` programs attached to the cgroup v2
//! root count every socket's packets and bytes by the socket's cgroup id,
//! per CPU; [`NetStats`] sums and reads them.

use std::{fs::File, path::Path};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
pub use probe_common::NetCounters;
use probe_common::{maps, programs};

use crate::{
    error::{Error, Result},
    loader::ProbeSet,
};

/// The traffic counters of every cgroup, as the kernel keeps them.
pub struct NetStats {
    counters: PerCpuHashMap<MapData, u64, NetCounters>,
    overflow: PerCpuArray<MapData, u64>,
}

impl NetStats {
    /// Loads the `cgroup_skb` programs and attaches them (ingress and
    /// egress) to the cgroup v2 hierarchy at `root`, beside any other
    /// program there (they apply to every cgroup below it); they stay
    /// attached as long as `set` lives.
    pub fn attach(set: &mut ProbeSet, root: &Path) -> Result<Self> {
        let counters = set.take_map(maps::NET_STATS)?;
        let overflow = set.take_map(maps::NET_OVERFLOW)?;
        for (name, direction) in [
            (programs::NET_INGRESS, CgroupSkbAttachType::Ingress),
            (programs::NET_EGRESS, CgroupSkbAttachType::Egress),
        ] {
            let cgroup = File::open(root).map_err(|source| Error::Io {
                path: root.to_owned(),
                source,
            })?;
            let program: &mut CgroupSkb = set.loaded_program(name)?;
            // As a bpf_link (kernels from 5.7), which always runs beside
            // other programs and takes no mode flag: Single is "no flag".
            program
                .attach(cgroup, direction, CgroupAttachMode::Single)
                .map_err(|source| Error::Program {
                    program: name.to_owned(),
                    action: "attach",
                    source,
                })?;
        }
        Ok(Self { counters, overflow })
    }

    /// Every cgroup's counters, summed over CPUs, into `out` (cleared
    /// first). Entries that vanish while read are skipped.
    pub fn read(&self, out: &mut Vec<(u64, NetCounters)>) {
        out.clear();
        for (cgroup, per_cpu) in self.counters.iter().flatten() {
            let mut sum = NetCounters::default();
            for c in per_cpu.iter() {
                sum.rx_bytes += c.rx_bytes;
                sum.rx_packets += c.rx_packets;
                sum.tx_bytes += c.tx_bytes;
                sum.tx_packets += c.tx_packets;
            }
            out.push((cgroup, sum));
        }
    }

    /// Forgets a cgroup that is gone, making room for new ones.
    pub fn remove(&mut self, cgroup: u64) {
        // Already gone is fine.
        let _ = self.counters.remove(&cgroup);
    }

    /// Packets not counted because the map was full.
    pub fn overflow(&self) -> u64 {
        self.overflow
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}
