//! Turns a Tracepoint spec into what the kernel side needs (a hook and a
//! [`ProbeConfig`]) and what the decoder needs (a [`RecordSchema`]).
//!
//! This is where a spec meets the node: tracepoint formats come from tracefs,
//! symbols and USDT notes from the traced binary. Every problem is reported
//! with the exact name that does not exist or does not fit.

use std::path::{Path, PathBuf};

use crds::{
    FieldType,
    v1alpha1::{
        FieldSpec, FilterOp as SpecFilterOp, FilterSpec, FilterValue, Probe, TracepointSpec,
    },
};
use probe_common::{
    FILTER_WORDS, FieldConfig, FieldSource, FilterConfig, FilterOp, MAX_FIELDS, MAX_FILTERS,
    MAX_RECORD, MAX_STRING, ProbeConfig, RECORD_HEADER_LEN, TargetMode, filter_kind,
    header_offsets,
};

use crate::{
    elf::{
        ElfBinary, ElfError, UsdtArgLocation,
        pt_regs::{RETVAL_REG, UPROBE_ARG_REGS},
    },
    tracefs::{FormatField, Tracefs},
};

/// Why a spec cannot run on this node.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Tracefs(#[from] crate::Error),

    #[error(transparent)]
    Elf(#[from] ElfError),

    #[error("{probe} has no field {field:?}; it has: {available}")]
    UnknownField {
        probe: String,
        field: String,
        available: String,
    },

    #[error("field {field:?}: {probe} offers {offered}, not {requested:?}")]
    UnknownSource {
        probe: String,
        field: String,
        requested: String,
        offered: &'static str,
    },

    #[error("field {field:?} of {probe} is {actual}, which cannot be read as {declared}")]
    TypeMismatch {
        probe: String,
        field: String,
        actual: String,
        declared: FieldType,
    },

    #[error("field {field:?} needs a type: arguments of {probe} have none of their own")]
    MissingType { probe: String, field: String },

    #[error("raw tracepoint {name} does not exist on this kernel")]
    UnknownRawTracepoint { name: String },

    #[error("{kind} probes are unsupported on this node: {reason}")]
    Unsupported {
        kind: &'static str,
        reason: &'static str,
    },

    #[error("the fields need {bytes} bytes per record; the limit is {limit}")]
    RecordTooLarge { bytes: u32, limit: u32 },

    #[error("at most {limit} {what} are supported, the spec has {count}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },

    #[error("filter on {field:?}: {reason}")]
    BadFilter { field: String, reason: String },

    #[error("binary {path} does not exist")]
    MissingBinary { path: PathBuf },

    #[error(
        "cannot reach binary {path}: {source} (entering another process's root takes CAP_SYS_PTRACE, reading a file only its owner may read takes CAP_DAC_READ_SEARCH)"
    )]
    UnreachableBinary {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Fails unless `path` exists and this process may reach it: a missing binary
/// and one that permissions hide are told apart.
fn check_binary(path: PathBuf) -> Result<PathBuf, PlanError> {
    match std::fs::metadata(&path) {
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(PlanError::MissingBinary { path })
        }
        Err(source) => Err(PlanError::UnreachableBinary { path, source }),
    }
}

/// Where a probe attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookTarget {
    Tracepoint {
        group: String,
        name: String,
    },
    RawTracepoint {
        name: String,
    },
    /// A uprobe (or USDT site) at a file offset; `ret` for a return probe.
    Uprobe {
        binary: PathBuf,
        offset: u64,
        ret: bool,
    },
    Kprobe {
        function: String,
        offset: u64,
        ret: bool,
    },
}

impl std::fmt::Display for HookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tracepoint { group, name } => write!(f, "tracepoint {group}/{name}"),
            Self::RawTracepoint { name } => write!(f, "raw tracepoint {name}"),
            Self::Uprobe {
                binary,
                offset,
                ret,
            } => write!(
                f,
                "{} {}+{offset:#x}",
                if *ret { "uretprobe" } else { "uprobe" },
                binary.display()
            ),
            Self::Kprobe {
                function,
                offset,
                ret,
            } => write!(
                f,
                "{} {function}+{offset:#x}",
                if *ret { "kretprobe" } else { "kprobe" }
            ),
        }
    }
}

/// How a column's value is stored in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnLayout {
    /// 8 bytes, already cut or extended to the declared type.
    Int(FieldType),
    /// NUL-terminated in an area of `area` bytes.
    String { area: u16 },
}

/// A captured column beyond the standard ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnPlan {
    pub name: String,
    pub offset: u16,
    pub layout: ColumnLayout,
}

/// What the decoder needs to turn a record into a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSchema {
    pub columns: Vec<ColumnPlan>,
    pub record_len: u32,
}

/// A spec compiled for this node.
#[derive(Clone, Debug)]
pub struct ProbePlan {
    pub hook: HookTarget,
    pub config: ProbeConfig,
    pub schema: RecordSchema,
}

/// What a field source resolves to on a given probe.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    source: FieldSource,
    /// Context offset (or register offset).
    offset: u16,
    /// Bytes to read for integers.
    size: u8,
    /// Type the source has by itself, if any.
    natural: Option<FieldType>,
    displacement: i64,
    /// Longest string the source can hold (inline arrays).
    max_len: Option<u16>,
}

impl Resolved {
    fn int(source: FieldSource, offset: u16, size: u8, natural: Option<FieldType>) -> Self {
        Self {
            source,
            offset,
            size,
            natural,
            displacement: 0,
            max_len: None,
        }
    }
}

/// The probe kind's way of resolving field sources.
enum Sources {
    Tracepoint {
        label: String,
        fields: Vec<FormatField>,
        user_pointers: bool,
    },
    /// Raw tracepoint arguments: 8-byte words.
    RawArgs { label: String },
    /// Function arguments in registers; `ret` adds retval and latency.
    Registers {
        label: String,
        ret: bool,
        user: bool,
    },
    Usdt {
        label: String,
        args: Vec<crate::elf::UsdtArg>,
    },
}

impl Sources {
    fn label(&self) -> &str {
        match self {
            Self::Tracepoint { label, .. }
            | Self::RawArgs { label }
            | Self::Registers { label, .. }
            | Self::Usdt { label, .. } => label,
        }
    }

    fn resolve(&self, field: &FieldSpec) -> Result<Resolved, PlanError> {
        let source = field.source();
        let unknown = |offered| PlanError::UnknownSource {
            probe: self.label().to_owned(),
            field: field.name.clone(),
            requested: source.to_owned(),
            offered,
        };
        match self {
            Self::Tracepoint {
                label,
                fields,
                user_pointers,
            } => {
                let f = fields
                    .iter()
                    .find(|f| f.name == source && !f.is_common())
                    .ok_or_else(|| PlanError::UnknownField {
                        probe: label.clone(),
                        field: source.to_owned(),
                        available: fields
                            .iter()
                            .filter(|f| !f.is_common())
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                Ok(resolve_format_field(f, *user_pointers))
            }
            Self::RawArgs { .. } => {
                let index = arg_index(source, 6).ok_or_else(|| unknown("arg0..arg5"))?;
                Ok(Resolved::int(FieldSource::Int, (index * 8) as u16, 8, None))
            }
            Self::Registers { ret, user, .. } => {
                if *ret && source == "retval" {
                    return Ok(Resolved::int(FieldSource::Register, RETVAL_REG, 8, None));
                }
                if *ret && source == "latency" {
                    return Ok(Resolved::int(
                        FieldSource::Latency,
                        0,
                        8,
                        Some(FieldType::U64),
                    ));
                }
                let offered = if *ret {
                    "arg0..arg5, retval and latency"
                } else {
                    "arg0..arg5"
                };
                let index = arg_index(source, 6).ok_or_else(|| unknown(offered))?;
                let mut resolved = if *ret {
                    // Saved at entry in argument order (`ENTRY_REG_WORDS`).
                    Resolved::int(FieldSource::EntryRegister, (index * 8) as u16, 8, None)
                } else {
                    Resolved::int(FieldSource::Register, UPROBE_ARG_REGS[index], 8, None)
                };
                // A string argument is a pointer in the traced memory.
                if field.declared_type() == Some(FieldType::String) {
                    resolved.source = if *user {
                        FieldSource::UserString
                    } else {
                        FieldSource::KernelString
                    };
                    if *ret {
                        return Err(PlanError::TypeMismatch {
                            probe: self.label().to_owned(),
                            field: field.name.clone(),
                            actual: "an argument saved at entry".to_owned(),
                            declared: FieldType::String,
                        });
                    }
                }
                Ok(resolved)
            }
            Self::Usdt { args, .. } => {
                let index = arg_index(source, args.len())
                    .ok_or_else(|| unknown("the probe's arguments arg0..argN"))?;
                let arg = args[index];
                if field.declared_type() == Some(FieldType::String) {
                    // A string argument is a pointer; it must sit in a register.
                    return match arg.location {
                        UsdtArgLocation::Register { pt_regs_offset } if arg.size == 8 => Ok(
                            Resolved::int(FieldSource::UserString, pt_regs_offset, 8, None),
                        ),
                        _ => Err(PlanError::TypeMismatch {
                            probe: self.label().to_owned(),
                            field: field.name.clone(),
                            actual: format!("{source}, not a pointer held in a register"),
                            declared: FieldType::String,
                        }),
                    };
                }
                let natural = Some(int_type(arg.size, arg.signed));
                Ok(match arg.location {
                    UsdtArgLocation::Register { pt_regs_offset } => {
                        Resolved::int(FieldSource::Register, pt_regs_offset, 8, natural)
                    }
                    UsdtArgLocation::Memory {
                        base_pt_regs_offset,
                        displacement,
                    } => Resolved {
                        displacement,
                        ..Resolved::int(
                            FieldSource::UserMemory,
                            base_pt_regs_offset,
                            arg.size,
                            natural,
                        )
                    },
                    UsdtArgLocation::Constant(value) => Resolved {
                        displacement: value,
                        ..Resolved::int(FieldSource::Constant, 0, 8, natural)
                    },
                })
            }
        }
    }
}

fn arg_index(source: &str, count: usize) -> Option<usize> {
    source
        .strip_prefix("arg")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n < count && source.len() == 3 + n.to_string().len())
}

fn int_type(size: u8, signed: bool) -> FieldType {
    match (size, signed) {
        (1, false) => FieldType::U8,
        (1, true) => FieldType::I8,
        (2, false) => FieldType::U16,
        (2, true) => FieldType::I16,
        (4, false) => FieldType::U32,
        (4, true) => FieldType::I32,
        (_, false) => FieldType::U64,
        (_, true) => FieldType::I64,
    }
}

/// Reads a tracepoint format field the way its C type says.
fn resolve_format_field(f: &FormatField, user_pointers: bool) -> Resolved {
    let c = f.c_type.replace(' ', "");
    if c.starts_with("__data_loc") && c.contains("char") {
        return Resolved {
            natural: Some(FieldType::String),
            ..Resolved::int(FieldSource::DataLoc, f.offset as u16, 4, None)
        };
    }
    if c.ends_with("char*") {
        let source = if user_pointers {
            FieldSource::UserString
        } else {
            FieldSource::KernelString
        };
        return Resolved::int(source, f.offset as u16, 8, Some(FieldType::String));
    }
    if c.starts_with("char[") {
        return Resolved {
            max_len: Some(f.size.saturating_sub(1) as u16),
            ..Resolved::int(
                FieldSource::InlineString,
                f.offset as u16,
                0,
                Some(FieldType::String),
            )
        };
    }
    let size = match f.size {
        1 | 2 | 4 | 8 => f.size as u8,
        _ => 8,
    };
    let natural = if c == "bool" || c == "_Bool" {
        FieldType::Bool
    } else {
        int_type(size, f.signed)
    };
    Resolved::int(FieldSource::Int, f.offset as u16, size, Some(natural))
}

/// Finds the traced binary, its symbols and notes. Standalone mode reads
/// host paths; in a cluster the path is inside the container's root.
pub trait BinaryResolver {
    fn host_path(&self, binary: &str) -> PathBuf;
}

/// Host paths as written (standalone mode).
pub struct HostPaths;

impl BinaryResolver for HostPaths {
    fn host_path(&self, binary: &str) -> PathBuf {
        PathBuf::from(binary)
    }
}

/// Whether this kernel can attach kprobes.
pub fn kprobes_supported(tracefs: &Tracefs) -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
        || tracefs.root().join("kprobe_events").exists()
}

/// Compiles a validated spec for this node.
pub fn compile(
    spec: &TracepointSpec,
    tracefs: &Tracefs,
    binaries: &dyn BinaryResolver,
    target_mode: TargetMode,
    wakeup_watermark: u64,
) -> Result<ProbePlan, PlanError> {
    let probe = spec.probe.kind().map_err(|e| PlanError::BadFilter {
        field: "probe".to_owned(),
        reason: e.to_string(),
    })?;
    let (hook, sources, save_entry) = match probe {
        Probe::Tracepoint(tp) => {
            let format = tracefs.format(&tp.group, &tp.name)?;
            (
                HookTarget::Tracepoint {
                    group: tp.group.clone(),
                    name: tp.name.clone(),
                },
                Sources::Tracepoint {
                    label: format!("tracepoint {}/{}", tp.group, tp.name),
                    fields: format.fields,
                    // Syscall arguments point into the caller's memory.
                    user_pointers: tp.group == "syscalls",
                },
                false,
            )
        }
        Probe::RawTracepoint(raw) => {
            if !raw_tracepoint_exists(tracefs, &raw.name) {
                return Err(PlanError::UnknownRawTracepoint {
                    name: raw.name.clone(),
                });
            }
            (
                HookTarget::RawTracepoint {
                    name: raw.name.clone(),
                },
                Sources::RawArgs {
                    label: format!("raw tracepoint {}", raw.name),
                },
                false,
            )
        }
        Probe::Uprobe(up) | Probe::Uretprobe(up) => {
            let ret = matches!(probe, Probe::Uretprobe(_));
            let path = check_binary(binaries.host_path(&up.binary))?;
            let offset = match (&up.symbol, up.offset) {
                (Some(symbol), _) => ElfBinary::open(&path)?.symbol_offset(symbol)?,
                (None, Some(offset)) => offset,
                (None, None) => 0,
            };
            let what = up.symbol.clone().unwrap_or_else(|| format!("{offset:#x}"));
            (
                HookTarget::Uprobe {
                    binary: path,
                    offset,
                    ret,
                },
                Sources::Registers {
                    label: format!(
                        "{} {}:{what}",
                        if ret { "uretprobe" } else { "uprobe" },
                        up.binary
                    ),
                    ret,
                    user: true,
                },
                ret,
            )
        }
        Probe::Usdt(usdt) => {
            let path = check_binary(binaries.host_path(&usdt.binary))?;
            let site = ElfBinary::open(&path)?.usdt_probe(&usdt.provider, &usdt.name)?;
            if site.semaphore_offset.is_some() {
                // The kernel can raise the semaphore (uprobe ref_ctr_offset),
                // but the loader has no way to ask for it yet; without it the
                // probe would never fire, which must not pass as "attached".
                return Err(PlanError::Unsupported {
                    kind: "semaphore-gated usdt",
                    reason: "the probe is gated by a semaphore, which this agent cannot raise yet",
                });
            }
            (
                HookTarget::Uprobe {
                    binary: path,
                    offset: site.file_offset,
                    ret: false,
                },
                Sources::Usdt {
                    label: format!("usdt {}:{}:{}", usdt.binary, usdt.provider, usdt.name),
                    args: site.args,
                },
                false,
            )
        }
        Probe::Kprobe(kp) | Probe::Kretprobe(kp) => {
            if !kprobes_supported(tracefs) {
                return Err(PlanError::Unsupported {
                    kind: probe.kind().as_str(),
                    reason: "this kernel was built without kprobes (CONFIG_KPROBES)",
                });
            }
            let ret = matches!(probe, Probe::Kretprobe(_));
            (
                HookTarget::Kprobe {
                    function: kp.function.clone(),
                    offset: kp.offset.unwrap_or(0),
                    ret,
                },
                Sources::Registers {
                    label: format!("{} {}", probe.kind().as_str(), kp.function),
                    ret,
                    user: false,
                },
                ret,
            )
        }
    };

    if spec.fields.len() > MAX_FIELDS {
        return Err(PlanError::TooMany {
            what: "fields",
            count: spec.fields.len(),
            limit: MAX_FIELDS,
        });
    }
    if spec.filters.len() > MAX_FILTERS {
        return Err(PlanError::TooMany {
            what: "filters",
            count: spec.filters.len(),
            limit: MAX_FILTERS,
        });
    }

    let mut config = ProbeConfig {
        target_mode: target_mode as u32,
        save_entry: u32::from(save_entry),
        sample_one_in: spec.sampling.as_ref().map_or(0, |s| s.one_in),
        rate_per_sec: spec.rate_limit.as_ref().map_or(0, |r| r.events_per_second),
        wakeup_watermark,
        ..ProbeConfig::EMPTY
    };
    let mut columns = Vec::with_capacity(spec.fields.len());
    let mut next = RECORD_HEADER_LEN;
    for (i, field) in spec.fields.iter().enumerate() {
        let resolved = sources.resolve(field)?;
        let declared = match (field.declared_type(), resolved.natural) {
            (Some(declared), natural) => {
                check_fit(&sources, field, declared, resolved, natural)?;
                declared
            }
            (None, Some(natural)) => natural,
            (None, None) => {
                return Err(PlanError::MissingType {
                    probe: sources.label().to_owned(),
                    field: field.name.clone(),
                });
            }
        };
        let (layout, area) = if declared == FieldType::String {
            let mut max_len = field.max_length().min(MAX_STRING) as u16;
            if let Some(limit) = resolved.max_len {
                max_len = max_len.min(limit);
            }
            let area = (u32::from(max_len) + 1).next_multiple_of(8);
            (
                ColumnLayout::String {
                    area: (u32::from(max_len) + 1) as u16,
                },
                (area, max_len),
            )
        } else {
            (ColumnLayout::Int(declared), (8, 0))
        };
        let (width, signed) = type_width(declared);
        config.fields[i] = FieldConfig {
            source: resolved.source as u8,
            size: resolved.size,
            width,
            signed: u8::from(signed),
            offset: resolved.offset,
            max_len: area.1,
            dest: next as u16,
            filter_read: 0,
            _pad: [0; 4],
            displacement: resolved.displacement,
        };
        columns.push(ColumnPlan {
            name: field.name.clone(),
            offset: next as u16,
            layout,
        });
        next += area.0;
        if next > MAX_RECORD {
            return Err(PlanError::RecordTooLarge {
                bytes: next,
                limit: MAX_RECORD,
            });
        }
    }
    config.record_len = next;

    for (i, filter) in spec.filters.iter().enumerate() {
        config.filters[i] = compile_filter(filter, &columns)?;
    }
    mark_filtered_fields(&mut config);

    Ok(ProbePlan {
        hook,
        config,
        schema: RecordSchema {
            columns,
            record_len: next,
        },
    })
}

fn check_fit(
    sources: &Sources,
    field: &FieldSpec,
    declared: FieldType,
    resolved: Resolved,
    natural: Option<FieldType>,
) -> Result<(), PlanError> {
    let is_string_source = matches!(
        resolved.source,
        FieldSource::UserString
            | FieldSource::KernelString
            | FieldSource::DataLoc
            | FieldSource::InlineString
    );
    let fits = match declared {
        FieldType::String => is_string_source,
        _ => !is_string_source && (natural != Some(FieldType::String)),
    };
    if fits {
        Ok(())
    } else {
        Err(PlanError::TypeMismatch {
            probe: sources.label().to_owned(),
            field: field.name.clone(),
            actual: natural.map_or_else(|| "an integer".to_owned(), |t| format!("a {t}")),
            declared,
        })
    }
}

fn type_width(t: FieldType) -> (u8, bool) {
    match t {
        FieldType::U8 | FieldType::Bool => (1, false),
        FieldType::I8 => (1, true),
        FieldType::U16 => (2, false),
        FieldType::I16 => (2, true),
        FieldType::U32 => (4, false),
        FieldType::I32 => (4, true),
        FieldType::U64 | FieldType::String => (8, false),
        FieldType::I64 => (8, true),
    }
}

/// A filter's operand location: a captured column or a standard one.
enum Operand {
    Int { offset: u32, len: u32, signed: bool },
    Str { offset: u32, max_len: u32 },
}

fn operand(field: &str, columns: &[ColumnPlan]) -> Option<Operand> {
    match field {
        "pid" => {
            return Some(Operand::Int {
                offset: header_offsets::PID,
                len: 4,
                signed: false,
            });
        }
        "tid" => {
            return Some(Operand::Int {
                offset: header_offsets::TID,
                len: 4,
                signed: false,
            });
        }
        "cgroup_id" => {
            return Some(Operand::Int {
                offset: header_offsets::CGROUP_ID,
                len: 8,
                signed: false,
            });
        }
        "comm" => {
            return Some(Operand::Str {
                offset: header_offsets::COMM,
                max_len: 15,
            });
        }
        _ => {}
    }
    let column = columns.iter().find(|c| c.name == field)?;
    Some(match column.layout {
        ColumnLayout::Int(t) => Operand::Int {
            offset: u32::from(column.offset),
            len: 8,
            signed: type_width(t).1,
        },
        ColumnLayout::String { area } => Operand::Str {
            offset: u32::from(column.offset),
            max_len: u32::from(area) - 1,
        },
    })
}

/// Marks the fields the filters compare, so the program reads them, and
/// only them, before the filters decide (see `FieldConfig::filter_read`).
fn mark_filtered_fields(config: &mut ProbeConfig) {
    let filters = config.filters;
    for filter in filters.iter().take_while(|f| f.op != 0) {
        let Some(field) = config
            .fields
            .iter_mut()
            .take_while(|f| f.source != 0)
            .find(|f| u32::from(f.dest) == filter.offset)
        else {
            // A standard column: the header is written before the filters.
            continue;
        };
        let read = if filter.kind == filter_kind::STRING {
            // The compared bytes and one more: a longer string then differs
            // where a shorter read would end it.
            (filter.len + 1).min(u32::from(field.max_len) + 1) as u16
        } else {
            8
        };
        field.filter_read = field.filter_read.max(read);
    }
}

fn compile_filter(filter: &FilterSpec, columns: &[ColumnPlan]) -> Result<FilterConfig, PlanError> {
    let bad = |reason: String| PlanError::BadFilter {
        field: filter.field.clone(),
        reason,
    };
    let operand = operand(&filter.field, columns).ok_or_else(|| {
        bad("it names neither a field nor pid, tid, comm or cgroup_id".to_owned())
    })?;
    let op = match filter.op {
        SpecFilterOp::Eq => FilterOp::Eq,
        SpecFilterOp::Ne => FilterOp::Ne,
        SpecFilterOp::Prefix => FilterOp::Prefix,
        SpecFilterOp::Mask => FilterOp::Mask,
        SpecFilterOp::Lt => FilterOp::Lt,
        SpecFilterOp::Le => FilterOp::Le,
        SpecFilterOp::Gt => FilterOp::Gt,
        SpecFilterOp::Ge => FilterOp::Ge,
        SpecFilterOp::Range => FilterOp::Range,
    };
    let mut config = FilterConfig {
        op: op as u8,
        ..FilterConfig::EMPTY
    };
    match operand {
        Operand::Int {
            offset,
            len,
            signed,
        } => {
            config.kind = if signed {
                filter_kind::SIGNED
            } else {
                filter_kind::UNSIGNED
            };
            config.offset = offset;
            config.len = len;
            match (op, &filter.value) {
                (FilterOp::Range, _) => {
                    let (Some(min), Some(max)) = (filter.min, filter.max) else {
                        return Err(bad("range needs min and max".to_owned()));
                    };
                    config.a = min as u64;
                    config.b = max as u64;
                }
                (FilterOp::Prefix, _) => return Err(bad("prefix applies to strings".to_owned())),
                (_, Some(FilterValue::Int(v))) => config.a = *v as u64,
                (_, _) => return Err(bad(format!("{} needs an integer value", op_name(op)))),
            }
        }
        Operand::Str { offset, max_len } => {
            let Some(FilterValue::String(text)) = &filter.value else {
                return Err(bad(
                    "a string field is compared with a string value".to_owned()
                ));
            };
            if !matches!(op, FilterOp::Eq | FilterOp::Ne | FilterOp::Prefix) {
                return Err(bad(format!("{} does not apply to strings", op_name(op))));
            }
            let bytes = text.as_bytes();
            if bytes.len() as u32 > max_len {
                return Err(bad(format!(
                    "the value is {} bytes but the field keeps at most {max_len}, so it never matches",
                    bytes.len()
                )));
            }
            config.kind = filter_kind::STRING;
            config.offset = offset;
            // Eq and Ne compare the terminating NUL too.
            config.len = bytes.len() as u32 + u32::from(op != FilterOp::Prefix);
            let mut padded = [0u8; FILTER_WORDS * 8];
            padded[..bytes.len()].copy_from_slice(bytes);
            for (word, chunk) in config.words.iter_mut().zip(padded.chunks_exact(8)) {
                let mut le = [0u8; 8];
                le.copy_from_slice(chunk);
                *word = u64::from_le_bytes(le);
            }
        }
    }
    Ok(config)
}

fn op_name(op: FilterOp) -> &'static str {
    match op {
        FilterOp::Eq => "eq",
        FilterOp::Ne => "ne",
        FilterOp::Lt => "lt",
        FilterOp::Le => "le",
        FilterOp::Gt => "gt",
        FilterOp::Ge => "ge",
        FilterOp::Range => "range",
        FilterOp::Mask => "mask",
        FilterOp::Prefix => "prefix",
    }
}

/// Raw tracepoints share names with tracepoints (`events/<group>/<name>`).
fn raw_tracepoint_exists(tracefs: &Tracefs, name: &str) -> bool {
    if name.is_empty() || name.contains('/') {
        return false;
    }
    std::fs::read_dir(tracefs.root().join("events"))
        .map(|groups| {
            groups
                .filter_map(Result::ok)
                .any(|group| group.path().join(name).is_dir())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_names_are_exact() {
        assert_eq!(arg_index("arg0", 6), Some(0));
        assert_eq!(arg_index("arg5", 6), Some(5));
        assert_eq!(arg_index("arg6", 6), None);
        assert_eq!(arg_index("arg01", 6), None);
        assert_eq!(arg_index("args", 6), None);
        assert_eq!(arg_index("arg11", 12), Some(11));
    }

    fn format_field(c_type: &str, offset: u32, size: u32, signed: bool) -> FormatField {
        FormatField {
            name: "f".into(),
            c_type: c_type.into(),
            offset,
            size,
            signed,
        }
    }

    #[test]
    fn format_types_map_to_sources() {
        let r = resolve_format_field(&format_field("const char *", 24, 8, false), true);
        assert_eq!(r.source, FieldSource::UserString);
        let r = resolve_format_field(&format_field("const char *", 24, 8, false), false);
        assert_eq!(r.source, FieldSource::KernelString);
        let r = resolve_format_field(&format_field("__data_loc char[]", 8, 4, false), false);
        assert_eq!((r.source, r.size), (FieldSource::DataLoc, 4));
        let r = resolve_format_field(&format_field("char[16]", 8, 16, false), false);
        assert_eq!((r.source, r.max_len), (FieldSource::InlineString, Some(15)));
        let r = resolve_format_field(&format_field("pid_t", 24, 4, true), false);
        assert_eq!(
            (r.source, r.natural),
            (FieldSource::Int, Some(FieldType::I32))
        );
        let r = resolve_format_field(&format_field("umode_t", 40, 8, false), false);
        assert_eq!(r.natural, Some(FieldType::U64));
    }

    #[test]
    fn string_filters_include_the_nul_for_equality() {
        let columns = vec![ColumnPlan {
            name: "path".into(),
            offset: 48,
            layout: ColumnLayout::String { area: 65 },
        }];
        let eq = FilterSpec {
            field: "path".into(),
            op: SpecFilterOp::Eq,
            value: Some(FilterValue::String("/etc/hosts".into())),
            min: None,
            max: None,
        };
        let config = compile_filter(&eq, &columns).expect("valid filter");
        assert_eq!(
            (config.kind, config.len, config.offset),
            (filter_kind::STRING, 11, 48)
        );
        assert_eq!(config.words[0].to_le_bytes(), *b"/etc/hos");
        let prefix = FilterSpec {
            op: SpecFilterOp::Prefix,
            ..eq.clone()
        };
        assert_eq!(compile_filter(&prefix, &columns).expect("valid").len, 10);
        let too_long = FilterSpec {
            value: Some(FilterValue::String("x".repeat(65))),
            ..eq
        };
        let err = compile_filter(&too_long, &columns).expect_err("cannot match");
        assert!(err.to_string().contains("never matches"), "{err}");
    }

    #[test]
    fn standard_columns_are_filterable() {
        let pid = FilterSpec {
            field: "pid".into(),
            op: SpecFilterOp::Eq,
            value: Some(FilterValue::Int(42)),
            min: None,
            max: None,
        };
        let config = compile_filter(&pid, &[]).expect("valid");
        assert_eq!(
            (config.offset, config.len, config.a),
            (header_offsets::PID, 4, 42)
        );
        let unknown = FilterSpec {
            field: "nope".into(),
            ..pid
        };
        assert!(compile_filter(&unknown, &[]).is_err());
    }

    #[test]
    fn fields_the_filters_compare_are_read_first_as_far_as_compared() {
        let columns = vec![
            ColumnPlan {
                name: "path".into(),
                offset: 48,
                layout: ColumnLayout::String { area: 65 },
            },
            ColumnPlan {
                name: "flags".into(),
                offset: 120,
                layout: ColumnLayout::Int(FieldType::U32),
            },
            ColumnPlan {
                name: "mode".into(),
                offset: 128,
                layout: ColumnLayout::Int(FieldType::U32),
            },
        ];
        let mut config = ProbeConfig::EMPTY;
        for (i, (dest, max_len)) in [(48, 64), (120, 0), (128, 0)].into_iter().enumerate() {
            config.fields[i] = FieldConfig {
                source: FieldSource::Int as u8,
                dest,
                max_len,
                ..FieldConfig::EMPTY
            };
        }
        let filter = |field: &str, op, value| FilterSpec {
            field: field.into(),
            op,
            value: Some(value),
            min: None,
            max: None,
        };
        let specs = [
            // "/tmp/" is 5 bytes: 6 are read, so "/tmpx" differs.
            filter(
                "path",
                SpecFilterOp::Prefix,
                FilterValue::String("/tmp/".into()),
            ),
            // Equality compares the NUL too: 4 + 1 bytes, and one more.
            filter("path", SpecFilterOp::Ne, FilterValue::String("/etc".into())),
            filter("flags", SpecFilterOp::Gt, FilterValue::Int(0)),
            // A standard column: no field is read for it.
            filter("pid", SpecFilterOp::Eq, FilterValue::Int(1)),
        ];
        for (i, spec) in specs.iter().enumerate() {
            config.filters[i] = compile_filter(spec, &columns).expect("valid");
        }
        mark_filtered_fields(&mut config);
        let reads: Vec<u16> = config.fields[..3].iter().map(|f| f.filter_read).collect();
        assert_eq!(reads, [6, 8, 0]);

        // A filter as long as the field reads it whole, never past it.
        let long = filter(
            "path",
            SpecFilterOp::Eq,
            FilterValue::String("x".repeat(64)),
        );
        config.filters = [FilterConfig::EMPTY; MAX_FILTERS];
        config.filters[0] = compile_filter(&long, &columns).expect("valid");
        config.fields[0].filter_read = 0;
        mark_filtered_fields(&mut config);
        assert_eq!(config.fields[0].filter_read, 65);
    }
}
