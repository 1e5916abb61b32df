//! `GET /revocations/watch`: the revocation watch ([`crate::revocation::watch`]) as Server-Sent Events, for
//! verifiers that speak HTTP only (the same stream as gRPC's `WatchRevocations`).
//!
//! Each revocation is an `event: revocation` whose `id` is its cursor and whose `data` is one JSON object
//! (`kind`, `value`, `issuer` for a subject, `revoked_at`, `expires_at`, `reason_class`, `reason`); a quiet
//! log sends `event: heartbeat` (`data`: `cursor`, `server_time`) every `[watch] heartbeat_seconds`. A client
//! resumes with `Last-Event-ID` (as `EventSource` does by itself on reconnect) or `?cursor=`; without either
//! it gets what is revoked from now on. A cursor the log no longer covers is 410 `cursor_expired` (drop every
//! cached result and reconnect without one); a store failure mid-stream ends it with `event: error` (reconnect
//! with the last id). The caller authenticates as on the OAuth endpoints (Basic, mTLS, or the loopback
//! client) and needs the `watch` role.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::oauth::{Peer, error_response};
use crate::broker::Broker;
use crate::client::{Credentials, Presented, Rpc};
use crate::clock::now;
use crate::error::{Error, ErrorCode};
use crate::revocation::Target;
use crate::revocation::watch::{Event, Watch};

/// The watch endpoint.
pub(super) fn router(broker: Arc<Broker>) -> Router {
    Router::new().route("/revocations/watch", get(watch)).with_state(broker)
}

/// `?cursor=` (at most once), if given.
fn query_cursor(uri: &Uri) -> Result<Option<String>, Error> {
    let mut cursors = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(name, _)| name == "cursor")
        .map(|(_, value)| value.into_owned());
    match (cursors.next(), cursors.next()) {
        (_, Some(_)) => Err(Error::invalid_request("`cursor` is repeated")),
        (cursor, None) => Ok(cursor),
    }
}

async fn watch(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let opened = async {
        let last_event_id = match headers.get("last-event-id") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| Error::invalid_request("Last-Event-ID is not a cursor"))?),
        };
        // EventSource's own resume wins over the URL it was first opened with.
        let cursor = match last_event_id {
            Some(id) => id.to_string(),
            None => query_cursor(&uri)?.unwrap_or_default(),
        };
        let authorization = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                Some(v.to_str().map_err(|_| Error::new(ErrorCode::InvalidClient, "malformed client credentials"))?)
            }
        };
        let Peer(addr, certificate) = &peer;
        let presented = Presented {
            authorization,
            client_id: None,
            client_secret: None,
            client_assertion_type: None,
            client_assertion: None,
            peer_is_loopback: addr.ip().is_loopback(),
        };
        let credentials = Credentials::from_presented(&presented)?.over(certificate.clone());
        let current = broker.current();
        let client = current.authenticate(&credentials, Rpc::Watch, now()).await?;
        current.watch(client, &cursor, now()).await
    }
    .await;
    match opened {
        Ok(watch) => (
            [(header::CACHE_CONTROL, "no-store"), (header::HeaderName::from_static("x-accel-buffering"), "no")],
            Sse::new(events(watch)),
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

/// The stream of SSE events: each revocation, a heartbeat when a read finds none, and `error` (then the end)
/// when the store fails.
fn events(watch: Watch) -> impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send {
    let state = (watch, std::collections::VecDeque::<Event>::new(), false);
    futures_util::stream::unfold(state, |(mut watch, mut pending, ended)| async move {
        if ended {
            return None;
        }
        if let Some(event) = pending.pop_front() {
            return Some((Ok(revocation(&event)), (watch, pending, false)));
        }
        match watch.next().await {
            Ok(events) if events.is_empty() => {
                let data = json!({ "cursor": watch.cursor(), "server_time": now() });
                Some((Ok(SseEvent::default().event("heartbeat").data(data.to_string())), (watch, pending, false)))
            }
            Ok(events) => {
                pending.extend(events);
                let first = pending.pop_front().as_ref().map(revocation).unwrap_or_default();
                Some((Ok(first), (watch, pending, false)))
            }
            Err(e) => {
                let data = json!({ "error": e.code.as_str(), "error_description": e.description });
                Some((Ok(SseEvent::default().event("error").data(data.to_string())), (watch, pending, true)))
            }
        }
    })
}

fn revocation(e: &Event) -> SseEvent {
    let kind = e.target.kind();
    let (value, issuer) = match &e.target {
        Target::Jti(v) | Target::Task(v) | Target::Client(v) => (v.as_str(), ""),
        Target::Subject { iss, sub } => (sub.as_str(), iss.as_str()),
    };
    let data = json!({
        "cursor": e.cursor,
        "kind": kind,
        "value": value,
        "issuer": issuer,
        "revoked_at": e.revoked_at,
        "expires_at": e.expires_at,
        "reason_class": e.cause.as_str(),
        "reason": e.reason,
    });
    SseEvent::default().event("revocation").id(e.cursor.as_str()).data(data.to_string())
}
