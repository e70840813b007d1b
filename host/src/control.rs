//! The control socket: a Unix socket speaking [`crate::protocol`].
//!
//! The socket is world-connectable so `connector status` works without sudo;
//! every request that changes the system is refused unless the peer is root
//! (or the daemon's own user), checked with the kernel's peer credentials.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{Request, Response};

/// Requests travelling from connections to the daemon's main task.
pub type Inbox = mpsc::Receiver<(Request, oneshot::Sender<Response>)>;

const MAX_REQUEST: u64 = 64 * 1024;

/// Binds the socket, refusing to start a second daemon and replacing a stale
/// socket file left by a crashed one.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another connector daemon is running (it answers on {}); stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale control socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves connections until the listener task is aborted.
pub fn serve(listener: UnixListener) -> (Inbox, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, tx.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    (rx, task)
}

fn allowed(peer_uid: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    matches!(peer_uid, Some(uid) if uid == 0 || uid == me)
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<(Request, oneshot::Sender<Response>)>) {
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    let response = match reader.read_line(&mut line).await {
        Err(e) => Response::Error {
            message: format!("cannot read request: {e}"),
        },
        Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
            Ok(req) if req.mutates() && !allowed(peer_uid) => Response::Error {
                message: "permission denied: this command changes routes; run it with sudo".into(),
            },
            Ok(req) => {
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
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
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
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .context("the daemon closed the connection")?;
    serde_json::from_str(line.trim())
        .with_context(|| format!("bad response from the daemon: {line:?}"))
}
