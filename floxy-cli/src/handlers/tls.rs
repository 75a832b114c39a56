//! TLS of HTTP handlers, with rustls (ring provider).

use super::HandlerSetupError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS settings of an HTTP handler (the YAML `tls:` block; a handler's own block replaces
/// the global one, the glue decides which applies).
///
/// Server certificates are checked against the system's trust store (as found by
/// `rustls-native-certs`) plus the certificates of `ca_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpTls {
    /// Extra trusted root certificates (PEM, one or more).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mutual TLS (PEM); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (insecure; logged as a warning when the handler is
    /// built). Handshake signatures are still checked.
    pub skip_verify: bool,
}

/// The ring provider: builds with a C compiler alone (aws-lc-rs needs cmake and a long
/// build). rustls deprecates it for lacking post-quantum key exchange; that is the trade.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(handler: &str, what: &'static str, path: &Path) -> Result<Vec<u8>, HandlerSetupError> {
    std::fs::read(path).map_err(|source| HandlerSetupError::TlsFile {
        handler: handler.to_owned(),
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(handler: &str, what: &'static str, path: &Path, reason: String) -> HandlerSetupError {
    HandlerSetupError::TlsPem {
        handler: handler.to_owned(),
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn certificates(
    handler: &str,
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, HandlerSetupError> {
    let bytes = read(handler, what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(handler, what, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(
            handler,
            what,
            path,
            "no certificate (no PEM block \"CERTIFICATE\")".into(),
        ));
    }
    Ok(certs)
}

/// The rustls client configuration of a handler, every file loaded and checked now.
pub(crate) fn client_config(
    handler: &str,
    tls: &HttpTls,
) -> Result<ClientConfig, HandlerSetupError> {
    let tls_error = |reason: String| HandlerSetupError::Tls {
        handler: handler.to_owned(),
        reason,
    };
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?;
    let builder = if tls.skip_verify {
        tracing::warn!(
            handler,
            "TLS: skip_verify is set: server certificates are not verified (insecure)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(
                provider.signature_verification_algorithms,
            )))
    } else {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(handler, error = %e, "TLS: a system certificate could not be loaded");
        }
        let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &tls.ca_file {
            for cert in certificates(handler, "ca_file", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| pem_error(handler, "ca_file", ca, e.to_string()))?;
            }
        }
        if roots.is_empty() {
            tracing::warn!(
                handler,
                "TLS: no trusted root certificate (system store empty, no ca_file)"
            );
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(tls_error("cert_file is set without key_file".into())),
        (None, Some(_)) => return Err(tls_error("key_file is set without cert_file".into())),
        (Some(cert), Some(key)) => {
            let chain = certificates(handler, "cert_file", cert)?;
            let key_bytes = read(handler, "key_file", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
                pem_error(
                    handler,
                    "key_file",
                    key,
                    format!("no usable private key: {e}"),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls_error(format!("client certificate and key: {e}")))?
        }
    };
    Ok(config)
}

/// Accepts every server certificate; still checks the handshake's signatures.
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The rustls error somewhere in an error's chain (reqwest wraps it in hyper and I/O errors).
pub(crate) fn find_tls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        // `io::Error::source` skips the wrapped error itself: look inside.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                return Some(t);
            }
            if let Some(t) = find_tls_error(inner) {
                return Some(t);
            }
        }
        cur = e.source();
    }
    None
}
