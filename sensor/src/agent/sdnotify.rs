//! Tells systemd (`Type=notify`) when the agent is counting and when it stops, so that
//! `systemctl start` returns only once the programs are attached and `/metrics` is served.
//! Does nothing when the agent was not started by systemd (no `$NOTIFY_SOCKET`).

use sd_notify::NotifyState;
use tracing::warn;

/// The programs are attached and the HTTP server listens: `READY=1` with a one-line status.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutting down (last poll, state save, detach): `STOPPING=1`.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A failed notification must not stop counting: systemd then times the start out, which
/// says more than an agent that exits would.
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("could not notify systemd ($NOTIFY_SOCKET): {e}");
    }
}
