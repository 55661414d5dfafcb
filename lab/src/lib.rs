//! A disposable network-namespace lab for the gateway sensor: a home network (clients, a
//! gateway, an "internet" host) built from namespaces and veth pairs, so the real agent can be
//! run against real kernel traffic in tests, the demo and benchmarks without touching the
//! host's own network.
//!
//! Everything a [`Lab`] creates is named `<prefix>-<pid>-<seq>-<role>` (parallel tests in one
//! process and concurrent processes never collide) and is removed when the lab is dropped.
//! Traffic only ever goes to addresses inside the lab (10.77.0.0/16, fd77::/16).
//!
//! Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2 (`ip`, `bridge`).
//!
//! Everything that tests, benches, the demo and the peer bench run against the lab is here too,
//! written once: [`agent`] (the real agent started, awaited and read: /metrics, the API, the
//! CLI), [`alertmanager`] and [`prometheus`] (the real services, in a namespace or on the
//! host's loopback, the latter without root), [`dashboards`] (the Grafana dashboards read,
//! checked and run), [`http`] (the one HTTP client), [`ledger`] (expected counts), [`wait`]
//! (deadlines), [`wire`] (frames sent by hand, offloads, link counters) and [`docs`]
//! (benchmark sections and the machine they ran on).

pub mod agent;
pub mod alertmanager;
mod cmd;
pub mod dashboards;
pub mod dhcp;
pub mod docs;
mod gate;
pub mod http;
pub mod ledger;
pub mod mmdb;
mod netns;
mod process;
pub mod prom;
pub mod prometheus;
pub mod services;
mod topology;
mod traffic;
pub mod wait;
pub mod wire;

pub use agent::Agent;
pub use cmd::{bridge, ip, run};
pub use gate::{PinDir, cannot_run, lab_tests_can_run, privileged_required};
pub use netns::{Lab, in_netns};
pub use process::{Process, tail};
pub use topology::{
    Client, Gateway, Internet, LAN_PREFIXES, LanKind, Topology, TopologyBuilder, mac_text,
};
pub use traffic::{TcpForwarder, TcpSink, UdpReceiver, send_icmpv6, send_udp, tcp_upload};

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, bail};

/// Whether this process can build a lab at all: root, iproute2 present, namespaces creatable.
/// Tests call this first so an unprivileged run fails (or skips) with one clear reason instead
/// of a cascade of `ip` errors. Probed once per process (tests call it from parallel threads).
pub fn check_privileged() -> anyhow::Result<()> {
    static RESULT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    RESULT
        .get_or_init(|| probe_privileges().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn probe_privileges() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("not running as root (the lab creates network namespaces and veth pairs)");
    }
    ip(&["-V"]).context("iproute2 `ip` is needed")?;
    let probe = format!("lab-probe-{}", std::process::id());
    let _ = std::process::Command::new("ip").args(["netns", "del", &probe]).output();
    ip(&["netns", "add", &probe]).context("cannot create a network namespace")?;
    ip(&["netns", "del", &probe])?;
    Ok(())
}

/// Makes sure a BPF filesystem is mounted at /sys/fs/bpf, where the agent pins its maps.
/// Most distributions mount it at boot; minimal containers and CI VMs often do not. Mounted
/// in the host's mount namespace, as systemd would.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    // Serialized: two parallel tests mounting at once would stack two bpffs instances.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = "/sys/fs/bpf";
    // f_type's width differs between architectures, hence the cast.
    #[allow(clippy::unnecessary_cast)]
    let is_bpffs = |p: &str| {
        nix::sys::statfs::statfs(p)
            .map(|fs| fs.filesystem_type().0 as i64 == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    if is_bpffs(path) {
        return Ok(());
    }
    run("mount", &["-t", "bpf", "bpf", path])?;
    if !is_bpffs(path) {
        bail!("mounted bpffs at {path} but statfs still does not report a BPF filesystem");
    }
    Ok(())
}

/// Pins a new per-CPU array of 4 entries with 4-byte keys and `value_size`-byte values at
/// `path` (`bpftool map create`): a map of a layout of the tests' choosing, standing in for
/// one that another build pinned.
pub fn pin_percpu_array(path: &std::path::Path, value_size: u32, name: &str) -> anyhow::Result<()> {
    let path = path.to_str().context("a pin path that is not UTF-8")?;
    let value = value_size.to_string();
    let args = ["map", "create", path, "type", "percpu_array", "key", "4", "value", &value];
    run("bpftool", &[&args[..], &["entries", "4", "name", name]].concat()).map(|_| ())
}

/// A flag that turns true on SIGINT/SIGTERM, so long-running lab users (demo, benchmarks)
/// leave their loops and let [`Lab`]'s Drop remove the namespaces. Installs a process-wide
/// handler: call it once per process.
pub fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || f.store(true, Ordering::SeqCst))
        .context("installing the SIGINT/SIGTERM handler")?;
    Ok(flag)
}

/// Writes `msg` straight to the process's stderr, past the test harness's output capture
/// (which only catches `eprintln!`), so a skipped privileged test is visible in a plain
/// `cargo test` run instead of passing silently.
pub fn notice(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n******** {msg} ********\n");
}
