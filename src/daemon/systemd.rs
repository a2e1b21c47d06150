//! Talking to systemd: READY, RELOADING, STOPPING, STATUS and the watchdog. Outside
//! systemd (no `$NOTIFY_SOCKET`) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Back to ready after a reload.
pub fn reloaded() {
    notify(&[NotifyState::Ready]);
}

pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

pub fn pet_watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to pet the watchdog (half its timeout), when systemd set one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
