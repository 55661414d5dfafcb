//! Child processes running inside a lab namespace.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A process started by [`crate::Lab::spawn`]. Clones share the same child; the lab keeps one
/// so it can kill stragglers, the caller uses another to stop or restart it (agent restarts).
#[derive(Clone)]
pub struct Process {
    inner: Arc<Inner>,
}

struct Inner {
    pid: u32,
    log: PathBuf,
    child: Mutex<Child>,
}

impl Process {
    pub(crate) fn spawn(ns: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Process> {
        let netns_path = Path::new("/run/netns").join(ns);
        let netns =
            File::open(&netns_path).with_context(|| format!("opening {}", netns_path.display()))?;
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let fd = netns.as_raw_fd();
        let desc = format!("{cmd:?}");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: setns(2) is a plain syscall, async-signal-safe, touching no allocator state;
        // `netns` outlives spawn() and is close-on-exec, so the child does not keep it.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::setns(fd, nix::libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {desc} in {ns}"))?;
        drop(netns);
        Ok(Process { inner: Arc::new(Inner { pid: child.id(), log, child: Mutex::new(child) }) })
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Where stdout and stderr go (both into one file, interleaved as written).
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read(&self.inner.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.inner.log.display()))
    }

    /// `Some(status)` once it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.inner.child.lock().unwrap().try_wait()?)
    }

    /// Sends `sig` unless it has already exited.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.inner.pid as i32), sig)
            .with_context(|| format!("kill -{sig} {}", self.inner.pid))
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_timeout(&self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The graceful stop a service manager does: SIGTERM, wait up to `grace`, and only then
    /// SIGKILL (reported as an error, since a clean shutdown path is what is being tested).
    pub fn terminate(&self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        if let Some(s) = self.wait_timeout(grace)? {
            return Ok(s);
        }
        self.signal(Signal::SIGKILL)?;
        self.wait_timeout(Duration::from_secs(5))?;
        bail!("pid {} ignored SIGTERM for {grace:?} and was killed", self.inner.pid)
    }
}

/// Waits until the agent `process` running in `ns` serves `metrics_url` with its XDP attach
/// mode (its programs are in place), or fails if it exits or `timeout` passes. The caller adds
/// the log when it reports the error.
pub fn wait_agent_ready(
    ns: &str,
    metrics_url: &str,
    process: &Process,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = process.try_wait()? {
            anyhow::bail!("the agent exited during startup ({status})");
        }
        if crate::http_get(ns, metrics_url)
            .is_ok_and(|body| body.contains("gwsensor_xdp_attach_mode"))
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the agent did not serve {metrics_url} with gwsensor_xdp_attach_mode within {timeout:?}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
