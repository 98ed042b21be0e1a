//! HTTPS for `reflex-cloud serve`: the server certificate chain and key of
//! `[ingest] tls_cert_file` / `tls_key_file`, as a rustls server configuration (ring
//! provider, TLS 1.2 and 1.3, ALPN `http/1.1`, no client certificates: the boards
//! authenticate with their bearer tokens).
//!
//! Contract:
//! - the certificate file holds one or more PEM certificates, the server's first, then its
//!   intermediates (what a CA hands out as `fullchain.pem`);
//! - the key file holds one PEM private key (PKCS#8, PKCS#1 or SEC1) and is read with
//!   [`reflex_service::secret::read_secret_file`]: a key file others may read, or the group
//!   may write, is refused (it is the cloud's identity: whoever has it can pose as the
//!   cloud to every board);
//! - the key must match the certificate (rustls checks it): a mismatch is refused at
//!   `validate` and at start, never at the first handshake.
//!
//! Both files are read once, at start (and by `validate`); a renewed certificate takes a
//! restart (`systemctl restart reflex-cloud`; the boards retry their uploads).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reflex_service::secret::{read_secret_file, SecretFileError};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Why the certificate or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("certificate file {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file is missing, open to others, or not readable.
    #[error("key file: {0}")]
    KeyFile(#[from] SecretFileError),
    /// The key file holds no usable PEM private key.
    #[error("key file {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (the key does not match the certificate, unsupported key).
    #[error("certificate {cert} with key {key}: {reason}")]
    Pair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// Reads the chain and key and builds the server configuration (module doc).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate {
        path: cert_file.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate in it".into()));
    }
    let key_text = read_secret_file(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| TlsError::Key {
        path: key_file.to_owned(),
        reason: format!("no PEM private key ({e})"),
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| TlsError::Pair {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
                reason: e.to_string(),
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
