//! The one error type of the broker's domain, named by the OAuth error codes callers act on.
//!
//! Every refusal carries an [`ErrorCode`] (what the caller may do about it) and a short description that is
//! safe to return: it never echoes a token, a secret or a key. What each code becomes on each face — a gRPC
//! status code, an HTTP status — is said by the code itself ([`ErrorCode::grpc_code`],
//! [`ErrorCode::http_status`]), in one table, so every face maps the same codes the same way. The numbers
//! are the wire values, so this module needs neither face's crates.

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
    /// [RFC 9449 §5](https://www.rfc-editor.org/rfc/rfc9449#section-5) /
    /// [§12.2](https://www.rfc-editor.org/rfc/rfc9449#section-12.2): the DPoP proof is missing where the token
    /// it goes with is bound to a key, malformed, stale, replayed, for another request, or signed by another
    /// key than the token is bound to.
    InvalidDpopProof,
    /// [RFC 9396 §5](https://www.rfc-editor.org/rfc/rfc9396#section-5): `authorization_details` is not a JSON
    /// array of typed objects, names a type the audience does not accept, breaks that type's schema, is too
    /// large, or widens the subject token's details.
    InvalidAuthorizationDetails,
    /// [RFC 8628 §3.5](https://www.rfc-editor.org/rfc/rfc8628#section-3.5) (as OpenID CIBA §11 uses it): the
    /// grant needs a human's approval, which is pending; the answer names the approval and where to poll it
    /// ([`Error::approval`]). Retry the same request once it is approved.
    AuthorizationPending,
    /// [RFC 8628 §3.5](https://www.rfc-editor.org/rfc/rfc8628#section-3.5): the approver denied the grant; the
    /// same request stays refused.
    AccessDenied,
    /// The approval named does not exist (or has expired and been forgotten).
    NotFound,
    /// The caller exceeded its rate limit.
    RateLimited,
    /// The broker is at its concurrency limit and shed the call: retry shortly.
    Overloaded,
    /// The revocation store cannot be reached: the broker fails closed.
    Unavailable,
    /// A fault of the broker itself (a signing failure, a broken invariant). Never caused by input alone.
    Internal,
    /// A revocation watch resumed from a cursor the log no longer covers (or never handed out): the client
    /// must drop what it cached and watch from now.
    CursorExpired,
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
            ErrorCode::InvalidDpopProof => "invalid_dpop_proof",
            ErrorCode::InvalidAuthorizationDetails => "invalid_authorization_details",
            ErrorCode::AuthorizationPending => "authorization_pending",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "temporarily_unavailable",
            ErrorCode::Unavailable => "temporarily_unavailable",
            ErrorCode::Internal => "server_error",
            ErrorCode::CursorExpired => "cursor_expired",
        }
    }
}

/// gRPC status codes (the wire values of `google.rpc.Code`) used by [`ErrorCode::grpc_code`].
mod grpc_code {
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const FAILED_PRECONDITION: i32 = 9;
    pub(super) const OUT_OF_RANGE: i32 = 11;
    pub(super) const INTERNAL: i32 = 13;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

impl ErrorCode {
    /// Every code, for tables and tests.
    #[cfg(test)]
    const ALL: [ErrorCode; 17] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidClient,
        ErrorCode::InvalidGrant,
        ErrorCode::UnauthorizedClient,
        ErrorCode::UnsupportedGrantType,
        ErrorCode::InvalidScope,
        ErrorCode::InvalidTarget,
        ErrorCode::InvalidDpopProof,
        ErrorCode::InvalidAuthorizationDetails,
        ErrorCode::AuthorizationPending,
        ErrorCode::AccessDenied,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::CursorExpired,
    ];

    /// The gRPC status code a caller sees (the design's API contract).
    pub const fn grpc_code(self) -> i32 {
        use grpc_code::*;
        match self {
            // A malformed or widening `authorization_details` is a bad argument, like a malformed request.
            ErrorCode::InvalidRequest | ErrorCode::UnsupportedGrantType | ErrorCode::InvalidAuthorizationDetails => {
                INVALID_ARGUMENT
            }
            // A failed proof of possession is a credential that does not hold, like a bad subject token.
            ErrorCode::InvalidClient | ErrorCode::InvalidGrant | ErrorCode::InvalidDpopProof => UNAUTHENTICATED,
            ErrorCode::UnauthorizedClient
            | ErrorCode::InvalidScope
            | ErrorCode::InvalidTarget
            | ErrorCode::AccessDenied => PERMISSION_DENIED,
            // Not refused, not yet granted: the system is not in the state the grant needs (a human's yes).
            ErrorCode::AuthorizationPending => FAILED_PRECONDITION,
            ErrorCode::NotFound => NOT_FOUND,
            ErrorCode::RateLimited | ErrorCode::Overloaded => RESOURCE_EXHAUSTED,
            ErrorCode::Unavailable => UNAVAILABLE,
            ErrorCode::Internal => INTERNAL,
            ErrorCode::CursorExpired => OUT_OF_RANGE,
        }
    }

    /// The HTTP status of the error response on the plain-OAuth face:
    /// [RFC 6749 §5.2](https://www.rfc-editor.org/rfc/rfc6749#section-5.2) answers 400 (RFC 9449 §5 too, for a
    /// bad DPoP proof at the token endpoint), and 401 for a client that failed to authenticate; a rate limit is 429 (RFC 6585), a store outage 503, a fault 500.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidClient => 401,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded => 503,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::NotFound => 404,
            // RFC 9110 §15.5.11: what the cursor pointed at is gone for good.
            ErrorCode::CursorExpired => 410,
            ErrorCode::AuthorizationPending
            | ErrorCode::AccessDenied
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidGrant
            | ErrorCode::UnauthorizedClient
            | ErrorCode::UnsupportedGrantType
            | ErrorCode::InvalidScope
            | ErrorCode::InvalidTarget
            | ErrorCode::InvalidDpopProof
            | ErrorCode::InvalidAuthorizationDetails => 400,
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
    /// What the caller may do about it; it also names the gRPC and HTTP status.
    pub code: ErrorCode,
    pub(crate) description: String,
    /// When retrying can succeed, if the broker knows (a rate limit): each face hands it on (HTTP
    /// `Retry-After`, gRPC `RetryInfo`), so well-behaved callers back off exactly as long as needed.
    pub(crate) retry_after: Option<std::time::Duration>,
    /// `authorization_pending`: the approval that waits, and where to poll it; each face hands it on.
    pub(crate) approval: Option<Box<Pending>>,
}

/// A pending approval as an `authorization_pending` answer names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The approval's id: what an approver approves (`tessera approve ID`).
    pub approval_id: String,
    /// Where its state can be read (`GET`), under the broker's HTTP face.
    pub approval_uri: String,
    /// Seconds a client should wait between polls (RFC 8628 §3.5 `interval`).
    pub interval: u64,
}

impl Error {
    pub(crate) fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Error { code, description: description.into(), retry_after: None, approval: None }
    }
    /// `rate_limited`, with how long until a retry can be admitted.
    pub(crate) fn rate_limited(description: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Error { retry_after: Some(retry_after), ..Error::new(ErrorCode::RateLimited, description) }
    }
    /// How long until a retry can succeed, when the broker knows (a rate limit).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }
    /// `authorization_pending`, naming the approval that waits.
    pub(crate) fn pending(description: impl Into<String>, pending: Pending) -> Self {
        Error { approval: Some(Box::new(pending)), ..Error::new(ErrorCode::AuthorizationPending, description) }
    }
    /// The pending approval an `authorization_pending` answer names.
    pub fn approval(&self) -> Option<&Pending> {
        self.approval.as_deref()
    }
}

/// A retry delay in whole seconds (HTTP `Retry-After`, gRPC `retry-after` metadata), rounded up and at least
/// 1: a caller that waits that long is never early.
pub(crate) fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    u64::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1)
}

impl Error {
    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidRequest, description)
    }
    pub(crate) fn invalid_grant(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidGrant, description)
    }
    pub(crate) fn invalid_scope(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidScope, description)
    }
    pub(crate) fn invalid_target(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidTarget, description)
    }
    pub(crate) fn internal(description: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, description)
    }
}

/// What every broker operation returns: its value, or the [`Error`] to hand the caller.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The one table: every code, its wire name, its gRPC status and its HTTP status.
    #[test]
    fn every_code_maps_on_every_face() {
        use grpc_code::*;
        let table = [
            (ErrorCode::InvalidRequest, "invalid_request", INVALID_ARGUMENT, 400),
            (ErrorCode::InvalidClient, "invalid_client", UNAUTHENTICATED, 401),
            (ErrorCode::InvalidGrant, "invalid_grant", UNAUTHENTICATED, 400),
            (ErrorCode::UnauthorizedClient, "unauthorized_client", PERMISSION_DENIED, 400),
            (ErrorCode::UnsupportedGrantType, "unsupported_grant_type", INVALID_ARGUMENT, 400),
            (ErrorCode::InvalidScope, "invalid_scope", PERMISSION_DENIED, 400),
            (ErrorCode::InvalidTarget, "invalid_target", PERMISSION_DENIED, 400),
            (ErrorCode::InvalidDpopProof, "invalid_dpop_proof", UNAUTHENTICATED, 400),
            (ErrorCode::InvalidAuthorizationDetails, "invalid_authorization_details", INVALID_ARGUMENT, 400),
            (ErrorCode::AuthorizationPending, "authorization_pending", FAILED_PRECONDITION, 400),
            (ErrorCode::AccessDenied, "access_denied", PERMISSION_DENIED, 400),
            (ErrorCode::NotFound, "not_found", NOT_FOUND, 404),
            (ErrorCode::RateLimited, "rate_limited", RESOURCE_EXHAUSTED, 429),
            (ErrorCode::Overloaded, "temporarily_unavailable", RESOURCE_EXHAUSTED, 503),
            (ErrorCode::Unavailable, "temporarily_unavailable", UNAVAILABLE, 503),
            (ErrorCode::Internal, "server_error", INTERNAL, 500),
            (ErrorCode::CursorExpired, "cursor_expired", OUT_OF_RANGE, 410),
        ];
        assert_eq!(table.len(), ErrorCode::ALL.len());
        for (code, (listed, name, grpc, http)) in ErrorCode::ALL.iter().zip(table) {
            assert_eq!(*code, listed, "the table follows ErrorCode::ALL");
            assert_eq!((code.as_str(), code.grpc_code(), code.http_status()), (name, grpc, http), "{code}");
        }
    }
}
