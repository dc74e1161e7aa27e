//! ELF inspection for user-space probes: the file offset a uprobe on a
//! function must be attached at, and the USDT probes a binary declares.
//!
//! This module only reads files; attaching is the loader's job. Every
//! location is returned as a file offset, which is what the kernel's uprobe
//! interface takes, so it holds wherever the binary ends up mapped.
//! Executables and shared libraries of 64-bit ELF are understood; USDT
//! argument specs only for x86-64.

pub mod pt_regs;
#[cfg(test)]
mod test_elf;
mod usdt;

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use object::{
    Endianness, FileKind,
    elf::{self, FileHeader64},
    read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _, SectionTable, Sym as _},
};

use self::usdt::StapsdtNote;
pub use self::{
    pt_regs::{RETVAL_REG, UPROBE_ARG_REGS},
    usdt::{UsdtArg, UsdtArgLocation, UsdtProbe},
};

type Elf = FileHeader64<Endianness>;
type SymbolTable<'data> = object::read::elf::SymbolTable<'data, Elf, &'data [u8]>;

/// How many close names a "symbol not found" error offers at most.
const MAX_SUGGESTIONS: usize = 3;

/// How many probe names a "USDT probe not found" message lists at most
/// (the error value keeps them all).
const MAX_LISTED_PROBES: usize = 10;

/// What can keep a probe from being placed in a binary, with the binary and
/// the symbol or probe named so the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{binary} is not an ELF file")]
    NotElf { binary: PathBuf },

    #[error("{binary} is not supported: {reason}")]
    Unsupported {
        binary: PathBuf,
        reason: &'static str,
    },

    #[error("{binary} is a malformed ELF file")]
    Malformed {
        binary: PathBuf,
        #[source]
        source: object::read::Error,
    },

    #[error(
        "symbol {symbol:?} not found in {binary}{}",
        not_found_hint(.suggestions, *.stripped)
    )]
    SymbolNotFound {
        binary: PathBuf,
        symbol: String,
        /// Defined functions with a close name, closest first.
        suggestions: Vec<String>,
        /// The binary has no `.symtab`, so only its exported symbols were
        /// searched.
        stripped: bool,
    },

    #[error(
        "symbol {symbol:?} is not defined in {binary}: it is imported from a shared library, attach to the library that defines it"
    )]
    SymbolUndefined { binary: PathBuf, symbol: String },

    #[error("symbol {symbol:?} in {binary} is {kind}; uprobes attach to functions")]
    NoCode {
        binary: PathBuf,
        symbol: String,
        /// What the symbol is instead, e.g. "a data object".
        kind: &'static str,
    },

    #[error(
        "symbol {symbol:?} names {} different functions in {binary}, at file offsets {}; give the offset of the one to trace instead",
        .offsets.len(),
        hex_list(.offsets)
    )]
    AmbiguousSymbol {
        binary: PathBuf,
        symbol: String,
        offsets: Vec<u64>,
    },

    #[error(
        "{what} in {binary} is at address {address:#x}, which no part of the file backs (not in any loadable segment's file contents)"
    )]
    NotInFile {
        binary: PathBuf,
        /// What is at the address, e.g. `symbol "main"`.
        what: String,
        address: u64,
    },

    #[error(
        "USDT probe {provider}:{name} not found in {binary} ({})",
        probe_list(.available)
    )]
    UsdtNotFound {
        binary: PathBuf,
        provider: String,
        name: String,
        /// Every probe the binary has, as `provider:name`, sorted.
        available: Vec<String>,
    },

    #[error(
        "USDT probe {provider}:{name} has {sites} sites in {binary}; each of them must be attached"
    )]
    UsdtSeveralSites {
        binary: PathBuf,
        provider: String,
        name: String,
        sites: usize,
    },

    #[error("malformed USDT note in {binary}: {reason}")]
    BadUsdtNote {
        binary: PathBuf,
        reason: &'static str,
    },

    #[error(
        "USDT probe {provider}:{name} in {binary}: argument {index} ({arg:?}) cannot be read: {reason}"
    )]
    UnsupportedUsdtArg {
        binary: PathBuf,
        provider: String,
        name: String,
        /// Position of the argument, from 0.
        index: usize,
        arg: String,
        reason: &'static str,
    },
}

fn not_found_hint(suggestions: &[String], stripped: bool) -> String {
    match (suggestions, stripped) {
        ([], false) => String::new(),
        ([], true) => {
            " (it has no .symtab, so only its exported symbols were searched; it may be stripped)"
                .to_owned()
        }
        ([only], _) => format!(" (did you mean {only}?)"),
        ([first @ .., last], _) => format!(" (did you mean {} or {last}?)", first.join(", ")),
    }
}

fn hex_list(values: &[u64]) -> String {
    let hex: Vec<String> = values.iter().map(|value| format!("{value:#x}")).collect();
    hex.join(", ")
}

fn probe_list(available: &[String]) -> String {
    match available.len() {
        0 => "it has no USDT probes".to_owned(),
        n if n <= MAX_LISTED_PROBES => format!("it has {}", available.join(", ")),
        n => format!(
            "it has {} and {} more",
            available[..MAX_LISTED_PROBES].join(", "),
            n - MAX_LISTED_PROBES
        ),
    }
}

/// A 64-bit ELF executable or shared library, read into memory.
pub struct ElfBinary {
    path: PathBuf,
    data: Vec<u8>,
}

impl fmt::Debug for ElfBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElfBinary")
            .field("path", &self.path)
            .field("len", &self.data.len())
            .finish()
    }
}

impl ElfBinary {
    /// Reads the file at `path` and checks that it is an ELF executable or
    /// shared library this module understands.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ElfError> {
        let path = path.as_ref();
        let data = fs::read(path).map_err(|source| ElfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(path, data)
    }

    /// Like [`ElfBinary::open`] for contents already in memory; `path` only
    /// names the binary in errors.
    pub fn from_bytes(path: impl Into<PathBuf>, data: Vec<u8>) -> Result<Self, ElfError> {
        let binary = Self {
            path: path.into(),
            data,
        };
        match FileKind::parse(&binary.data[..]) {
            Ok(FileKind::Elf64) => {}
            Ok(FileKind::Elf32) => return Err(binary.unsupported("32-bit ELF")),
            _ => {
                return Err(ElfError::NotElf {
                    binary: binary.path,
                });
            }
        }
        let layout = binary.layout()?;
        match layout.header.e_type(layout.endian) {
            elf::ET_EXEC | elf::ET_DYN => {}
            elf::ET_REL => {
                return Err(binary.unsupported(
                    "it is a relocatable object file; uprobes attach to executables and shared libraries",
                ));
            }
            elf::ET_CORE => return Err(binary.unsupported("it is a core dump")),
            _ => return Err(binary.unsupported("unknown ELF file type")),
        }
        Ok(binary)
    }

    /// The path the binary was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file offset to attach a uprobe (or uretprobe) at to trace the
    /// function `name`.
    ///
    /// The name is looked up in `.symtab`, then in `.dynsym` (all a stripped
    /// binary keeps). If neither has it exactly, Rust functions match by
    /// their demangled path without the hash (`my_crate::handler`), or with
    /// it. When several local functions share a name, a global one of that
    /// name wins; otherwise the name is ambiguous.
    pub fn symbol_offset(&self, name: &str) -> Result<u64, ElfError> {
        let layout = self.layout()?;
        let symtab = self.symbols(&layout, elf::SHT_SYMTAB)?;
        let dynsym = self.symbols(&layout, elf::SHT_DYNSYM)?;
        for table in [&symtab, &dynsym] {
            let found = self.candidates(&layout, table, |symbol| symbol == name.as_bytes())?;
            if !found.is_empty() {
                return self.resolve(&layout, name, &found);
            }
        }
        let last_identifier = name.rsplit("::").next().unwrap_or(name);
        for table in [&symtab, &dynsym] {
            let found = self.candidates(&layout, table, |symbol| {
                demangled_name_is(symbol, name, last_identifier)
            })?;
            if !found.is_empty() {
                return self.resolve(&layout, name, &found);
            }
        }
        Err(ElfError::SymbolNotFound {
            binary: self.path.clone(),
            symbol: name.to_owned(),
            suggestions: close_function_names(layout.endian, name, [&symtab, &dynsym]),
            stripped: symtab.is_empty(),
        })
    }

    /// Every USDT probe site of the binary, in note order.
    ///
    /// Fails if any site cannot be used (e.g. an argument spec this module
    /// does not understand); [`ElfBinary::usdt_probe`] only needs the probe
    /// it is asked for to be usable.
    pub fn usdt_probes(&self) -> Result<Vec<UsdtProbe>, ElfError> {
        let layout = self.layout()?;
        let base = layout.stapsdt_base();
        self.stapsdt_notes(&layout)?
            .iter()
            .map(|note| self.usdt_probe_at(&layout, base, note))
            .collect()
    }

    /// The USDT probe `provider:name`, which must have exactly one site.
    pub fn usdt_probe(&self, provider: &str, name: &str) -> Result<UsdtProbe, ElfError> {
        let mut sites = self.usdt_probe_sites(provider, name)?;
        match sites.len() {
            1 => Ok(sites.remove(0)),
            // usdt_probe_sites returns at least one site.
            several => Err(ElfError::UsdtSeveralSites {
                binary: self.path.clone(),
                provider: provider.to_owned(),
                name: name.to_owned(),
                sites: several,
            }),
        }
    }

    /// Every site of the USDT probe `provider:name` (a probe in inlined or
    /// duplicated code has several), in note order; at least one.
    pub fn usdt_probe_sites(&self, provider: &str, name: &str) -> Result<Vec<UsdtProbe>, ElfError> {
        let layout = self.layout()?;
        let base = layout.stapsdt_base();
        let notes = self.stapsdt_notes(&layout)?;
        let sites: Vec<UsdtProbe> = notes
            .iter()
            .filter(|note| note.provider == provider && note.name == name)
            .map(|note| self.usdt_probe_at(&layout, base, note))
            .collect::<Result<_, _>>()?;
        if sites.is_empty() {
            return Err(self.usdt_not_found(provider, name, &notes));
        }
        Ok(sites)
    }

    fn usdt_not_found(&self, provider: &str, name: &str, notes: &[StapsdtNote<'_>]) -> ElfError {
        let mut available: Vec<String> = notes
            .iter()
            .map(|note| format!("{}:{}", note.provider, note.name))
            .collect();
        available.sort();
        available.dedup();
        ElfError::UsdtNotFound {
            binary: self.path.clone(),
            provider: provider.to_owned(),
            name: name.to_owned(),
            available,
        }
    }

    fn layout(&self) -> Result<Layout<'_>, ElfError> {
        let data = &self.data[..];
        let malformed = |source| self.malformed(source);
        let header = Elf::parse(data).map_err(malformed)?;
        let endian = header.endian().map_err(malformed)?;
        let sections = header.sections(endian, data).map_err(malformed)?;
        let mut mapped: Vec<MappedRange> = header
            .program_headers(endian, data)
            .map_err(malformed)?
            .iter()
            .filter(|segment| segment.p_type(endian) == elf::PT_LOAD)
            .map(|segment| MappedRange {
                address: segment.p_vaddr(endian),
                offset: segment.p_offset(endian),
                file_size: segment.p_filesz(endian),
            })
            .collect();
        if mapped.is_empty() {
            // Without program headers, the allocated sections that have file
            // contents say the same.
            mapped = sections
                .iter()
                .filter(|section| {
                    u64::from(elf::SHF_ALLOC) & section.sh_flags(endian) != 0
                        && section.sh_type(endian) != elf::SHT_NOBITS
                })
                .map(|section| MappedRange {
                    address: section.sh_addr(endian),
                    offset: section.sh_offset(endian),
                    file_size: section.sh_size(endian),
                })
                .collect();
        }
        Ok(Layout {
            data,
            endian,
            header,
            sections,
            mapped,
        })
    }

    fn symbols<'data>(
        &self,
        layout: &Layout<'data>,
        sh_type: u32,
    ) -> Result<SymbolTable<'data>, ElfError> {
        layout
            .sections
            .symbols(layout.endian, layout.data, sh_type)
            .map_err(|source| self.malformed(source))
    }

    /// The symbols of `table` whose raw name satisfies `matches`.
    fn candidates(
        &self,
        layout: &Layout<'_>,
        table: &SymbolTable<'_>,
        matches: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Candidate>, ElfError> {
        let endian = layout.endian;
        let mut found = Vec::new();
        for (index, symbol) in table.enumerate() {
            // A symbol whose name cannot be read cannot be the one asked for.
            let Ok(name) = table.symbol_name(endian, symbol) else {
                continue;
            };
            if name.is_empty() || !matches(name) {
                continue;
            }
            let kind = if symbol.is_undefined(endian) {
                SymbolKind::Undefined
            } else {
                match symbol.st_type() {
                    elf::STT_FUNC => SymbolKind::Code,
                    // Assembly labels often have no type: code if their
                    // section is.
                    elf::STT_NOTYPE => {
                        let section = table
                            .symbol_section(endian, symbol, index)
                            .map_err(|source| self.malformed(source))?;
                        match section.map(|section| layout.sections.section(section)) {
                            Some(Ok(header))
                                if u64::from(elf::SHF_EXECINSTR) & header.sh_flags(endian) != 0 =>
                            {
                                SymbolKind::Code
                            }
                            _ => SymbolKind::Other("a symbol without a type outside code"),
                        }
                    }
                    elf::STT_GNU_IFUNC => SymbolKind::Other(
                        "a GNU indirect function, whose address is a resolver that runs once at load time (attach to the implementation it selects)",
                    ),
                    elf::STT_OBJECT | elf::STT_COMMON => SymbolKind::Other("a data object"),
                    elf::STT_TLS => SymbolKind::Other("a thread-local variable"),
                    elf::STT_SECTION => SymbolKind::Other("a section symbol"),
                    elf::STT_FILE => SymbolKind::Other("a source file name"),
                    _ => SymbolKind::Other("a symbol of an unknown type"),
                }
            };
            found.push(Candidate {
                address: symbol.st_value(endian),
                kind,
                global: symbol.st_bind() != elf::STB_LOCAL,
            });
        }
        Ok(found)
    }

    /// The file offset of the function among `candidates`, all named `name`.
    fn resolve(
        &self,
        layout: &Layout<'_>,
        name: &str,
        candidates: &[Candidate],
    ) -> Result<u64, ElfError> {
        let code: Vec<&Candidate> = candidates
            .iter()
            .filter(|candidate| candidate.kind == SymbolKind::Code)
            .collect();
        if code.is_empty() {
            let other = candidates
                .iter()
                .find_map(|candidate| match candidate.kind {
                    SymbolKind::Other(kind) => Some(kind),
                    SymbolKind::Code | SymbolKind::Undefined => None,
                });
            return Err(match other {
                Some(kind) => ElfError::NoCode {
                    binary: self.path.clone(),
                    symbol: name.to_owned(),
                    kind,
                },
                None => ElfError::SymbolUndefined {
                    binary: self.path.clone(),
                    symbol: name.to_owned(),
                },
            });
        }
        let distinct = |global_only: bool| {
            let mut addresses: Vec<u64> = code
                .iter()
                .filter(|candidate| candidate.global || !global_only)
                .map(|candidate| candidate.address)
                .collect();
            addresses.sort_unstable();
            addresses.dedup();
            addresses
        };
        let symbol_offset = |address| {
            layout
                .file_offset(address)
                .ok_or_else(|| ElfError::NotInFile {
                    binary: self.path.clone(),
                    what: format!("symbol {name:?}"),
                    address,
                })
        };
        match (distinct(false).as_slice(), distinct(true).as_slice()) {
            ([address], _) | (_, [address]) => symbol_offset(*address),
            (all, _) => Err(ElfError::AmbiguousSymbol {
                binary: self.path.clone(),
                symbol: name.to_owned(),
                offsets: all
                    .iter()
                    .map(|&address| symbol_offset(address))
                    .collect::<Result<_, _>>()?,
            }),
        }
    }

    /// The stapsdt notes of every `.note.stapsdt` section, in file order.
    fn stapsdt_notes<'data>(
        &self,
        layout: &Layout<'data>,
    ) -> Result<Vec<StapsdtNote<'data>>, ElfError> {
        let endian = layout.endian;
        let mut notes = Vec::new();
        for section in layout.sections.iter() {
            let is_stapsdt = section.sh_type(endian) == elf::SHT_NOTE
                && layout
                    .sections
                    .section_name(endian, section)
                    .is_ok_and(|name| name == b".note.stapsdt");
            if !is_stapsdt {
                continue;
            }
            let bad_note = |reason| ElfError::BadUsdtNote {
                binary: self.path.clone(),
                reason,
            };
            let Some(iterator) = section
                .notes(endian, layout.data)
                .map_err(|_| bad_note("the note section is truncated or misaligned"))?
            else {
                continue;
            };
            notes.extend(usdt::stapsdt_notes(iterator, endian).map_err(bad_note)?);
        }
        Ok(notes)
    }

    /// A probe site from its note. `stapsdt_base` is where `.stapsdt.base`
    /// is now: if prelink moved the binary after the notes were written, the
    /// note's own record of that address differs by the same amount as
    /// every other address in the note.
    fn usdt_probe_at(
        &self,
        layout: &Layout<'_>,
        stapsdt_base: Option<u64>,
        note: &StapsdtNote<'_>,
    ) -> Result<UsdtProbe, ElfError> {
        let delta = match stapsdt_base {
            Some(actual) if note.base != 0 => actual.wrapping_sub(note.base),
            _ => 0,
        };
        let probe = || format!("USDT probe {}:{}", note.provider, note.name);
        let offset_of = |address: u64, what: String| {
            let address = address.wrapping_add(delta);
            layout
                .file_offset(address)
                .ok_or_else(|| ElfError::NotInFile {
                    binary: self.path.clone(),
                    what,
                    address,
                })
        };
        let file_offset = offset_of(note.pc, probe())?;
        let semaphore_offset = match note.semaphore {
            0 => None,
            semaphore => Some(offset_of(
                semaphore,
                format!("the semaphore of {}", probe()),
            )?),
        };
        let args = if note.args.trim().is_empty() {
            Vec::new()
        } else if layout.header.e_machine(layout.endian) != elf::EM_X86_64 {
            return Err(self.unsupported("USDT argument specs are only understood for x86-64"));
        } else {
            usdt::parse_args(note.args).map_err(|error| ElfError::UnsupportedUsdtArg {
                binary: self.path.clone(),
                provider: note.provider.to_owned(),
                name: note.name.to_owned(),
                index: error.index,
                arg: error.arg.to_owned(),
                reason: error.reason,
            })?
        };
        Ok(UsdtProbe {
            provider: note.provider.to_owned(),
            name: note.name.to_owned(),
            file_offset,
            semaphore_offset,
            args,
        })
    }

    fn malformed(&self, source: object::read::Error) -> ElfError {
        ElfError::Malformed {
            binary: self.path.clone(),
            source,
        }
    }

    fn unsupported(&self, reason: &'static str) -> ElfError {
        ElfError::Unsupported {
            binary: self.path.clone(),
            reason,
        }
    }
}

/// The parsed headers of an [`ElfBinary`], borrowed from its bytes.
struct Layout<'data> {
    data: &'data [u8],
    endian: Endianness,
    header: &'data Elf,
    sections: SectionTable<'data, Elf>,
    /// Where the file's contents are in memory: the `PT_LOAD` segments, or
    /// the allocated sections of a file without program headers.
    mapped: Vec<MappedRange>,
}

impl Layout<'_> {
    /// The file offset whose byte is mapped at virtual `address`.
    fn file_offset(&self, address: u64) -> Option<u64> {
        self.mapped
            .iter()
            .find_map(|range| range.file_offset(address))
    }

    fn stapsdt_base(&self) -> Option<u64> {
        self.sections
            .section_by_name(self.endian, b".stapsdt.base")
            .map(|(_, section)| section.sh_addr(self.endian))
    }
}

/// Part of the file that is mapped at a virtual address.
#[derive(Clone, Copy, Debug)]
struct MappedRange {
    address: u64,
    offset: u64,
    /// Bytes that come from the file; a segment's zero-filled tail (`.bss`)
    /// is not part of it.
    file_size: u64,
}

impl MappedRange {
    fn file_offset(&self, address: u64) -> Option<u64> {
        let within = address.checked_sub(self.address)?;
        if within < self.file_size {
            self.offset.checked_add(within)
        } else {
            None
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    address: u64,
    kind: SymbolKind,
    /// Global or weak rather than local to one object file.
    global: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SymbolKind {
    Code,
    /// Imported: the binary only refers to it.
    Undefined,
    /// Defined, but not code; says what it is instead.
    Other(&'static str),
}

/// Whether the raw symbol `symbol` is a Rust symbol whose demangled path,
/// with or without its hash, is `name`.
fn demangled_name_is(symbol: &[u8], name: &str, last_identifier: &str) -> bool {
    // Every mangling scheme spells an ASCII identifier out, so a symbol
    // without it is skipped before the costlier demangling.
    let plain_identifier = !last_identifier.is_empty()
        && last_identifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain_identifier
        && !symbol
            .windows(last_identifier.len())
            .any(|window| window == last_identifier.as_bytes())
    {
        return false;
    }
    let Ok(symbol) = std::str::from_utf8(symbol) else {
        return false;
    };
    let Ok(demangled) = rustc_demangle::try_demangle(symbol) else {
        return false;
    };
    format!("{demangled:#}") == name || demangled.to_string() == name
}

/// Defined function names (demangled, for Rust) close to `wanted`: the same
/// up to case, a path ending in `::wanted`, or a few edits away.
fn close_function_names<'data>(
    endian: Endianness,
    wanted: &str,
    tables: [&SymbolTable<'data>; 2],
) -> Vec<String> {
    let wanted_len = wanted.chars().count();
    let max_edits = (wanted_len / 3).max(1);
    let mut scored: Vec<(usize, String)> = Vec::new();
    for table in tables {
        for symbol in table.iter() {
            if symbol.st_type() != elf::STT_FUNC || symbol.is_undefined(endian) {
                continue;
            }
            let Some(name) = table
                .symbol_name(endian, symbol)
                .ok()
                .and_then(|name| std::str::from_utf8(name).ok())
                .filter(|name| !name.is_empty())
            else {
                continue;
            };
            let readable = match rustc_demangle::try_demangle(name) {
                Ok(demangled) => format!("{demangled:#}"),
                Err(_) => name.to_owned(),
            };
            let score = if readable.eq_ignore_ascii_case(wanted)
                || readable.rsplit("::").next() == Some(wanted)
            {
                Some(0)
            } else if readable.chars().count().abs_diff(wanted_len) <= max_edits {
                Some(edit_distance(wanted, &readable)).filter(|&edits| edits <= max_edits)
            } else {
                None
            };
            if let Some(score) = score {
                scored.push((score, readable));
            }
        }
    }
    scored.sort();
    let mut names: Vec<String> = Vec::new();
    for (_, name) in scored {
        if !names.contains(&name) {
            names.push(name);
            if names.len() == MAX_SUGGESTIONS {
                break;
            }
        }
    }
    names
}

/// Levenshtein distance: the fewest single-character insertions, deletions
/// and substitutions that turn `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // previous[j]: distance between the part of `a` seen so far and b[..j].
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, a_char) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, &b_char) in b.iter().enumerate() {
            current[j + 1] = if a_char == b_char {
                previous[j]
            } else {
                1 + previous[j].min(previous[j + 1]).min(current[j])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests;
