//! The signals both ends live by: SIGTERM (launchd's `brew services stop`
//! for the daemon, `docker stop` from the daemon for the agent) and SIGINT
//! stop either end and undo its work; SIGUSR1, sent by the daemon, asks the
//! agent to start a new handshake.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signal the daemon sends (through `docker kill`) to ask the agent for
/// a new handshake.
pub const NUDGE: &str = "SIGUSR1";

/// The agent's end of [`NUDGE`].
pub fn nudge_kind() -> SignalKind {
    SignalKind::user_defined1()
}

/// SIGTERM and SIGINT, listened to from a process's first step: once tokio
/// handles a signal its default action is gone, so a signal nobody waits for
/// would be lost (and as PID 1 in a container an unhandled one is ignored).
/// Every phase waits on this one.
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    pub fn install() -> io::Result<Shutdown> {
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
