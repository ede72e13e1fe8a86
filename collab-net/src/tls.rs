//! TLS between device and cloud, with rustls (the `ring` provider) and certificates from PEM
//! files.
//!
//! - The server: [`server_config`] from a certificate chain and its private key, set as
//!   [`crate::server::ServerConfig::tls`]; each connection's TLS handshake runs on its own
//!   task within `hello_timeout`, holding one of the connection's handshake slots, so a peer
//!   that stalls the TLS handshake is bounded like one that stalls its `Hello`.
//! - The device: [`TlsTransport`] over any [`Transport`], trusting the CA certificates of
//!   [`client_config`] and checking the server's name.
//!
//! `collab-server --tls-cert FILE --tls-key FILE` and `collab-device --tls-ca FILE
//! [--tls-name NAME]` use them; the tests make a CA and a server certificate at test time.

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::transport::{BoxStream, Transport};

/// rustls on *ring*: the aws-lc-rs provider would need cmake and a long C build on our 2-core
/// CI. *ring* (rustls 0.23.48 deprecates its provider for this) offers no post-quantum key
/// exchange: the sessions use X25519 / P-256 / P-384.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} {}: {e}", path.display()),
    )
}

/// The certificates of a PEM file (at least one).
fn certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(path, "certificates", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(path, "certificates", e))?;
    if certs.is_empty() {
        return Err(invalid(path, "certificates", "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// A server's TLS settings: the certificate chain of `cert_chain` (PEM, the server's first)
/// and the private key of `key` (PEM: PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] naming the file: unreadable, no certificate or key in it,
/// or a key that does not fit the certificate.
pub fn server_config(cert_chain: &Path, key: &Path) -> io::Result<Arc<ServerConfig>> {
    let certs = certificates(cert_chain)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, "private key", e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(cert_chain, "certificate and key", e))?;
    Ok(Arc::new(config))
}

/// A device's TLS settings: trust the CA certificates of `ca` (PEM).
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] naming the file: unreadable, no certificate, or one that
/// is not a usable trust anchor.
pub fn client_config(ca: &Path) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| invalid(ca, "CA certificate", e))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A [`Transport`] whose connections run TLS over `inner`'s, checking the server's
/// certificate against a [`client_config`] and the name `server_name`.
#[derive(Clone)]
pub struct TlsTransport {
    inner: Arc<dyn Transport>,
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("inner", &self.inner)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsTransport {
    /// TLS over `inner` with `config`, expecting the server to be `server_name` (a DNS name
    /// or an IP address its certificate names).
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] if `server_name` is neither.
    pub fn new(
        inner: Arc<dyn Transport>,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<Self> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("server name {server_name:?}: {e}"),
            )
        })?;
        Ok(Self {
            inner,
            connector: TlsConnector::from(config),
            name,
        })
    }
}

impl Transport for TlsTransport {
    fn connect(&self) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = self.inner.connect().await?;
            let tls = self.connector.connect(self.name.clone(), stream).await?;
            let stream: BoxStream = Box::new(tls);
            Ok(stream)
        })
    }

    fn describe(&self) -> String {
        format!("{} (TLS, {:?})", self.inner.describe(), self.name)
    }
}

/// The server's side of a connection's TLS handshake.
pub(crate) async fn accept(config: Arc<ServerConfig>, stream: BoxStream) -> io::Result<BoxStream> {
    let tls = TlsAcceptor::from(config).accept(stream).await?;
    let stream: BoxStream = Box::new(tls);
    Ok(stream)
}
