//! `cargo xtask dist`: release artifacts in target/dist/: the Debian/Ubuntu package for this
//! host (cargo-deb, metadata in sensor/Cargo.toml) and static musl binaries for x86_64 and
//! aarch64 routers (OpenWrt, Raspberry Pi), each checked before it is listed: `file` must say
//! statically linked for the right machine, and the binary must run (`--version`,
//! `check-config` on deploy/sensor.yaml), the aarch64 one under qemu-user.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    apt::ensure_debian_packages,
    process::{cargo, output, run, target_dir, workspace_root},
};

const LABEL: &str = "dist";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Tools the checks use: `file`, and qemu-user to run the aarch64 binary on an x86_64 host.
const DIST_TOOLS: &[(&str, &str)] =
    &[("file", "file"), ("qemu-aarch64-static", "qemu-user-static")];

/// A static build: Rust target, the name `file` gives its machine, and how to run it here.
struct Static {
    target: &'static str,
    /// Debian's name for the architecture.
    debian_arch: &'static str,
    machine: &'static str,
    /// C compiler for the C and assembly in the dependency tree (ring), and the Debian
    /// packages that provide it (with their headers): (binary or file, package).
    cc: &'static str,
    cc_packages: &'static [(&'static str, &'static str)],
    /// Linker: the musl targets ship their own C runtime (self-contained crt objects and
    /// libc.a), so the toolchain's own lld links them without a cross gcc; None = rustc's default.
    linker: Option<&'static str>,
    /// Program that runs the binary on this (x86_64) host, None = run it directly.
    runner: Option<&'static str>,
}

const STATIC_BUILDS: [Static; 2] = [
    Static {
        target: "x86_64-unknown-linux-musl",
        debian_arch: "amd64",
        machine: "x86-64",
        // musl's gcc wrapper (the cc crate looks for x86_64-linux-musl-gcc, which Debian
        // does not ship under that name).
        cc: "musl-gcc",
        cc_packages: &[("musl-gcc", "musl-tools")],
        linker: None,
        runner: None,
    },
    Static {
        target: "aarch64-unknown-linux-musl",
        debian_arch: "arm64",
        machine: "ARM aarch64",
        // ring's C needs only freestanding headers and musl's libc.a provides what it calls,
        // so Debian's glibc cross compiler builds its objects.
        cc: "aarch64-linux-gnu-gcc",
        cc_packages: &[
            ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
            ("/usr/aarch64-linux-gnu/include/stdint.h", "libc6-dev-arm64-cross"),
        ],
        linker: Some("rust-lld"),
        runner: Some("qemu-aarch64-static"),
    },
];

pub fn run_dist() -> Result<()> {
    ensure!(
        cfg!(all(target_os = "linux", target_arch = "x86_64")),
        "cargo xtask dist runs on x86_64 Linux hosts"
    );
    ensure_debian_packages(DIST_TOOLS)?;
    ensure_cargo_deb()?;
    let dist = target_dir().join("dist");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;

    let mut artifacts = vec![build_deb(&dist)?];
    artifacts.extend(static_binaries(&dist)?.into_iter().map(|s| s.sensor));

    let names: Vec<String> = artifacts.iter().map(|p| file_name(p)).collect();
    let sums = output(Command::new("sha256sum").current_dir(&dist).args(&names))?;
    fs::write(dist.join("SHA256SUMS"), &sums)?;
    println!("[{LABEL}] artifacts in {} (checked):", dist.display());
    for line in sums.lines() {
        println!("[{LABEL}]   {line}");
    }
    Ok(())
}

/// cargo-deb, installed from crates.io on first use.
fn ensure_cargo_deb() -> Result<()> {
    if cargo().args(["deb", "--version"]).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    run(LABEL, "installing cargo-deb", cargo().args(["install", "cargo-deb", "--locked"]))?;
    Ok(())
}

/// `cargo deb`: builds the release binary and packages it with the unit, the config (a
/// conffile) and the docs; then checks the package holds them.
fn build_deb(dist: &Path) -> Result<PathBuf> {
    run(
        LABEL,
        "Debian package (host)",
        cargo().args(["deb", "-p", "sensor", "--output"]).arg(dist),
    )?;
    let arch =
        output(Command::new("dpkg").arg("--print-architecture")).unwrap_or_else(|_| "amd64".into());
    let deb = dist.join(format!("gateway-sensor_{VERSION}-1_{}.deb", arch.trim()));
    ensure!(deb.is_file(), "cargo deb did not write {}", deb.display());
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    for path in [
        "./usr/bin/sensor",
        "./etc/gateway-sensor/sensor.yaml",
        "./etc/gateway-sensor/policy.yaml",
        "/systemd/system/gateway-sensor.service",
        "./usr/share/doc/gateway-sensor/deploy.md",
    ] {
        ensure!(contents.contains(path), "{} lacks {path}:\n{contents}", deb.display());
    }
    let conffiles = output(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"))?;
    ensure!(
        conffiles.trim() == "/etc/gateway-sensor/sensor.yaml\n/etc/gateway-sensor/policy.yaml",
        "conffiles of {}: {conffiles:?}",
        deb.display()
    );
    // The unit is enabled on install and restarted after an upgrade (the pins keep the counts).
    let postinst = output(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("postinst"))?;
    for needed in ["deb-systemd-helper", "enable", "gateway-sensor.service", "restart"] {
        ensure!(
            postinst.contains(needed),
            "postinst of {} lacks {needed:?}:\n{postinst}",
            deb.display()
        );
    }
    // The agent leaves its programs attached when it stops: a remove takes them off.
    let prerm = output(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("prerm"))?;
    for needed in ["systemctl stop gateway-sensor.service", "sensor detach --maps"] {
        ensure!(prerm.contains(needed), "prerm of {} lacks {needed:?}:\n{prerm}", deb.display());
    }
    Ok(deb)
}

/// The static binaries of one architecture: the sensor (stripped, checked) and the kernel
/// matrix's checker (xtask/guest), built in the same cargo run so they share the build.
pub struct StaticBinaries {
    pub debian_arch: &'static str,
    pub sensor: PathBuf,
    pub checker: PathBuf,
}

/// Builds and checks the static sensor and checker for x86_64 and aarch64 into `dist`
/// (`cargo xtask dist`; `cargo xtask test` too, so packaging cannot rot unseen and the matrix
/// guests run exactly these binaries).
pub fn static_binaries(dist: &Path) -> Result<Vec<StaticBinaries>> {
    static_binaries_for(dist, &["amd64", "arm64"])
}

/// [`static_binaries`] for these Debian architectures only.
pub fn static_binaries_for(dist: &Path, archs: &[&str]) -> Result<Vec<StaticBinaries>> {
    ensure_debian_packages(DIST_TOOLS)?;
    fs::create_dir_all(dist).with_context(|| format!("creating {}", dist.display()))?;
    STATIC_BUILDS
        .iter()
        .filter(|b| archs.contains(&b.debian_arch))
        .map(|b| build_static(b, dist))
        .collect()
}

/// `rustup target add` only when the target's standard library is missing (the call itself
/// is idempotent, but slow and noisy).
fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = output(Command::new("rustup").current_dir(workspace_root()).args([
        "target",
        "list",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    run(
        LABEL,
        &format!("Rust target {target}"),
        Command::new("rustup").current_dir(workspace_root()).args(["target", "add", target]),
    )?;
    Ok(())
}

fn build_static(build: &Static, dist: &Path) -> Result<StaticBinaries> {
    ensure_rust_target(build.target)?;
    ensure_debian_packages(build.cc_packages)?;
    let target_env = build.target.replace('-', "_");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "sensor",
        "-p",
        "matrix-guest",
        "--release",
        "--target",
        build.target,
    ])
    .env(format!("CC_{target_env}"), build.cc);
    if let Some(linker) = build.linker {
        cmd.env(format!("CARGO_TARGET_{}_LINKER", target_env.to_uppercase()), linker);
    }
    run(LABEL, &format!("static binaries for {}", build.target), &mut cmd)?;

    let release = target_dir().join(build.target).join("release");
    let arch = build.target.split('-').next().unwrap_or(build.target);
    let out = dist.join(format!("sensor-{VERSION}-{arch}-linux-musl"));
    // Symbols off: routers have little flash (about 9 MB → 7 MB).
    run(
        LABEL,
        &format!("stripping {}", file_name(&out)),
        Command::new(objcopy()?).arg("--strip-all").arg(release.join("sensor")).arg(&out),
    )?;
    check_static(build, &out)?;
    Ok(StaticBinaries {
        debian_arch: build.debian_arch,
        sensor: out,
        checker: release.join("matrix-guest"),
    })
}

/// The toolchain's own objcopy (LLVM), which handles every target.
fn objcopy() -> Result<PathBuf> {
    let sysroot =
        output(Command::new("rustc").current_dir(workspace_root()).args(["--print", "sysroot"]))?;
    let path =
        Path::new(sysroot.trim()).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-objcopy");
    ensure!(path.is_file(), "no {} (rustup's toolchain ships it)", path.display());
    Ok(path)
}

fn check_static(build: &Static, binary: &Path) -> Result<()> {
    let described = output(Command::new("file").arg(binary))?;
    let linked_statically =
        described.contains("statically linked") || described.contains("static-pie linked");
    ensure!(
        linked_statically && described.contains(build.machine),
        "not a static {} binary: {described}",
        build.machine
    );
    let config = workspace_root().join("deploy/sensor.yaml");
    let exec = |args: &[&std::ffi::OsStr]| -> Result<String> {
        let mut cmd = match build.runner {
            Some(runner) => {
                let mut c = Command::new(runner);
                c.arg(binary);
                c
            }
            None => Command::new(binary),
        };
        output(cmd.args(args))
    };
    let version = exec(&["--version".as_ref()])?;
    if version.trim() != format!("sensor {VERSION}") {
        bail!("{} --version printed {version:?}", binary.display());
    }
    let checked = exec(&["check-config".as_ref(), config.as_os_str()])?;
    ensure!(
        checked.contains(": ok (interface br-lan)"),
        "{} check-config printed {checked:?}",
        binary.display()
    );
    println!(
        "[{LABEL}] {}: {} ; runs{}: {}",
        file_name(binary),
        described.split_once(": ").map_or("", |(_, d)| d).trim(),
        build.runner.map_or(String::new(), |r| format!(" under {r}")),
        version.trim()
    );
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
