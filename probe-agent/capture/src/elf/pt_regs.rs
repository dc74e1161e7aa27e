//! Where each x86-64 register sits in the kernel's `struct pt_regs`, the
//! register snapshot a uprobe program receives.
//!
//! The offsets are those of `arch/x86/include/asm/ptrace.h` for 64-bit
//! kernels: the eBPF programs read arguments and return values at these byte
//! offsets, so they are part of the contract between agent and programs.

pub const R15: u16 = 0;
pub const R14: u16 = 8;
pub const R13: u16 = 16;
pub const R12: u16 = 24;
pub const RBP: u16 = 32;
pub const RBX: u16 = 40;
pub const R11: u16 = 48;
pub const R10: u16 = 56;
pub const R9: u16 = 64;
pub const R8: u16 = 72;
pub const RAX: u16 = 80;
pub const RCX: u16 = 88;
pub const RDX: u16 = 96;
pub const RSI: u16 = 104;
pub const RDI: u16 = 112;
pub const ORIG_RAX: u16 = 120;
pub const RIP: u16 = 128;
pub const CS: u16 = 136;
pub const EFLAGS: u16 = 144;
pub const RSP: u16 = 152;
pub const SS: u16 = 160;

/// Size of `struct pt_regs` on x86-64.
pub const SIZE: u16 = 168;

/// The registers holding the first six integer or pointer arguments of a
/// function, in order, under the System V x86-64 calling convention.
pub const UPROBE_ARG_REGS: [u16; 6] = [RDI, RSI, RDX, RCX, R8, R9];

/// The register holding an integer or pointer return value.
pub const RETVAL_REG: u16 = RAX;

/// The `pt_regs` offset of a general-purpose register named as in AT&T
/// assembly without the `%`, under any of its widths (`rax`, `eax`, `ax`,
/// `al`; `r8`, `r8d`, `r8w`, `r8b`). A narrower name designates the low bytes
/// of the same 8-byte slot, which is what a little-endian read of `size`
/// bytes at the offset returns.
///
/// The high-byte registers (`ah`, `bh`, `ch`, `dh`) have no offset of their
/// own and are not accepted.
pub fn register_offset(name: &str) -> Option<u16> {
    let offset = match name {
        "rax" | "eax" | "ax" | "al" => RAX,
        "rbx" | "ebx" | "bx" | "bl" => RBX,
        "rcx" | "ecx" | "cx" | "cl" => RCX,
        "rdx" | "edx" | "dx" | "dl" => RDX,
        "rsi" | "esi" | "si" | "sil" => RSI,
        "rdi" | "edi" | "di" | "dil" => RDI,
        "rbp" | "ebp" | "bp" | "bpl" => RBP,
        "rsp" | "esp" | "sp" | "spl" => RSP,
        "rip" | "eip" => RIP,
        _ => return numbered_register_offset(name),
    };
    Some(offset)
}

/// `r8` to `r15`, with an optional `d`, `w` or `b` (or Intel's `l`) width
/// suffix.
fn numbered_register_offset(name: &str) -> Option<u16> {
    let number = name.strip_prefix('r')?;
    let number = number.strip_suffix(['d', 'w', 'b', 'l']).unwrap_or(number);
    let offset = match number {
        "8" => R8,
        "9" => R9,
        "10" => R10,
        "11" => R11,
        "12" => R12,
        "13" => R13,
        "14" => R14,
        "15" => R15,
        _ => return None,
    };
    Some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_kernel_struct() {
        // 21 consecutive 8-byte slots, in the kernel's declaration order.
        let in_order = [
            R15, R14, R13, R12, RBP, RBX, R11, R10, R9, R8, RAX, RCX, RDX, RSI, RDI, ORIG_RAX, RIP,
            CS, EFLAGS, RSP, SS,
        ];
        for (slot, offset) in in_order.into_iter().enumerate() {
            assert_eq!(usize::from(offset), slot * 8);
        }
        assert_eq!(usize::from(SIZE), in_order.len() * 8);
    }

    #[test]
    fn calling_convention_registers() {
        assert_eq!(UPROBE_ARG_REGS, [112, 104, 96, 88, 72, 64]);
        assert_eq!(RETVAL_REG, 80);
    }

    #[test]
    fn every_width_of_a_register_shares_its_slot() {
        let families: [(&[&str], u16); 17] = [
            (&["rax", "eax", "ax", "al"], RAX),
            (&["rbx", "ebx", "bx", "bl"], RBX),
            (&["rcx", "ecx", "cx", "cl"], RCX),
            (&["rdx", "edx", "dx", "dl"], RDX),
            (&["rsi", "esi", "si", "sil"], RSI),
            (&["rdi", "edi", "di", "dil"], RDI),
            (&["rbp", "ebp", "bp", "bpl"], RBP),
            (&["rsp", "esp", "sp", "spl"], RSP),
            (&["r8", "r8d", "r8w", "r8b", "r8l"], R8),
            (&["r9", "r9d", "r9w", "r9b"], R9),
            (&["r10", "r10d", "r10w", "r10b"], R10),
            (&["r11", "r11d", "r11w", "r11b"], R11),
            (&["r12", "r12d", "r12w", "r12b"], R12),
            (&["r13", "r13d", "r13w", "r13b"], R13),
            (&["r14", "r14d", "r14w", "r14b"], R14),
            (&["r15", "r15d", "r15w", "r15b"], R15),
            (&["rip", "eip"], RIP),
        ];
        for (names, offset) in families {
            for name in names {
                assert_eq!(register_offset(name), Some(offset), "{name}");
            }
        }
    }

    #[test]
    fn rejects_what_is_not_a_general_purpose_register() {
        for name in [
            "", "ah", "bh", "ch", "dh", "r", "r7", "r16", "r8x", "r8dd", "xmm0", "RAX", "%rax",
        ] {
            assert_eq!(register_offset(name), None, "{name:?}");
        }
    }
}
