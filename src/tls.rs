//! The certificates mailconnect trusts for TLS: the system's roots, plus the
//! operator's `MAILCONNECT_EXTRA_CA_FILE` for private mail and identity
//! servers. One client configuration serves the provider HTTP client and
//! the mail logins of [`crate::verify`].
//!
//! A certificate of the extra file is a root for path validation, and is
//! also trusted as it stands when a server presents exactly it (DESIGN.md):
//! private servers often present a self-signed certificate that
//! `openssl req -x509` marks as a CA, which path validation refuses as a
//! server's (`CaUsedAsEndEntity`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Extra trusted certificates, read and checked once at start-up.
#[derive(Clone, Default)]
pub struct ExtraRoots(Arc<Vec<CertificateDer<'static>>>);

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtraRoots({} certificates)", self.0.len())
    }
}

impl ExtraRoots {
    /// Reads a PEM file of certificates: CAs, or servers' own certificates
    /// (self-signed ones included). Each must parse as a root.
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let roots = self.root_store();
        let config = if self.0.is_empty() {
            builder.with_root_certificates(roots)
        } else {
            // `dangerous` only because the verifier is our own: it trusts
            // nothing that webpki refuses except an extra certificate itself.
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(
                    self.clone(),
                    roots,
                    provider,
                )))
        };
        Arc::new(config.with_no_client_auth())
    }

    /// The system's roots and these.
    fn root_store(&self) -> rustls::RootCertStore {
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
        store
    }
}

/// Trusts a server certificate that is byte for byte one of the extra file
/// as it stands, for the names it carries and while it is valid; sends
/// every other through webpki's path validation, unchanged. Handshake
/// signatures are webpki's to check either way.
#[derive(Debug)]
struct ServerVerifier {
    listed: ExtraRoots,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerVerifier {
    fn new(
        listed: ExtraRoots,
        roots: rustls::RootCertStore,
        provider: Arc<CryptoProvider>,
    ) -> ServerVerifier {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("the store holds the extra certificates, so it is not empty");
        ServerVerifier { listed, webpki }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.listed.certs().iter().any(|c| c == end_entity) {
            check_listed(end_entity, server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// What still holds for a certificate trusted as it stands: it names the
/// server (its subjectAltName, as webpki reads it) and `now` is within its
/// validity period.
fn check_listed(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    rustls::client::verify_server_name(&ParsedCertificate::try_from(cert)?, server_name)?;
    let (not_before, not_after) = validity(cert).ok_or(CertificateError::BadEncoding)?;
    if now < not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before,
        }
        .into());
    }
    if now > not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after,
        }
        .into());
    }
    Ok(())
}

/// A certificate's notBefore and notAfter (RFC 5280 §4.1.2.5), which webpki
/// reads only while it validates a path. `None` when the certificate is not
/// shaped as RFC 5280 says.
fn validity(cert: &[u8]) -> Option<(UnixTime, UnixTime)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let times = parsed.validity();
    Some((
        unix_time(times.not_before.timestamp()),
        unix_time(times.not_after.timestamp()),
    ))
}

/// A date before 1970 counts as 1970, which orders the same against any
/// `now`.
fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Certificates and TLS servers made on the spot, for the tests of the
/// modules that use this one.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::rustls;
    use tokio_rustls::TlsAcceptor;

    use super::ExtraRoots;

    /// A certificate and its key.
    pub struct Made {
        pub cert: rcgen::Certificate,
        pub key: KeyPair,
    }

    impl Made {
        pub fn der(&self) -> CertificateDer<'static> {
            self.cert.der().clone()
        }
    }

    /// Parameters for `names`; a CA when `ca` (without a name constraint),
    /// as `openssl req -x509` marks what it makes.
    pub fn params(names: &[&str], ca: bool) -> CertificateParams {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).unwrap();
        params.is_ca = match ca {
            true => IsCa::Ca(BasicConstraints::Unconstrained),
            false => IsCa::ExplicitNoCa,
        };
        params
    }

    pub fn self_signed(params: CertificateParams) -> Made {
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Made { cert, key }
    }

    pub fn signed_by(params: CertificateParams, issuer: &Made) -> Made {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
        Made { cert, key }
    }

    /// What `MAILCONNECT_EXTRA_CA_FILE` would give for a file of `listed`.
    pub fn extra_file(listed: &[&Made]) -> ExtraRoots {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra-ca.pem");
        let pem: String = listed.iter().map(|m| m.cert.pem()).collect();
        std::fs::write(&path, pem).unwrap();
        ExtraRoots::load(&path).unwrap()
    }

    /// A TLS server on 127.0.0.1 that presents `chain` (signed for with
    /// `key`) and answers what a connection first sends with `answer`,
    /// until the runtime stops.
    pub async fn serve(
        chain: Vec<CertificateDer<'static>>,
        key: &KeyPair,
        answer: &'static [u8],
    ) -> SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    if matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                        let _ = tls.write_all(answer).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{extra_file, params, self_signed, serve, signed_by, Made};
    use super::*;
    use tokio_rustls::TlsConnector;

    /// A TLS handshake with a server presenting `chain` (the first signs),
    /// as `name`, by a client with `roots`' configuration; rustls's error
    /// when it fails.
    async fn handshake(
        roots: &ExtraRoots,
        chain: &[&Made],
        name: &str,
    ) -> Result<(), rustls::Error> {
        let addr = serve(chain.iter().map(|m| m.der()).collect(), &chain[0].key, b"").await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        match TlsConnector::from(roots.client_config())
            .connect(name, tcp)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(*e
                .into_inner()
                .expect("a TLS failure")
                .downcast::<rustls::Error>()
                .expect("a rustls error")),
        }
    }

    fn is_not_valid_for_name(e: &rustls::Error) -> bool {
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        )
    }

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

    #[tokio::test]
    async fn a_listed_self_signed_ca_certificate_is_trusted_for_its_names() {
        let server = self_signed(params(&["localhost", "127.0.0.1"], true));
        let roots = extra_file(&[&server]);
        for name in ["localhost", "127.0.0.1"] {
            handshake(&roots, &[&server], name).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_listed_certificate_is_refused_for_a_name_it_does_not_carry() {
        let server = self_signed(params(&["localhost", "127.0.0.1"], true));
        let roots = extra_file(&[&server]);
        let e = handshake(&roots, &[&server], "mail.example")
            .await
            .unwrap_err();
        assert!(is_not_valid_for_name(&e), "{e:?}");
    }

    #[tokio::test]
    async fn a_self_signed_certificate_not_in_the_file_is_refused() {
        let listed = self_signed(params(&["localhost"], true));
        let roots = extra_file(&[&listed]);
        for ca in [true, false] {
            let other = self_signed(params(&["localhost"], ca));
            let e = handshake(&roots, &[&other], "localhost").await.unwrap_err();
            assert!(
                matches!(e, rustls::Error::InvalidCertificate(_)),
                "CA {ca}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_leaf_signed_by_a_listed_ca_still_goes_through_path_validation() {
        let ca = self_signed(params(&[], true));
        let roots = extra_file(&[&ca]);
        let leaf = signed_by(params(&["localhost"], false), &ca);
        handshake(&roots, &[&leaf, &ca], "localhost").await.unwrap();
        let e = handshake(&roots, &[&leaf, &ca], "mail.example")
            .await
            .unwrap_err();
        assert!(is_not_valid_for_name(&e), "{e:?}");
        // Path validation checks the leaf's dates too.
        let mut expired = params(&["localhost"], false);
        expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = signed_by(expired, &ca);
        let e = handshake(&roots, &[&expired, &ca], "localhost")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_listed_certificate_is_refused_outside_its_validity_period() {
        let mut expired = params(&["localhost"], true);
        expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let mut early = params(&["localhost"], true);
        early.not_before = rcgen::date_time_ymd(2090, 1, 1);
        early.not_after = rcgen::date_time_ymd(2091, 1, 1);
        let (expired, early) = (self_signed(expired), self_signed(early));
        let roots = extra_file(&[&expired, &early]);
        let e = handshake(&roots, &[&expired], "localhost")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{e:?}"
        );
        let e = handshake(&roots, &[&early], "localhost").await.unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn the_validity_period_is_read_from_both_time_encodings() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime after.
        let mut p = params(&["localhost"], true);
        p.not_before = rcgen::date_time_ymd(2001, 2, 3);
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let made = self_signed(p);
        let (not_before, not_after) = validity(made.der().as_ref()).unwrap();
        assert_eq!(not_before.as_secs(), 981_158_400);
        assert_eq!(not_after.as_secs(), 4_102_444_800);
    }
}
