//! What the sensor build needs beyond stable Rust. sensor/build.rs compiles the eBPF crate with
//! the nightly toolchain and `-Z build-std=core` (hence nightly `rust-src`), and links it with
//! bpf-linker. bpf-linker must read the LLVM bitcode that exact nightly emits, so it is built
//! against the nightly's own libLLVM: no system LLVM, no clang.

use std::{
    env,
    ffi::OsString,
    fs,
    io::ErrorKind,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::process::{cargo, output, report, run};

const LABEL: &str = "setup";

/// Makes nightly rust-src and a matching bpf-linker available; every command that builds the
/// sensor calls this first. Cheap when everything is already in place.
pub fn ensure_toolchain() -> Result<()> {
    let cargo_home = cargo_home()?;
    put_first_on_path(&cargo_home.join("bin"))?;
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker(&cargo_home)
}

/// `cargo clippy` for the toolchain running xtask; minimal rustup profiles leave it out.
pub fn ensure_clippy() -> Result<()> {
    ensure_component("clippy")
}

/// rustfmt for `cargo fmt --check` (in rustup's default profile, but not in the minimal one).
pub fn ensure_rustfmt() -> Result<()> {
    ensure_component("rustfmt")
}

/// A rustup component of the toolchain `cargo xtask` runs with, whose cargo subcommand has
/// the component's name (`cargo clippy`, `cargo fmt` for rustfmt).
fn ensure_component(component: &str) -> Result<()> {
    let start = Instant::now();
    let subcommand = if component == "rustfmt" { "fmt" } else { component };
    if output(cargo().arg(subcommand).arg("--version")).is_ok() {
        report(LABEL, component, "already installed", start);
        return Ok(());
    }
    // No --toolchain: rustup picks the toolchain `cargo xtask` runs with (RUSTUP_TOOLCHAIN).
    let what = format!("{component}: installing");
    run(LABEL, &what, rustup().args(["component", "add", component]))?;
    Ok(())
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// `cargo install` puts bpf-linker in `$CARGO_HOME/bin`, and rustc finds it through PATH; a
/// fresh shell (or `sudo`) may not have that directory on PATH, or may have another bpf-linker
/// earlier on it.
fn put_first_on_path(dir: &Path) -> Result<()> {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if dirs.first().map(PathBuf::as_path) == Some(dir) {
        return Ok(());
    }
    dirs.insert(0, dir.to_path_buf());
    let path: OsString = env::join_paths(dirs).context("building PATH")?;
    // SAFETY: xtask is single-threaded here (no command has spawned threads yet), so nothing
    // can read the environment concurrently.
    unsafe { env::set_var("PATH", path) };
    Ok(())
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn rustc_nightly() -> Command {
    let mut cmd = Command::new("rustc");
    cmd.arg("+nightly");
    cmd
}

/// The eBPF crate needs a nightly; CI images have one, a developer machine may not.
fn ensure_nightly() -> Result<()> {
    let start = Instant::now();
    let toolchains = output(rustup().args(["toolchain", "list"]))?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        report(LABEL, "nightly toolchain", "already installed", start);
        return Ok(());
    }
    run(
        LABEL,
        "nightly toolchain: installing (minimal profile)",
        rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]),
    )?;
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let start = Instant::now();
    let installed =
        output(rustup().args(["component", "list", "--installed", "--toolchain", "nightly"]))?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        report(LABEL, "nightly rust-src", "already installed", start);
        return Ok(());
    }
    run(
        LABEL,
        "nightly rust-src: installing",
        rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )?;
    Ok(())
}

/// The nightly's libLLVM: its file in the sysroot and LLVM's major version.
struct NightlyLlvm {
    /// e.g. `.../toolchains/nightly-x86_64-unknown-linux-gnu/lib/libLLVM.so.22.1-rust-1.97.0-nightly`
    library: PathBuf,
    /// e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`; also the library's soname.
    file_name: String,
    major: u32,
}

impl NightlyLlvm {
    fn probe() -> Result<Self> {
        let version = output(rustc_nightly().arg("-vV"))?;
        let major = parse_llvm_major(&version).with_context(|| {
            format!("no `LLVM version: N.M` line in `rustc +nightly -vV`:\n{version}")
        })?;
        let sysroot = output(rustc_nightly().args(["--print", "sysroot"]))?;
        let lib_dir = Path::new(sysroot.trim()).join("lib");
        let mut candidates: Vec<String> = fs::read_dir(&lib_dir)
            .with_context(|| format!("reading {}", lib_dir.display()))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| is_rust_libllvm(name))
            .collect();
        candidates.sort();
        let file_name = match candidates.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "no libLLVM.so.*-rust-* in {}: the nightly toolchain looks incomplete",
                lib_dir.display()
            ),
            many => bail!(
                "several libLLVM.so.*-rust-* in {}: {many:?}; cannot tell which one rustc uses",
                lib_dir.display()
            ),
        };
        Ok(Self { library: lib_dir.join(&file_name), file_name, major })
    }
}

/// `LLVM version: 22.1.4` -> 22.
fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = rustc_vv.lines().find_map(|l| l.strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

/// Matches the glob `libLLVM.so.*-rust-*` (the real library; `libLLVM-22-rust-*.so` next to it
/// is a linker script).
fn is_rust_libllvm(name: &str) -> bool {
    name.strip_prefix("libLLVM.so.").is_some_and(|rest| rest.contains("-rust-"))
}

/// Installs bpf-linker against the nightly's libLLVM unless the installed one already is.
///
/// It is up to date when `bpf-linker --version` runs and the marker file records the nightly's
/// current libLLVM file name. The file name carries the LLVM and nightly versions, so a nightly
/// update changes it and forces a rebuild (the old library is gone with the old nightly).
fn ensure_bpf_linker(cargo_home: &Path) -> Result<()> {
    let start = Instant::now();
    let llvm = NightlyLlvm::probe()?;
    let prefix = cargo_home.join("bpf-linker-llvm");
    let lib_dir = prefix.join("lib");
    let marker = prefix.join("built-for");

    // Read before refresh_llvm_links rewrites the link: it says what a previous setup (or a
    // hand install following the same recipe) built against.
    let linked_before = fs::read_link(lib_dir.join("libLLVM.so")).ok();
    let recorded = match fs::read_to_string(&marker) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
    };
    refresh_llvm_links(&lib_dir, &llvm)?;
    let installed = bpf_linker_version();

    let what = format!("bpf-linker (nightly LLVM {})", llvm.major);
    let reason = match (&installed, recorded.as_deref()) {
        (Ok(version), Some(built_for)) if built_for == llvm.file_name => {
            report(LABEL, &what, &format!("already installed, {version}"), start);
            return Ok(());
        }
        // No marker yet, but the binary loads the current nightly's libLLVM through its rpath
        // (that directory holds no other libLLVM, and the loader search was stripped of
        // LD_LIBRARY_PATH), and the link it was built through already pointed at this
        // library: adopt it instead of spending minutes rebuilding the same thing.
        (Ok(version), None) if linked_before.as_deref() == Some(llvm.library.as_path()) => {
            write_marker(&marker, &llvm)?;
            report(
                LABEL,
                &what,
                &format!(
                    "already installed, {version}; recorded {} in {}",
                    llvm.file_name,
                    marker.display()
                ),
                start,
            );
            return Ok(());
        }
        (Ok(_), Some(built_for)) => {
            format!("built for {built_for}, the nightly now ships {}", llvm.file_name)
        }
        (Ok(_), None) => format!("no record that it was built for {}", llvm.file_name),
        (Err(e), _) => format!("not usable ({e:#})"),
    };
    report(LABEL, &what, &format!("needs a build: {reason}"), start);

    // A stale marker must not survive a failed build.
    match fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", marker.display())),
    }
    let features = format!("llvm-{}", llvm.major);
    run(
        LABEL,
        &format!("bpf-linker: building against nightly LLVM {} (takes ~3 min)", llvm.major),
        cargo()
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--force", "--no-default-features"])
            .args(["--features", &features]),
    )?;
    let version = bpf_linker_version().context("bpf-linker was installed but does not run")?;
    write_marker(&marker, &llvm)?;
    println!("[{LABEL}] bpf-linker: {version}, built for {}", llvm.file_name);
    Ok(())
}

/// Keeps `$CARGO_HOME/bpf-linker-llvm/lib` pointing at the nightly's libLLVM. It lives outside
/// the repository because the installed bpf-linker keeps using it (as its rpath).
/// - `libLLVM.so`: what `-lLLVM` resolves to while bpf-linker is built (`LLVM_PREFIX`).
/// - `libLLVM.so.<ver>-rust-<nightly>` (the soname): what the loader looks for at run time,
///   so bpf-linker runs without rustup's LD_LIBRARY_PATH. Links for older nightlies are
///   removed, so a bpf-linker built for one of them fails to start instead of silently loading
///   a library that no longer matches rustc.
fn refresh_llvm_links(lib_dir: &Path, llvm: &NightlyLlvm) -> Result<()> {
    fs::create_dir_all(lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    for entry in fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_rust_libllvm(name) && name != llvm.file_name {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing stale {}", entry.path().display()))?;
            println!("[{LABEL}] removed stale link {}", entry.path().display());
        }
    }
    for link_name in ["libLLVM.so", llvm.file_name.as_str()] {
        let link = lib_dir.join(link_name);
        if fs::read_link(&link).ok().as_deref() == Some(llvm.library.as_path()) {
            continue;
        }
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("replacing {}", link.display())),
        }
        symlink(&llvm.library, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.library.display()))?;
        println!("[{LABEL}] linked {} -> {}", link.display(), llvm.library.display());
    }
    Ok(())
}

/// `bpf-linker --version`, as found on PATH (`$CARGO_HOME/bin` first). LD_LIBRARY_PATH is
/// dropped: under `cargo xtask` rustup points it at the *stable* toolchain's libLLVM, which
/// could make a binary built for the wrong LLVM look healthy.
fn bpf_linker_version() -> Result<String> {
    let out = output(Command::new("bpf-linker").arg("--version").env_remove("LD_LIBRARY_PATH"))?;
    Ok(out.trim().to_owned())
}

fn write_marker(marker: &Path, llvm: &NightlyLlvm) -> Result<()> {
    fs::write(marker, format!("{}\n", llvm.file_name))
        .with_context(|| format!("writing {}", marker.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn only_the_real_library_matches() {
        assert!(is_rust_libllvm("libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert!(!is_rust_libllvm("libLLVM-22-rust-1.97.0-nightly.so"));
        assert!(!is_rust_libllvm("libLLVM.so"));
        assert!(!is_rust_libllvm("libLLVM.so.22.1"));
    }
}
