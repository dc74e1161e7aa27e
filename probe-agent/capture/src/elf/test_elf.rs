//! Small 64-bit little-endian ELF files with a fixed, known layout, written
//! for the tests of [`crate::elf`] so every expected offset is a constant.
//!
//! Layout: `.text` (filled with `nop`) and then the 1-byte `.stapsdt.base`
//! in a read-execute segment; `.probes` and then `.bss` in a read-write
//! segment whose zero-filled tail is `.bss`; then `.note.stapsdt` and the
//! symbol tables, which are not loaded. The two segments are mapped at
//! different distances from their file offsets, so mixing them up shows.

use object::{
    Endianness, elf,
    write::{
        StringId,
        elf::{FileHeader, ProgramHeader, SectionHeader, SectionIndex, Sym, Writer},
    },
};

use super::{ElfBinary, usdt::NT_STAPSDT};

pub const TEXT_ADDRESS: u64 = 0x40_1000;
pub const TEXT_OFFSET: u64 = 0x1000;
pub const TEXT_SIZE: u64 = 0x100;
pub const STAPSDT_BASE_ADDRESS: u64 = TEXT_ADDRESS + TEXT_SIZE;
pub const DATA_ADDRESS: u64 = 0x60_4000;
pub const DATA_OFFSET: u64 = 0x2000;
pub const DATA_SIZE: u64 = 0x10;
pub const BSS_ADDRESS: u64 = DATA_ADDRESS + DATA_SIZE;
pub const BSS_SIZE: u64 = 0x100;

/// The name test binaries carry in error messages.
pub const TEST_PATH: &str = "/opt/test/app";

/// Where a test symbol is defined.
#[derive(Clone, Copy, Debug)]
pub enum Placement {
    Text,
    Data,
    Bss,
    Undefined,
}

#[derive(Clone, Copy, Debug)]
pub struct TestSymbol {
    pub name: &'static str,
    pub address: u64,
    pub st_type: u8,
    pub global: bool,
    pub placement: Placement,
}

impl TestSymbol {
    pub fn function(name: &'static str, address: u64) -> Self {
        Self {
            name,
            address,
            st_type: elf::STT_FUNC,
            global: true,
            placement: Placement::Text,
        }
    }

    pub fn local_function(name: &'static str, address: u64) -> Self {
        Self {
            global: false,
            ..Self::function(name, address)
        }
    }

    pub fn data(name: &'static str, st_type: u8, address: u64) -> Self {
        Self {
            name,
            address,
            st_type,
            global: true,
            placement: Placement::Data,
        }
    }

    pub fn undefined(name: &'static str) -> Self {
        Self {
            name,
            address: 0,
            st_type: elf::STT_FUNC,
            global: true,
            placement: Placement::Undefined,
        }
    }

    pub fn in_placement(self, placement: Placement) -> Self {
        Self { placement, ..self }
    }

    pub fn typed(self, st_type: u8) -> Self {
        Self { st_type, ..self }
    }
}

/// What to put in a test binary; [`TestElf::default`] is an x86-64 shared
/// object with program headers and a `.stapsdt.base`, and nothing else.
#[derive(Clone, Debug)]
pub struct TestElf {
    pub e_type: u16,
    pub e_machine: u16,
    pub program_headers: bool,
    /// `.symtab` entries; no `.symtab` at all when empty.
    pub symtab: Vec<TestSymbol>,
    /// `.dynsym` entries; no `.dynsym` at all when empty.
    pub dynsym: Vec<TestSymbol>,
    /// Contents of `.note.stapsdt`; no such section when empty.
    pub stapsdt_notes: Vec<u8>,
    pub stapsdt_base: bool,
}

impl Default for TestElf {
    fn default() -> Self {
        Self {
            e_type: elf::ET_DYN,
            e_machine: elf::EM_X86_64,
            program_headers: true,
            symtab: Vec::new(),
            dynsym: Vec::new(),
            stapsdt_notes: Vec::new(),
            stapsdt_base: true,
        }
    }
}

struct Sections {
    text: SectionIndex,
    stapsdt_base: Option<(SectionIndex, StringId)>,
    probes: SectionIndex,
    bss: SectionIndex,
}

impl Sections {
    fn index(&self, placement: Placement) -> Option<SectionIndex> {
        match placement {
            Placement::Text => Some(self.text),
            Placement::Data => Some(self.probes),
            Placement::Bss => Some(self.bss),
            Placement::Undefined => None,
        }
    }
}

impl TestElf {
    pub fn binary(&self) -> ElfBinary {
        ElfBinary::from_bytes(TEST_PATH, self.bytes()).expect("test ELF files are valid")
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut writer = Writer::new(Endianness::Little, true, &mut bytes);
        // Locals must come first in a symbol table.
        let mut symtab = self.symtab.clone();
        symtab.sort_by_key(|symbol| symbol.global);
        let mut dynsym = self.dynsym.clone();
        dynsym.sort_by_key(|symbol| symbol.global);

        // First pass: reserve indices, names and file ranges.
        writer.reserve_file_header();
        writer.reserve_program_headers(if self.program_headers { 2 } else { 0 });
        let text_name = writer.add_section_name(b".text");
        let text = writer.reserve_section_index();
        let stapsdt_base = self.stapsdt_base.then(|| {
            let name = writer.add_section_name(b".stapsdt.base");
            (writer.reserve_section_index(), name)
        });
        let probes_name = writer.add_section_name(b".probes");
        let probes = writer.reserve_section_index();
        let bss_name = writer.add_section_name(b".bss");
        let bss = writer.reserve_section_index();
        let sections = Sections {
            text,
            stapsdt_base,
            probes,
            bss,
        };
        let notes = (!self.stapsdt_notes.is_empty()).then(|| {
            let name = writer.add_section_name(b".note.stapsdt");
            (writer.reserve_section_index(), name)
        });
        let symtab_names: Vec<StringId> = symtab
            .iter()
            .map(|symbol| {
                writer.reserve_symbol_index(sections.index(symbol.placement));
                writer.add_string(symbol.name.as_bytes())
            })
            .collect();
        if !symtab.is_empty() {
            writer.reserve_symtab_section_index();
            writer.reserve_strtab_section_index();
        }
        let dynsym_names: Vec<StringId> = dynsym
            .iter()
            .map(|symbol| {
                writer.reserve_dynamic_symbol_index();
                writer.add_dynamic_string(symbol.name.as_bytes())
            })
            .collect();
        if !dynsym.is_empty() {
            writer.reserve_dynsym_section_index();
            writer.reserve_dynstr_section_index();
        }
        writer.reserve_shstrtab_section_index();

        writer.reserve_until(to_usize(TEXT_OFFSET));
        writer.reserve(to_usize(TEXT_SIZE + 1), 1);
        writer.reserve_until(to_usize(DATA_OFFSET));
        writer.reserve(to_usize(DATA_SIZE), 1);
        let notes_offset = writer.reserve(self.stapsdt_notes.len(), 4);
        writer.reserve_symtab();
        writer.reserve_strtab();
        writer.reserve_dynsym();
        writer.reserve_dynstr();
        writer.reserve_shstrtab();
        writer.reserve_section_headers();

        // Second pass: write everything in the same order.
        writer
            .write_file_header(&FileHeader {
                os_abi: elf::ELFOSABI_NONE,
                abi_version: 0,
                e_type: self.e_type,
                e_machine: self.e_machine,
                e_entry: TEXT_ADDRESS,
                e_flags: 0,
            })
            .expect("the header fits");
        if self.program_headers {
            writer.write_align_program_headers();
            writer.write_program_header(&ProgramHeader {
                p_type: elf::PT_LOAD,
                p_flags: elf::PF_R | elf::PF_X,
                p_offset: TEXT_OFFSET,
                p_vaddr: TEXT_ADDRESS,
                p_paddr: TEXT_ADDRESS,
                p_filesz: TEXT_SIZE + 1,
                p_memsz: TEXT_SIZE + 1,
                p_align: 0x1000,
            });
            writer.write_program_header(&ProgramHeader {
                p_type: elf::PT_LOAD,
                p_flags: elf::PF_R | elf::PF_W,
                p_offset: DATA_OFFSET,
                p_vaddr: DATA_ADDRESS,
                p_paddr: DATA_ADDRESS,
                p_filesz: DATA_SIZE,
                p_memsz: DATA_SIZE + BSS_SIZE,
                p_align: 0x1000,
            });
        }
        writer.pad_until(to_usize(TEXT_OFFSET));
        writer.write(&[0x90; TEXT_SIZE as usize]);
        writer.write(&[0]);
        writer.pad_until(to_usize(DATA_OFFSET));
        writer.write(&[0; DATA_SIZE as usize]);
        writer.pad_until(notes_offset);
        writer.write(&self.stapsdt_notes);

        writer.write_null_symbol();
        for (symbol, name) in symtab.iter().zip(&symtab_names) {
            writer.write_symbol(&sym(symbol, *name, &sections));
        }
        writer.write_strtab();
        writer.write_null_dynamic_symbol();
        for (symbol, name) in dynsym.iter().zip(&dynsym_names) {
            writer.write_dynamic_symbol(&sym(symbol, *name, &sections));
        }
        writer.write_dynstr();
        writer.write_shstrtab();

        writer.write_null_section_header();
        writer.write_section_header(&SectionHeader {
            name: Some(text_name),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR),
            sh_addr: TEXT_ADDRESS,
            sh_offset: TEXT_OFFSET,
            sh_size: TEXT_SIZE,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 16,
            sh_entsize: 0,
        });
        if let Some((_, name)) = sections.stapsdt_base {
            writer.write_section_header(&SectionHeader {
                name: Some(name),
                sh_type: elf::SHT_PROGBITS,
                sh_flags: u64::from(elf::SHF_ALLOC),
                sh_addr: STAPSDT_BASE_ADDRESS,
                sh_offset: TEXT_OFFSET + TEXT_SIZE,
                sh_size: 1,
                sh_link: 0,
                sh_info: 0,
                sh_addralign: 1,
                sh_entsize: 0,
            });
        }
        writer.write_section_header(&SectionHeader {
            name: Some(probes_name),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: u64::from(elf::SHF_ALLOC | elf::SHF_WRITE),
            sh_addr: DATA_ADDRESS,
            sh_offset: DATA_OFFSET,
            sh_size: DATA_SIZE,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 2,
            sh_entsize: 0,
        });
        writer.write_section_header(&SectionHeader {
            name: Some(bss_name),
            sh_type: elf::SHT_NOBITS,
            sh_flags: u64::from(elf::SHF_ALLOC | elf::SHF_WRITE),
            sh_addr: BSS_ADDRESS,
            sh_offset: DATA_OFFSET + DATA_SIZE,
            sh_size: BSS_SIZE,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 16,
            sh_entsize: 0,
        });
        if let Some((_, name)) = notes {
            writer.write_section_header(&SectionHeader {
                name: Some(name),
                sh_type: elf::SHT_NOTE,
                sh_flags: 0,
                sh_addr: 0,
                sh_offset: notes_offset as u64,
                sh_size: self.stapsdt_notes.len() as u64,
                sh_link: 0,
                sh_info: 0,
                sh_addralign: 4,
                sh_entsize: 0,
            });
        }
        writer.write_symtab_section_header(local_count(&symtab));
        writer.write_strtab_section_header();
        writer.write_dynsym_section_header(0, local_count(&dynsym));
        writer.write_dynstr_section_header(0);
        writer.write_shstrtab_section_header();
        bytes
    }
}

fn sym(symbol: &TestSymbol, name: StringId, sections: &Sections) -> Sym {
    let bind = if symbol.global {
        elf::STB_GLOBAL
    } else {
        elf::STB_LOCAL
    };
    Sym {
        name: Some(name),
        section: sections.index(symbol.placement),
        st_info: (bind << 4) | symbol.st_type,
        st_other: elf::STV_DEFAULT,
        st_shndx: elf::SHN_UNDEF,
        st_value: symbol.address,
        st_size: 16,
    }
}

/// The `sh_info` of a symbol table: one past the last local symbol, counting
/// the null symbol.
fn local_count(symbols: &[TestSymbol]) -> u32 {
    let locals = symbols.iter().filter(|symbol| !symbol.global).count();
    u32::try_from(locals + 1).expect("test symbol tables are small")
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("test offsets are small")
}

/// The descriptor of a stapsdt note of a 64-bit little-endian file:
/// `strings` holds provider, name and argument spec, each NUL-terminated.
pub fn stapsdt_desc(pc: u64, base: u64, semaphore: u64, strings: &[u8]) -> Vec<u8> {
    let mut desc = Vec::new();
    for address in [pc, base, semaphore] {
        desc.extend_from_slice(&address.to_le_bytes());
    }
    desc.extend_from_slice(strings);
    desc
}

/// A little-endian note section holding `(owner, type, descriptor)`
/// entries, each framed and padded to 4 bytes as the ELF gABI lays notes out.
pub fn note_section(notes: &[(&[u8], u32, &[u8])]) -> Vec<u8> {
    let mut section = Vec::new();
    for (owner, n_type, desc) in notes {
        for size in [owner.len() + 1, desc.len()] {
            let size = u32::try_from(size).expect("test notes are small");
            section.extend_from_slice(&size.to_le_bytes());
        }
        section.extend_from_slice(&n_type.to_le_bytes());
        section.extend_from_slice(owner);
        section.push(0);
        section.resize(section.len().next_multiple_of(4), 0);
        section.extend_from_slice(desc);
        section.resize(section.len().next_multiple_of(4), 0);
    }
    section
}

/// A `.note.stapsdt` section with one stapsdt note per descriptor.
pub fn stapsdt_section(descs: &[Vec<u8>]) -> Vec<u8> {
    let notes: Vec<(&[u8], u32, &[u8])> = descs
        .iter()
        .map(|desc| (&b"stapsdt"[..], NT_STAPSDT, &desc[..]))
        .collect();
    note_section(&notes)
}
