//! The data path's error type.

/// Errors of the data path.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tun device: {0}")]
    Tun(std::io::Error),
    #[error("udp socket: {0}")]
    Udp(std::io::Error),
    #[error("invalid key: {0}")]
    Key(String),
    #[error("cannot read key file {path}: {error}")]
    KeyFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}
