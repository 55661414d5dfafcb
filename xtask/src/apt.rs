//! System tools the tests drive (promtool checks the exposition format, ip builds the namespace
//! lab, bpftool inspects what the agent loaded, Alertmanager receives alerts), installed from
//! Debian packages when missing.

use std::{env, path::Path, process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::process::{report, run};

const LABEL: &str = "setup";

/// (binary the tests run, or an absolute path of a data file they read; Debian package that
/// provides it)
pub const TEST_TOOLS: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    // The lab's DNS server and TLS endpoints, for the naming tests.
    ("dnsmasq", "dnsmasq-base"),
    ("openssl", "openssl"),
    // The IEEE OUI registry, for vendor names.
    ("/usr/share/ieee-data/oui.csv", "ieee-data"),
    // The real Alertmanager the alert delivery tests post to, and htpasswd for the bcrypt
    // hash of its basic-auth user.
    ("prometheus-alertmanager", "prometheus-alertmanager"),
    ("htpasswd", "apache2-utils"),
    // The capture replay test: tcpreplay puts a capture on the lab's wire, tshark's
    // conversation statistics are what the sensor's counts must equal.
    ("tcpreplay", "tcpreplay"),
    ("tshark", "tshark"),
    // The deployment checks (sensor/tests/deploy.rs): unit files, Alertmanager config, and a
    // real Prometheus (same package as promtool) that must accept every dashboard query.
    ("systemd-analyze", "systemd"),
    ("amtool", "prometheus-alertmanager"),
    ("prometheus", "prometheus"),
    // The capability tests (sensor/tests/systemd.rs) run the agent under a reduced bounding set.
    ("setpriv", "util-linux"),
    // A current browser's ClientHellos (post-quantum, over TCP and QUIC) for the naming test.
    ("chromium", "chromium"),
];

/// What `cargo xtask demo` runs: the lab (ip), the router's DNS (dnsmasq), vendor names (IEEE
/// OUI registry), and a real Prometheus and Alertmanager.
pub const DEMO_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("dnsmasq", "dnsmasq-base"),
    ("/usr/share/ieee-data/oui.csv", "ieee-data"),
    ("prometheus", "prometheus"),
    ("prometheus-alertmanager", "prometheus-alertmanager"),
];

/// For each (binary, package) whose binary is not on PATH, installs the package with apt-get
/// (one `apt-get update`, one `apt-get install` for all of them). Needs root only when
/// something is actually missing.
pub fn ensure_debian_packages(tools: &[(&str, &str)]) -> Result<()> {
    let start = Instant::now();
    let missing: Vec<(&str, &str)> =
        tools.iter().copied().filter(|(binary, _)| !on_path(binary)).collect();
    let binaries = tools.iter().map(|(b, _)| *b).collect::<Vec<_>>().join(", ");
    if missing.is_empty() {
        report(LABEL, &binaries, "already installed", start);
        return Ok(());
    }

    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.sort_unstable();
    packages.dedup();
    let wanted =
        missing.iter().map(|(b, p)| format!("{b} (package {p})")).collect::<Vec<_>>().join(", ");
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing {wanted}; installing them needs root: run as root, or `apt-get install {}` yourself",
            packages.join(" ")
        );
    }
    if !on_path("apt-get") {
        bail!(
            "missing {wanted}, and there is no apt-get here to install them: install them yourself"
        );
    }
    report(LABEL, &binaries, &format!("missing {wanted}"), start);

    run(LABEL, "apt-get update", apt_get().arg("update"))?;
    run(
        LABEL,
        &format!("installing {}", packages.join(" ")),
        apt_get().args(["install", "-y", "--no-install-recommends"]).args(&packages),
    )?;
    let still_missing: Vec<&str> =
        missing.iter().map(|(b, _)| *b).filter(|b| !on_path(b)).collect();
    if !still_missing.is_empty() {
        bail!(
            "installed {} but {} is still not on PATH ({})",
            packages.join(" "),
            still_missing.join(", "),
            env::var("PATH").unwrap_or_default()
        );
    }
    Ok(())
}

/// Non-interactive: CI has no terminal, and a debconf prompt would hang it.
fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Whether an executable file called `binary` is in one of PATH's directories, i.e. whether a
/// test's `Command::new(binary)` would find it (an absolute path: whether that file exists).
fn on_path(binary: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    if binary.starts_with('/') {
        return Path::new(binary).is_file();
    }
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| {
        Path::new(&dir)
            .join(binary)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
