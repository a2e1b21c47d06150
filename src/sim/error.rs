//! What stops the simulator from starting or serving, naming the flag or address at fault.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("simulator on {addr}: {error}")]
    Socket {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("--tls-cert-out {}: {error}", path.display())]
    CertOut {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("simulator TLS certificate: {detail}")]
    Tls { detail: String },
    #[error("--cases-file {}: {detail}", path.display())]
    CasesFile { path: PathBuf, detail: String },
    #[error("--cases-file {}:{}:{}: not JSON: {error}", path.display(), error.line(), error.column())]
    NotJson {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("simulator stopped: {detail}")]
    Stopped { detail: String },
}
