//! The roots mailconnect trusts for TLS: the system's, plus the operator's
//! `MAILCONNECT_EXTRA_CA_FILE` for private mail and identity servers. The
//! same roots serve the provider HTTP client and the mail logins of
//! [`crate::verify`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_rustls::rustls;

/// Extra trusted roots, read and checked once at start-up.
#[derive(Clone, Default)]
pub struct ExtraRoots(Arc<Vec<CertificateDer<'static>>>);

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtraRoots({} certificates)", self.0.len())
    }
}

impl ExtraRoots {
    /// Reads a PEM file of CA certificates; each must be usable as a root.
    pub fn load(path: &Path) -> Result<ExtraRoots, String> {
        let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read: {e}"))?;
        let mut certs = Vec::new();
        for cert in iter {
            certs.push(cert.map_err(|e| format!("not a PEM certificate file: {e}"))?);
        }
        if certs.is_empty() {
            return Err("contains no PEM certificate".into());
        }
        let mut store = rustls::RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| format!("certificate {} is not a usable root: {e}", i + 1))?;
        }
        Ok(ExtraRoots(Arc::new(certs)))
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.0
    }

    /// A rustls client configuration trusting the system roots and these.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut store = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            tracing::warn!(
                errors = native.errors.len(),
                "some system root certificates could not be loaded"
            );
        }
        let (_, ignored) = store.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "unparsable system root certificates skipped");
        }
        for cert in self.certs() {
            // Checked in `load`.
            let _ = store.add(cert.clone());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        assert!(ExtraRoots::load(&path).is_err());
        assert!(ExtraRoots::load(&dir.path().join("missing.pem"))
            .unwrap_err()
            .starts_with("cannot read"));
    }
}
