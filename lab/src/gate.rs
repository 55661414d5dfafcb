//! The policy every privileged test follows: run when it can; when it cannot, fail loudly in
//! CI (`CI=true`) or under `cargo xtask test` (`GWSENSOR_TEST_REQUIRE_PRIVILEGED=1`), and
//! otherwise print a SKIPPED line that a plain `cargo test` shows. Never a silent pass.

use std::path::{Path, PathBuf};

use crate::{check_privileged, ensure_bpffs, notice};

/// Whether missing privileges or tools must fail the test rather than skip it.
pub fn privileged_required() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("GWSENSOR_TEST_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
}

/// Skips (false, after a notice) or fails (panic) the calling test, per the policy above, with
/// `why` as the reason.
pub fn cannot_run(suite: &str, why: &str) -> bool {
    if privileged_required() {
        panic!("{suite} cannot run: {why}");
    }
    notice(&format!("SKIPPED: {suite}: {why}"));
    false
}

/// Whether a namespace test can run: root, namespaces, bpffs, and each of `tools` on PATH.
pub fn lab_tests_can_run(suite: &str, tools: &[&str]) -> bool {
    if let Err(e) = check_privileged().and_then(|()| ensure_bpffs()) {
        return cannot_run(suite, &format!("needs root, network namespaces and bpffs ({e:#})"));
    }
    for tool in tools {
        if std::process::Command::new(tool).arg("--version").output().is_err() {
            return cannot_run(suite, &format!("needs `{tool}` (cargo xtask test installs it)"));
        }
    }
    true
}

/// A pin directory for one agent under test, removed when the test ends however it ends
/// (bpffs is global, not per namespace).
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(suite: &str, name: &str) -> PinDir {
        let p =
            PathBuf::from(format!("/sys/fs/bpf/gwsensor-{suite}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        PinDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Removes every pin, as a reboot empties the BPF filesystem (pinned links go with theirs,
    /// which detaches them).
    pub fn remove_all(&self) -> anyhow::Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::from(e).context(format!("removing {}", self.0.display())))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
