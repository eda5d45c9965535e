//! TLS for the recorder connection: a rustls connector for tokio-postgres,
//! with libpq's `sslmode` meanings. `prefer` and `require` encrypt without
//! checking who answers (libpq's behaviour: it stops passive eavesdropping,
//! not an impostor) unless a CA file is given, when the chain is checked;
//! `verify_ca` checks the chain; `verify_full` checks the chain and that the
//! certificate names the host connected to.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::TlsMode;

/// Connects over TLS; remembers whether the last connect did a handshake
/// (`prefer` may end up in plain text), for the `postgres_tls` gauge.
#[derive(Debug, Clone)]
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    encrypted: Arc<AtomicBool>,
}

impl RustlsConnect {
    /// The connector for `mode`, or `None` for `disable`. Reads `ca_file`.
    pub fn new(mode: TlsMode, ca_file: Option<&Path>) -> Result<Option<Self>, String> {
        let provider = Arc::new(ring::default_provider());
        let roots = ca_file.map(load_roots).transpose()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
            (TlsMode::Disable, _) => return Ok(None),
            (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => {
                return Err(format!(
                    "postgres.tls: `{}` needs postgres.ca_file, the CA that signed the server's certificate",
                    mode.name()
                ));
            }
            (TlsMode::Prefer | TlsMode::Require, None) => {
                Arc::new(AcceptAnyCertificate(provider.clone()))
            }
            (TlsMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
            // libpq: with a root certificate, `require` behaves like `verify-ca`.
            (TlsMode::Prefer | TlsMode::Require | TlsMode::VerifyCa, Some(roots)) => {
                Arc::new(ChainOnly(webpki(roots, &provider)?))
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("postgres.tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What PostgreSQL 17's direct TLS negotiation asks for; older
        // servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(Self {
            config: Arc::new(config),
            encrypted: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// Whether the last connection made with this connector is encrypted.
    pub fn take_encrypted(&self) -> bool {
        self.encrypted.swap(false, Ordering::Relaxed)
    }

    /// A copy for query cancellation, whose handshakes do not touch the flag.
    pub fn for_cancel(&self) -> Self {
        Self {
            config: self.config.clone(),
            encrypted: Arc::new(AtomicBool::new(false)),
        }
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("postgres.ca_file {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("postgres.ca_file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("postgres.ca_file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "postgres.ca_file {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(roots)
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("postgres.ca_file: {e}"))
}

/// `require` without a CA: any certificate, but the handshake's signatures
/// are still checked (the session is really keyed to that certificate).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify_ca`: the chain must lead to the CA; the name is not checked
/// (webpki checks the name last, so a name error means the chain passed).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why the TLS handshake failed; found in the error's source chain to
/// count the failure as `reason="tls"`.
#[derive(Debug)]
pub struct TlsHandshakeError(pub String);

impl std::fmt::Display for TlsHandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsHandshakeError {}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsHandshake;
    type Error = TlsHandshakeError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsHandshake, TlsHandshakeError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| TlsHandshakeError(format!("{host:?} is not a name TLS can check: {e}")))?;
        Ok(RustlsHandshake {
            config: self.config.clone(),
            name,
            encrypted: self.encrypted.clone(),
        })
    }
}

/// One handshake, to the host named when it was made.
#[derive(Debug)]
pub struct RustlsHandshake {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    encrypted: Arc<AtomicBool>,
}

type Handshake<S> =
    Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsHandshakeError>> + Send>>;

impl<S> TlsConnect<S> for RustlsHandshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsHandshakeError;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let stream = TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map_err(|e| TlsHandshakeError(e.to_string()))?;
            self.encrypted.store(true, Ordering::Relaxed);
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// The encrypted stream tokio-postgres talks through.
#[derive(Debug)]
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    // No tls-server-end-point binding: SCRAM still works (channel_binding
    // defaults to `prefer`); binding would need the certificate's signature
    // algorithm, an X.509 parser this crate does not otherwise need.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
