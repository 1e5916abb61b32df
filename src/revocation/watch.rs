//! The revocation watch: every revocation, in order, to the clients that hold the `watch` role — gateways
//! and SDK verifiers that cache introspection results or verify offline, and drop what a revocation ends at
//! once instead of when the token expires.
//!
//! Each store keeps a bounded, ordered log of revocation events written in the same atomic step as the
//! revocation itself (Redis: a stream capped with `XADD MAXLEN ~`, in the revocation's script; embedded: a
//! ring in memory, under the list's lock), so an event is in the log exactly when its revocation is in force.
//! Each event has a cursor (the Redis stream id; `<epoch>-<seq>` in memory): a client that reconnects with
//! the last cursor it saw gets every later event, each once. A cursor older than the log keeps, or from
//! another store, cannot promise that: the watch refuses it (`cursor_expired`) and the client must start
//! over — drop its whole cache — from the log's current end. See docs/revocation.md.

use std::fmt;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use super::{StoreError, Target};
use crate::error::{Error, ErrorCode, Result};

/// Why a revocation happened, as a bounded class (the operator's own words travel in `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// `Revoke`: an operator revoked the target.
    Revoke,
    /// `Suspend`: the kill switch, which also revokes everything the target held.
    Suspend,
    /// A Shared Signal from an upstream identity provider ([`crate::ssf::receive`]).
    Signal,
}

impl Cause {
    /// The class as it goes on the wire and into the log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::Revoke => "revoke",
            Cause::Suspend => "suspend",
            Cause::Signal => "signal",
        }
    }

    /// Reads a class back from the log.
    pub fn parse(s: &str) -> Option<Cause> {
        match s {
            "revoke" => Some(Cause::Revoke),
            "suspend" => Some(Cause::Suspend),
            "signal" => Some(Cause::Signal),
            _ => None,
        }
    }
}

/// What a revocation announces to watchers: set on an [`super::Entry`] that revokes (a suspension's own marker
/// announces nothing: its revocation does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// What was revoked.
    pub target: Target,
    /// Why, as a class.
    pub cause: Cause,
}

/// One revocation, as the log delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Where it is in the log: hand it back to resume after it.
    pub cursor: String,
    /// What was revoked.
    pub target: Target,
    /// When (Unix seconds): subject and client revocations end the tokens issued up to then.
    pub revoked_at: u64,
    /// When the revocation may be forgotten: no token it ends lives longer.
    pub expires_at: u64,
    /// The operator's reason, as given (at most 256 bytes of text).
    pub reason: String,
    /// Why, as a class.
    pub cause: Cause,
}

/// What one read of the log answers: the events after the cursor (possibly none: a heartbeat), and the cursor
/// to read on from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// The last event's cursor, or the cursor read from when there is none.
    pub cursor: String,
}

/// Why a read of the log failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The cursor is not one this log handed out, or events after it have been trimmed away: the client must
    /// start over from the current end.
    #[error("the cursor is older than the revocation log keeps, or from another log")]
    CursorExpired,
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<WatchError> for Error {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::CursorExpired => Error::new(
                ErrorCode::CursorExpired,
                "the cursor is older than the revocation log keeps: drop every cached result and watch from now",
            ),
            WatchError::Store(e) => e.into(),
        }
    }
}

/// One reader of the revocation log: each watch stream has its own (in Redis, its own connection, since a
/// blocking read holds the connection it runs on).
pub trait Reader: Send + fmt::Debug {
    /// Up to `max` events after `after` (`""`: after the current end, i.e. only what comes next), waiting up to
    /// `wait` for one when there is none yet (not at all for zero).
    fn read<'a>(&'a mut self, after: &'a str, max: usize, wait: Duration) -> ReadFuture<'a>;
}

/// What [`Reader::read`] returns: boxed, so a watch holds any store's reader.
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = std::result::Result<Batch, WatchError>> + Send + 'a>>;

/// The most events one read hands over.
pub const MAX_BATCH: usize = 256;
/// The default heartbeat: a quiet stream sends one at least this often, so a client can tell a quiet log
/// from a dead connection.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// The default number of events the log keeps (about the last day at one revocation a second).
pub const DEFAULT_MAX_EVENTS: u64 = 100_000;

/// A cursor as a client hands it back: empty (from now) or `<number>-<number>`; anything else is refused
/// before the store is asked.
pub fn check_cursor(cursor: &str) -> Result<()> {
    if cursor.is_empty() || parse_cursor(cursor).is_some() {
        Ok(())
    } else {
        Err(Error::invalid_request("the cursor is malformed: pass back a cursor a watch event carried, or none"))
    }
}

/// `<ms>-<seq>` as two numbers (the Redis stream id form; the embedded log uses the same).
pub fn parse_cursor(cursor: &str) -> Option<(u64, u64)> {
    let (a, b) = cursor.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A watch stream as a face runs it: reads on from its cursor, in batches; a read that finds nothing within
/// the heartbeat interval answers an empty batch, which the face sends as a heartbeat.
#[derive(Debug)]
pub struct Watch {
    reader: Box<dyn Reader>,
    cursor: String,
    heartbeat: Duration,
    /// What the opening read found, handed over by the first [`Watch::next`].
    opened: Vec<Event>,
}

impl Watch {
    /// A watch from `cursor` (checked with [`check_cursor`]), opened with one read that does not wait: an
    /// expired cursor or a store that cannot be read is the caller's answer before any stream starts.
    pub async fn open(reader: Box<dyn Reader>, cursor: &str, heartbeat: Duration) -> Result<Watch> {
        check_cursor(cursor)?;
        let mut watch = Watch { reader, cursor: cursor.to_string(), heartbeat, opened: Vec::new() };
        let batch = watch.reader.read(cursor, MAX_BATCH, Duration::ZERO).await?;
        watch.cursor = batch.cursor;
        watch.opened = batch.events;
        Ok(watch)
    }

    /// The next events (none: time for a heartbeat). An expired cursor or a store failure ends the watch.
    pub async fn next(&mut self) -> Result<Vec<Event>> {
        if !self.opened.is_empty() {
            return Ok(std::mem::take(&mut self.opened));
        }
        let batch = self.reader.read(&self.cursor, MAX_BATCH, self.heartbeat).await?;
        self.cursor = batch.cursor;
        Ok(batch.events)
    }

    /// Where the watch stands: the cursor of the last event delivered (or where it started).
    pub fn cursor(&self) -> &str {
        &self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_two_numbers() {
        assert_eq!(parse_cursor("1733100000000-7"), Some((1_733_100_000_000, 7)));
        for bad in ["", "-", "1-", "-1", "1-2-3", "a-1", "1 -2", "+1-2", "99999999999999999999999-0", "1-2\n"] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
        assert!(check_cursor("").is_ok());
        assert_eq!(check_cursor("x").unwrap_err().code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn causes_round_trip() {
        for c in [Cause::Revoke, Cause::Suspend, Cause::Signal] {
            assert_eq!(Cause::parse(c.as_str()), Some(c));
        }
        assert_eq!(Cause::parse("other"), None);
    }
}
