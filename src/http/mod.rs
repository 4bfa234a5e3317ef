//! The HTTP adapter: the application's server API, Prometheus metrics, health checks, and the
//! webhook sender. It calls the same room operations as the QUIC connection task (router and
//! room methods), never reaching into lanes or room state.
//!
//! - this file: the one axum router (`router`), the listener loop (`serve`), health and the
//!   API-key check.
//! - [`api`]: the `/v1` routes (rooms, messages, kicks, tokens), behind the API key.
//! - [`error`]: [`error::ApiError`], the JSON refusal with its documented code.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`webhooks`]: delivers room events to the configured URLs, signed, in order.
//! - `page`: the demo page's own listener (`web`): the live-comment page, the JavaScript
//!   client, the page's WebTransport settings and development tokens. Its router is there.

pub mod api;
pub mod error;
pub mod metrics;
pub(crate) mod page;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::protocol::ErrorCode;
use crate::server::Shared;
use crate::server::stats::RequestKind;
use error::ApiError;

/// What every handler gets.
#[derive(Debug, Clone)]
pub(crate) struct HttpState {
    pub(crate) shared: Arc<Shared>,
    /// `true` once the relay is shutting down (`/readyz` then answers 503).
    pub(crate) stopping: watch::Receiver<bool>,
}

/// Serves HTTP on `listener` until the relay shuts down.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    info!(?addr, "HTTP listening (server API, /metrics, /healthz, /readyz)");
    let state = HttpState { shared, stopping: stop.clone() };
    let mut stop = stop;
    // `/readyz` answers 503 while the relay drains its QUIC connections; the listener closes
    // after that (the process ends when the drain is over).
    let shutdown = async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(crate::server::SHUTDOWN_GRACE * 2).await;
    };
    if let Err(e) = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await {
        debug!(error = %e, "HTTP listener ended");
    }
}

/// The one router: open routes, then `/v1` behind the API key; anything else is a 404 in the
/// API's error format.
fn router(state: HttpState) -> Router {
    let v1 = api::routes().route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// `/healthz`: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `/readyz`: 200 while the relay accepts connections, 503 once it is shutting down, and, in
/// a cluster, while it is not connected to NATS or has not caught up with the cluster.
async fn readyz(State(state): State<HttpState>) -> Response {
    if *state.stopping.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if let Some(Err((_, detail))) = state.shared.cluster.as_ref().map(|c| c.check()) {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{detail}\n")).into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::METHOD_NOT_ALLOWED, "this route does not take that method")
}

/// Counts every request (one relaxed atomic add), and each refusal by kind and code.
async fn count_request(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let counters = &state.shared.counters;
    crate::server::stats::Counters::bump(&counters.api_requests);
    let kind = match request.uri().path().rsplit('/').next() {
        Some("broadcast") => RequestKind::Broadcast,
        Some("barrage") => RequestKind::Barrage,
        Some("command") => RequestKind::Command,
        _ => RequestKind::Api,
    };
    let response = next.run(request).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        counters.refusals.record(kind, *code);
    }
    response
}

/// Lets a request through only with `Authorization: Bearer KEY` naming the relay's API key.
async fn require_key(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(key) = &state.shared.api_key else {
        return Err(ApiError::new(
            ErrorCode::UNAUTHORIZED,
            "this relay has no API key configured: the server API is off",
        ));
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    match given {
        Some(given) if same_secret(given.trim().as_bytes(), key.as_bytes()) => {
            Ok(next.run(request).await)
        }
        Some(_) => Err(ApiError::new(ErrorCode::UNAUTHORIZED, "wrong API key")),
        None => Err(ApiError::new(
            ErrorCode::UNAUTHORIZED,
            "missing API key: send Authorization: Bearer KEY (certs/api.key)",
        )),
    }
}

/// The credentials of an `Authorization: Bearer CREDENTIALS` value (the scheme's name is
/// case-insensitive, RFC 9110 section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer k"), Some("k"));
        assert_eq!(bearer("bearer k"), Some("k"));
        assert_eq!(bearer("BEARER  k"), Some(" k"));
        assert_eq!(bearer("Basic k"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
