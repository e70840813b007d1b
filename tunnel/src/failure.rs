//! How a packet loop stops: which I/O errors end it, and how it tells
//! [`crate::Tunnel::failed`] why.

use std::sync::Arc;

use tokio::sync::watch;

/// Reports a stopped packet loop to [`crate::Tunnel::failed`].
pub(crate) type FailSender = Arc<watch::Sender<Option<String>>>;

/// Persistent errors make the loop stop (and report) instead of spinning.
pub(crate) fn is_fatal(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    !matches!(
        error.kind(),
        Interrupted | WouldBlock | ConnectionRefused | ConnectionReset | TimedOut
    ) && error.raw_os_error() != Some(libc_enobufs())
}

/// ENOBUFS is transient on both Linux (105) and macOS (55).
const fn libc_enobufs() -> i32 {
    if cfg!(target_os = "linux") {
        105
    } else {
        55
    }
}

/// Records why a loop stopped, for [`crate::Tunnel::failed`].
pub(crate) fn report(fail: &FailSender, what: &str, error: &std::io::Error) {
    tracing::warn!(%error, "{what} failed; stopping the tunnel");
    let _ = fail.send(Some(format!("{what}: {error}")));
}
