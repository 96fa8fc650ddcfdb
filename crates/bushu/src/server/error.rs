//! Errors as OpenAI returns them: a status and `{"error": {"message", "type", "param", "code"}}`.

use crate::sampling::InvalidParam;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn param(mut self, p: &'static str) -> ApiError {
        self.param = Some(p);
        self
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl ApiError {
    /// `{"error": {...}}`, the message's control characters escaped (it may quote a model file).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": crate::display::escape_controls(&self.message),
            "type": self.kind(),
            "param": self.param,
            "code": self.status.as_u16(),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        (self.status, Json(body)).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    /// A 400; an invalid parameter's name (the library's, which is the JSON field's) becomes `param`.
    fn from(e: anyhow::Error) -> ApiError {
        let param = e.downcast_ref::<InvalidParam>().map(|p| p.name);
        ApiError {
            param,
            ..ApiError::bad_request(format!("{e:#}"))
        }
    }
}
