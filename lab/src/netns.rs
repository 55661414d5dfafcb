//! Namespace lifetime and running code inside a namespace.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

use crate::{cmd::ip, process::Process};

/// Distinguishes labs created by one process (tests run in parallel threads).
static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

/// Owner of a set of network namespaces and the processes started in them. Dropping it
/// kills those processes and deletes the namespaces, which takes every veth, bridge, address
/// and route of the lab with them, so a failed test leaves nothing behind.
pub struct Lab {
    tag: String,
    namespaces: Mutex<Vec<String>>,
    procs: Mutex<Vec<Process>>,
    dir: tempfile::TempDir,
    keep_dir: bool,
}

impl Lab {
    /// `prefix` names the user (e.g. `gwt-plain`); pid and a per-process sequence number are
    /// appended so parallel users never share a namespace. Creates no namespace yet.
    pub fn new(prefix: &str) -> anyhow::Result<Lab> {
        let tag =
            format!("{prefix}-{}-{}", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir()
            .context("creating the lab's temporary directory")?;
        Ok(Lab {
            tag,
            namespaces: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            dir,
            keep_dir: std::env::var_os("LAB_KEEP_LOGS").is_some(),
        })
    }

    /// The unique part of every name this lab creates.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Scratch directory for logs, configs and state files; removed on Drop unless the
    /// environment has `LAB_KEEP_LOGS` set (to read agent logs after a failed run).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates namespace `<tag>-<role>` with loopback up and returns its full name. A stale
    /// namespace of the same name (a crashed run whose pid got reused) is replaced.
    pub fn add_netns(&self, role: &str) -> anyhow::Result<String> {
        let name = format!("{}-{role}", self.tag);
        if Path::new("/run/netns").join(&name).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
        ip(&["netns", "add", &name])?;
        self.namespaces.lock().unwrap().push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Names of the namespaces created so far.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.lock().unwrap().clone()
    }

    /// See [`in_netns`].
    pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(&self, ns: &str, f: F) -> anyhow::Result<T> {
        in_netns(ns, f)
    }

    /// Starts `cmd` inside `ns` with stdout and stderr going to a log file in [`Lab::dir`].
    /// The process stays in the host's mount namespace (unlike `ip netns exec`, which mounts a
    /// private /sys): the agent's pinned maps under /sys/fs/bpf must be the host's bpffs so
    /// they survive a restart. The lab kills it on Drop if it is still running.
    pub fn spawn(&self, ns: &str, cmd: Command) -> anyhow::Result<Process> {
        self.spawn_at(Some(ns), cmd)
    }

    /// Like [`Lab::spawn`], in the caller's own network namespace: services that unprivileged
    /// tests run on the host's loopback (no namespace needs root; a lab without any does not).
    pub fn spawn_on_host(&self, cmd: Command) -> anyhow::Result<Process> {
        self.spawn_at(None, cmd)
    }

    /// [`Lab::spawn`] in `ns`, or [`Lab::spawn_on_host`] when `ns` is None.
    pub fn spawn_at(&self, ns: Option<&str>, cmd: Command) -> anyhow::Result<Process> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let stem =
            Path::new(cmd.get_program()).file_name().map(|s| s.to_string_lossy().into_owned());
        let log =
            self.dir().join(format!("{}-{}.log", stem.as_deref().unwrap_or("proc"), procs.len()));
        let p = Process::spawn(ns, cmd, log)?;
        procs.push(p.clone());
        Ok(p)
    }

    /// Log files of every process spawned so far, in start order.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.procs.lock().unwrap().iter().map(|p| p.log_path().to_path_buf()).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in self.procs.lock().unwrap().iter() {
            if let Err(e) = p.terminate(Duration::from_secs(3)) {
                eprintln!("lab {}: stopping pid {}: {e:#}", self.tag, p.pid());
            }
        }
        for ns in self.namespaces.lock().unwrap().drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("lab {}: {e:#}", self.tag);
            }
        }
        if self.keep_dir {
            let dir = std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("tempdir"));
            eprintln!("lab {}: keeping {}", self.tag, dir.keep().display());
        }
    }
}

/// Makes `cmd` join network namespace `ns` between fork and exec (in the host's mount
/// namespace, unlike `ip netns exec`). The returned file must stay open until `cmd` is spawned.
pub(crate) fn enter_before_exec(cmd: &mut Command, ns: &str) -> anyhow::Result<File> {
    let path = Path::new("/run/netns").join(ns);
    let netns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let fd = netns.as_raw_fd();
    // SAFETY: setns(2) is a plain syscall, async-signal-safe, touching no allocator state; the
    // caller keeps `netns` open until spawn() returns, and it is close-on-exec, so the child
    // does not keep it.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::setns(fd, nix::libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(netns)
}

/// Runs `f` on a fresh thread that has joined network namespace `ns` (by name, as in
/// `ip netns`), and returns its result. Sockets created inside `f` belong to `ns` for their
/// whole life, so they can be returned and used from any thread afterwards. The calling
/// thread's namespace is never changed. A panic in `f` is resumed in the caller.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> anyhow::Result<T> {
    let path = Path::new("/run/netns").join(ns);
    let file = File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> anyhow::Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
