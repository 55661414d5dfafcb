//! The differential test of the kernel parser: generated and mutated frames through the
//! programs (BPF_PROG_TEST_RUN) and through a reference classifier built on etherparse. Shared
//! by `tests/differential.rs` (a bounded, seeded sample) and `benches/differential.rs` (the
//! full run of `cargo xtask bench`).

pub mod frames;
pub mod reference;
pub mod run;
