//! The WebTransport side of the relay's UDP port, from a raw quinn client offering ALPN `h3`:
//! browsers get the short-lived certificate, natives keep theirs; a connection that does not
//! become a session is closed and counted, and native clients are served meanwhile. (A real
//! browser session is tested in tests/browser/, with headless Chromium.)

mod common;

use std::sync::Arc;

use common::*;
use qrelay::protocol::close;
use qrelay::server::ServerConfig;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any certificate: these tests look at which certificate the relay shows, and a
/// browser accepts the short-lived one by its hash, which this client does not know.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A QUIC connection to the relay offering only `alpn`, and the certificate it was shown.
async fn connect(relay: &TestRelay, alpn: &[u8]) -> (quinn::Connection, CertificateDer<'static>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = within(endpoint.connect(relay.addr, "localhost").unwrap()).await.unwrap();
    let chain = conn
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .expect("a certificate chain");
    (conn, chain[0].clone())
}

#[tokio::test]
async fn browsers_get_the_short_lived_certificate_and_natives_the_relays() {
    let relay = TestRelay::start(test_config()).await;
    let (native, native_cert) = connect(&relay, qrelay::protocol::ALPN).await;
    let (browser, browser_cert) = connect(&relay, qrelay::webtransport::ALPN_H3).await;
    assert_ne!(native_cert, browser_cert);
    assert_ne!(browser_cert, relay.ca);
    native.close(0u32.into(), b"");
    browser.close(0u32.into(), b"");
}

#[tokio::test]
async fn a_browser_connection_that_sends_no_http3_settings_is_closed_in_time() {
    let config = ServerConfig { control_stream_timeout_ms: 300, ..test_config() };
    let relay = TestRelay::start(config).await;
    let (browser, _) = connect(&relay, qrelay::webtransport::ALPN_H3).await;
    match within(browser.closed()).await {
        quinn::ConnectionError::ApplicationClosed(reason) => {
            assert_eq!(reason.error_code, quinn::VarInt::from_u32(close::PROTOCOL_VIOLATION));
        }
        other => panic!("closed otherwise: {other}"),
    }
    assert_eq!(relay.handle.stats().webtransport_refused, 1);
    assert_eq!(relay.handle.stats().webtransport_sessions, 0);
}

#[tokio::test]
async fn a_malformed_http3_handshake_is_closed_and_native_clients_are_served_meanwhile() {
    let relay = TestRelay::start(test_config()).await;
    let (_alice, _lane) = relay.raw_member("alice", "lobby").await;
    let (browser, _) = connect(&relay, qrelay::webtransport::ALPN_H3).await;
    // An HTTP/3 unidirectional stream whose type is not the control stream's (0x00), then
    // garbage.
    let mut send = within(browser.open_uni()).await.unwrap();
    within(send.write_all(&[0x21, 0xff, 0xff, 0xff])).await.unwrap();
    let closed = within(browser.closed()).await;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(reason)
            if reason.error_code == quinn::VarInt::from_u32(close::PROTOCOL_VIOLATION)),
        "{closed}"
    );
    assert_eq!(relay.handle.stats().webtransport_refused, 1);
    assert_room_still_served(&relay, "lobby").await;
}
