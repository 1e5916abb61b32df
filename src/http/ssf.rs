//! Shared Signals on the HTTP face: the transmitter's metadata (`GET /.well-known/ssf-configuration`, SSF 1.0
//! §7.1) and RFC 8936 poll delivery (`POST /ssf/poll/{receiver}`, JSON, `Authorization: Bearer` the receiver's
//! token): the body acknowledges SETs (`ack`), and the answer holds the next ones (`sets`, `moreAvailable`);
//! and, as a receiver, `POST /ssf/events` (RFC 8935) for SETs pushed by upstream transmitters.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::oauth::error_response;
use crate::broker::Broker;
use crate::clock::now;
use crate::error::Error;

/// The Shared Signals endpoints.
pub(super) fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/.well-known/ssf-configuration", get(metadata))
        .route("/ssf/poll/{receiver}", post(poll))
        .route("/ssf/events", post(receive))
        .with_state(broker)
}

/// RFC 8935 §2: a SET pushed by an upstream transmitter. 202 once acted on (or acknowledged); 400 with the
/// RFC 8935 §2.4 error (`invalid_request`, `invalid_key`, `invalid_issuer`, `invalid_audience`) when it does
/// not verify — nothing changed; 503 when the store is down (the transmitter retries).
async fn receive(State(broker): State<Arc<Broker>>, headers: HeaderMap, body: Bytes) -> Response {
    let is_set = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| {
        t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/secevent+jwt"))
    });
    let refusal = |err: &str, description: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "err": err, "description": description })))
            .into_response()
    };
    if !is_set {
        return refusal("invalid_request", "the body must be application/secevent+jwt");
    }
    let Ok(set) = std::str::from_utf8(&body) else { return refusal("invalid_request", "the SET is not text") };
    match broker.current().ssf_receive(set.trim(), now()).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(Ok(refused)) => refusal(refused.err, &refused.description),
        Err(Err(e)) => error_response(e),
    }
}

async fn metadata(State(broker): State<Arc<Broker>>) -> Response {
    axum::Json(crate::ssf::metadata(broker.broker_issuer())).into_response()
}

async fn poll(
    State(broker): State<Arc<Broker>>,
    Path(receiver): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let request: crate::ssf::PollRequest = if body.is_empty() {
            crate::ssf::PollRequest::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|_| Error::invalid_request("the poll request is not RFC 8936 JSON"))?
        };
        broker.current().ssf_poll(&receiver, bearer, request, now()).await
    }
    .await;
    match result {
        Ok(answer) => (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], axum::Json(answer)).into_response(),
        Err(e) => error_response(e),
    }
}
