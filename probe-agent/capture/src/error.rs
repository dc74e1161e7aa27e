//! The agent's error type.

use std::{io, path::PathBuf};

/// Everything that can go wrong in the agent, with the context a user needs
/// to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing privilege: loading eBPF programs needs root, or CAP_BPF and CAP_PERFMON; this process lacks {missing}"
    )]
    MissingPrivilege { missing: &'static str },

    #[error(
        "tracefs is not mounted at {path}: mount it with `mount -t tracefs nodev /sys/kernel/tracing` or pass --tracefs"
    )]
    TracefsMissing { path: PathBuf },

    #[error("tracepoint {group}/{name} does not exist on this kernel (no {path})")]
    UnknownTracepoint {
        group: String,
        name: String,
        path: PathBuf,
    },

    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("malformed tracepoint format in {path}, line {line}: {reason}")]
    BadFormat {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },

    #[error("cannot load the eBPF object")]
    Load(#[from] aya::EbpfError),

    #[error("eBPF object has no {kind} named {name}")]
    MissingInObject { kind: &'static str, name: String },

    #[error("eBPF program {program}: {action} failed")]
    Program {
        program: String,
        action: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("uprobe event {event} in tracefs: cannot {action} it")]
    UprobeEvent {
        event: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("eBPF map {map}: {action} failed")]
    Map {
        map: &'static str,
        action: &'static str,
        #[source]
        source: aya::maps::MapError,
    },

    #[error("all {max} {kind} hook slots are in use")]
    HookSlotsExhausted { kind: &'static str, max: u32 },

    #[error("all {max} probe slots are in use")]
    ProbeSlotsExhausted { max: u32 },

    #[error("cannot trace TLS through {path}")]
    Elf {
        path: PathBuf,
        #[source]
        source: Box<crate::elf::ElfError>,
    },

    #[error("ring buffer size {bytes} must be a power of two and at least the page size")]
    BadRingSize { bytes: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
