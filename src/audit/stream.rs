//! The audit stream: a capped Redis stream the audit events are appended to, in batches, off the request
//! path and on a connection of its own; and its reader, for `tessera audit`.

use tokio::sync::mpsc;

use super::{AuditEvent, Filter, STREAM, STREAM_MAX_LEN};
use crate::store::redis::{Conn, RedisSettings};

/// Appends audit events to the capped audit stream, in batches (one pipelined round trip per batch), on its
/// own Redis connection, so no lookup ever waits behind an audit write. Events that cannot be written are
/// logged and counted in `dropped`: the log has them too.
pub(crate) fn spawn_writer(
    settings: &RedisSettings,
    mut events: mpsc::Receiver<AuditEvent>,
    dropped: opentelemetry::metrics::Counter<u64>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let conn = Conn::open(settings)?;
    let timeout = settings.timeout;
    Ok(tokio::spawn(async move {
        let mut batch = Vec::with_capacity(256);
        while events.recv_many(&mut batch, 256).await > 0 {
            let count = batch.len() as u64;
            let mut pipe = redis::pipe();
            for e in batch.drain(..) {
                let cmd = pipe.cmd("XADD").arg(STREAM).arg("MAXLEN").arg("~").arg(STREAM_MAX_LEN).arg("*");
                for (k, v) in e.stream_fields() {
                    cmd.arg(k).arg(v.as_ref());
                }
                cmd.ignore();
            }
            let write = async {
                let mut handle = conn.handle().await?;
                pipe.query_async::<()>(&mut handle).await
            };
            let failure = match tokio::time::timeout(timeout * 4, write).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some("timeout".to_string()),
            };
            if let Some(error) = failure {
                tracing::warn!(%error, count, "audit events not appended to the Redis stream (they are in the log)");
                dropped.add(count, &[]);
            }
        }
    }))
}

/// Reads the audit stream from a standalone Redis, oldest first, keeping the events that match.
pub async fn read(redis_url: &str, filter: &Filter) -> std::result::Result<Vec<AuditEvent>, String> {
    let client = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
    let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let Some((last, _)) = page.last() else { break };
        start = format!("({last}");
        let full = page.len() == 1000;
        out.extend(
            page.into_iter()
                .map(|(_, fields)| AuditEvent::from_fields(fields.into_iter().map(|(k, v)| (field_name(&k), v))))
                .filter(|e| filter.matches(e)),
        );
        if !full {
            break;
        }
    }
    Ok(out)
}

/// Maps a stream field name to the static name [`AuditEvent::from_fields`] matches on.
fn field_name(k: &str) -> &'static str {
    const KEYS: [&str; 19] = [
        "ts",
        "event",
        "decision",
        "reason",
        "detail",
        "client_id",
        "sub_iss",
        "sub",
        "actors",
        "audience",
        "scope_requested",
        "scope_granted",
        "details_requested",
        "details_granted",
        "policies",
        "task_id",
        "jti",
        "exp",
        "trace_id",
    ];
    KEYS.iter().find(|known| **known == k).copied().unwrap_or("")
}
