//! Child processes of a lab: inside one of its namespaces or on the host, their output in a
//! log file of the lab, so a failure can show what they said.

use std::{
    fs::File,
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
    /// Starts `cmd` with stdout and stderr into `log`: inside network namespace `ns`, or in the
    /// caller's own network namespace (the host's) when `ns` is None.
    pub(crate) fn spawn(
        ns: Option<&str>,
        mut cmd: Command,
        log: PathBuf,
    ) -> anyhow::Result<Process> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let desc = format!("{cmd:?}");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let netns = match ns {
            Some(ns) => Some(crate::netns::enter_before_exec(&mut cmd, ns)?),
            None => None,
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {desc} in {}", ns.unwrap_or("the host")))?;
        drop(netns);
        Ok(Process { inner: Arc::new(Inner { pid: child.id(), log, child: Mutex::new(child) }) })
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// A kB figure of its `/proc/PID/status`: `VmHWM` (peak resident set), `VmRSS`, ...
    pub fn status_kb(&self, field: &str) -> anyhow::Result<u64> {
        let pid = self.inner.pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| {
                v.trim_start_matches(':').trim().trim_end_matches("kB").trim().parse().ok()
            })
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
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

    /// The last `lines` lines of the log, for error messages that must stay readable.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// `Some(status)` once it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        // A poisoned lock only means another thread panicked while waiting: the child is intact.
        let mut child = self.inner.child.lock().unwrap_or_else(|e| e.into_inner());
        Ok(child.try_wait()?)
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

/// The last `lines` lines of `text`, with a note of how many were left out.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skipped = all.len().saturating_sub(lines);
    let shown = all[skipped..].join("\n");
    if skipped == 0 { shown } else { format!("({skipped} earlier lines not shown)\n{shown}") }
}
