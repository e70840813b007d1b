//! The control socket: a Unix socket speaking [`crate::control::protocol`].
//!
//! The socket is world-connectable so `connector status` works without sudo;
//! every request that changes the system is refused unless the peer is root
//! (or the daemon's own user), checked with the kernel's peer credentials.
//!
//! Any local user can connect, so a connection is bounded in time (the
//! request must arrive within [`READ_TIMEOUT`]), size ([`MAX_REQUEST`]) and
//! number (per user and in all; root is never turned away). `status` is
//! answered here from the daemon's cached state, without waiting for the
//! daemon's loop; only requests that change something go to the loop.

pub mod protocol;

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use connector_protocol::lines::{self, LineError, LineReader};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::protocol::{Request, Response, StatusReport};

/// Requests travelling from connections to the daemon's main task.
pub type Inbox = mpsc::Receiver<(Request, oneshot::Sender<Response>)>;

/// Answers `status` from the daemon's cached state.
pub type StatusFn = Arc<dyn Fn() -> StatusReport + Send + Sync>;

const MAX_REQUEST: usize = 64 * 1024;
/// Longest response the CLI reads (a status report of many networks).
const MAX_RESPONSE: usize = 64 << 20;
/// A client sends its one line at once; a connection that has not after
/// this long is closed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for the daemon (a sync may list Docker and the
/// routing table, each bounded on its own).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Open connections allowed per user (other than root) and in all.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub per_user: usize,
    pub total: usize,
}

pub const CAPS: Caps = Caps {
    per_user: 8,
    total: 64,
};

/// Binds the socket, refusing to start a second daemon, replacing a stale
/// socket left by a crashed one, and never removing anything that is not a
/// socket (a mistyped `control_socket` must not delete a file). The file is
/// removed when the returned [`SocketFile`] is dropped.
pub async fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                bail!(
                    "another connector daemon is running (it answers on {}); stop it first",
                    path.display()
                );
            }
            std::fs::remove_file(path).with_context(|| {
                format!("cannot remove stale control socket {}", path.display())
            })?;
        }
        Ok(_) => bail!(
            "control_socket {} exists and is not a socket; refusing to replace it (choose another path)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let inode = std::fs::symlink_metadata(path)?.ino();
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            inode,
        },
    ))
}

/// The socket's path: removed when dropped, if it is still our socket.
pub struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() && m.ino() == self.inode => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "the control socket path was replaced by something else; leaving it")
            }
            Err(_) => {}
        }
    }
}

/// Who holds a connection now; pure bookkeeping for [`Caps`].
#[derive(Debug, Default)]
struct Slots {
    per_user: HashMap<u32, usize>,
    total: usize,
}

impl Slots {
    /// Takes a slot for `uid`, or says why not. Root is always let in and
    /// takes no slot.
    fn admit(&mut self, uid: Option<u32>, caps: Caps) -> Result<(), String> {
        let uid = uid.unwrap_or(u32::MAX);
        if uid == 0 {
            return Ok(());
        }
        if self.total >= caps.total {
            return Err(format!(
                "the daemon has {} connections open; try again",
                self.total
            ));
        }
        if self.per_user.get(&uid).copied().unwrap_or(0) >= caps.per_user {
            return Err(format!(
                "too many connections from uid {uid} ({} open); try again",
                caps.per_user
            ));
        }
        self.total += 1;
        *self.per_user.entry(uid).or_default() += 1;
        Ok(())
    }

    fn release(&mut self, uid: Option<u32>) {
        let uid = uid.unwrap_or(u32::MAX);
        if uid == 0 {
            return;
        }
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_user.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&uid);
            }
        }
    }
}

/// Gives the slot back when the connection ends, however it ends.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    uid: Option<u32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(self.uid);
    }
}

/// Serves connections until the returned task is aborted.
pub fn serve(
    listener: UnixListener,
    status: StatusFn,
    caps: Caps,
) -> (Inbox, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Mutex::new(Slots::default()));
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().ok().map(|c| c.uid());
                    let admitted = slots
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .admit(uid, caps);
                    match admitted {
                        Ok(()) => {
                            let slot = Slot {
                                slots: slots.clone(),
                                uid,
                            };
                            tokio::spawn(handle(stream, uid, tx.clone(), status.clone(), slot));
                        }
                        Err(message) => {
                            tracing::debug!(?uid, %message, "control connection refused");
                            tokio::spawn(reply(stream, Response::Error { message }));
                        }
                    }
                }
                Err(error) => {
                    // EMFILE and friends: wait for connections to close.
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    (rx, task)
}

fn allowed(peer_uid: Option<u32>) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    matches!(peer_uid, Some(uid) if uid == 0 || uid == me)
}

async fn handle(
    stream: UnixStream,
    peer_uid: Option<u32>,
    tx: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
    status: StatusFn,
    _slot: Slot,
) {
    let (read, write) = stream.into_split();
    let read =
        tokio::time::timeout(READ_TIMEOUT, LineReader::new(read, MAX_REQUEST).next_line()).await;
    let response = match read {
        Err(_) => Response::Error {
            message: format!("no request within {} s", READ_TIMEOUT.as_secs()),
        },
        Ok(Err(LineError::TooLong { max })) => Response::Error {
            message: format!("request larger than {max} bytes"),
        },
        Ok(Err(e)) => Response::Error {
            message: format!("cannot read request: {e}"),
        },
        Ok(Ok(line)) => match serde_json::from_str::<Request>(line.unwrap_or_default().trim()) {
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
            Ok(Request::Status) => Response::Status(Box::new(status())),
            Ok(req) if req.mutates() && !allowed(peer_uid) => Response::Error {
                message: "permission denied: this command changes routes; run it with sudo".into(),
            },
            // Requests for the loop wait until start-up is over (`status` is
            // answered all along).
            Ok(req) => match status().phase {
                phase if phase.starting() => Response::Error {
                    message: format!(
                        "the daemon is still starting ({}{}, {} s); try again once `connector status` says it is ready",
                        phase.name,
                        phase.detail.map(|d| format!(" {d}")).unwrap_or_default(),
                        phase.secs
                    ),
                },
                _ => {
                    let (reply_tx, reply_rx) = oneshot::channel();
                    if tx.send((req, reply_tx)).await.is_err() {
                        Response::Error {
                            message: "daemon is shutting down".into(),
                        }
                    } else {
                        reply_rx.await.unwrap_or(Response::Error {
                            message: "daemon is shutting down".into(),
                        })
                    }
                }
            },
        },
    };
    write_response(write, &response).await;
}

/// Answers a connection that was not admitted, without reading from it.
async fn reply(stream: UnixStream, response: Response) {
    let (_, write) = stream.into_split();
    write_response(write, &response).await;
}

async fn write_response(mut write: tokio::net::unix::OwnedWriteHalf, response: &Response) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, lines::write(&mut write, response)).await;
}

/// Client side: one request, one response.
pub async fn request(path: &PathBuf, request: &Request) -> Result<Response> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    "is the daemon running? start it with `sudo connector run` or `sudo brew services start connector`"
                }
                std::io::ErrorKind::PermissionDenied => "permission denied; try with sudo",
                _ => "cannot connect",
            };
            bail!(
                "no connector daemon answers on {} ({e}): {why}",
                path.display()
            );
        }
    };
    let talk = async {
        let (read, mut write) = stream.into_split();
        lines::write(&mut write, request).await?;
        write.shutdown().await?;
        let line = LineReader::new(read, MAX_RESPONSE)
            .next_line()
            .await
            .context("cannot read the daemon's response")?
            .context("the daemon closed the connection")?;
        serde_json::from_str(&line)
            .with_context(|| format!("bad response from the daemon: {line:?}"))
    };
    tokio::time::timeout(CLIENT_TIMEOUT, talk)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the daemon on {} did not answer within {} s",
                path.display(),
                CLIENT_TIMEOUT.as_secs()
            )
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        per_user: 2,
        total: 3,
    };

    #[test]
    fn one_user_cannot_take_every_slot_and_root_always_gets_in() {
        let mut s = Slots::default();
        assert!(s.admit(Some(1000), CAPS).is_ok());
        assert!(s.admit(Some(1000), CAPS).is_ok());
        let err = s.admit(Some(1000), CAPS).unwrap_err();
        assert!(err.contains("uid 1000"), "{err}");
        assert!(s.admit(Some(1001), CAPS).is_ok());
        // Full: another user waits, root does not.
        assert!(s.admit(Some(1002), CAPS).is_err());
        assert!(s.admit(Some(0), CAPS).is_ok());
        s.release(Some(1000));
        assert!(s.admit(Some(1002), CAPS).is_ok());
        for uid in [1000, 1001, 1002, 0] {
            s.release(Some(uid));
        }
        assert_eq!(s.total, 0);
        assert!(s.per_user.is_empty());
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("connector-ctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_never_removed() {
        let dir = temp("notsock");
        let path = dir.join("important.txt");
        std::fs::write(&path, "keep me").unwrap();
        let err = format!("{:#}", bind(&path).await.err().unwrap());
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_removed_on_stop_only_if_ours() {
        let dir = temp("stale");
        let path = dir.join("c.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (listener, file) = bind(&path).await.unwrap();
        drop(listener);
        // Someone put a file there meanwhile: left alone.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "x").unwrap();
        drop(file);
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
        let (_listener, file) = bind(&path).await.unwrap();
        drop(file);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
