//! The emitted eBPF instructions, where their shape decides whether older verifiers accept
//! them. Read from the object the agent embeds, so no kernel is needed (the kernel matrix of
//! `cargo xtask test` then loads it on each kernel).

use object::{Object as _, ObjectSection as _, SectionKind};
use sensor::{common::EVENT_DATA_MAX, kernel::loader::ebpf_object};

/// One 8-byte BPF instruction.
#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    imm: i32,
}

const BPF_CALL: u8 = 0x85;
const BPF_LD_IMM64: u8 = 0x18;
/// ALU64 move of a register: `dst = src` (the verifier copies the bounds with it).
const MOV64_REG: u8 = 0xbf;
/// ALU64 add of an immediate: `dst += imm`.
const ADD64_IMM: u8 = 0x07;
/// Unsigned `if dst > imm goto` (64 and 32-bit forms).
const JGT_IMM: [u8; 2] = [0x25, 0x26];
const HELPER_SKB_LOAD_BYTES: i32 = 26;

/// Every program section's instructions (the second half of a 16-byte ld_imm64 dropped).
fn programs() -> Vec<(String, Vec<Insn>)> {
    let file = object::File::parse(ebpf_object()).expect("the embedded eBPF object is ELF");
    file.sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .map(|s| {
            let data = s.data().expect("section data");
            let mut insns = Vec::new();
            let mut i = 0;
            while i + 8 <= data.len() {
                let b = &data[i..i + 8];
                let insn = Insn {
                    code: b[0],
                    dst: b[1] & 0x0f,
                    src: b[1] >> 4,
                    imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                };
                insns.push(insn);
                i += if insn.code == BPF_LD_IMM64 { 16 } else { 8 };
            }
            (s.name().unwrap_or("?").to_string(), insns)
        })
        .collect()
}

/// Whether `insn` writes register `reg` (ALU, move, load; a call writes r0-r5).
fn writes(insn: &Insn, reg: u8) -> bool {
    let class = insn.code & 0x07;
    match class {
        // LD (ld_imm64), LDX, ALU, ALU64 write their destination.
        0x00 | 0x01 | 0x04 | 0x07 => insn.dst == reg,
        // JMP / JMP32: only calls write (r0 and the clobbered r1-r5).
        0x05 | 0x06 => insn.code == BPF_CALL && reg <= 5,
        _ => false,
    }
}

/// bpf_skb_load_bytes's length (r4) must be proven 1..=EVENT_DATA_MAX by the instructions
/// themselves: a `== 0` test of it teaches verifiers before ~6.8 no lower bound, and Linux 6.1
/// refused the TC program for it ("R3 min value is outside of the allowed memory range"). The
/// form that every verifier follows: bound `len - 1` by `> EVENT_DATA_MAX - 1`, then `r4 += 1`.
#[test]
fn skb_load_bytes_length_is_bounded_in_a_form_old_verifiers_follow() {
    let mut calls = 0;
    for (section, insns) in programs() {
        for (at, insn) in insns.iter().enumerate() {
            if insn.code != BPF_CALL || insn.imm != HELPER_SKB_LOAD_BYTES {
                continue;
            }
            calls += 1;
            let before = &insns[..at];
            // Follow register moves back to where the length was made.
            let (mut reg, mut end) = (4u8, at);
            let set = loop {
                let set = before[..end].iter().rposition(|i| writes(i, reg)).unwrap_or_else(|| {
                    panic!("{section}: r{reg} never set before the call at {at}")
                });
                if before[set].code == MOV64_REG {
                    (reg, end) = (before[set].src, set);
                    continue;
                }
                break set;
            };
            let last = before[set];
            assert!(
                last.code == ADD64_IMM && last.imm == 1,
                "{section}: the last write of bpf_skb_load_bytes's length (r4, via r{reg}) before \
                 the call at instruction {at} is {last:?}, not `r{reg} += 1`: the compiler folded \
                 the bound back into a form 6.1's verifier does not follow"
            );
            let window = &before[set.saturating_sub(16)..set];
            assert!(
                window
                    .iter()
                    .any(|i| JGT_IMM.contains(&i.code)
                        && i64::from(i.imm) == EVENT_DATA_MAX as i64 - 1),
                "{section}: no `if rX > {}` bound in the 16 instructions before the length's \
                 `r4 += 1` (call at {at})",
                EVENT_DATA_MAX - 1
            );
        }
    }
    // The TC capture program (tail-called by the egress and the ingress program) is the one
    // caller: none would make this test pass by accident.
    assert_eq!(calls, 1, "calls of bpf_skb_load_bytes in the object");
}
