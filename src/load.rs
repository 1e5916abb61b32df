//! Load protection shared by both faces: a ceiling on broker operations in flight (`server.
//! max_concurrent_requests`), and how long a call may wait for a slot (`server.max_queue_wait_ms`) before it is
//! shed with a fast refusal — RESOURCE_EXHAUSTED on gRPC, 503 with `Retry-After` on HTTP — so an overload
//! degrades into refusals rather than unbounded queues, memory or latency. Health, reflection and metrics never
//! take a slot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, ErrorCode};

/// The slots broker operations run in, shared by the gRPC and HTTP faces.
#[derive(Clone, Debug)]
pub struct Slots {
    permits: Arc<Semaphore>,
    wait: Duration,
    timeout: Duration,
}

impl Slots {
    /// `max` operations at once (at least one); a call waits at most `wait` for a slot, and runs at most
    /// `timeout` (the HTTP face's request timeout; tonic applies the same to gRPC).
    pub fn new(max: usize, wait: Duration, timeout: Duration) -> Slots {
        Slots { permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))), wait, timeout }
    }

    /// How long one request may run.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// A slot, held until the permit is dropped; `Overloaded` when none frees up in time.
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit, Error> {
        let overloaded = || Error::new(ErrorCode::Overloaded, "the broker is at its concurrency limit; retry shortly");
        match tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(overloaded()),
        }
    }
}
