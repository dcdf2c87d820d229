//! TLS for the listeners and the client: certificates and keys read from PEM files into
//! rustls configurations, and the one socket type the servers read and write, plain or
//! encrypted.
//!
//! rustls, with the `ring` provider passed explicitly (no process-wide default to
//! install or to race on). TLS 1.2 and 1.3, rustls's safe defaults. A server with a
//! client CA requires every client to present a certificate it signed (mutual TLS).
//!
//! This module knows nothing of the protocol or the engine: the binary server, the HTTP
//! edge and the client each wrap their TCP streams with it.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// The configurations this module makes, for callers that pass them on.
pub use tokio_rustls::rustls::{ClientConfig, ServerConfig};

/// Why a TLS file or setting cannot be used: the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {message}")]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("the {what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verification: {0}")]
    Verifier(String),
    #[error("`{0}` is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |e: rustls_pki_types::pem::Error| TlsError::File {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(file)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "PEM certificate (-----BEGIN CERTIFICATE-----)",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "TLS key",
            path: path.to_path_buf(),
            expected: "PEM private key (PKCS#8, PKCS#1 or SEC1)",
        },
        e => TlsError::File {
            what: "TLS key",
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })
}

/// Makes ring, the provider the server's TLS uses, the process's default: what an HTTP
/// client (the triggers' webhooks, loadgen's HTTP target) builds its TLS with. Safe to
/// call more than once.
pub fn install_crypto_provider() {
    // An error only says a provider was installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The PEM text of the certificates in `path`, checked to hold at least one that
/// parses: what an https webhook's `ca` trusts.
pub fn pem_certificates(path: &Path) -> Result<Vec<u8>, TlsError> {
    certificates("CA certificate", path)?;
    std::fs::read(path).map_err(|e| TlsError::File {
        what: "CA certificate",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates("CA certificate", path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A server's TLS: its certificate chain and key, and optionally the CA whose
/// certificates clients must present.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates("TLS certificate", cert)?;
    let key = private_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    // HTTP/1.1 only, as the HTTP edge serves; the binary protocol offers none.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS: the CA that signed the server's certificate, and optionally the
/// client's own certificate and key (for a server that requires them).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates("TLS certificate", cert)?, private_key(key)?)?,
    };
    Ok(Arc::new(config))
}

/// What a client checks the server's certificate against: the host of `addr`
/// (`HOST:PORT`), a DNS name or an IP address.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.to_string()))
}

/// A server's accepted connection: plain TCP, or TLS over it.
pub enum Socket {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Socket {
    /// Fixes the kernel's send buffer of the connection at `bytes` (no autotuning).
    pub fn set_send_buffer(&self, bytes: usize) -> std::io::Result<()> {
        let tcp = match self {
            Socket::Plain(tcp) => tcp,
            Socket::Tls(tls) => tls.get_ref().0,
        };
        socket2::SockRef::from(tcp).set_send_buffer_size(bytes)
    }

    /// Accepts `stream` as the listener is set up: plain, or after a TLS handshake.
    pub async fn accept(
        stream: TcpStream,
        tls: Option<&tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Socket> {
        match tls {
            None => Ok(Socket::Plain(stream)),
            Some(acceptor) => Ok(Socket::Tls(Box::new(acceptor.accept(stream).await?))),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Socket::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Socket::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Plain(s) => s.is_write_vectored(),
            Socket::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_of_an_address() {
        assert_eq!(
            format!("{:?}", server_name("localhost:7878").unwrap()),
            format!("{:?}", ServerName::try_from("localhost").unwrap())
        );
        assert!(server_name("127.0.0.1:7878").is_ok());
        assert!(server_name("[::1]:7878").is_ok());
        assert!(matches!(
            server_name("bad name:1"),
            Err(TlsError::ServerName(_))
        ));
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let err = server_config(Path::new("/nonexistent/cert.pem"), Path::new("/k"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read the TLS certificate /nonexistent/cert.pem"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("omnia-tls-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = client_config(&empty, None).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
