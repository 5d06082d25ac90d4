//! Tells the service manager where the agent stands (systemd's `Type=notify`, sd_notify(3)):
//! `READY=1` when the agent starts answering `/-/ready` with 200, `RELOADING=1` then `READY=1`
//! around a config reload, `STOPPING=1` when shutdown starts, each with a `STATUS=` line that
//! `systemctl status` shows. Messages go to the datagram socket named by `NOTIFY_SOCKET`; when
//! it is not set (the agent was not started by systemd) nothing is sent.

use sd_notify::NotifyState;

/// The agent is ready (what `/-/ready` answers 200 for); `status` says why, for people.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A config reload starts; [`ready`] ends it.
pub fn reloading() {
    // MONOTONIC_USEC lets a service manager tell this reload from an earlier one (systemd's
    // `Type=notify-reload` requires it; older ones ignore it).
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the config file"),
        ]),
        Err(_) => send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading the config file"),
        ]),
    }
}

/// Shutdown has started (leaving the ring, flushing remote_write).
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("shutting down: leaving the ring, flushing remote_write"),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
