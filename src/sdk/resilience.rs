//! What the client does when the broker is unavailable: bounded exponential backoff with full jitter, and a
//! circuit breaker, so an outage is ridden out briefly and then fails fast. Never a reason to use another
//! credential: a call that runs out of attempts is an error.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attempt `n` (0-based) waits a uniformly random time in `[0, min(cap, base·2ⁿ)]` ("full jitter"), or the
/// broker's retry hint when longer, still within `cap`. `attempts` counts every try, the first included.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The first retry's ceiling.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { attempts: 6, base: Duration::from_millis(100), cap: Duration::from_secs(2) }
    }
}

impl Backoff {
    /// One attempt, no retry (the CLI: a script decides what to do with a refusal).
    pub fn once() -> Backoff {
        Backoff { attempts: 1, ..Backoff::default() }
    }

    /// How long to wait after failed attempt `attempt`.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let ceiling = self.base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(self.cap);
        let wait = ceiling.mul_f64(unit_random());
        match hint {
            Some(hint) => wait.max(hint.min(self.cap)),
            None => wait,
        }
    }
}

/// A uniform number in [0, 1) from the system's CSPRNG (no extra crate for jitter).
fn unit_random() -> f64 {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Failing fast until the cool-down ends.
    Open,
    /// The cool-down ended: the next call probes the broker.
    HalfOpen,
}

/// Closed while the broker answers. After `threshold` consecutive failed calls (each having spent its
/// retries) it opens: calls fail at once, for `cooldown`. Then a call probes (half-open): success closes
/// it, failure opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<(u32, Option<Instant>)>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::new(5, Duration::from_secs(10))
    }
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failed calls, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker { threshold: threshold.max(1), cooldown, state: Mutex::new((0, None)) }
    }

    /// Its state now.
    pub fn state(&self) -> BreakerState {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.1 {
            None => BreakerState::Closed,
            Some(at) if at.elapsed() >= self.cooldown => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// A call got an answer.
    pub fn success(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (0, None);
    }

    /// A call failed after its retries.
    pub fn failure(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = state.0.saturating_add(1);
        if state.0 >= self.threshold || state.1.is_some() {
            state.1 = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let backoff = Backoff { attempts: 6, base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        let delays: Vec<Duration> = (0..40).flat_map(|n| (0..20).map(move |_| backoff.delay(n, None))).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "jittered, not a fixed schedule");
        assert_eq!(backoff.delay(0, Some(Duration::from_secs(30))), Duration::from_secs(1), "a hint is capped");
    }

    #[test]
    fn the_breaker_opens_after_the_threshold_and_half_opens_after_the_cooldown() {
        let breaker = CircuitBreaker::new(2, Duration::from_millis(30));
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Open, "a failed probe opens it again");
        breaker.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
