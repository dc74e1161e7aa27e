//! Tests of symbol and USDT resolution against ELF files with a known
//! layout ([`super::test_elf`]).

use object::elf;

use super::{
    test_elf::{
        BSS_ADDRESS, DATA_ADDRESS, DATA_OFFSET, Placement, STAPSDT_BASE_ADDRESS, TEST_PATH,
        TEXT_ADDRESS, TEXT_OFFSET, TestElf, TestSymbol, stapsdt_desc, stapsdt_section,
    },
    *,
};

/// The file offset of an address in the test layout's text segment.
fn text_offset(address: u64) -> u64 {
    address - TEXT_ADDRESS + TEXT_OFFSET
}

fn with_symtab(symbols: &[TestSymbol]) -> ElfBinary {
    TestElf {
        symtab: symbols.to_vec(),
        ..TestElf::default()
    }
    .binary()
}

#[test]
fn a_function_resolves_to_its_file_offset() {
    let binary = with_symtab(&[
        TestSymbol::function("handle_request", TEXT_ADDRESS + 0x40),
        TestSymbol::local_function("parse_header", TEXT_ADDRESS + 0x80),
    ]);
    assert_eq!(binary.symbol_offset("handle_request").ok(), Some(0x1040));
    assert_eq!(binary.symbol_offset("parse_header").ok(), Some(0x1080));
    assert_eq!(binary.path(), Path::new(TEST_PATH));
}

#[test]
fn without_program_headers_the_sections_give_the_same_offset() {
    let binary = TestElf {
        program_headers: false,
        symtab: vec![TestSymbol::function("handle_request", TEXT_ADDRESS + 0x40)],
        ..TestElf::default()
    }
    .binary();
    assert_eq!(
        binary.symbol_offset("handle_request").ok(),
        Some(text_offset(TEXT_ADDRESS + 0x40))
    );
}

#[test]
fn symtab_comes_before_dynsym_and_dynsym_serves_stripped_binaries() {
    let both = TestElf {
        symtab: vec![TestSymbol::function("handle_request", TEXT_ADDRESS + 0x10)],
        dynsym: vec![
            TestSymbol::function("handle_request", TEXT_ADDRESS + 0x20),
            TestSymbol::function("exported_only", TEXT_ADDRESS + 0x30),
        ],
        ..TestElf::default()
    }
    .binary();
    assert_eq!(both.symbol_offset("handle_request").ok(), Some(0x1010));
    assert_eq!(both.symbol_offset("exported_only").ok(), Some(0x1030));

    let stripped = TestElf {
        dynsym: vec![TestSymbol::function("exported_only", TEXT_ADDRESS + 0x30)],
        ..TestElf::default()
    }
    .binary();
    assert_eq!(stripped.symbol_offset("exported_only").ok(), Some(0x1030));
}

#[test]
fn a_missing_symbol_is_named_with_close_suggestions() {
    let binary = with_symtab(&[
        TestSymbol::function("handle_request", TEXT_ADDRESS + 0x10),
        TestSymbol::function("handle_requests", TEXT_ADDRESS + 0x20),
        TestSymbol::function("unrelated", TEXT_ADDRESS + 0x30),
        // Data is never suggested for a uprobe.
        TestSymbol::data("handle_requestt", elf::STT_OBJECT, DATA_ADDRESS),
    ]);
    let error = binary
        .symbol_offset("handle_reqest")
        .expect_err("misspelled");
    assert_eq!(
        error.to_string(),
        r#"symbol "handle_reqest" not found in /opt/test/app (did you mean handle_request or handle_requests?)"#
    );
    let ElfError::SymbolNotFound {
        binary: path,
        symbol,
        suggestions,
        stripped,
    } = error
    else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(path, Path::new(TEST_PATH));
    assert_eq!(symbol, "handle_reqest");
    assert_eq!(suggestions, ["handle_request", "handle_requests"]);
    assert!(!stripped);
}

#[test]
fn suggestions_are_capped_and_closest_first() {
    let binary = with_symtab(&[
        TestSymbol::function("reads", TEXT_ADDRESS),
        TestSymbol::function("rea", TEXT_ADDRESS + 0x10),
        TestSymbol::function("READ", TEXT_ADDRESS + 0x20),
        TestSymbol::function("bead", TEXT_ADDRESS + 0x30),
        TestSymbol::function("reader", TEXT_ADDRESS + 0x40),
    ]);
    let Err(ElfError::SymbolNotFound { suggestions, .. }) = binary.symbol_offset("read") else {
        panic!("read is not defined");
    };
    // Same up to case first, then one edit away (a third of four letters,
    // rounded up to one), by name; "reads" is cut by the cap.
    assert_eq!(suggestions, ["READ", "bead", "rea"]);
}

#[test]
fn a_stripped_binary_says_so_when_nothing_is_close() {
    let binary = TestElf {
        dynsym: vec![TestSymbol::function("exported_only", TEXT_ADDRESS)],
        ..TestElf::default()
    }
    .binary();
    let error = binary.symbol_offset("handle_request").expect_err("absent");
    assert!(matches!(
        error,
        ElfError::SymbolNotFound { stripped: true, .. }
    ));
    assert_eq!(
        error.to_string(),
        r#"symbol "handle_request" not found in /opt/test/app (it has no .symtab, so only its exported symbols were searched; it may be stripped)"#
    );
    let empty = TestElf::default().binary();
    assert_eq!(
        empty.symbol_offset("x").expect_err("absent").to_string(),
        r#"symbol "x" not found in /opt/test/app (it has no .symtab, so only its exported symbols were searched; it may be stripped)"#
    );
}

#[test]
fn an_imported_symbol_is_not_defined_here() {
    let binary = TestElf {
        symtab: vec![TestSymbol::undefined("malloc")],
        dynsym: vec![TestSymbol::undefined("malloc")],
        ..TestElf::default()
    }
    .binary();
    let error = binary.symbol_offset("malloc").expect_err("imported");
    assert!(matches!(error, ElfError::SymbolUndefined { .. }));
    assert_eq!(
        error.to_string(),
        r#"symbol "malloc" is not defined in /opt/test/app: it is imported from a shared library, attach to the library that defines it"#
    );
}

#[test]
fn a_symbol_that_is_not_code_says_what_it_is() {
    let binary = with_symtab(&[
        TestSymbol::data("request_count", elf::STT_OBJECT, DATA_ADDRESS),
        TestSymbol::data("per_thread", elf::STT_TLS, DATA_ADDRESS + 8),
        TestSymbol::function("memcpy", TEXT_ADDRESS).typed(elf::STT_GNU_IFUNC),
        TestSymbol::data("data_label", elf::STT_NOTYPE, DATA_ADDRESS),
    ]);
    let kind = |name| match binary.symbol_offset(name) {
        Err(ElfError::NoCode { kind, .. }) => kind,
        other => panic!("{name}: unexpected {other:?}"),
    };
    assert_eq!(kind("request_count"), "a data object");
    assert_eq!(kind("per_thread"), "a thread-local variable");
    assert!(kind("memcpy").starts_with("a GNU indirect function"));
    assert_eq!(kind("data_label"), "a symbol without a type outside code");
    assert_eq!(
        binary
            .symbol_offset("request_count")
            .expect_err("data")
            .to_string(),
        r#"symbol "request_count" in /opt/test/app is a data object; uprobes attach to functions"#
    );
}

#[test]
fn an_untyped_label_in_code_is_code() {
    let binary =
        with_symtab(&[TestSymbol::function("_start", TEXT_ADDRESS + 0x8).typed(elf::STT_NOTYPE)]);
    assert_eq!(binary.symbol_offset("_start").ok(), Some(0x1008));
}

#[test]
fn a_function_outside_the_file_contents_is_reported() {
    let binary =
        with_symtab(
            &[TestSymbol::function("in_bss", BSS_ADDRESS + 4).in_placement(Placement::Bss)],
        );
    let error = binary.symbol_offset("in_bss").expect_err("no file bytes");
    assert!(matches!(
        error,
        ElfError::NotInFile { address, .. } if address == BSS_ADDRESS + 4
    ));
    assert_eq!(
        error.to_string(),
        r#"symbol "in_bss" in /opt/test/app is at address 0x604014, which no part of the file backs (not in any loadable segment's file contents)"#
    );
}

#[test]
fn same_named_functions_resolve_to_the_global_one_or_are_ambiguous() {
    let global_wins = with_symtab(&[
        TestSymbol::local_function("parse", TEXT_ADDRESS + 0x10),
        TestSymbol::function("parse", TEXT_ADDRESS + 0x20),
        TestSymbol::local_function("parse", TEXT_ADDRESS + 0x30),
    ]);
    assert_eq!(global_wins.symbol_offset("parse").ok(), Some(0x1020));

    // Aliases of one address are one function.
    let aliases = with_symtab(&[
        TestSymbol::local_function("init", TEXT_ADDRESS + 0x10),
        TestSymbol::function("init", TEXT_ADDRESS + 0x10),
    ]);
    assert_eq!(aliases.symbol_offset("init").ok(), Some(0x1010));

    let ambiguous = with_symtab(&[
        TestSymbol::local_function("parse", TEXT_ADDRESS + 0x30),
        TestSymbol::local_function("parse", TEXT_ADDRESS + 0x10),
    ]);
    let error = ambiguous.symbol_offset("parse").expect_err("two locals");
    assert!(matches!(
        &error,
        ElfError::AmbiguousSymbol { offsets, .. } if offsets == &[0x1010, 0x1030]
    ));
    assert_eq!(
        error.to_string(),
        r#"symbol "parse" names 2 different functions in /opt/test/app, at file offsets 0x1010, 0x1030; give the offset of the one to trace instead"#
    );
}

#[test]
fn rust_functions_match_by_demangled_path() {
    // Legacy mangling of sonde_demo::handler, and of two instances of a
    // generic sonde_demo::generic<T> that differ only by hash.
    const HANDLER: &str = "_ZN10sonde_demo7handler17h0123456789abcdefE";
    const GENERIC_A: &str = "_ZN10sonde_demo7generic17h1111111111111111E";
    const GENERIC_B: &str = "_ZN10sonde_demo7generic17h2222222222222222E";
    let binary = with_symtab(&[
        TestSymbol::function(HANDLER, TEXT_ADDRESS + 0x10),
        TestSymbol::function(GENERIC_A, TEXT_ADDRESS + 0x20),
        TestSymbol::function(GENERIC_B, TEXT_ADDRESS + 0x30),
    ]);
    assert_eq!(binary.symbol_offset(HANDLER).ok(), Some(0x1010));
    assert_eq!(
        binary.symbol_offset("sonde_demo::handler").ok(),
        Some(0x1010)
    );
    assert_eq!(
        binary
            .symbol_offset("sonde_demo::handler::h0123456789abcdef")
            .ok(),
        Some(0x1010)
    );
    assert_eq!(
        binary
            .symbol_offset("sonde_demo::generic::h2222222222222222")
            .ok(),
        Some(0x1030)
    );
    assert!(matches!(
        binary.symbol_offset("sonde_demo::generic"),
        Err(ElfError::AmbiguousSymbol { offsets, .. }) if offsets == [0x1020, 0x1030]
    ));
    // A bare function name is not matched, only suggested.
    let error = binary.symbol_offset("handler").expect_err("needs the path");
    assert_eq!(
        error.to_string(),
        r#"symbol "handler" not found in /opt/test/app (did you mean sonde_demo::handler?)"#
    );
}

#[test]
fn only_64_bit_executables_and_shared_objects_are_accepted() {
    let unsupported =
        |elf: TestElf| match ElfBinary::from_bytes(TEST_PATH, elf.bytes()).expect_err("refused") {
            ElfError::Unsupported { reason, .. } => reason,
            other => panic!("unexpected {other:?}"),
        };
    let relocatable = TestElf {
        e_type: elf::ET_REL,
        ..TestElf::default()
    };
    assert_eq!(
        unsupported(relocatable),
        "it is a relocatable object file; uprobes attach to executables and shared libraries"
    );
    let core = TestElf {
        e_type: elf::ET_CORE,
        ..TestElf::default()
    };
    assert_eq!(unsupported(core), "it is a core dump");
    let executable = TestElf {
        e_type: elf::ET_EXEC,
        ..TestElf::default()
    };
    assert!(ElfBinary::from_bytes(TEST_PATH, executable.bytes()).is_ok());

    let mut elf32 = TestElf::default().bytes();
    // e_ident[EI_CLASS], the fifth byte, says 32 or 64 bits.
    elf32[4] = elf::ELFCLASS32;
    let error = ElfBinary::from_bytes(TEST_PATH, elf32).expect_err("32-bit");
    assert_eq!(
        error.to_string(),
        "/opt/test/app is not supported: 32-bit ELF"
    );
}

#[test]
fn what_is_not_elf_is_named() {
    for bytes in [
        Vec::new(),
        b"#!/bin/sh\necho hi\n".to_vec(),
        vec![0x7f, b'E'],
    ] {
        let error = ElfBinary::from_bytes(TEST_PATH, bytes.clone()).expect_err("not ELF");
        assert!(matches!(error, ElfError::NotElf { .. }), "{bytes:?}");
        assert_eq!(error.to_string(), "/opt/test/app is not an ELF file");
    }
}

#[test]
fn a_truncated_elf_file_is_malformed() {
    let mut bytes = TestElf {
        symtab: vec![TestSymbol::function("f", TEXT_ADDRESS)],
        ..TestElf::default()
    }
    .bytes();
    // Cut inside the section headers, which end the file.
    bytes.truncate(bytes.len() - 10);
    let error = ElfBinary::from_bytes(TEST_PATH, bytes).expect_err("truncated");
    assert!(matches!(error, ElfError::Malformed { .. }));
    assert_eq!(error.to_string(), "/opt/test/app is a malformed ELF file");
}

#[test]
fn an_unreadable_path_is_an_io_error_naming_it() {
    let error = ElfBinary::open("/nonexistent/sonde/app").expect_err("missing file");
    let ElfError::Io { path, source } = &error else {
        panic!("unexpected {error:?}");
    };
    assert_eq!(path, Path::new("/nonexistent/sonde/app"));
    assert_eq!(source.kind(), io::ErrorKind::NotFound);
    assert_eq!(error.to_string(), "cannot read /nonexistent/sonde/app");
}

#[test]
fn open_reads_a_file_from_disk() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("app");
    let elf = TestElf {
        symtab: vec![TestSymbol::function("handle_request", TEXT_ADDRESS + 0x40)],
        ..TestElf::default()
    };
    fs::write(&path, elf.bytes()).expect("write the test binary");
    let binary = ElfBinary::open(&path).expect("opens");
    assert_eq!(binary.path(), path);
    assert_eq!(binary.symbol_offset("handle_request").ok(), Some(0x1040));
}

// USDT.

fn with_notes(descs: &[Vec<u8>]) -> TestElf {
    TestElf {
        stapsdt_notes: stapsdt_section(descs),
        ..TestElf::default()
    }
}

#[test]
fn a_usdt_probe_resolves_to_its_site_semaphore_and_arguments() {
    let binary = with_notes(&[stapsdt_desc(
        TEXT_ADDRESS + 0x21,
        STAPSDT_BASE_ADDRESS,
        DATA_ADDRESS + 4,
        b"sonde\0request\08@%rdi -4@%esi 8@$7\0",
    )])
    .binary();
    let probe = binary.usdt_probe("sonde", "request").expect("declared");
    assert_eq!(
        probe,
        UsdtProbe {
            provider: "sonde".to_owned(),
            name: "request".to_owned(),
            file_offset: 0x1021,
            semaphore_offset: Some(DATA_OFFSET + 4),
            args: vec![
                UsdtArg {
                    size: 8,
                    signed: false,
                    location: UsdtArgLocation::Register {
                        pt_regs_offset: pt_regs::RDI
                    },
                },
                UsdtArg {
                    size: 4,
                    signed: true,
                    location: UsdtArgLocation::Register {
                        pt_regs_offset: pt_regs::RSI
                    },
                },
                UsdtArg {
                    size: 8,
                    signed: false,
                    location: UsdtArgLocation::Constant(7),
                },
            ],
        }
    );
    assert_eq!(binary.usdt_probes().expect("all usable"), [probe]);
}

#[test]
fn prelinked_addresses_are_moved_back_by_the_stapsdt_base() {
    // The notes were written when .stapsdt.base was 0x1000 lower than where
    // the section headers now put it: every address in them moves as much.
    let stale_base = STAPSDT_BASE_ADDRESS - 0x1000;
    let binary = with_notes(&[stapsdt_desc(
        TEXT_ADDRESS + 0x21 - 0x1000,
        stale_base,
        DATA_ADDRESS + 6 - 0x1000,
        b"sonde\0request\0\0",
    )])
    .binary();
    let probe = binary.usdt_probe("sonde", "request").expect("declared");
    assert_eq!(probe.file_offset, 0x1021);
    assert_eq!(probe.semaphore_offset, Some(DATA_OFFSET + 6));
    assert!(probe.args.is_empty());
}

#[test]
fn without_a_base_there_is_nothing_to_adjust() {
    // A zero base in the note, or no .stapsdt.base section: the note's
    // addresses are taken as they are.
    let zero_base = with_notes(&[stapsdt_desc(TEXT_ADDRESS + 0x30, 0, 0, b"p\0n\0\0")]).binary();
    let no_section = TestElf {
        stapsdt_base: false,
        ..with_notes(&[stapsdt_desc(
            TEXT_ADDRESS + 0x30,
            STAPSDT_BASE_ADDRESS - 0x1000,
            0,
            b"p\0n\0\0",
        )])
    }
    .binary();
    for binary in [zero_base, no_section] {
        let probe = binary.usdt_probe("p", "n").expect("declared");
        assert_eq!(probe.file_offset, 0x1030);
        assert_eq!(probe.semaphore_offset, None);
    }
}

#[test]
fn a_semaphore_without_file_contents_is_reported() {
    let binary = with_notes(&[stapsdt_desc(
        TEXT_ADDRESS,
        STAPSDT_BASE_ADDRESS,
        BSS_ADDRESS,
        b"sonde\0request\0\0",
    )])
    .binary();
    let error = binary.usdt_probe("sonde", "request").expect_err("in .bss");
    assert_eq!(
        error.to_string(),
        "the semaphore of USDT probe sonde:request in /opt/test/app is at address 0x604010, which no part of the file backs (not in any loadable segment's file contents)"
    );
}

#[test]
fn a_missing_usdt_probe_lists_the_available_ones() {
    let binary = with_notes(&[
        stapsdt_desc(TEXT_ADDRESS, STAPSDT_BASE_ADDRESS, 0, b"sonde\0request\0\0"),
        stapsdt_desc(
            TEXT_ADDRESS + 1,
            STAPSDT_BASE_ADDRESS,
            0,
            b"libc\0setjmp\0\0",
        ),
        stapsdt_desc(
            TEXT_ADDRESS + 2,
            STAPSDT_BASE_ADDRESS,
            0,
            b"sonde\0request\0\0",
        ),
    ])
    .binary();
    let error = binary
        .usdt_probe("sonde", "requst")
        .expect_err("misspelled");
    assert_eq!(
        error.to_string(),
        "USDT probe sonde:requst not found in /opt/test/app (it has libc:setjmp, sonde:request)"
    );
    assert!(matches!(
        error,
        ElfError::UsdtNotFound { available, .. } if available == ["libc:setjmp", "sonde:request"]
    ));

    let none = TestElf::default().binary();
    assert!(none.usdt_probes().expect("no notes is fine").is_empty());
    assert_eq!(
        none.usdt_probe("sonde", "request")
            .expect_err("no probes")
            .to_string(),
        "USDT probe sonde:request not found in /opt/test/app (it has no USDT probes)"
    );
}

#[test]
fn a_long_probe_list_is_shortened_in_the_message_only() {
    let descs: Vec<Vec<u8>> = (0..12u8)
        .map(|i| {
            let strings = format!("p\0probe{i:02}\0\0");
            stapsdt_desc(TEXT_ADDRESS + u64::from(i), 0, 0, strings.as_bytes())
        })
        .collect();
    let error = with_notes(&descs)
        .binary()
        .usdt_probe("p", "other")
        .expect_err("absent");
    assert!(
        error
            .to_string()
            .ends_with("p:probe08, p:probe09 and 2 more)"),
        "{error}"
    );
    assert!(matches!(error, ElfError::UsdtNotFound { available, .. } if available.len() == 12));
}

#[test]
fn a_probe_with_several_sites_is_attached_site_by_site() {
    let binary = with_notes(&[
        stapsdt_desc(
            TEXT_ADDRESS + 0x10,
            STAPSDT_BASE_ADDRESS,
            0,
            b"sonde\0request\08@%rdi\0",
        ),
        stapsdt_desc(
            TEXT_ADDRESS + 0x50,
            STAPSDT_BASE_ADDRESS,
            0,
            b"sonde\0request\08@%rbx\0",
        ),
    ])
    .binary();
    let error = binary
        .usdt_probe("sonde", "request")
        .expect_err("two sites");
    assert_eq!(
        error.to_string(),
        "USDT probe sonde:request has 2 sites in /opt/test/app; each of them must be attached"
    );
    let sites = binary
        .usdt_probe_sites("sonde", "request")
        .expect("declared");
    let offsets: Vec<u64> = sites.iter().map(|site| site.file_offset).collect();
    assert_eq!(offsets, [0x1010, 0x1050]);
    assert_eq!(
        sites[1].args[0].location,
        UsdtArgLocation::Register {
            pt_regs_offset: pt_regs::RBX
        }
    );
}

#[test]
fn an_unreadable_argument_fails_only_its_probe() {
    let binary = with_notes(&[
        stapsdt_desc(
            TEXT_ADDRESS,
            STAPSDT_BASE_ADDRESS,
            0,
            b"sonde\0good\08@%rdi\0",
        ),
        stapsdt_desc(
            TEXT_ADDRESS + 1,
            STAPSDT_BASE_ADDRESS,
            0,
            b"sonde\0bad\08@%rdi 4@-4(%rbp,%rax,4)\0",
        ),
    ])
    .binary();
    assert_eq!(
        binary
            .usdt_probe("sonde", "good")
            .expect("usable")
            .args
            .len(),
        1
    );
    let error = binary
        .usdt_probe("sonde", "bad")
        .expect_err("indexed operand");
    assert_eq!(
        error.to_string(),
        r#"USDT probe sonde:bad in /opt/test/app: argument 1 ("4@-4(%rbp,%rax,4)") cannot be read: indexed memory operands (base, index, scale) are not supported"#
    );
    assert!(matches!(
        binary.usdt_probes(),
        Err(ElfError::UnsupportedUsdtArg { index: 1, .. })
    ));
}

#[test]
fn usdt_arguments_are_only_read_for_x86_64() {
    let aarch64 = |strings: &[u8]| TestElf {
        e_machine: elf::EM_AARCH64,
        ..with_notes(&[stapsdt_desc(TEXT_ADDRESS, STAPSDT_BASE_ADDRESS, 0, strings)])
    };
    let with_args = aarch64(b"sonde\0request\08@x0\0").binary();
    let error = with_args.usdt_probe("sonde", "request").expect_err("arm");
    assert!(matches!(error, ElfError::Unsupported { .. }));
    assert_eq!(
        error.to_string(),
        "/opt/test/app is not supported: USDT argument specs are only understood for x86-64"
    );
    // Without arguments, the site alone is usable on any machine.
    let without_args = aarch64(b"sonde\0request\0\0").binary();
    assert_eq!(
        without_args
            .usdt_probe("sonde", "request")
            .expect("no arguments to read")
            .file_offset,
        TEXT_OFFSET
    );
}

#[test]
fn a_malformed_note_is_reported() {
    let binary = with_notes(&[stapsdt_desc(TEXT_ADDRESS, 0, 0, b"sonde\0request")]).binary();
    let error = binary.usdt_probes().expect_err("unterminated");
    assert_eq!(
        error.to_string(),
        "malformed USDT note in /opt/test/app: descriptor has no argument spec"
    );
}

// Internals.

#[test]
fn edit_distance_counts_single_character_edits() {
    assert_eq!(edit_distance("", ""), 0);
    assert_eq!(edit_distance("abc", ""), 3);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("handle_reqest", "handle_request"), 1);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("flaw", "lawn"), 2);
    assert_eq!(edit_distance("größe", "grösse"), 2);
}

#[test]
fn mapped_ranges_cover_only_file_contents() {
    let range = MappedRange {
        address: 0x60_4000,
        offset: 0x2000,
        file_size: 0x10,
    };
    assert_eq!(range.file_offset(0x60_3fff), None);
    assert_eq!(range.file_offset(0x60_4000), Some(0x2000));
    assert_eq!(range.file_offset(0x60_400f), Some(0x200f));
    assert_eq!(range.file_offset(0x60_4010), None);
    let at_the_end = MappedRange {
        address: 0,
        offset: u64::MAX,
        file_size: 0x10,
    };
    assert_eq!(at_the_end.file_offset(1), None);
}
