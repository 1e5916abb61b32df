//! Strict lookups, coalesced: while one `MGET` is out, the lookups that arrive wait and then go to Redis
//! together, as one `MGET` of all their keys.
//!
//! Why: at many requests in flight, a lookup's cost is mostly per command, not per key — the client's
//! queueing, write, read and parse, and Redis's own dispatch. Coalescing makes that cost once per batch, and a
//! batch grows with the load, so under load the Redis round trip costs a fraction of what it did, and at one
//! request in flight nothing changes: a lookup that finds no `MGET` out sends its own at once, with no hop.
//!
//! Still strict: a lookup's keys are only ever sent in an `MGET` that starts after the lookup did, so it sees
//! every revocation that was recorded before it started.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Conn;
use crate::revocation::{StoreError, revoked_at};

/// The most keys one coalesced `MGET` carries; the lookups beyond it wait for the next.
const MAX_BATCH_KEYS: usize = 512;

/// What a lookup answers: each key's revocation time, if it is revoked.
type Found = Result<Vec<Option<u64>>, StoreError>;

/// The request path's lookups on one connection, one `MGET` out at a time.
pub(super) struct Lookups {
    shared: Arc<Shared>,
}

struct Shared {
    conn: Conn,
    timeout: Duration,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Whether an `MGET` is out: its sender holds the [`Turn`].
    busy: bool,
    /// The lookups that arrived while it was, in order.
    waiting: Vec<Waiter>,
}

struct Waiter {
    keys: Vec<String>,
    reply: oneshot::Sender<Found>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One `MGET` of these keys, bounded by the store's timeout. An answer of any other length is an error:
    /// a short one would leave a key unchecked.
    async fn mget<'k>(&self, keys: impl IntoIterator<Item = &'k String>) -> Found {
        let mut cmd = redis::cmd("MGET");
        let mut asked = 0;
        for key in keys {
            cmd.arg(key);
            asked += 1;
        }
        let ask = async {
            let mut handle = self.conn.handle().await?;
            cmd.query_async::<Vec<Option<String>>>(&mut handle).await
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(Ok(values)) if values.len() == asked => {
                Ok(values.iter().map(|v| v.as_deref().map(revoked_at)).collect())
            }
            Ok(Ok(_)) => Err(StoreError("Redis answered the wrong number of values".into())),
            Ok(Err(e)) => Err(StoreError(e.to_string())),
            Err(_) => Err(StoreError(format!("no answer within {:?}", self.timeout))),
        }
    }
}

impl Lookups {
    pub(super) fn new(conn: Conn, timeout: Duration) -> Lookups {
        Lookups { shared: Arc::new(Shared { conn, timeout, queue: Mutex::new(Queue::default()) }) }
    }

    /// Each key's revocation time, as Redis has it now.
    pub(super) async fn lookup(&self, keys: &[String]) -> Found {
        let waiting = {
            let mut queue = self.shared.queue();
            if queue.busy {
                let (reply, answer) = oneshot::channel();
                queue.waiting.push(Waiter { keys: keys.to_vec(), reply });
                Some(answer)
            } else {
                queue.busy = true;
                None
            }
        };
        match waiting {
            Some(answer) => answer.await.unwrap_or_else(|_| Err(StoreError("the lookup was abandoned".into()))),
            None => {
                // Passed on when this is done or dropped (a cancelled request), so the turn is never lost.
                let _turn = Turn(Arc::clone(&self.shared));
                self.shared.mget(keys).await
            }
        }
    }
}

/// The right to have the one `MGET` out. Dropping it passes it on: to a task that sends the waiting lookups'
/// batch, or, with none waiting, back to the next lookup to arrive.
struct Turn(Arc<Shared>);

impl Drop for Turn {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        if queue.waiting.is_empty() {
            queue.busy = false;
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Shutting down: the waiters' senders drop with the queue's contents, which fails them.
            queue.waiting.clear();
            queue.busy = false;
            return;
        };
        let mut keys = 0;
        let take = queue
            .waiting
            .iter()
            .take_while(|w| {
                keys += w.keys.len();
                keys <= MAX_BATCH_KEYS
            })
            .count();
        let batch: Vec<Waiter> = queue.waiting.drain(..take.max(1)).collect();
        drop(queue);
        runtime.spawn(send_batch(Turn(Arc::clone(&self.0)), batch));
    }
}

/// Sends one batch as one `MGET` and answers each of its lookups with its own part of the reply.
async fn send_batch(turn: Turn, batch: Vec<Waiter>) {
    let found = turn.0.mget(batch.iter().flat_map(|w| &w.keys)).await;
    drop(turn);
    match found {
        Ok(values) => {
            let mut values = values.into_iter();
            for w in batch {
                let mine = values.by_ref().take(w.keys.len()).collect();
                let _ = w.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.reply.send(Err(StoreError(e.0.clone())));
            }
        }
    }
}
