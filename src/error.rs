//! The one error type of the broker's domain, named by the OAuth error codes callers act on.
//!
//! Every refusal carries an [`ErrorCode`] (what the caller may do about it) and a short description that is
//! safe to return: it never echoes a token, a secret or a key. The mapping to gRPC status codes lives in
//! exactly one place, [`crate::grpc`], so the HTTP face added later maps the same codes the same way.

use std::fmt;

/// OAuth error codes (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2) plus the broker's own operational codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// [RFC 6749 §5.2](https://www.rfc-editor.org/rfc/rfc6749#section-5.2): a parameter is missing, repeated,
    /// malformed or unsupported.
    InvalidRequest,
    /// [RFC 6749 §5.2](https://www.rfc-editor.org/rfc/rfc6749#section-5.2): the calling client could not be
    /// authenticated.
    InvalidClient,
    /// [RFC 6749 §5.2](https://www.rfc-editor.org/rfc/rfc6749#section-5.2) /
    /// [RFC 8693 §2.2.2](https://www.rfc-editor.org/rfc/rfc8693#section-2.2.2): the subject or actor token is
    /// invalid, expired, revoked, untrusted or may not be used this way.
    InvalidGrant,
    /// [RFC 6749 §5.2](https://www.rfc-editor.org/rfc/rfc6749#section-5.2): the client is not allowed this RPC.
    UnauthorizedClient,
    /// [RFC 6749 §5.2](https://www.rfc-editor.org/rfc/rfc6749#section-5.2): `grant_type` is not token exchange.
    UnsupportedGrantType,
    /// [RFC 6749 §5.2](https://www.rfc-editor.org/rfc/rfc6749#section-5.2): a requested scope is unknown, not
    /// held by the subject, or refused by policy.
    InvalidScope,
    /// [RFC 8707 §2](https://www.rfc-editor.org/rfc/rfc8707#section-2) /
    /// [RFC 8693 §2.2.2](https://www.rfc-editor.org/rfc/rfc8693#section-2.2.2): the audience is not one the
    /// broker issues for, or not one this subject token may be exchanged for.
    InvalidTarget,
    /// The caller exceeded its rate limit.
    RateLimited,
    /// The revocation store cannot be reached: the broker fails closed.
    Unavailable,
    /// A fault of the broker itself (a signing failure, a broken invariant). Never caused by input alone.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire (`error` in RFC 6749, `reason` in `google.rpc.ErrorInfo`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "temporarily_unavailable",
            ErrorCode::Internal => "server_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused or failed operation: the code plus a description that is safe to show the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct Error {
    pub code: ErrorCode,
    pub description: String,
}

impl Error {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Error { code, description: description.into() }
    }
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidRequest, description)
    }
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidGrant, description)
    }
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidScope, description)
    }
    pub fn invalid_target(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidTarget, description)
    }
    pub fn internal(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, description)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
