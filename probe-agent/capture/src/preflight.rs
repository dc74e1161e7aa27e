//! Checks made before anything is loaded, so a missing privilege is one clear
//! line instead of an opaque `EPERM` from deep inside the loader.

use std::fs;

use crate::error::{Error, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails unless this process may load and attach tracing programs: root, or
/// CAP_BPF with CAP_PERFMON (CAP_SYS_ADMIN implies both on older kernels).
pub fn check_privileges() -> Result<()> {
    let caps = effective_capabilities();
    missing_capability(caps).map_or(Ok(()), |missing| Err(Error::MissingPrivilege { missing }))
}

/// Whether this process may open perf events on the kernel's uprobe PMU, which
/// takes CAP_SYS_ADMIN; without it uprobes are created through tracefs
/// ([`crate::uprobe_events`]).
pub fn uprobe_pmu_allowed() -> bool {
    effective_capabilities() & (1 << CAP_SYS_ADMIN) != 0
}

/// Whether uprobes can be made here: through the uprobe PMU (with
/// CAP_SYS_ADMIN) or tracefs' `uprobe_events` under `tracefs`; why not.
pub fn uprobes_available(tracefs: &std::path::Path) -> std::result::Result<(), &'static str> {
    let pmu = std::path::Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    if pmu && uprobe_pmu_allowed() {
        return Ok(());
    }
    if tracefs.join("uprobe_events").exists() {
        return Ok(());
    }
    Err(if pmu {
        "no CAP_SYS_ADMIN for the uprobe PMU and no uprobe_events in tracefs"
    } else {
        "the kernel offers no uprobes (no uprobe PMU, no uprobe_events in tracefs)"
    })
}

fn missing_capability(caps: u64) -> Option<&'static str> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        None
    } else if has(CAP_BPF) {
        Some("CAP_PERFMON")
    } else if has(CAP_PERFMON) {
        Some("CAP_BPF")
    } else {
        Some("CAP_BPF and CAP_PERFMON")
    }
}

/// The `CapEff` mask from `/proc/self/status`; 0 if it cannot be read, which
/// then reports every capability as missing.
fn effective_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_capability() {
        let bit = |c: u32| 1u64 << c;
        assert_eq!(missing_capability(bit(CAP_SYS_ADMIN)), None);
        assert_eq!(missing_capability(bit(CAP_BPF) | bit(CAP_PERFMON)), None);
        assert_eq!(missing_capability(bit(CAP_BPF)), Some("CAP_PERFMON"));
        assert_eq!(missing_capability(bit(CAP_PERFMON)), Some("CAP_BPF"));
        assert_eq!(missing_capability(0), Some("CAP_BPF and CAP_PERFMON"));
    }
}
