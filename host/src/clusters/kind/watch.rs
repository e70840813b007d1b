//! The kind subsystem's task: discovery (Docker listings and `docker exec`
//! into node containers) runs here, never on the daemon's loop, so a slow or
//! hostile node container delays no route of any other network.
//!
//! The daemon asks for a scan ([`KindWatch::rescan`], coalesced) and plans
//! from the latest completed one ([`KindWatch::latest`]); every completed
//! scan is announced ([`KindWatch::scanned`]), changed or not, so the daemon
//! can schedule the next retry of a cluster that is still starting.

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::discover::Discovery;
use super::plan::ClusterSnapshot;

/// A whole scan may take this long (each exec is bounded on its own too).
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KindWatch {
    wanted: Arc<Notify>,
    scans: watch::Receiver<Arc<Vec<ClusterSnapshot>>>,
    task: JoinHandle<()>,
}

impl KindWatch {
    /// Starts the task; the first scan begins at once.
    pub fn spawn(docker: Docker) -> KindWatch {
        let wanted = Arc::new(Notify::new());
        let (tx, scans) = watch::channel(Arc::new(Vec::new()));
        wanted.notify_one();
        let task = tokio::spawn(scan_when_asked(docker, wanted.clone(), tx));
        KindWatch {
            wanted,
            scans,
            task,
        }
    }

    /// Asks for a scan; requests arriving during a scan make one more.
    pub fn rescan(&self) {
        self.wanted.notify_one();
    }

    /// The clusters as the last completed scan found them.
    pub fn latest(&self) -> Arc<Vec<ClusterSnapshot>> {
        self.scans.borrow().clone()
    }

    /// Resolves when a scan completes (changed or not). Never resolves once
    /// the task is gone.
    pub async fn scanned(&mut self) {
        if self.scans.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for KindWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scan_when_asked(
    docker: Docker,
    wanted: Arc<Notify>,
    tx: watch::Sender<Arc<Vec<ClusterSnapshot>>>,
) {
    let mut discovery = Discovery::default();
    loop {
        wanted.notified().await;
        match tokio::time::timeout(SCAN_TIMEOUT, discovery.snapshot(&docker)).await {
            Ok(Ok(clusters)) => {
                tx.send_replace(Arc::new(clusters));
            }
            // Docker is away: keep what we knew (the daemon keeps its routes
            // too); the next event or resync asks again.
            Ok(Err(error)) => {
                tracing::debug!(error = format!("{error:#}"), "kind discovery failed")
            }
            Err(_) => tracing::warn!(
                secs = SCAN_TIMEOUT.as_secs(),
                "kind discovery did not finish in time; keeping the last result"
            ),
        }
    }
}
