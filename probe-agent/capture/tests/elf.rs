//! ELF inspection against a real binary, the demo app this package builds:
//! every offset is checked against what binutils (`readelf`, `objdump`,
//! `objcopy`) report for the same file, computed independently here.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use probe_capture::elf::{ElfBinary, ElfError, UsdtArg, UsdtArgLocation, pt_regs};

const DEMO_APP: &str = env!("CARGO_BIN_EXE_sonde-demo-app");

/// Runs a binutils tool and returns its standard output.
fn binutils(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (binutils): {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("binutils print UTF-8")
}

fn hex(text: &str) -> u64 {
    let digits = text.trim_start_matches("0x");
    u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("{text:?} is not hex: {e}"))
}

/// `(file offset, virtual address, file size)` of each `PT_LOAD` segment,
/// from `readelf -lW`.
fn load_segments(binary: &str) -> Vec<(u64, u64, u64)> {
    binutils("readelf", &["-lW", binary])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&"LOAD"))
                .then(|| (hex(fields[1]), hex(fields[2]), hex(fields[4])))
        })
        .collect()
}

fn file_offset(segments: &[(u64, u64, u64)], address: u64) -> u64 {
    segments
        .iter()
        .find(|(_, vaddr, filesz)| (*vaddr..vaddr + filesz).contains(&address))
        .map(|(offset, vaddr, _)| address - vaddr + offset)
        .unwrap_or_else(|| panic!("no LOAD segment holds {address:#x}"))
}

/// The value of the `.symtab` symbol `name`, from `readelf -sW`.
fn symbol_value(binary: &str, name: &str) -> u64 {
    let symbols = binutils("readelf", &["-sW", binary]);
    let values: Vec<u64> = symbols
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 8 && fields[7] == name && fields[6] != "UND").then(|| hex(fields[1]))
        })
        .collect();
    assert!(!values.is_empty(), "readelf shows no {name}");
    assert!(
        values.iter().all(|value| *value == values[0]),
        "{name} has several values: {values:?}"
    );
    values[0]
}

/// `(address, file offset, size)` of a section, from `readelf -SW`.
fn section(binary: &str, name: &str) -> (u64, u64, u64) {
    binutils("readelf", &["-SW", binary])
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(']')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            (fields.first() == Some(&name))
                .then(|| (hex(fields[2]), hex(fields[3]), hex(fields[4])))
        })
        .unwrap_or_else(|| panic!("readelf shows no section {name}"))
}

/// A stapsdt note as `readelf -n` prints it.
#[derive(Debug)]
struct NoteAsPrinted {
    provider: String,
    name: String,
    location: u64,
    base: u64,
    semaphore: u64,
    arguments: String,
}

fn stapsdt_notes(binary: &str) -> Vec<NoteAsPrinted> {
    let mut notes = Vec::new();
    let text = binutils("readelf", &["-n", binary]);
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("stapsdt") {
            continue;
        }
        let mut field = |label: &str| {
            let line = lines.next().expect("readelf prints every field");
            line.strip_prefix(label)
                .unwrap_or_else(|| panic!("expected {label} in {line:?}"))
                .trim()
                .to_owned()
        };
        let provider = field("Provider:");
        let name = field("Name:");
        let addresses = field("Location:");
        let arguments = field("Arguments:");
        let addresses: Vec<u64> = addresses
            .split(", ")
            .map(|part| hex(part.rsplit(' ').next().expect("label and value")))
            .collect();
        notes.push(NoteAsPrinted {
            provider,
            name,
            location: addresses[0],
            base: addresses[1],
            semaphore: addresses[2],
            arguments,
        });
    }
    notes
}

fn demo_app() -> ElfBinary {
    ElfBinary::open(DEMO_APP).expect("the demo app is an ELF executable")
}

#[test]
fn handle_request_offset_matches_readelf_and_the_code_objdump_shows() {
    let offset = demo_app()
        .symbol_offset("handle_request")
        .expect("handle_request is defined");

    let address = symbol_value(DEMO_APP, "handle_request");
    let expected = file_offset(&load_segments(DEMO_APP), address);
    assert_eq!(offset, expected, "address {address:#x}");

    // The file's bytes at that offset are the function's first instruction
    // as objdump decodes it at the symbol's address.
    let start = format!("--start-address={address:#x}");
    let stop = format!("--stop-address={:#x}", address + 16);
    let disassembly = binutils("objdump", &["-d", &start, &stop, DEMO_APP]);
    let first_instruction = disassembly
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{address:x}:")))
        .expect("objdump shows the first instruction");
    let expected_bytes: Vec<u8> = first_instruction
        .split('\t')
        .nth(1)
        .expect("objdump prints the instruction bytes")
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect();
    let file = std::fs::read(DEMO_APP).expect("read the demo app");
    let at = usize::try_from(offset).expect("offset fits");
    assert_eq!(&file[at..at + expected_bytes.len()], expected_bytes);
}

#[test]
fn rust_functions_are_found_by_their_demangled_path() {
    let binary = demo_app();
    let offset = binary
        .symbol_offset("sonde_demo_app::main")
        .expect("the demo app's main function");
    let mangled = binutils("readelf", &["-sW", DEMO_APP])
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7).map(str::to_owned))
        // The function itself, not its closures, in legacy or v0 mangling.
        .find(|name| {
            name.starts_with("_ZN14sonde_demo_app4main17h")
                || (name.starts_with("_RNv") && name.ends_with("14sonde_demo_app4main"))
        })
        .expect("readelf shows the mangled main");
    let address = symbol_value(DEMO_APP, &mangled);
    assert_eq!(offset, file_offset(&load_segments(DEMO_APP), address));
    assert_eq!(binary.symbol_offset(&mangled).ok(), Some(offset));
}

#[test]
fn lookup_errors_name_the_problem() {
    let binary = demo_app();
    let error = binary
        .symbol_offset("handle_reqest")
        .expect_err("misspelled");
    assert_eq!(
        error.to_string(),
        format!(r#"symbol "handle_reqest" not found in {DEMO_APP} (did you mean handle_request?)"#)
    );

    // Rust's standard library allocates through libc.
    assert!(matches!(
        binary.symbol_offset("malloc"),
        Err(ElfError::SymbolUndefined { .. })
    ));
    assert!(matches!(
        binary.symbol_offset("sonde_demo_app::REQUEST_DONE_SEMAPHORE"),
        Err(ElfError::NoCode {
            kind: "a data object",
            ..
        })
    ));
}

#[test]
fn usdt_probes_match_readelf_notes() {
    let printed = stapsdt_notes(DEMO_APP);
    let names: Vec<(&str, &str)> = printed
        .iter()
        .map(|note| (note.provider.as_str(), note.name.as_str()))
        .collect();
    assert_eq!(names, [("sonde", "request"), ("sonde", "request_done")]);

    let (base_address, _, _) = section(DEMO_APP, ".stapsdt.base");
    let (probes_address, probes_offset, probes_size) = section(DEMO_APP, ".probes");
    let segments = load_segments(DEMO_APP);
    let file = std::fs::read(DEMO_APP).expect("read the demo app");
    let probes = demo_app().usdt_probes().expect("the demo app's probes");
    assert_eq!(probes.len(), printed.len());
    for (probe, note) in probes.iter().zip(&printed) {
        // Built without prelink: the note's base is where the section is.
        assert_eq!(note.base, base_address, "{note:?}");
        assert_eq!(
            (probe.provider.as_str(), probe.name.as_str()),
            (note.provider.as_str(), note.name.as_str())
        );
        assert_eq!(
            probe.file_offset,
            file_offset(&segments, note.location),
            "{note:?}"
        );
        // A probe site is a one-byte nop.
        let site = usize::try_from(probe.file_offset).expect("offset fits");
        assert_eq!(file[site], 0x90, "{note:?}");

        let args: Vec<UsdtArg> = note
            .arguments
            .split_whitespace()
            .map(arg_as_printed)
            .collect();
        assert_eq!(probe.args, args, "{note:?}");

        match note.semaphore {
            0 => assert_eq!(probe.semaphore_offset, None),
            semaphore => {
                let offset = probe.semaphore_offset.expect("a semaphore");
                assert_eq!(offset, file_offset(&segments, semaphore));
                // It lies in .probes and starts lowered.
                assert_eq!(offset, semaphore - probes_address + probes_offset);
                assert!(offset + 2 <= probes_offset + probes_size);
                let at = usize::try_from(offset).expect("offset fits");
                assert_eq!(file[at..at + 2], [0, 0]);
            }
        }
    }
    assert_eq!(
        probes[0].semaphore_offset, None,
        "sonde:request always fires"
    );
    assert!(
        probes[1].semaphore_offset.is_some(),
        "sonde:request_done is gated"
    );
}

/// An argument as written in the note, for the register operands the demo
/// app's probes use, decoded with a table independent of the agent's.
fn arg_as_printed(arg: &str) -> UsdtArg {
    let (size, register) = arg.split_once("@%").expect("register operands only");
    let registers64 = [
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi",
    ];
    let registers32 = [
        "r15d", "r14d", "r13d", "r12d", "ebp", "ebx", "r11d", "r10d", "r9d", "r8d", "eax", "ecx",
        "edx", "esi", "edi",
    ];
    let slot = registers64
        .iter()
        .position(|name| *name == register)
        .or_else(|| registers32.iter().position(|name| *name == register))
        .unwrap_or_else(|| panic!("unexpected register {register}"));
    UsdtArg {
        size: size.trim_start_matches('-').parse().expect("size"),
        signed: size.starts_with('-'),
        location: UsdtArgLocation::Register {
            pt_regs_offset: u16::try_from(slot * 8).expect("small"),
        },
    }
}

#[test]
fn the_demo_probes_carry_their_declared_types() {
    let binary = demo_app();
    let request = binary
        .usdt_probe("sonde", "request")
        .expect("sonde:request");
    let types: Vec<(u8, bool)> = request.args.iter().map(|a| (a.size, a.signed)).collect();
    assert_eq!(types, [(8, false), (4, false)], "id: u64, size: u32");
    let done = binary
        .usdt_probe("sonde", "request_done")
        .expect("sonde:request_done");
    let types: Vec<(u8, bool)> = done.args.iter().map(|a| (a.size, a.signed)).collect();
    assert_eq!(types, [(8, false), (8, true)], "id: u64, result: i64");
    for arg in request.args.iter().chain(&done.args) {
        assert!(
            matches!(arg.location, UsdtArgLocation::Register { pt_regs_offset } if pt_regs_offset < pt_regs::ORIG_RAX),
            "{arg:?}"
        );
    }

    let error = binary
        .usdt_probe("sonde", "reqest")
        .expect_err("misspelled");
    assert_eq!(
        error.to_string(),
        format!(
            "USDT probe sonde:reqest not found in {DEMO_APP} (it has sonde:request, sonde:request_done)"
        )
    );
}

/// A copy of the demo app with `objcopy --strip-all` applied, in `dir`.
fn stripped_copy(dir: &Path) -> PathBuf {
    let stripped = dir.join("sonde-demo-app.stripped");
    let stripped_arg = stripped.to_str().expect("UTF-8 temporary path");
    binutils("objcopy", &["--strip-all", DEMO_APP, stripped_arg]);
    stripped
}

#[test]
fn a_stripped_binary_keeps_its_usdt_probes_but_not_its_local_symbols() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let stripped = ElfBinary::open(stripped_copy(dir.path())).expect("still ELF");

    let error = stripped
        .symbol_offset("handle_request")
        .expect_err("not exported, so stripped");
    assert!(
        matches!(error, ElfError::SymbolNotFound { stripped: true, .. }),
        "{error:?}"
    );
    // Imports stay in .dynsym.
    assert!(matches!(
        stripped.symbol_offset("malloc"),
        Err(ElfError::SymbolUndefined { .. })
    ));
    // Stripping moves no loaded byte: the probes are where they were.
    assert_eq!(
        stripped.usdt_probes().expect("notes survive strip"),
        demo_app().usdt_probes().expect("the demo app's probes")
    );
}
