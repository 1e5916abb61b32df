//! `GET /statuslists/{n}`: list `n` as a signed status list token (draft-ietf-oauth-status-list §5.1,
//! `application/statuslist+jwt`), which an offline verifier fetches from the `uri` of a token's
//! `status.status_list` claim and verifies with the JWKS. Cached for the list's `ttl` (`Cache-Control`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::oauth::error_response;
use crate::broker::Broker;
use crate::clock::now;

/// The status list endpoint.
pub(super) fn router(broker: Arc<Broker>) -> Router {
    Router::new().route("/statuslists/{n}", get(list)).with_state(broker)
}

async fn list(State(broker): State<Arc<Broker>>, Path(n): Path<String>) -> Response {
    // A list number is digits only, so `/statuslists/+1` or `/statuslists/01` is no second name for a list.
    let number = n.parse::<u64>().ok().filter(|v| v.to_string() == n);
    let Some(n) = number else {
        return (StatusCode::NOT_FOUND, "no such status list\n").into_response();
    };
    match broker.current().status_list_token(n, now()).await {
        Ok(Some((jwt, ttl))) => {
            let cache = HeaderValue::from_str(&format!("public, max-age={ttl}"))
                .unwrap_or(HeaderValue::from_static("no-cache"));
            let media = HeaderValue::from_static(crate::status_list::MEDIA_TYPE);
            (StatusCode::OK, [(header::CONTENT_TYPE, media), (header::CACHE_CONTROL, cache)], jwt).into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "status lists are off\n").into_response(),
        Err(e) => error_response(e),
    }
}
