#![no_std]
// Library target so that `cargo check --workspace` has something to check on the host; the
// programs themselves live in main.rs and only build for the BPF target.
