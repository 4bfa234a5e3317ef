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
    connect_addr(&TestRelayAddr(relay.addr), alpn).await
}

async fn connect_addr(
    relay: &TestRelayAddr,
    alpn: &[u8],
) -> (quinn::Connection, CertificateDer<'static>) {
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
    let conn = within(endpoint.connect(relay.0, "localhost").unwrap()).await.unwrap();
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

/// A relay with its page listener on 127.0.0.1:0; `dev_tokens`: it holds the development
/// secret (`qrelay serve` decides that from its certificate directory).
async fn page_relay(dev_tokens: bool) -> (qrelay::server::ServerHandle, String) {
    let pki = qrelay::certs::DevPki::generate().unwrap();
    let (chain, key) = pki.server_identity().unwrap();
    let mut identity = qrelay::server::Identity::new(chain, key, PAGE_SECRET);
    if dev_tokens {
        identity = identity.with_dev_tokens();
    }
    let config = ServerConfig { web: Some("127.0.0.1:0".parse().unwrap()), ..test_config() };
    let server = qrelay::server::Server::bind(config, identity).unwrap();
    let handle = server.handle();
    tokio::spawn(server.run());
    let base = format!("http://{}", handle.web_addr().expect("a page listener"));
    (handle, base)
}

const PAGE_SECRET: &[u8] = b"page test secret, not for production use";

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    // reqwest is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = within(client.get(url).send()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, within(response.text()).await.unwrap())
}

#[tokio::test]
async fn the_page_gets_the_relays_port_and_the_hash_of_the_certificate_browsers_see() {
    let (handle, base) = page_relay(true).await;
    let (status, headers, body) = get(&format!("{base}/config.json")).await;
    assert_eq!(status, 200, "{body}");
    // Public: a page on another origin may read it.
    assert_eq!(headers["access-control-allow-origin"], "*");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    let port = handle.local_addr().unwrap().port();
    assert_eq!(config["webtransport"]["port"], port);
    assert_eq!(config["webtransport"]["path"], "/qrelay");
    assert_eq!(config["dev_tokens"], true);
    // The hash is that of the certificate an `h3` handshake gets.
    let relay = TestRelayAddr(handle.local_addr().unwrap());
    let (browser, cert) = connect_addr(&relay, qrelay::webtransport::ALPN_H3).await;
    let digest = ring_sha256(cert.as_ref());
    assert_eq!(config["webtransport"]["certificate_hashes"], serde_json::json!([digest]));
    browser.close(0u32.into(), b"");
    handle.shutdown().await;
}

#[tokio::test]
async fn development_tokens_exist_only_with_the_development_secret() {
    let (handle, base) = page_relay(true).await;
    let (status, headers, body) = get(&format!("{base}/dev/token?user=alice&room=lobby")).await;
    assert_eq!(status, 200, "{body}");
    // Never readable by a page of another origin: it would mint tokens through any visitor.
    assert!(!headers.contains_key("access-control-allow-origin"), "{headers:?}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let claims = qrelay::auth::TokenKey::new(PAGE_SECRET)
        .check(token["token"].as_str().unwrap())
        .expect("a token the relay accepts");
    assert_eq!(claims.sub, "alice");
    assert!(claims.grants_room("lobby") && !claims.grants_room("elsewhere"));
    // A page of another site that resolves to 127.0.0.1 (DNS rebinding) gets none.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let rebound = client
        .get(format!("{base}/dev/token?user=alice&room=lobby"))
        .header("host", "evil.example:8080");
    let rebound = within(rebound.send()).await.unwrap();
    assert_eq!(rebound.status().as_u16(), 401);
    let (status, _, body) = get(&format!("{base}/dev/token?user=bad%20id&room=lobby")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("INVALID_USER_ID"), "{body}");
    handle.shutdown().await;

    let (handle, base) = page_relay(false).await;
    let (status, _, _) = get(&format!("{base}/dev/token?user=alice&room=lobby")).await;
    assert_eq!(status, 404);
    let (_, _, body) = get(&format!("{base}/config.json")).await;
    assert!(body.contains("\"dev_tokens\":false"), "{body}");
    handle.shutdown().await;
}

#[tokio::test]
async fn the_page_is_served_with_a_policy_that_refuses_inline_scripts() {
    let (handle, base) = page_relay(true).await;
    let (status, headers, body) = get(&format!("{base}/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("<script type=\"module\" src=\"/app.js\">"), "{body}");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    for path in ["/app.js", "/qrelay.js", "/codec.js", "/style.css", "/qrelay.d.ts"] {
        assert_eq!(get(&format!("{base}{path}")).await.0, 200, "{path}");
    }
    assert_eq!(get(&format!("{base}/nothing-here")).await.0, 404);
    handle.shutdown().await;
}

/// A relay address for [`connect_addr`].
struct TestRelayAddr(std::net::SocketAddr);

fn ring_sha256(der: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}
