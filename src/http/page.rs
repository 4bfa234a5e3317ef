//! The demo page's listener (`web`, default `127.0.0.1:8080`): the live-comment page and the
//! JavaScript client of `web/` (built into the binary, so the relay serves them from
//! anywhere), `/config.json` (where and how a page reaches the relay over WebTransport) and,
//! only with the development token secret on a loopback address, `/dev/token`. The page then
//! talks to the relay over WebTransport, not through this listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info};

use super::error::ApiError;
use crate::protocol::{ErrorCode, check_room_id};
use crate::server::Shared;
use crate::server::room::check_member_id;

/// Validity of a development token: an afternoon of trying the page; it reconnects with a new
/// one after that.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Where the page's scripts may connect: this listener (`/config.json`, `/dev/token`) and
/// any `https:` origin, which covers the relay's WebTransport URL on any host and port. Inline
/// scripts and styles are refused, so received text can never run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' https:; img-src 'self' data:; object-src 'none'; base-uri 'none'";

/// The files of `web/` the listener serves: path, content type, contents.
const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../../web/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../../web/app.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../../web/style.css")),
    ("/qrelay.js", "text/javascript; charset=utf-8", include_str!("../../web/qrelay.js")),
    ("/codec.js", "text/javascript; charset=utf-8", include_str!("../../web/codec.js")),
    (
        "/qrelay.d.ts",
        "application/typescript; charset=utf-8",
        include_str!("../../web/qrelay.d.ts"),
    ),
];

/// What every handler of the page listener gets.
#[derive(Debug, Clone)]
struct PageState {
    shared: Arc<Shared>,
    /// The relay's UDP port: the page's WebTransport URL is `https://PAGE_HOST:PORT/qrelay`.
    quic_port: u16,
}

/// Serves the page on `listener` until the relay shuts down. `quic` is the relay's UDP address.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    quic: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    info!(?addr, dev_tokens = shared.dev_tokens, "page listening (the live-comment demo)");
    let state = PageState { shared, quic_port: quic.port() };
    let shutdown = async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    if let Err(e) = axum::serve(listener, routes(state)).with_graceful_shutdown(shutdown).await {
        debug!(error = %e, "page listener ended");
    }
}

/// The page listener's router: the files, `/config.json`, and `/dev/token` only when the relay
/// mints development tokens (the route does not exist otherwise: 404).
fn routes(state: PageState) -> Router {
    let mut router = Router::new().route("/config.json", get(config));
    for (path, content_type, body) in FILES {
        router = router.route(path, get(move || async move { file(content_type, body) }));
    }
    // Browsers ask for it unprompted: no icon, and no 404 in the page's console.
    router = router.route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }));
    if state.shared.dev_tokens {
        router = router.route("/dev/token", get(dev_token));
    }
    router
        .fallback(|| async { ApiError::new(ErrorCode::NOT_FOUND, "no such page") })
        .with_state(state)
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response
}

/// `/config.json`: how the page reaches the relay.
#[derive(Debug, Serialize)]
struct PageConfig {
    /// The relay's WebTransport endpoint on the page's host.
    webtransport: WebTransportConfig,
    /// Whether `/dev/token` exists.
    dev_tokens: bool,
}

/// Where the WebTransport endpoint is and which certificate it shows.
#[derive(Debug, Serialize)]
struct WebTransportConfig {
    /// UDP port.
    port: u16,
    /// URL path.
    path: &'static str,
    /// SHA-256 (hex) of the short-lived development certificate, for
    /// `serverCertificateHashes`; empty when browsers get the relay's own certificate.
    certificate_hashes: Vec<String>,
}

/// `/config.json` may be read by a page of any origin (`Access-Control-Allow-Origin: *`): it is
/// public (a port and a certificate hash), and a page served elsewhere needs it. `/dev/token`
/// never gets that header, or any website could mint development tokens through a visitor.
async fn config(State(state): State<PageState>) -> Response {
    let mut response = config_body(&state).into_response();
    response
        .headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

fn config_body(state: &PageState) -> Result<Json<PageConfig>, ApiError> {
    let Some(certs) = &state.shared.certs else {
        return Err(ApiError::new(
            ErrorCode::NOT_FOUND,
            "WebTransport is off on this relay (webtransport = false)",
        ));
    };
    let certificate_hashes =
        certs.dev_cert().map(|cert| vec![hex::encode(cert.sha256())]).unwrap_or_default();
    Ok(Json(PageConfig {
        webtransport: WebTransportConfig {
            port: state.quic_port,
            path: crate::webtransport::PATH,
            certificate_hashes,
        },
        dev_tokens: state.shared.dev_tokens,
    }))
}

/// `/dev/token?user=ID&room=ROOM`.
#[derive(Debug, Deserialize)]
struct DevTokenQuery {
    user: String,
    room: String,
}

/// A development token for one user and room.
#[derive(Debug, Serialize)]
struct DevToken {
    token: String,
    expires_in_secs: u64,
}

async fn dev_token(
    State(state): State<PageState>,
    headers: HeaderMap,
    query: Result<Query<DevTokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DevToken>, ApiError> {
    // A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) must not get
    // tokens: only requests that name a loopback host are answered.
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("");
    if !loopback_host(host) {
        return Err(ApiError::new(
            ErrorCode::UNAUTHORIZED,
            format!("development tokens are for pages on localhost or 127.0.0.1, not {host:?}"),
        ));
    }
    let Query(query) = query
        .map_err(|_| ApiError::new(ErrorCode::BAD_REQUEST, "use /dev/token?user=ID&room=ROOM"))?;
    check_member_id(&query.user).map_err(|(code, detail)| ApiError::new(code, detail))?;
    check_room_id(&query.room)
        .map_err(|code| ApiError::new(code, format!("room ID {:?} is not valid", query.room)))?;
    let token = state
        .shared
        .tokens
        .mint(&query.user, Some(vec![query.room]), true, DEV_TOKEN_TTL)
        .map_err(|e| ApiError::new(ErrorCode::INTERNAL, format!("cannot sign a token: {e}")))?;
    Ok(Json(DevToken { token, expires_in_secs: DEV_TOKEN_TTL.as_secs() }))
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`,
/// with any port).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_host_names_get_development_tokens() {
        for host in ["localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080", "127.1.2.3"] {
            assert!(loopback_host(host), "{host}");
        }
        for host in ["", "evil.example:8080", "localhost.evil.example", "10.0.0.1:8080", "[::2]"] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
