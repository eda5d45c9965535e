//! TLS for `mqtts` (8883) and `wss` (8884) with rustls. The certificate and
//! key are re-read when their files change (cert-manager rotates them in a
//! mounted Secret); new connections get the new certificate, live ones keep
//! theirs. A file pair that does not load keeps the previous one in force.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hass_runtime::file_watch;
use hass_runtime::shutdown::Shutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info};

use crate::connection::{self, ConnectionContext};

/// The certificate chain and key files, PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsFiles {
    /// Reads both files into a rustls config; errors name the file.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert_file)
            .map_err(|e| format!("{}: {e}", self.cert_file.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", self.cert_file.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{}: no certificate in it",
                self.cert_file.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|e| format!("{}: {e}", self.key_file.display()))?;
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "{} and {}: {e}",
                    self.cert_file.display(),
                    self.key_file.display()
                )
            })?;
        Ok(Arc::new(config))
    }
}

/// The acceptor in force, swapped on reload.
#[derive(Clone)]
pub struct CurrentTls(Arc<RwLock<TlsAcceptor>>);

impl std::fmt::Debug for CurrentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentTls")
    }
}

impl CurrentTls {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self(Arc::new(RwLock::new(TlsAcceptor::from(config))))
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = TlsAcceptor::from(config);
    }
}

/// Reloads the certificate when either file's content changes.
pub async fn reload_on_change(
    files: TlsFiles,
    current: CurrentTls,
    ctx: Arc<ConnectionContext>,
    interval: Duration,
    shutdown: Shutdown,
) {
    let paths = vec![files.cert_file.clone(), files.key_file.clone()];
    file_watch::on_change(paths, interval, shutdown, || match files.load() {
        Ok(config) => {
            current.replace(config);
            ctx.metrics.tls_reloads.get_or_create(&"ok".into()).inc();
            info!(cert = %files.cert_file.display(), "TLS certificate reloaded");
        }
        Err(e) => {
            ctx.metrics
                .tls_reloads
                .get_or_create(&"failed".into())
                .inc();
            error!("TLS files changed but cannot be used; keeping the previous certificate: {e}");
        }
    })
    .await;
}

/// Accepts TCP connections and completes TLS handshakes off the accept
/// path, sending finished streams to `ready`. A slow or failed handshake
/// holds up nobody else.
pub async fn accept_handshakes(
    listener: TcpListener,
    current: CurrentTls,
    ctx: Arc<ConnectionContext>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    connections: TaskTracker,
    shutdown: Shutdown,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = current.acceptor();
        let ready = ready.clone();
        let timeout = ctx.connect_timeout;
        let metrics = ctx.metrics.clone();
        connections.spawn(async move {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    metrics.malformed_kind("tls_handshake");
                    debug!(%peer, "TLS handshake failed: {e}");
                }
                Err(_) => {
                    metrics.malformed_kind("tls_handshake");
                    debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// `mqtts`: serves each handshaken stream as an MQTT connection.
pub async fn serve_mqtts(
    mut ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    ctx: Arc<ConnectionContext>,
    connections: TaskTracker,
) {
    while let Some((stream, peer)) = ready.recv().await {
        connections.spawn(connection::serve(stream, peer, ctx.clone()));
    }
}

/// `wss`: handshaken streams, offered to axum as a listener.
#[derive(Debug)]
pub struct HandshakenListener {
    pub ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for HandshakenListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (shutdown): wait for axum to stop us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
