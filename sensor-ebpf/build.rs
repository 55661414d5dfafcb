//! The eBPF object is linked by `bpf-linker`, which cargo does not know about: rebuild when the
//! linker binary changes so a new bpf-linker (new LLVM) never leaves a stale object behind.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
}
