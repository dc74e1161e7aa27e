//! SystemTap SDT (USDT) probe descriptions: the version 3 notes in
//! `.note.stapsdt` and the x86-64 argument specs they carry.
//!
//! Each probe site is one note, owner `stapsdt`, type 3. Its descriptor holds
//! three addresses of the target's word size (the probe's `nop`, the link-time
//! address of `.stapsdt.base`, the semaphore or 0) followed by three
//! NUL-terminated strings: provider, name and argument spec. An argument spec
//! is a space-separated list of `SIZE@OPERAND`, where a negative size marks a
//! signed value and the operand is in AT&T syntax (`%reg`, `$constant`,
//! `disp(%reg)`).

use object::{Endianness, elf::FileHeader64, read::elf::NoteIterator};

use super::pt_regs;

/// The note type of a SystemTap SDT version 3 probe description.
pub(super) const NT_STAPSDT: u32 = 3;

/// One USDT probe site, ready to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtProbe {
    pub provider: String,
    pub name: String,
    /// File offset of the probe's `nop`, where the uprobe goes.
    pub file_offset: u64,
    /// File offset of the probe's semaphore: the `u16` the kernel increments
    /// while the probe is attached (a uprobe's `ref_ctr_offset`), for
    /// binaries that only compute a probe's arguments when someone listens.
    pub semaphore_offset: Option<u64>,
    /// Where each argument is at the probe site, in order.
    pub args: Vec<UsdtArg>,
}

/// Where to find one USDT argument when the probe fires, and how to widen it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UsdtArg {
    /// Width in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Sign-extend (rather than zero-extend) to 64 bits.
    pub signed: bool,
    pub location: UsdtArgLocation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsdtArgLocation {
    /// The value is in a register, at this offset of `struct pt_regs`.
    Register { pt_regs_offset: u16 },
    /// The value is in user memory at the address held by a register plus
    /// a displacement.
    Memory {
        base_pt_regs_offset: u16,
        displacement: i64,
    },
    /// The value is a constant known at build time.
    Constant(i64),
}

/// A stapsdt note as it is in the file, before any address translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StapsdtNote<'data> {
    pub pc: u64,
    pub base: u64,
    pub semaphore: u64,
    pub provider: &'data str,
    pub name: &'data str,
    pub args: &'data str,
}

/// Why an argument spec cannot be used, and which argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ArgSpecError<'spec> {
    /// Position of the argument, from 0.
    pub index: usize,
    pub arg: &'spec str,
    pub reason: &'static str,
}

/// The stapsdt notes among the notes of one `SHT_NOTE` section of a 64-bit
/// ELF file; notes of other owners or types are skipped.
pub(super) fn stapsdt_notes<'data>(
    notes: NoteIterator<'data, FileHeader64<Endianness>>,
    endian: Endianness,
) -> Result<Vec<StapsdtNote<'data>>, &'static str> {
    let mut found = Vec::new();
    for note in notes {
        let note = note.map_err(|_| "truncated or misaligned note")?;
        if note.name() == b"stapsdt" && note.n_type(endian) == NT_STAPSDT {
            found.push(parse_stapsdt_desc(note.desc(), endian)?);
        }
    }
    Ok(found)
}

/// Decodes the descriptor of one stapsdt note of a 64-bit ELF file.
pub(super) fn parse_stapsdt_desc(
    desc: &[u8],
    endian: Endianness,
) -> Result<StapsdtNote<'_>, &'static str> {
    const ADDRESSES: usize = 3 * 8;
    let (addresses, strings) = desc
        .split_at_checked(ADDRESSES)
        .ok_or("descriptor is shorter than its three addresses")?;
    let address = |i: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&addresses[i * 8..i * 8 + 8]);
        match endian {
            Endianness::Little => u64::from_le_bytes(bytes),
            Endianness::Big => u64::from_be_bytes(bytes),
        }
    };
    let mut strings = strings.split(|&b| b == 0);
    let mut next_string = |what| {
        let bytes = strings.next().ok_or(what)?;
        std::str::from_utf8(bytes).map_err(|_| "provider, name or arguments are not UTF-8")
    };
    let provider = next_string("descriptor has no provider")?;
    let name = next_string("descriptor has no name")?;
    let args = next_string("descriptor has no argument spec")?;
    // The split yields a last piece after the argument spec's NUL: without
    // one, the spec ran to the end of the descriptor unterminated.
    if strings.next().is_none() {
        return Err("argument spec is not NUL-terminated");
    }
    if provider.is_empty() || name.is_empty() {
        return Err("descriptor has an empty provider or name");
    }
    Ok(StapsdtNote {
        pc: address(0),
        base: address(1),
        semaphore: address(2),
        provider,
        name,
        args,
    })
}

/// Parses an x86-64 argument spec such as `-4@%edi 8@-20(%rbp) 8@$5`.
pub(super) fn parse_args(spec: &str) -> Result<Vec<UsdtArg>, ArgSpecError<'_>> {
    spec.split_ascii_whitespace()
        .enumerate()
        .map(|(index, arg)| parse_arg(arg).map_err(|reason| ArgSpecError { index, arg, reason }))
        .collect()
}

fn parse_arg(arg: &str) -> Result<UsdtArg, &'static str> {
    let (size, operand) = arg
        .split_once('@')
        .ok_or("expected SIZE@OPERAND, such as -4@%edi")?;
    let (signed, size) = match size.strip_prefix('-') {
        Some(magnitude) => (true, magnitude),
        None => (false, size),
    };
    let size = match size {
        "1" => 1,
        "2" => 2,
        "4" => 4,
        "8" => 8,
        _ => return Err("size must be 1, 2, 4 or 8 bytes, with a leading - when signed"),
    };
    Ok(UsdtArg {
        size,
        signed,
        location: parse_operand(operand)?,
    })
}

fn parse_operand(operand: &str) -> Result<UsdtArgLocation, &'static str> {
    if let Some(constant) = operand.strip_prefix('$') {
        let value = parse_integer(constant).ok_or("constant is not an integer")?;
        return Ok(UsdtArgLocation::Constant(value));
    }
    if let Some(register) = operand.strip_prefix('%') {
        return Ok(UsdtArgLocation::Register {
            pt_regs_offset: register_offset(register)?,
        });
    }
    if let Some((displacement, rest)) = operand.split_once('(') {
        let inside = rest
            .strip_suffix(')')
            .ok_or("memory operand does not end with ')'")?;
        if inside.contains(',') {
            return Err("indexed memory operands (base, index, scale) are not supported");
        }
        let base = inside
            .strip_prefix('%')
            .ok_or("memory operand's base is not a %register")?;
        if matches!(base, "rip" | "eip") {
            return Err("instruction-pointer-relative operands are not supported");
        }
        let displacement = if displacement.is_empty() {
            0
        } else {
            parse_integer(displacement)
                .ok_or("displacement is not an integer (symbolic addresses are not supported)")?
        };
        return Ok(UsdtArgLocation::Memory {
            base_pt_regs_offset: register_offset(base)?,
            displacement,
        });
    }
    Err("operand is none of %register, $constant, displacement(%register)")
}

fn register_offset(name: &str) -> Result<u16, &'static str> {
    if matches!(name, "ah" | "bh" | "ch" | "dh") {
        return Err("high-byte registers (ah, bh, ch, dh) are not supported");
    }
    pt_regs::register_offset(name).ok_or("not an x86-64 general-purpose register")
}

/// A decimal or `0x` hexadecimal integer with an optional sign. Values from
/// `i64::MAX + 1` to `u64::MAX` are taken as the two's complement bit pattern
/// they denote, since a spec writes a 64-bit constant either way.
fn parse_integer(text: &str) -> Option<i64> {
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let magnitude = match magnitude
        .strip_prefix("0x")
        .or_else(|| magnitude.strip_prefix("0X"))
    {
        Some(hex) if !hex.starts_with(['+', '-']) => u64::from_str_radix(hex, 16).ok()?,
        Some(_) => return None,
        None if magnitude.starts_with(['+', '-']) => return None,
        None => magnitude.parse::<u64>().ok()?,
    };
    if negative {
        // -(2^63) is the most negative value; a larger magnitude overflows.
        let value = 0i64.checked_sub_unsigned(magnitude)?;
        Some(value)
    } else {
        // Wraps on purpose: see the function's documentation.
        Some(magnitude as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{
        pt_regs::{R8, R9, R12, R15, RAX, RBP, RDI, RDX, RSI, RSP},
        test_elf::{note_section, stapsdt_desc as desc},
    };

    fn register(size: u8, signed: bool, pt_regs_offset: u16) -> UsdtArg {
        UsdtArg {
            size,
            signed,
            location: UsdtArgLocation::Register { pt_regs_offset },
        }
    }

    fn memory(size: u8, signed: bool, base_pt_regs_offset: u16, displacement: i64) -> UsdtArg {
        UsdtArg {
            size,
            signed,
            location: UsdtArgLocation::Memory {
                base_pt_regs_offset,
                displacement,
            },
        }
    }

    fn constant(size: u8, signed: bool, value: i64) -> UsdtArg {
        UsdtArg {
            size,
            signed,
            location: UsdtArgLocation::Constant(value),
        }
    }

    #[test]
    fn parses_the_operand_kinds_compilers_emit() {
        let args = parse_args("-4@%edi 8@%rax 4@-20(%rbp) 8@$5 -8@8(%rsp)").expect("spec parses");
        assert_eq!(
            args,
            [
                register(4, true, RDI),
                register(8, false, RAX),
                memory(4, false, RBP, -20),
                constant(8, false, 5),
                memory(8, true, RSP, 8),
            ]
        );
    }

    #[test]
    fn parses_every_size_and_sign() {
        let args = parse_args("1@%al -1@%sil 2@%r8w -2@%dx 4@%r9d -4@%r15d 8@%r12 -8@%rsi")
            .expect("spec parses");
        let expected = [
            (1, false, RAX),
            (1, true, RSI),
            (2, false, R8),
            (2, true, RDX),
            (4, false, R9),
            (4, true, R15),
            (8, false, R12),
            (8, true, RSI),
        ]
        .map(|(size, signed, offset)| register(size, signed, offset));
        assert_eq!(args, expected);
    }

    #[test]
    fn parses_displacements_and_constants_in_every_notation() {
        let args = parse_args(
            "8@(%rdi) 4@0x10(%rsp) -4@-0x14(%rbp) 8@$-1 8@$0x7f -2@$+3 8@$-0x8000000000000000",
        )
        .expect("spec parses");
        assert_eq!(
            args,
            [
                memory(8, false, RDI, 0),
                memory(4, false, RSP, 16),
                memory(4, true, RBP, -20),
                constant(8, false, -1),
                constant(8, false, 127),
                constant(2, true, 3),
                constant(8, false, i64::MIN),
            ]
        );
    }

    #[test]
    fn a_constant_above_i64_max_keeps_its_bit_pattern() {
        let args =
            parse_args("8@$18446744073709551615 8@$0xffffffffffffffff").expect("spec parses");
        assert_eq!(args, [constant(8, false, -1), constant(8, false, -1)]);
    }

    #[test]
    fn empty_and_blank_specs_have_no_arguments() {
        assert!(parse_args("").expect("spec parses").is_empty());
        assert!(parse_args("   ").expect("spec parses").is_empty());
        assert_eq!(
            parse_args("  8@%rdi   4@%esi ").expect("spec parses").len(),
            2
        );
    }

    #[test]
    fn names_the_argument_and_the_reason_it_cannot_be_read() {
        let cases = [
            ("%rdi", "expected SIZE@OPERAND, such as -4@%edi"),
            (
                "3@%rdi",
                "size must be 1, 2, 4 or 8 bytes, with a leading - when signed",
            ),
            (
                "-16@%rdi",
                "size must be 1, 2, 4 or 8 bytes, with a leading - when signed",
            ),
            (
                "@%rdi",
                "size must be 1, 2, 4 or 8 bytes, with a leading - when signed",
            ),
            ("8@%xmm0", "not an x86-64 general-purpose register"),
            (
                "1@%ah",
                "high-byte registers (ah, bh, ch, dh) are not supported",
            ),
            ("8@$five", "constant is not an integer"),
            ("8@$", "constant is not an integer"),
            ("8@$--1", "constant is not an integer"),
            ("8@$0x-1", "constant is not an integer"),
            ("8@$-0x8000000000000001", "constant is not an integer"),
            ("8@$18446744073709551616", "constant is not an integer"),
            (
                "4@-4(%rbp,%rax,8)",
                "indexed memory operands (base, index, scale) are not supported",
            ),
            (
                "4@counter(%rip)",
                "instruction-pointer-relative operands are not supported",
            ),
            (
                "4@8(%rip)",
                "instruction-pointer-relative operands are not supported",
            ),
            (
                "4@counter+8(%rbx)",
                "displacement is not an integer (symbolic addresses are not supported)",
            ),
            ("4@8(%rbp", "memory operand does not end with ')'"),
            ("4@8(rbp)", "memory operand's base is not a %register"),
            ("4@8(%rzz)", "not an x86-64 general-purpose register"),
            (
                "4@1234",
                "operand is none of %register, $constant, displacement(%register)",
            ),
        ];
        for (arg, reason) in cases {
            let spec = format!("8@%rdi {arg}");
            let error = parse_args(&spec).expect_err("spec is refused");
            assert_eq!(
                error,
                ArgSpecError {
                    index: 1,
                    arg,
                    reason
                },
                "{spec}"
            );
        }
    }

    #[test]
    fn decodes_a_descriptor() {
        let bytes = desc(0x1234, 0x5678, 0x9abc, b"sonde\0request\08@%rdi 4@%esi\0");
        let note = parse_stapsdt_desc(&bytes, Endianness::Little).expect("descriptor decodes");
        assert_eq!(
            note,
            StapsdtNote {
                pc: 0x1234,
                base: 0x5678,
                semaphore: 0x9abc,
                provider: "sonde",
                name: "request",
                args: "8@%rdi 4@%esi",
            }
        );
    }

    #[test]
    fn decodes_a_big_endian_descriptor_and_empty_arguments() {
        let mut bytes = Vec::new();
        for address in [0x1122_3344_5566_7788_u64, 0, 0] {
            bytes.extend_from_slice(&address.to_be_bytes());
        }
        bytes.extend_from_slice(b"p\0n\0\0");
        let note = parse_stapsdt_desc(&bytes, Endianness::Big).expect("descriptor decodes");
        assert_eq!(note.pc, 0x1122_3344_5566_7788);
        assert_eq!((note.base, note.semaphore), (0, 0));
        assert_eq!((note.provider, note.name, note.args), ("p", "n", ""));
    }

    #[test]
    fn rejects_malformed_descriptors() {
        let cases: [(Vec<u8>, &str); 6] = [
            (
                vec![0; 23],
                "descriptor is shorter than its three addresses",
            ),
            (desc(1, 0, 0, b""), "descriptor has no name"),
            (
                desc(1, 0, 0, b"sonde\0request"),
                "descriptor has no argument spec",
            ),
            (
                desc(1, 0, 0, b"sonde\0request\08@%rdi"),
                "argument spec is not NUL-terminated",
            ),
            (
                desc(1, 0, 0, b"\0request\0\0"),
                "descriptor has an empty provider or name",
            ),
            (
                desc(1, 0, 0, b"sonde\0\xffrequest\0\0"),
                "provider, name or arguments are not UTF-8",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(
                parse_stapsdt_desc(&bytes, Endianness::Little),
                Err(reason),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn finds_stapsdt_notes_among_others() {
        let first = desc(0x10, 0x20, 0, b"sonde\0request\08@%rdi\0");
        // Odd-sized, so the next note starts after padding.
        let second = desc(0x11, 0x20, 0x30, b"sonde\0done\0\0");
        let build_id = [0xab; 20];
        let section = note_section(&[
            (b"GNU", 3, &build_id),
            (b"stapsdt", 3, &first),
            (b"stapsdt", 7, &first),
            (b"stapsdx", 3, &first),
            (b"stapsdt", 3, &second),
        ]);
        let notes =
            NoteIterator::new(Endianness::Little, 4, &section[..]).expect("section is aligned");
        let found = stapsdt_notes(notes, Endianness::Little).expect("notes decode");
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].pc, found[0].name, found[0].args),
            (0x10, "request", "8@%rdi")
        );
        assert_eq!(
            (found[1].pc, found[1].semaphore, found[1].name),
            (0x11, 0x30, "done")
        );
    }

    #[test]
    fn reports_a_truncated_note_section() {
        let note = desc(0x10, 0x20, 0, b"sonde\0request\08@%rdi\0");
        let section = note_section(&[(b"stapsdt", 3, &note)]);
        let truncated = &section[..section.len() - 8];
        let notes =
            NoteIterator::new(Endianness::Little, 4, truncated).expect("section is aligned");
        assert_eq!(
            stapsdt_notes(notes, Endianness::Little),
            Err("truncated or misaligned note")
        );
    }
}
