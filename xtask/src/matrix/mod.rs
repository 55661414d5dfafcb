//! The kernel matrix of `cargo xtask test`: boots real Debian kernels under qemu (TCG: KVM is
//! often unusable on nested machines) with an initramfs holding busybox, the kernel's network
//! modules and the static checker (xtask/guest, `matrix-guest`), reads the checker's results
//! from the serial console, writes the kernels × checks table into docs/deploy.md and fails on
//! any kernel where a check failed. Downloads and extracted kernels are cached in
//! target/matrix/, so a rerun only boots.

mod debian;
mod initramfs;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    apt::ensure_debian_packages,
    dist,
    process::{format_duration, target_dir, workspace_root},
};

const LABEL: &str = "matrix";

/// qemu for both architectures, and busybox-static for the amd64 guests (arm64's is
/// downloaded with the kernels).
pub const MATRIX_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("/bin/busybox", "busybox-static"),
    ("dpkg-deb", "dpkg"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
];

#[derive(Clone, Copy, PartialEq)]
enum Arch {
    Amd64,
    Arm64,
}

struct Kernel {
    /// The Debian release it ships in.
    suite: &'static str,
    /// Older than the sensor's minimum (5.12): the expected result is the agent's one-line
    /// refusal at startup, not the checks.
    refused: bool,
    arch: Arch,
    /// How long a boot with all checks may take under TCG before it counts as hung.
    timeout: Duration,
}

const KERNELS: [Kernel; 4] = [
    Kernel {
        suite: "bullseye",
        refused: true,
        arch: Arch::Amd64,
        timeout: Duration::from_secs(300),
    },
    // 6.1's verifier is slow on the TC programs (two minutes for one load with naming events
    // under TCG): about 5 minutes on a quiet machine, more on a busy one.
    Kernel {
        suite: "bookworm",
        refused: false,
        arch: Arch::Amd64,
        timeout: Duration::from_secs(900),
    },
    Kernel {
        suite: "trixie",
        refused: false,
        arch: Arch::Amd64,
        timeout: Duration::from_secs(600),
    },
    Kernel {
        suite: "bookworm",
        refused: false,
        arch: Arch::Arm64,
        timeout: Duration::from_secs(900),
    },
];

/// The modules the checks need that Debian builds as modules, in load order.
const MODULES: [&str; 6] = ["llc", "stp", "bridge", "veth", "sch_ingress", "cls_bpf"];

/// The checks, in the checker's order, and their column headings.
const CHECKS: [(&str, &str); 7] = [
    ("load-no-btf", "load, no kernel BTF"),
    ("load-btf", "load, kernel BTF"),
    ("load-events", "load, naming events on"),
    ("veth-xdp-driver", "veth: XDP driver, TC auto"),
    ("veth-xdp-generic", "veth: XDP generic, TC clsact"),
    ("br-lan", "br-lan: XDP auto, TC auto"),
    ("restart", "veth: counted with no process, links adopted, new map layout"),
];

impl Arch {
    fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// One kernel's run.
struct Outcome {
    name: String,
    refused_expected: bool,
    results: Vec<(String, bool, String)>,
    finished: bool,
    took: Duration,
    log: PathBuf,
}

impl Outcome {
    fn passed(&self) -> bool {
        if self.refused_expected {
            return self.finished && self.result("refused").is_some_and(|r| r.0);
        }
        self.finished && CHECKS.iter().all(|(c, _)| self.result(c).is_some_and(|r| r.0))
    }

    fn result(&self, check: &str) -> Option<(bool, &str)> {
        self.results.iter().find(|r| r.0 == check).map(|r| (r.1, r.2.as_str()))
    }
}

/// Boots every kernel of the matrix (or those named in `only`, as suite-arch; the docs table
/// is written only for a full run).
pub fn run_matrix(statics: &[dist::StaticBinaries], only: &[String]) -> Result<()> {
    let start = Instant::now();
    ensure_debian_packages(MATRIX_TOOLS)?;
    let cache = target_dir().join("matrix");
    let mut outcomes = Vec::new();
    for kernel in &KERNELS {
        let id = format!("{}-{}", kernel.suite, kernel.arch.debian());
        if !only.is_empty() && !only.contains(&id) {
            continue;
        }
        let checker = statics
            .iter()
            .find(|s| s.debian_arch == kernel.arch.debian())
            .map(|s| s.checker.clone())
            .context("no static checker for this architecture")?;
        let outcome = boot(kernel, &cache, &checker)
            .with_context(|| format!("{} {}", kernel.suite, kernel.arch.debian()))?;
        println!(
            "[{LABEL}] {}: {} in {}",
            outcome.name,
            match (outcome.passed(), outcome.refused_expected) {
                (true, true) => "refused at startup, as designed",
                (true, false) => "all checks passed",
                (false, _) => "FAILED",
            },
            format_duration(outcome.took)
        );
        outcomes.push(outcome);
    }
    let total = start.elapsed();
    if only.is_empty() {
        write_table(&outcomes, total)?;
    }
    println!("[{LABEL}] matrix done in {}", format_duration(total));
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| format!("{} (console log {})", o.name, o.log.display()))
        .collect();
    ensure!(failed.is_empty(), "kernel matrix failed on: {}", failed.join(", "));
    Ok(())
}

/// Fetches the kernel, builds its initramfs and boots it; the checker's lines are the result.
fn boot(kernel: &Kernel, cache: &Path, checker: &Path) -> Result<Outcome> {
    let arch = kernel.arch.debian();
    let apt = debian::Apt::new(cache, kernel.suite, arch)?;
    let debs = cache.join("debs");
    let (package, version) = apt.resolve(&format!("linux-image-{arch}"))?;
    let deb = apt.download(&debs, &format!("{package}={version}"))?;
    let root = cache.join("kernels").join(format!("{package}_{version}"));
    debian::extract(&deb, &root)?;
    let vmlinuz = find(&root.join("boot"), |n| n.starts_with("vmlinuz-"))?
        .context("no vmlinuz in the kernel package")?;

    let busybox = match kernel.arch {
        Arch::Amd64 => PathBuf::from("/bin/busybox"),
        Arch::Arm64 => {
            let bb = apt.download(&debs, "busybox-static")?;
            let dir = cache.join("busybox-arm64");
            debian::extract(&bb, &dir)?;
            dir.join("bin/busybox")
        }
    };

    let mut cpio = initramfs::Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "lib", "lib/mod"] {
        cpio.dir(d);
    }
    cpio.chardev("dev/console", 5, 1);
    cpio.copy("bin/busybox", &busybox, true)?;
    cpio.copy("bin/matrix-guest", checker, true)?;
    // /lib/modules until bullseye and bookworm, /usr/lib/modules from trixie (merged /usr).
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir())
        .context("no lib/modules in the kernel package")?;
    let builtin = find_recursive(&modules, &|n: &str| n == "modules.builtin")
        .map(|p| fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    for m in MODULES {
        let Some(path) = find_recursive(&modules, &|n: &str| {
            n == format!("{m}.ko") || n == format!("{m}.ko.xz") || n == format!("{m}.ko.zst")
        }) else {
            ensure!(
                builtin.lines().any(|l| l.ends_with(&format!("/{m}.ko"))),
                "{m} is neither a module nor built in ({})",
                modules.display()
            );
            continue;
        };
        let body = decompressed(&path)?;
        cpio.file(&format!("lib/mod/{m}.ko"), &body, false);
    }
    cpio.file("init", init_script().as_bytes(), true);
    let initrd = cache.join(format!("initrd-{package}_{version}.cpio"));
    cpio.write(&initrd)?;

    let name = format!("Linux {version} {arch} (Debian {}, {package})", kernel.suite);
    let log = cache.join("logs").join(format!("{package}_{version}.log"));
    fs::create_dir_all(log.parent().unwrap_or(cache))?;
    println!("[{LABEL}] booting {name} under qemu (TCG)...");
    let start = Instant::now();
    let console = run_qemu(kernel, &vmlinuz, &initrd, &log)?;
    let took = start.elapsed();

    let mut results = Vec::new();
    let mut finished = false;
    let mut uname = String::new();
    for line in console.lines() {
        let Some(json) = line.trim_end_matches('\r').strip_prefix("MATRIX ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        let check = v["check"].as_str().unwrap_or_default().to_owned();
        let ok = v["ok"].as_bool().unwrap_or(false);
        let detail = v["detail"].as_str().unwrap_or_default().to_owned();
        match check.as_str() {
            "kernel" => uname = detail.clone(),
            "done" => finished = true,
            _ => {}
        }
        println!("[{LABEL}]   {check}: {} {detail}", if ok { "ok" } else { "FAILED" });
        results.push((check, ok, detail));
    }
    if !finished {
        println!("[{LABEL}]   the checker did not finish; console log in {}", log.display());
    }
    let name = if uname.is_empty() { name } else { format!("{name}, {uname}") };
    Ok(Outcome { name, refused_expected: kernel.refused, results, finished, took, log })
}

fn init_script() -> String {
    let modules = MODULES.join(" ");
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t bpf bpf /sys/fs/bpf 2>/dev/null\n\
         for m in {modules}; do [ -f /lib/mod/$m.ko ] && insmod /lib/mod/$m.ko; done\n\
         echo MATRIX-START\n\
         /bin/matrix-guest\n\
         echo MATRIX-END\n\
         poweroff -f\n"
    )
}

/// Boots and returns everything the guest wrote on its console (also kept in `log`).
fn run_qemu(kernel: &Kernel, vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<String> {
    let mut cmd = match kernel.arch {
        Arch::Amd64 => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-accel", "tcg", "-cpu", "max", "-M", "q35"]);
            c
        }
        Arch::Arm64 => {
            let mut c = Command::new("qemu-system-aarch64");
            // The Raspberry Pi / router CPU class: no LSE atomics.
            c.args(["-accel", "tcg", "-M", "virt", "-cpu", "cortex-a53"]);
            c
        }
    };
    let console = match kernel.arch {
        Arch::Amd64 => "ttyS0",
        Arch::Arm64 => "ttyAMA0",
    };
    cmd.args(["-m", "1024", "-smp", "1", "-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console={console} quiet loglevel=3 panic=-1 oops=panic"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting qemu")?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + kernel.timeout;
    let mut text = String::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
                if line.contains("MATRIX-END") {
                    // poweroff follows; give it a moment, then stop waiting for it.
                    let _ = rx.recv_timeout(Duration::from_secs(20));
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
    }
    let _ = child.kill();
    let status = child.wait()?;
    let stderr = child
        .stderr
        .take()
        .map(|mut e| {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
        .unwrap_or_default();
    fs::write(log, format!("{text}\n--- qemu stderr ({status}) ---\n{stderr}"))?;
    if timed_out {
        println!(
            "[{LABEL}]   no end after {} (log {})",
            format_duration(kernel.timeout),
            log.display()
        );
    }
    if text.is_empty() {
        bail!("qemu printed nothing ({status}): {}", stderr.trim());
    }
    Ok(text)
}

fn find(dir: &Path, pick: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if pick(&e.file_name().to_string_lossy()) {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}

fn find_recursive(dir: &Path, pick: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        if path.is_dir() {
            if let Some(found) = find_recursive(&path, pick) {
                return Some(found);
            }
        } else if pick(&e.file_name().to_string_lossy()) {
            return Some(path);
        }
    }
    None
}

/// A module as insmod takes it (busybox's cannot read compressed ones).
fn decompressed(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .args(["-dc"])
        .arg(path)
        .output()
        .with_context(|| format!("running {tool}"))?;
    ensure!(
        out.status.success(),
        "{tool} -dc {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

const BEGIN: &str = "<!-- kernel-matrix:begin (written by `cargo xtask test`) -->";
const END: &str = "<!-- kernel-matrix:end -->";

/// The table of kernels × checks, between the markers in docs/deploy.md.
fn write_table(outcomes: &[Outcome], total: Duration) -> Result<()> {
    let mut t = String::new();
    t.push_str(BEGIN);
    t.push_str("\n\n| Kernel |");
    for (_, heading) in CHECKS {
        t.push_str(&format!(" {heading} |"));
    }
    t.push_str(" boot + checks |\n|---|");
    for _ in CHECKS {
        t.push_str("---|");
    }
    t.push_str("---|\n");
    let mut notes = Vec::new();
    for o in outcomes {
        t.push_str(&format!("| {} |", o.name));
        if let Some((ok, detail)) = o.result("refused") {
            let cell = if ok && o.refused_expected {
                format!("refused at startup, as designed: \"{detail}\"")
            } else {
                notes.push(format!("- {}: refused unexpectedly: {detail}", o.name));
                "**FAIL**: refused".to_owned()
            };
            t.push_str(&format!(" {cell} |"));
            t.push_str(&" |".repeat(CHECKS.len() - 1));
            t.push_str(&format!(" {} |\n", format_duration(o.took)));
            continue;
        }
        if o.refused_expected {
            notes.push(format!("- {}: expected the startup refusal, got none", o.name));
        }
        for (check, _) in CHECKS {
            let cell = match o.result(check) {
                Some((true, detail)) => match detail.split(';').next() {
                    Some(modes) if modes.starts_with("xdp=") => format!("ok ({modes})"),
                    _ => "ok".to_owned(),
                },
                Some((false, detail)) => {
                    notes.push(format!("- {}, {check}: {}", o.name, detail.replace('\n', " ")));
                    "**FAIL**".to_owned()
                }
                None => "not run".to_owned(),
            };
            t.push_str(&format!(" {cell} |"));
        }
        t.push_str(&format!(" {} |\n", format_duration(o.took)));
    }
    t.push_str(&format!(
        "\nEvery traffic check sends the same frames both ways (UDP, an HTTP request, a TLS \
         ClientHello, a 1,900-byte ClientHello over two segments, a 1,350-byte QUIC Initial, a \
         DNS answer) and requires the flows, client totals and outcome stats to equal them \
         exactly, and the naming events to carry exactly the bytes sent: one per packet in the \
         kernel's stats, each payload in chunks of 1,280 bytes at their offsets, the second \
         segment followed by its sequence number. The restart check attaches with pinned links, drops every fd as a dying agent \
         would, sends the same frames while no process holds the programs, then loads afresh: \
         the pinned links must be adopted (same link, new program) and the pinned maps must \
         hold the frames exactly (the naming events of that time are dropped). Then it stands \
         in for a build with another map layout (a pinned STATS of another layout) and loads \
         again: the same links must get the new programs, new maps must replace the pins, and \
         the same frames sent again must be counted in them exactly. Whole matrix: {} under \
         qemu TCG on the test machine.\n",
        format_duration(total)
    ));
    if !notes.is_empty() {
        t.push_str("\nFailures:\n\n");
        t.push_str(&notes.join("\n"));
        t.push('\n');
    }
    t.push('\n');
    t.push_str(END);

    let path = workspace_root().join("docs/deploy.md");
    let doc = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{} lacks the kernel matrix markers ({BEGIN} ... {END})", path.display());
    };
    let new = format!("{}{t}{}", &doc[..b], &doc[e + END.len()..]);
    fs::write(&path, new)?;
    Ok(())
}
