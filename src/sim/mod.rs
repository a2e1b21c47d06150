//! The Cases API simulator: an axum server that behaves like a Stellar Cyber server
//! (tokens, filters, paging, both update flavours, history, comments, users, tenants) with
//! switchable faults. `casewarden simulate`, the demo, the tests and the benchmarks use it.

mod answer;
mod auth;
pub mod data;
mod faults;
mod routes;
mod state;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use routes::router;
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
    ) -> anyhow::Result<Simulator> {
        let state: Shared = Arc::new(Mutex::new(SimState::new(&opts)?));
        let app = router(state.clone());
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("simulator cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let handle = axum_server::Handle::new();
        let (scheme, task) = match tls_cert_out {
            Some(out) => {
                let (ca_pem, cert_pem, key_pem) = self_signed_chain()?;
                std::fs::write(out, ca_pem)
                    .map_err(|e| anyhow::anyhow!("--tls-cert-out {}: {e}", out.display()))?;
                let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                    cert_pem.into_bytes(),
                    key_pem.into_bytes(),
                )
                .await?;
                let server = axum_server::from_tcp_rustls(listener, config)?.handle(handle.clone());
                ("https", tokio::spawn(server.serve(app.into_make_service())))
            }
            None => {
                let server = axum_server::from_tcp(listener)?.handle(handle.clone());
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
    pub fn state(&self) -> MutexGuard<'_, SimState> {
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
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await??;
        Ok(())
    }
}
