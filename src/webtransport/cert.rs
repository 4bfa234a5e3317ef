//! The certificate a browser sees on the relay's UDP port.
//!
//! Native clients trust the relay's development CA (`certs/ca.pem`); a browser does not, and
//! must not be told to. In development the relay therefore shows browsers (ALPN `h3`) a
//! self-signed ECDSA P-256 certificate valid for [`DEV_CERT_VALIDITY`], which a page accepts by
//! its SHA-256 (`serverCertificateHashes`, which Chromium takes only for ECDSA certificates
//! valid 14 days or less), and makes a new one [`DEV_CERT_RENEW_BEFORE`] its end; the page
//! reads the current hash from the relay's page listener at each connect. In production the
//! operator's certificate, from a CA browsers trust, is shown to both kinds of client.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ALPN_H3;

/// Validity of the development certificate: Chromium refuses `serverCertificateHashes` for a
/// certificate valid longer than 14 days (15 fails with CERTIFICATE_VERIFY_FAILED); a day
/// under that leaves room for clock skew.
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
/// How long before its end the development certificate is replaced: pages connecting after
/// that get the new hash, and a page still on the old one has days to reconnect.
pub const DEV_CERT_RENEW_BEFORE: Duration = Duration::from_secs(3 * 24 * 3600);
/// The certificate starts this long before it is made, for browsers whose clock is behind.
const DEV_CERT_BACKDATE: Duration = Duration::from_secs(3600);

/// Why a certificate could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Generating the key or certificate failed.
    #[error("cannot generate the WebTransport development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls does not take the key.
    #[error("the certificate's key is not usable: {0}")]
    Key(#[from] rustls::Error),
    /// The validity dates do not fit a certificate.
    #[error("certificate dates out of range")]
    Dates,
}

/// Which certificate browsers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebTransportCert {
    /// A short-lived self-signed certificate, made and renewed by the relay, whose hash pages
    /// pin (development; the relay's certificate comes from its development CA).
    #[default]
    ShortLived,
    /// The relay's own certificate (production: one from a CA browsers trust).
    Server,
}

/// A short-lived self-signed certificate for browsers.
#[derive(Debug)]
pub struct DevCert {
    /// The certificate and its signing key, for rustls.
    certified: Arc<CertifiedKey>,
    /// SHA-256 of the certificate's DER encoding.
    sha256: [u8; 32],
    /// The end of its validity.
    not_after: SystemTime,
}

impl DevCert {
    /// A new ECDSA P-256 certificate for the development names, valid from an hour before
    /// `now` for [`DEV_CERT_VALIDITY`] in all.
    pub fn generate(now: SystemTime) -> Result<DevCert, CertError> {
        let names: Vec<String> =
            crate::certs::DEV_SERVER_NAMES.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, "qrelay WebTransport development");
        let not_before = now.checked_sub(DEV_CERT_BACKDATE).ok_or(CertError::Dates)?;
        let not_after = not_before.checked_add(DEV_CERT_VALIDITY).ok_or(CertError::Dates)?;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        let der: CertificateDer<'static> = cert.der().clone();
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&private)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        let mut sha256 = [0; 32];
        sha256.copy_from_slice(digest.as_ref());
        Ok(DevCert {
            certified: Arc::new(CertifiedKey::new(vec![der], signing)),
            sha256,
            not_after: time::OffsetDateTime::from(not_after).into(),
        })
    }

    /// SHA-256 of the certificate (what a page passes in `serverCertificateHashes`).
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// The certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.certified.cert[0]
    }

    /// The end of its validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether it is due for replacement at `now`.
    pub fn due(&self, now: SystemTime) -> bool {
        self.not_after.checked_sub(DEV_CERT_RENEW_BEFORE).is_none_or(|renew_at| now >= renew_at)
    }
}

/// Chooses the certificate of each TLS handshake by ALPN: `qrelay/1` (native clients) get the
/// relay's certificate, `h3` (browsers) the short-lived one, or the relay's in production.
#[derive(Debug)]
pub struct CertResolver {
    /// The relay's certificate.
    server: Arc<CertifiedKey>,
    /// The browsers' short-lived certificate; `None`: browsers get `server`.
    dev: Option<RwLock<Arc<DevCert>>>,
}

impl CertResolver {
    /// A resolver showing `chain` and `key` to native clients and, per `web`, a short-lived
    /// certificate or the same to browsers.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
        web: WebTransportCert,
    ) -> Result<CertResolver, CertError> {
        let signing = rustls::crypto::ring::sign::any_supported_type(key)?;
        let server = Arc::new(CertifiedKey::new(chain, signing));
        let dev = match web {
            WebTransportCert::ShortLived => {
                let cert = DevCert::generate(SystemTime::now())?;
                // What a page served elsewhere pins (`serverCertificateHashes`), and until when.
                tracing::info!(
                    sha256 = %hex::encode(cert.sha256()),
                    expires = %humantime::format_rfc3339_seconds(cert.not_after()),
                    "made the WebTransport development certificate browsers get"
                );
                Some(RwLock::new(Arc::new(cert)))
            }
            WebTransportCert::Server => None,
        };
        Ok(CertResolver { server, dev })
    }

    /// The short-lived certificate browsers get now; `None` when they get the relay's own.
    pub fn dev_cert(&self) -> Option<Arc<DevCert>> {
        let dev = self.dev.as_ref()?;
        Some(dev.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    /// Replaces the short-lived certificate if it is due at `now`; returns the new one.
    /// Connections made before keep theirs.
    pub fn renew_if_due(&self, now: SystemTime) -> Result<Option<Arc<DevCert>>, CertError> {
        let Some(dev) = &self.dev else { return Ok(None) };
        if !self.dev_cert().is_some_and(|cert| cert.due(now)) {
            return Ok(None);
        }
        let fresh = Arc::new(DevCert::generate(now)?);
        *dev.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh.clone();
        Ok(Some(fresh))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let browser =
            hello.alpn().is_some_and(|mut offered| offered.all(|protocol| protocol == ALPN_H3));
        match (browser, self.dev_cert()) {
            (true, Some(dev)) => Some(dev.certified.clone()),
            _ => Some(self.server.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn the_dev_certificate_is_ecdsa_p256_and_valid_at_most_14_days() {
        let now = SystemTime::now();
        let cert = DevCert::generate(now).unwrap();
        let validity = cert.not_after().duration_since(now - DEV_CERT_BACKDATE).unwrap();
        assert!(validity <= 14 * DAY, "{validity:?}");
        assert!(cert.not_after() > now + 12 * DAY);
        assert_eq!(cert.certified.key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.der().as_ref());
        assert_eq!(cert.sha256(), digest.as_ref());
    }

    #[test]
    fn the_dev_certificate_is_renewed_days_before_it_ends_and_not_sooner() {
        let chain = vec![DevCert::generate(SystemTime::now()).unwrap().der().clone()];
        let key = rcgen::KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let resolver = CertResolver::new(chain, &key, WebTransportCert::ShortLived).unwrap();
        let first = resolver.dev_cert().unwrap();
        let now = SystemTime::now();
        assert!(resolver.renew_if_due(now + 5 * DAY).unwrap().is_none());
        let renew_at = first.not_after() - DEV_CERT_RENEW_BEFORE;
        let renewed = resolver.renew_if_due(renew_at).unwrap().expect("due");
        assert_ne!(renewed.sha256(), first.sha256());
        assert_eq!(resolver.dev_cert().unwrap().sha256(), renewed.sha256());
        assert!(renewed.not_after() > first.not_after());
    }

    #[test]
    fn production_shows_browsers_the_server_certificate() {
        let dev = DevCert::generate(SystemTime::now()).unwrap();
        let key = rcgen::KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let resolver =
            CertResolver::new(vec![dev.der().clone()], &key, WebTransportCert::Server).unwrap();
        assert!(resolver.dev_cert().is_none());
        assert!(resolver.renew_if_due(SystemTime::now() + 365 * DAY).unwrap().is_none());
    }
}
