//! Builds the eBPF programs (crate `sensor-ebpf`) for the BPF target with aya-build, so that
//! `cargo build -p sensor` yields one binary with the object embedded. (aya-build builds every
//! binary of the crate: the programs' object `sensor-ebpf`, and `sensor-floor`, the benchmarks'
//! separate floor object.) Needs nightly rust-src
//! and bpf-linker: `cargo xtask setup` installs both.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sensor-ebpf")
        .ok_or_else(|| anyhow!("sensor-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed: run `cargo xtask setup` to install the nightly rust-src component and bpf-linker")
}
