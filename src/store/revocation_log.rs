//! The embedded store's revocation log ([`crate::revocation::watch`]): a ring of the last `max_events`
//! revocation events in memory, appended under the revocation list's lock (so an event is logged exactly
//! when its revocation is applied), with a wake-up for the watch streams waiting on it.
//!
//! Cursors are `<epoch>-<seq>`: the epoch is when this process's log began (Unix ms), so a cursor from a
//! previous process — whose log is gone — is refused as expired instead of silently skipping events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::revocation::StoreError;
#[cfg(test)]
use crate::revocation::Target;
use crate::revocation::watch::{Batch, Event, Notice, ReadFuture, Reader, WatchError, parse_cursor};

#[derive(Debug)]
struct Ring {
    epoch: u64,
    /// The sequence number of the last event appended (0: none yet).
    last: u64,
    events: VecDeque<(u64, Event)>,
    max: usize,
}

/// The log, shared by the store (which appends) and every watch stream's reader.
#[derive(Debug)]
pub(crate) struct RevocationLog {
    ring: Mutex<Ring>,
    /// Carries the last sequence number: readers wait on it for the next append.
    appended: tokio::sync::watch::Sender<u64>,
}

impl RevocationLog {
    pub(crate) fn new(max_events: usize, epoch_ms: u64) -> Arc<RevocationLog> {
        let ring = Ring { epoch: epoch_ms, last: 0, events: VecDeque::new(), max: max_events.max(1) };
        Arc::new(RevocationLog { ring: Mutex::new(ring), appended: tokio::sync::watch::Sender::new(0) })
    }

    /// Appends one event per notice (the caller holds the revocation list's lock, so appends are in the order
    /// the revocations were applied), forgetting the oldest past `max_events`.
    pub(crate) fn append(&self, notice: &Notice, revoked_at: u64, expires_at: u64, reason: &str) {
        let Ok(mut ring) = self.ring.lock() else { return };
        ring.last += 1;
        let seq = ring.last;
        let event = Event {
            cursor: format!("{}-{seq}", ring.epoch),
            target: notice.target.clone(),
            revoked_at,
            expires_at,
            reason: reason.to_string(),
            cause: notice.cause,
        };
        ring.events.push_back((seq, event));
        while ring.events.len() > ring.max {
            ring.events.pop_front();
        }
        drop(ring);
        self.appended.send_replace(seq);
    }

    /// The events after `after` (`""`: after the end), at most `max`.
    fn after(&self, after: &str, max: usize) -> Result<Batch, WatchError> {
        let ring = self.ring.lock().map_err(|_| StoreError("poisoned lock".into()))?;
        let from = if after.is_empty() {
            ring.last
        } else {
            match parse_cursor(after) {
                Some((epoch, seq)) if epoch == ring.epoch && seq <= ring.last => seq,
                _ => return Err(WatchError::CursorExpired),
            }
        };
        let oldest = ring.events.front().map_or(ring.last + 1, |(seq, _)| *seq);
        if from + 1 < oldest {
            return Err(WatchError::CursorExpired);
        }
        let skip = usize::try_from(from + 1 - oldest).unwrap_or(usize::MAX);
        let events: Vec<Event> = ring.events.iter().skip(skip).take(max).map(|(_, e)| e.clone()).collect();
        let cursor = events.last().map_or_else(|| format!("{}-{from}", ring.epoch), |e| e.cursor.clone());
        Ok(Batch { events, cursor })
    }

    pub(crate) fn reader(self: &Arc<Self>) -> Box<dyn Reader> {
        Box::new(LogReader { log: Arc::clone(self), appended: self.appended.subscribe() })
    }
}

#[derive(Debug)]
struct LogReader {
    log: Arc<RevocationLog>,
    appended: tokio::sync::watch::Receiver<u64>,
}

impl Reader for LogReader {
    fn read<'a>(&'a mut self, after: &'a str, max: usize, wait: Duration) -> ReadFuture<'a> {
        Box::pin(async move {
            // Marked seen before reading, so an append between the read and the wait still wakes it.
            self.appended.borrow_and_update();
            let batch = self.log.after(after, max)?;
            if !batch.events.is_empty() || wait.is_zero() {
                return Ok(batch);
            }
            if tokio::time::timeout(wait, self.appended.changed()).await.is_err() {
                return Ok(batch);
            }
            // Read on from where the empty read stood (for `""`, the end it resolved to).
            let cursor = batch.cursor;
            self.log.after(&cursor, max)
        })
    }
}

/// What an event names, for tests.
#[cfg(test)]
fn jti(e: &Event) -> &str {
    match &e.target {
        Target::Jti(j) => j,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::watch::Cause;

    fn notice(j: &str) -> Notice {
        Notice { target: Target::Jti(j.into()), cause: Cause::Revoke }
    }

    #[tokio::test]
    async fn resumes_after_its_cursor_and_refuses_what_it_no_longer_has() {
        let log = RevocationLog::new(3, 7);
        let mut reader = log.reader();
        let start = reader.read("", 10, Duration::ZERO).await.unwrap();
        assert_eq!((start.events.len(), start.cursor.as_str()), (0, "7-0"));
        for j in ["a", "b"] {
            log.append(&notice(j), 1, 2, "r");
        }
        let first = reader.read(&start.cursor, 1, Duration::ZERO).await.unwrap();
        assert_eq!(first.events.iter().map(jti).collect::<Vec<_>>(), ["a"]);
        let rest = reader.read(&first.cursor, 10, Duration::ZERO).await.unwrap();
        assert_eq!(rest.events.iter().map(jti).collect::<Vec<_>>(), ["b"]);
        assert_eq!(rest.cursor, "7-2");
        // Two more: "a" falls out of the ring of three; resuming after "a" is still exact, after the start not.
        for j in ["c", "d"] {
            log.append(&notice(j), 1, 2, "r");
        }
        let after_a = reader.read("7-1", 10, Duration::ZERO).await.unwrap();
        assert_eq!(after_a.events.iter().map(jti).collect::<Vec<_>>(), ["b", "c", "d"]);
        assert!(matches!(reader.read("7-0", 10, Duration::ZERO).await, Err(WatchError::CursorExpired)));
        // A cursor from another log (epoch) or past the end was never handed out here.
        assert!(matches!(reader.read("8-1", 10, Duration::ZERO).await, Err(WatchError::CursorExpired)));
        assert!(matches!(reader.read("7-5", 10, Duration::ZERO).await, Err(WatchError::CursorExpired)));
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_the_next_event() {
        let log = RevocationLog::new(10, 1);
        let mut reader = log.reader();
        let mut cursor = reader.read("", 10, Duration::ZERO).await.unwrap().cursor;
        let writer = Arc::clone(&log);
        let append = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.append(&notice("late"), 1, 2, "r");
        });
        let mut seen = Vec::new();
        while seen.is_empty() {
            let batch = reader.read(&cursor, 10, Duration::from_secs(30)).await.unwrap();
            cursor = batch.cursor;
            seen.extend(batch.events);
        }
        append.await.unwrap();
        assert_eq!(seen.iter().map(jti).collect::<Vec<_>>(), ["late"]);
    }
}
