//! Audit events: every decision — granted, denied with its reason, introspected, revoked — with who asked,
//! for whom, through which actors, for what, for which task, and the trace it belongs to.
//!
//! Each operation builds its own events and records them through the [`AuditSink`] port. [`Audit`] writes
//! them to the `tessera::audit` tracing target as structured fields (so they can be routed apart from
//! operational logs) and, when Redis is configured, queues them for [`stream`]'s writer, which appends them
//! to a capped Redis stream off the request path: `tessera audit --task T` reads a task's story from it.
//! They carry identifiers (`sub`, `jti`, task), never a token.

pub mod stream;

use std::borrow::Cow;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// The Redis stream holding the audit trail, capped at about [`STREAM_MAX_LEN`] entries.
pub(crate) const STREAM: &str = "{tessera}:audit";
pub(crate) const STREAM_MAX_LEN: usize = 100_000;
/// Events waiting for the stream writer; past this, events are dropped from the stream (still logged).
const QUEUE: usize = 10_000;

/// One audit event. Empty strings and zeros mean "not applicable".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditEvent {
    /// Unix milliseconds.
    pub(crate) ts: u64,
    /// `exchange`, `introspect` or `revoke`.
    pub(crate) event: String,
    /// `granted`, `denied`, `active`, `inactive`, `revoked`, `error`.
    pub(crate) decision: String,
    /// The OAuth error code or the reason a token is inactive.
    pub(crate) reason: String,
    /// A refusal's description, or a revocation's reason.
    pub(crate) detail: String,
    /// The calling client.
    pub(crate) client_id: String,
    /// The subject principal's issuer.
    pub(crate) sub_iss: String,
    /// The subject principal's `sub`.
    pub(crate) sub: String,
    /// The actor chain, acting actor first, joined by ` > `.
    pub(crate) actors: String,
    /// The token's audience (`client:<id>` for a client revocation).
    pub(crate) audience: String,
    /// The scopes asked for, as sent.
    pub(crate) scope_requested: String,
    /// The scopes granted, or those of the introspected token.
    pub(crate) scope_granted: String,
    /// The RFC 9396 `authorization_details` asked for, as sent (at most 4 KiB: longer ones are refused and
    /// recorded cut); empty when none were.
    pub(crate) details_requested: String,
    /// The `authorization_details` the issued token carries (JSON), or those of the introspected token;
    /// empty when none.
    pub(crate) details_granted: String,
    /// Policy's decision on each requested scope and the policies that made it, space-separated
    /// `scope=allow:id,id` / `scope=deny:id` / `scope=deny:-` (nothing permits it) / `scope=error:id`; empty
    /// when the exchange was refused before policy was asked.
    pub(crate) policies: String,
    /// The task.
    pub(crate) task_id: String,
    /// The step-up approval the event concerns (an exchange it granted or left pending, or a step of it).
    pub(crate) approval_id: String,
    /// The token issued, introspected or revoked.
    pub(crate) jti: String,
    /// The token's expiry, or when a revocation expires (Unix seconds).
    pub(crate) exp: u64,
    /// The request's trace id (W3C, hex), when it is traced.
    pub(crate) trace_id: String,
}

impl AuditEvent {
    /// Who and what a tessera token names — subject, actor chain, scopes, task, `jti`, expiry — as an event
    /// about that token records them.
    pub(crate) fn about(&mut self, c: &crate::token::AccessClaims) {
        self.sub_iss = c.sub_iss.clone();
        self.sub = c.sub.clone();
        self.actors = c
            .act
            .as_ref()
            .map(|a| a.chain().map(|a| a.sub.as_str()).collect::<Vec<_>>().join(" > "))
            .unwrap_or_default();
        self.scope_granted = c.scope.to_string();
        self.task_id = c.task_id.clone();
        self.jti = c.jti.clone();
        self.exp = c.exp;
    }

    /// A new event of the current trace, stamped now.
    pub(crate) fn new(event: &str, decision: &str, client_id: &str) -> AuditEvent {
        AuditEvent {
            ts: crate::clock::now_ms(),
            event: event.into(),
            decision: decision.into(),
            client_id: client_id.into(),
            trace_id: current_trace_id(),
            ..AuditEvent::default()
        }
    }

    /// The event as stream fields, borrowed from it: the writer hands them to Redis as they are, so an event
    /// is not copied field by field on its way out.
    pub(crate) fn fields(&self) -> [(&'static str, Cow<'_, str>); 20] {
        fn s(v: &str) -> Cow<'_, str> {
            Cow::Borrowed(v)
        }
        [
            ("ts", Cow::Owned(self.ts.to_string())),
            ("event", s(&self.event)),
            ("decision", s(&self.decision)),
            ("reason", s(&self.reason)),
            ("detail", s(&self.detail)),
            ("client_id", s(&self.client_id)),
            ("sub_iss", s(&self.sub_iss)),
            ("sub", s(&self.sub)),
            ("actors", s(&self.actors)),
            ("audience", s(&self.audience)),
            ("scope_requested", s(&self.scope_requested)),
            ("scope_granted", s(&self.scope_granted)),
            ("details_requested", s(&self.details_requested)),
            ("details_granted", s(&self.details_granted)),
            ("policies", s(&self.policies)),
            ("task_id", s(&self.task_id)),
            ("approval_id", s(&self.approval_id)),
            ("jti", s(&self.jti)),
            ("exp", Cow::Owned(self.exp.to_string())),
            ("trace_id", s(&self.trace_id)),
        ]
    }

    /// The fields a stream entry holds: those that apply. An empty one is left out (about half of an event's),
    /// since [`AuditEvent::from_fields`] takes a missing field as empty; Redis then parses and keeps half the
    /// arguments.
    pub(crate) fn stream_fields(&self) -> impl Iterator<Item = (&'static str, Cow<'_, str>)> {
        self.fields().into_iter().filter(|(_, v)| !v.is_empty())
    }

    /// Rebuilds an event from stream fields (unknown fields are ignored; a missing one is empty).
    pub(crate) fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, String)>) -> AuditEvent {
        let mut e = AuditEvent::default();
        for (k, v) in fields {
            match k {
                "ts" => e.ts = v.parse().unwrap_or_default(),
                "event" => e.event = v,
                "decision" => e.decision = v,
                "reason" => e.reason = v,
                "detail" => e.detail = v,
                "client_id" => e.client_id = v,
                "sub_iss" => e.sub_iss = v,
                "sub" => e.sub = v,
                "actors" => e.actors = v,
                "audience" => e.audience = v,
                "scope_requested" => e.scope_requested = v,
                "scope_granted" => e.scope_granted = v,
                "details_requested" => e.details_requested = v,
                "details_granted" => e.details_granted = v,
                "policies" => e.policies = v,
                "task_id" => e.task_id = v,
                "approval_id" => e.approval_id = v,
                "jti" => e.jti = v,
                "exp" => e.exp = v.parse().unwrap_or_default(),
                "trace_id" => e.trace_id = v,
                _ => {}
            }
        }
        e
    }
}

/// The trace id of the current span, when it is being traced.
fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() { span_context.trace_id().to_string() } else { String::new() }
}

/// A field's value in the log line: none when it does not apply.
fn some(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// Where audit events go besides the log.
#[derive(Debug, Default)]
pub struct Audit {
    stream: Option<mpsc::Sender<AuditEvent>>,
    metrics: Option<Metrics>,
}

impl Audit {
    /// Events are only logged.
    pub(crate) fn log_only() -> Audit {
        Audit::default()
    }

    /// Events are also queued for the stream writer that consumes the returned receiver.
    pub(crate) fn with_stream(metrics: Metrics) -> (Audit, mpsc::Receiver<AuditEvent>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Audit { stream: Some(tx), metrics: Some(metrics) }, rx)
    }

    fn emit(&self, e: AuditEvent) {
        // `event`, `decision` and `reason` are the broker's own words (an error code or a fixed cause), and
        // `trace_id` is hex it formatted: they are written as they are. Every other field can hold text from a
        // request or an upstream assertion, so it is recorded as a `&str` value, which the text log writes
        // quoted with control characters and quotes escaped (`task_id="a\nb"`): a newline in a scope cannot
        // start a line of its own that reads as another audit event. JSON logs get the plain string.
        // A field that does not apply (empty) is left out of the line, as out of the stream entry: half an
        // event's fields, so half the formatting on the request's thread, and shorter lines to ship.
        tracing::info!(
            target: "tessera::audit",
            event = %e.event,
            decision = %e.decision,
            reason = some(&e.reason).map(tracing::field::display),
            detail = some(&e.detail),
            client_id = some(&e.client_id),
            sub_iss = some(&e.sub_iss),
            sub = some(&e.sub),
            actors = some(&e.actors),
            audience = some(&e.audience),
            scope_requested = some(&e.scope_requested),
            scope_granted = some(&e.scope_granted),
            details_requested = some(&e.details_requested),
            details_granted = some(&e.details_granted),
            policies = some(&e.policies),
            task_id = some(&e.task_id),
            approval_id = some(&e.approval_id),
            jti = some(&e.jti),
            exp = (e.exp != 0).then_some(e.exp),
            trace_id = some(&e.trace_id).map(tracing::field::display),
        );
        if let Some(stream) = &self.stream
            && stream.try_send(e).is_err()
            && let Some(m) = &self.metrics
        {
            m.audit_dropped.add(1, &[]);
        }
    }
}

/// Where audit events go: the port every operation records its decisions through.
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Takes one event. It must neither block nor fail the operation that records it: a sink that cannot keep
    /// up drops (and counts) events instead.
    fn record(&self, event: AuditEvent);
}

impl AuditSink for Audit {
    fn record(&self, event: AuditEvent) {
        self.emit(event);
    }
}

/// Which events `tessera audit` shows.
#[derive(Debug, Default)]
pub struct Filter {
    /// Only the events of this task (`--task`).
    pub task_id: Option<String>,
    /// Only the events whose subject has this `sub` (`--sub`).
    pub sub: Option<String>,
    /// Only the events of this token (`--jti`).
    pub jti: Option<String>,
}

impl Filter {
    pub(crate) fn matches(&self, e: &AuditEvent) -> bool {
        self.task_id.as_ref().is_none_or(|t| *t == e.task_id)
            && self.sub.as_ref().is_none_or(|s| *s == e.sub)
            && self.jti.as_ref().is_none_or(|j| *j == e.jti)
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_stream_fields() {
        let e = AuditEvent {
            ts: 1,
            event: "exchange".into(),
            decision: "granted".into(),
            task_id: "t".into(),
            jti: "j".into(),
            exp: 9,
            actors: "a > b".into(),
            policies: "crm:read=allow:agents-crm crm:export=deny:never-export".into(),
            details_requested: r#"[{"type":"crm_case"}]"#.into(),
            details_granted: "[]".into(),
            ..AuditEvent::default()
        };
        let fields = e.fields();
        assert_eq!(AuditEvent::from_fields(fields.iter().map(|(k, v)| (*k, v.to_string()))), e);
        // As the stream keeps it: without the fields that do not apply.
        let kept: Vec<_> = e.stream_fields().map(|(k, v)| (k, v.into_owned())).collect();
        assert!(kept.len() < fields.len() && kept.iter().all(|(_, v)| !v.is_empty()));
        assert_eq!(AuditEvent::from_fields(kept), e);
    }
}
