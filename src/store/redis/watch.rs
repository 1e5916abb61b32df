//! The Redis revocation log ([`crate::revocation::watch`]): a stream, [`LOG`], that the revocation script
//! appends to (`XADD MAXLEN ~`) in the same atomic step as the revocation, read by each watch stream on a
//! connection of its own (a blocking `XREAD` holds the connection it runs on, so it never shares the request
//! path's).
//!
//! A read is one script, atomic: the stream's last id (`XINFO STREAM`), whether the cursor's own entry is
//! still there, and the entries after it (`XRANGE`). Trimming only ever removes the oldest entries, so while
//! the cursor's entry is kept (or it is the last id) nothing after it is gone; once it has been trimmed, the
//! cursor is refused (`cursor_expired`) rather than answered with a possible gap. (`MAXLEN ~` trims whole
//! nodes, so that happens only to a client about `max_events` behind.) When there is nothing after the cursor, the reader waits
//! for the next entry with `XREAD BLOCK` (up to the heartbeat interval), then reads again.

use std::collections::HashMap;
use std::time::Duration;

use super::conn::Conn;
use crate::config::RedisSettings;
use crate::revocation::watch::{Batch, Cause, Event, ReadFuture, Reader, WatchError};
use crate::revocation::{StoreError, Target};

/// The revocation log: one stream, under the hash tag every revocation key shares (one Cluster slot, so the
/// revocation script can append to it).
pub const LOG: &str = "{tessera}:rev-log";

/// `KEYS[1]`: the log; `ARGV[1]`: the cursor (`""`: the end), `ARGV[2]`: how many entries at most. Answers
/// `{'expired'}` (a cursor ahead of the log, or whose entry was trimmed; `0-0`, the start of an empty log,
/// once anything was trimmed), or the cursor read from and the
/// entries after it.
const READ_SCRIPT: &str = r"
local function parse(id)
  local a, b = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(a), tonumber(b)
end
local function less(x, y)
  local xa, xb = parse(x)
  local ya, yb = parse(y)
  return xa < ya or (xa == ya and xb < yb)
end
local last, added, length = '0-0', 0, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'length' then length = info[i + 1] end
  end
end
local cursor = ARGV[1]
if cursor == '' then cursor = last end
if less(last, cursor) then return {'expired'} end
if cursor == '0-0' then
  if added ~= length then return {'expired'} end
elseif cursor ~= last and #redis.call('XRANGE', KEYS[1], cursor, cursor) == 0 then
  return {'expired'}
end
return {cursor, redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', ARGV[2])}
";

/// The least time a watch reader's command may take before it counts as failed.
const MIN_BOUND: Duration = Duration::from_secs(5);

/// One watch stream's reader, with its own connection (opened on first use).
pub(super) struct StreamReader {
    settings: RedisSettings,
    conn: Option<Conn>,
    script: redis::Script,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader").finish_non_exhaustive()
    }
}

impl StreamReader {
    pub(super) fn new(settings: RedisSettings) -> StreamReader {
        StreamReader { settings, conn: None, script: redis::Script::new(READ_SCRIPT) }
    }

    fn err(e: impl std::fmt::Display) -> WatchError {
        WatchError::Store(StoreError(e.to_string()))
    }

    async fn bounded<T>(
        limit: Duration,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, WatchError> {
        match tokio::time::timeout(limit, f).await {
            Ok(result) => result.map_err(Self::err),
            Err(_) => Err(WatchError::Store(StoreError(format!("no answer within {limit:?}")))),
        }
    }

    /// The bound on one command: the store's timeout, but at least [`MIN_BOUND`] — a watch reader is in the
    /// background, where a slow answer only delays a heartbeat, and failing would end the client's stream.
    fn timeout(&self) -> Duration {
        self.settings.timeout.max(MIN_BOUND)
    }

    async fn range(&mut self, conn: &Conn, after: &str, max: usize) -> Result<Batch, WatchError> {
        let timeout = self.timeout();
        let mut handle = Self::bounded(timeout, conn.handle()).await?;
        let mut inv = self.script.prepare_invoke();
        inv.key(LOG).arg(after).arg(max.max(1));
        let reply: Vec<redis::Value> = Self::bounded(timeout, inv.invoke_async(&mut handle)).await?;
        let mut reply = reply.into_iter();
        let (Some(cursor), Some(entries)) = (reply.next(), reply.next()) else {
            return Err(WatchError::CursorExpired);
        };
        let cursor: String = redis::from_redis_value(cursor).map_err(Self::err)?;
        let entries: Vec<(String, HashMap<String, String>)> = redis::from_redis_value(entries).map_err(Self::err)?;
        let events = entries.into_iter().map(|(id, fields)| event(id, &fields)).collect::<Result<Vec<_>, _>>()?;
        let cursor = events.last().map_or(cursor, |e| e.cursor.clone());
        Ok(Batch { events, cursor })
    }
}

/// An entry of the log as an event. One that does not read back (only tessera writes the log) fails the
/// read, so a watcher never silently misses a revocation.
fn event(cursor: String, fields: &HashMap<String, String>) -> Result<Event, WatchError> {
    let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    let value = field("value");
    let target = match fields.get("kind").map(String::as_str) {
        Some("jti") => Target::Jti(value),
        Some("task") => Target::Task(value),
        Some("subject") => Target::Subject { iss: field("iss"), sub: value },
        Some("client") => Target::Client(value),
        _ => return Err(StreamReader::err(format!("revocation log entry {cursor} names no target"))),
    };
    let (Some(revoked_at), Some(expires_at), Some(cause)) =
        (number("revoked_at"), number("expires_at"), fields.get("cause").and_then(|c| Cause::parse(c)))
    else {
        return Err(StreamReader::err(format!("revocation log entry {cursor} is malformed")));
    };
    Ok(Event { cursor, target, revoked_at, expires_at, reason: field("reason"), cause })
}

impl Reader for StreamReader {
    fn read<'a>(&'a mut self, after: &'a str, max: usize, wait: Duration) -> ReadFuture<'a> {
        Box::pin(async move {
            let conn = match &self.conn {
                Some(conn) => conn.clone(),
                None => {
                    // Each command is bounded here: the store's timeout, or the wait plus it for `XREAD BLOCK`.
                    let conn = Conn::open_with_response_timeout(&self.settings, None).map_err(Self::err)?;
                    self.conn = Some(conn.clone());
                    conn
                }
            };
            let batch = self.range(&conn, after, max).await?;
            if !batch.events.is_empty() || wait.is_zero() {
                return Ok(batch);
            }
            let block_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            let limit = wait + self.timeout();
            let mut handle = Self::bounded(self.timeout(), conn.handle()).await?;
            let woke: redis::Value = Self::bounded(
                limit,
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(LOG)
                    .arg(&batch.cursor)
                    .query_async(&mut handle),
            )
            .await?;
            if matches!(woke, redis::Value::Nil) {
                return Ok(batch);
            }
            let cursor = batch.cursor;
            self.range(&conn, &cursor, max).await
        })
    }
}

/// The `XADD` arguments of a notice: target kind and value (and issuer), and cause.
pub(super) fn notice_args(notice: &crate::revocation::watch::Notice) -> [&str; 4] {
    let (value, iss) = match &notice.target {
        Target::Jti(v) | Target::Task(v) | Target::Client(v) => (v.as_str(), ""),
        Target::Subject { iss, sub } => (sub.as_str(), iss.as_str()),
    };
    [notice.target.kind(), value, iss, notice.cause.as_str()]
}
