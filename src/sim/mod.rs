//! The Cases API simulator: an axum server that behaves like a Stellar Cyber server
//! (tokens, filters, paging, both update flavours, history, comments, users, tenants) with
//! switchable faults. `casewarden simulate`, the demo, the tests and the benchmarks use it.

mod answer;
mod auth;
pub mod data;
mod error;
mod faults;
mod routes;
mod state;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use axum_server::tls_rustls::RustlsConfig;
use routes::router;

pub use error::SimError;
pub use state::{Faults, RawAnswer, RedirectFault, SeenRequest, SimOptions, SimState};
use state::{Shared, lock};
use tls::self_signed_chain;

/// A running simulator.
pub struct Simulator {
    pub addr: SocketAddr,
    /// Base URL to put in `stellar.url`.
    pub url: String,
    state: Shared,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Simulator {
    /// Binds `listen` (port 0 picks a free port) and serves in the background. With
    /// `tls_cert_out`, serves HTTPS and writes the CA certificate that signed its
    /// certificate there, for `stellar.ca_file`.
    pub async fn start(
        opts: SimOptions,
        listen: SocketAddr,
        tls_cert_out: Option<&Path>,
    ) -> Result<Simulator, SimError> {
        let state: Shared = Arc::new(RwLock::new(SimState::new(&opts)?));
        let app = router(state.clone());
        let listener = std::net::TcpListener::bind(listen).map_err(|error| SimError::Listen {
            addr: listen,
            error,
        })?;
        let socket = |error| SimError::Socket {
            addr: listen,
            error,
        };
        let addr = listener.local_addr().map_err(socket)?;
        let handle = axum_server::Handle::new();
        let (scheme, task) = match tls_cert_out {
            Some(out) => {
                let config = tls_config(out).await?;
                let server = axum_server::from_tcp_rustls(listener, config)
                    .map_err(socket)?
                    .handle(handle.clone());
                ("https", tokio::spawn(server.serve(app.into_make_service())))
            }
            None => {
                let server = axum_server::from_tcp(listener)
                    .map_err(socket)?
                    .handle(handle.clone());
                ("http", tokio::spawn(server.serve(app.into_make_service())))
            }
        };
        let host = if tls_cert_out.is_some() && addr.ip().is_loopback() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        Ok(Simulator {
            addr,
            url: format!("{scheme}://{host}"),
            state,
            handle,
            task,
        })
    }

    /// Locks the server's state for inspection or rigging.
    pub fn state(&self) -> RwLockWriteGuard<'_, SimState> {
        lock(&self.state)
    }

    /// Stops serving at once, keeping the state readable (a server "going away").
    pub fn halt(&self) {
        self.handle.shutdown();
    }

    /// Stops accepting connections and closes open ones.
    pub async fn stop(self) {
        self.handle.shutdown();
        let _ = self.task.await;
    }

    /// Serves until the task ends (for `casewarden simulate`).
    pub async fn wait(self) -> Result<(), SimError> {
        let stopped = |detail: String| SimError::Stopped { detail };
        self.task
            .await
            .map_err(|e| stopped(e.to_string()))?
            .map_err(|e| stopped(e.to_string()))
    }
}

/// A fresh certificate chain for HTTPS, its CA written to `out` for `stellar.ca_file`.
async fn tls_config(out: &Path) -> Result<RustlsConfig, SimError> {
    let (ca_pem, cert_pem, key_pem) = self_signed_chain()?;
    std::fs::write(out, ca_pem).map_err(|error| SimError::CertOut {
        path: out.to_path_buf(),
        error,
    })?;
    RustlsConfig::from_pem(cert_pem.into_bytes(), key_pem.into_bytes())
        .await
        .map_err(|e| SimError::Tls {
            detail: e.to_string(),
        })
}
