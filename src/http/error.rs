//! The server API's errors: every refusal is `{"code": N, "error": "NAME", "detail": "..."}`
//! with the documented code (the same codes as the QUIC protocol, plus the 6xxx of the API)
//! and the HTTP status that fits it.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::protocol::ErrorCode;

/// A refused API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The documented code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub detail: String,
}

/// The JSON body of a refusal.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    code: u32,
    error: &'static str,
    detail: &'a str,
}

impl ApiError {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into() }
    }

    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::UNAUTHORIZED => StatusCode::UNAUTHORIZED,
            ErrorCode::ROOM_NOT_FOUND
            | ErrorCode::USER_NOT_FOUND
            | ErrorCode::NOT_FOUND
            | ErrorCode::UNKNOWN_TARGET_USER => StatusCode::NOT_FOUND,
            ErrorCode::LOGIN_RATE_LIMITED
            | ErrorCode::USER_RATE_LIMITED
            | ErrorCode::ROOM_RATE_LIMITED => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::SLOW_RECEIVER => StatusCode::CONFLICT,
            ErrorCode::METHOD_NOT_ALLOWED => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
            // Try again: the node cannot reach the cluster now.
            ErrorCode::CLUSTER_UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ROOM_CLOSED => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<(ErrorCode, String)> for ApiError {
    fn from((code, detail): (ErrorCode, String)) -> Self {
        Self { code, detail }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::new(ErrorCode::BAD_REQUEST, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(ErrorCode::BAD_REQUEST, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(ErrorCode::BAD_REQUEST, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code.0, error: self.code.name(), detail: &self.detail };
        let mut response = (self.status(), Json(body)).into_response();
        // For the refusal counts (see `count_request`).
        response.extensions_mut().insert(self.code);
        response
    }
}
