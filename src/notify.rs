//! The service manager's view of pgvane (systemd `Type=notify`): ready once
//! every port listens and every cluster has a map, reloading while a reload
//! runs, stopping once a shutdown starts, and a one-line status. Each call
//! is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd).

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Every port listens and every cluster has a map: `READY=1`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload started: `RELOADING=1` with the monotonic time systemd wants;
/// [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutdown started: `STOPPING=1` and what it waits for.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A status line alone (what start-up still waits for).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}
