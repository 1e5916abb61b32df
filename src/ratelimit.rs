//! Rate limits on `ExchangeToken`: per calling client, per principal (the subject's issuer + `sub`; for a
//! tessera subject token, the upstream principal it derives from) and per task, shared by every replica.
//!
//! Each limit is a GCRA (generic cell rate algorithm) bucket: one number per key, its *theoretical arrival
//! time* (TAT). A request at `now` is admitted when `max(TAT, now) - now ≤ tolerance`, and then moves the TAT
//! on by one emission interval. That is a token bucket holding `burst` requests refilled at `rate`, kept in
//! one value with no background refill, so it fits one atomic step of a store: the Redis store runs it in
//! the same Lua script as the revocation lookup and the spend markers (one round trip), the embedded store
//! under the same lock.
//!
//! Time is counted in **microseconds**: an emission interval of whole milliseconds would round a rate of
//! 7,000 a minute (8.57 ms) to 8 ms, 7 % off. A Redis double holds microseconds since the epoch exactly
//! (< 2^53). The retry hint handed to callers is rounded up to whole milliseconds (and to seconds for HTTP
//! `Retry-After`), so a caller that waits that long is admitted.
//!
//! This module is the rule; the stores only apply [`gcra`] to the TAT they hold.

use std::fmt;

/// Every rate-limit key starts with this: the hash tag keeps them in the revocation keys' Redis Cluster slot,
/// so one script touches one node.
const KEY_PREFIX: &str = "{tessera}:rl:";

/// Microseconds in a minute: rates are configured per minute.
const MINUTE_US: u64 = 60_000_000;

/// What a limit counts requests by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// The authenticated calling client.
    Client,
    /// The subject's upstream principal (issuer + `sub`).
    Principal,
    /// The task the issued token would be bound to.
    Task,
}

impl Dimension {
    /// A bounded label for metrics, audit and error descriptions.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Client => "client",
            Dimension::Principal => "principal",
            Dimension::Task => "task",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rate with its burst, as GCRA parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds between two requests at the steady rate (the emission interval, `T`).
    pub emission_us: u64,
    /// How far ahead of `now` the TAT may be and still admit: `(burst - 1) × T` (`τ`).
    pub tolerance_us: u64,
}

impl Rate {
    /// `per_minute` requests a minute at the steady rate, and `burst` at once from a full bucket. `None` when
    /// either is 0 (the config refuses those before they get here).
    pub fn new(per_minute: u64, burst: u64) -> Option<Rate> {
        if per_minute == 0 || burst == 0 {
            return None;
        }
        // At least 1 µs, so a TAT always moves on.
        let emission_us = (MINUTE_US / per_minute).max(1);
        Some(Rate { emission_us, tolerance_us: emission_us.saturating_mul(burst - 1) })
    }
}

/// The configured limits; `None`: that dimension is not limited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Per calling client.
    pub client: Option<Rate>,
    /// Per subject principal.
    pub principal: Option<Rate>,
    /// Per task.
    pub task: Option<Rate>,
}

/// One limit an exchange is checked against: its store key and its rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// What it counts by, for the refusal, the audit event and the metric.
    pub dimension: Dimension,
    /// The store key holding its TAT.
    pub key: String,
    /// Its rate.
    pub rate: Rate,
}

impl RateLimits {
    /// Whether no dimension is limited (then an exchange's store call is exactly the revocation lookup).
    pub fn is_off(&self) -> bool {
        self.client.is_none() && self.principal.is_none() && self.task.is_none()
    }

    /// The limits that apply to an exchange by `client_id` for the principal `(iss, sub)` in `task_id`, in
    /// a fixed order (client, principal, task). Allocates nothing when every limit is off.
    pub fn limits(&self, client_id: &str, (iss, sub): (&str, &str), task_id: &str) -> Vec<Limit> {
        let mut out = Vec::new();
        let mut add = |dimension, rate: Option<Rate>, key: &dyn Fn() -> String| {
            if let Some(rate) = rate {
                out.push(Limit { dimension, key: key(), rate });
            }
        };
        add(Dimension::Client, self.client, &|| format!("{KEY_PREFIX}client:{client_id}"));
        // The issuer's length keeps `iss`/`sub` pairs from colliding whatever characters they hold.
        add(Dimension::Principal, self.principal, &|| format!("{KEY_PREFIX}sub:{}:{iss}{sub}", iss.len()));
        add(Dimension::Task, self.task, &|| format!("{KEY_PREFIX}task:{task_id}"));
        out
    }
}

/// What [`gcra`] decided for one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted: store this TAT (the bucket is full again, and the key may be forgotten, from then on).
    Admit {
        /// The new theoretical arrival time, µs since the epoch.
        tat_us: u64,
    },
    /// Refused: the earliest a request can be admitted is this many µs from `now`.
    Throttle {
        /// Microseconds to wait, at least 1.
        retry_after_us: u64,
    },
}

/// GCRA for one bucket whose stored TAT is `tat_us` (`None`: no state, a full bucket), at `now_us`.
pub fn gcra(tat_us: Option<u64>, rate: Rate, now_us: u64) -> Decision {
    let tat = tat_us.unwrap_or(0).max(now_us);
    let ahead = tat - now_us;
    if ahead > rate.tolerance_us {
        Decision::Throttle { retry_after_us: ahead - rate.tolerance_us }
    } else {
        Decision::Admit { tat_us: tat.saturating_add(rate.emission_us) }
    }
}

/// The limit an exchange tripped: nothing was spent, issued or moved on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// Which of the limits handed to the store tripped (its index).
    pub index: usize,
    /// When to retry, in µs from the store's `now`.
    pub retry_after_us: u64,
}

/// Microseconds rounded up to whole milliseconds: a caller that waits the hint is admitted.
pub fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000_000;

    /// Runs requests at the given µs offsets from `NOW` through one bucket; returns the decisions.
    fn run(rate: Rate, offsets: &[u64]) -> Vec<Decision> {
        let mut tat = None;
        offsets
            .iter()
            .map(|offset| {
                let d = gcra(tat, rate, NOW + offset);
                if let Decision::Admit { tat_us } = d {
                    tat = Some(tat_us);
                }
                d
            })
            .collect()
    }

    fn admitted(ds: &[Decision]) -> usize {
        ds.iter().filter(|d| matches!(d, Decision::Admit { .. })).count()
    }

    #[test]
    fn a_full_bucket_admits_exactly_the_burst_at_once() {
        let rate = Rate::new(60, 5).unwrap();
        let ds = run(rate, &[0; 20]);
        assert_eq!(admitted(&ds), 5);
        assert!(ds[..5].iter().all(|d| matches!(d, Decision::Admit { .. })), "the first five: {ds:?}");
        // The next one is admitted one emission interval (1 s at 60 a minute) after the burst.
        assert_eq!(ds[5], Decision::Throttle { retry_after_us: 1_000_000 });
    }

    #[test]
    fn a_burst_of_one_is_the_steady_rate() {
        let rate = Rate::new(600, 1).unwrap();
        assert_eq!(rate, Rate { emission_us: 100_000, tolerance_us: 0 });
        let ds = run(rate, &[0, 1, 99_999, 100_000, 150_000, 200_000]);
        let admitted: Vec<bool> = ds.iter().map(|d| matches!(d, Decision::Admit { .. })).collect();
        assert_eq!(admitted, [true, false, false, true, false, true]);
        assert_eq!(ds[1], Decision::Throttle { retry_after_us: 99_999 });
    }

    #[test]
    fn the_steady_rate_is_kept_over_time() {
        // 120 a minute with a burst of 10, offered 10 a second for a minute: 10 at once, then 2 a second.
        let rate = Rate::new(120, 10).unwrap();
        let offsets: Vec<u64> = (0..600).map(|i| i * 100_000).collect();
        let n = admitted(&run(rate, &offsets));
        // 10 from the bucket + 2 a second for the 59.9 s after the first request.
        assert!((128..=130).contains(&n), "{n}");
    }

    #[test]
    fn the_retry_hint_is_exact_and_waiting_it_admits() {
        let rate = Rate::new(60, 3).unwrap();
        let mut tat = None;
        for _ in 0..3 {
            let Decision::Admit { tat_us } = gcra(tat, rate, NOW) else { panic!("burst") };
            tat = Some(tat_us);
        }
        // 250 ms later: the first refill is 750 ms away.
        let Decision::Throttle { retry_after_us } = gcra(tat, rate, NOW + 250_000) else { panic!("throttled") };
        assert_eq!(retry_after_us, 750_000);
        assert_eq!(ceil_ms(retry_after_us), 750);
        assert!(matches!(gcra(tat, rate, NOW + 250_000 + retry_after_us - 1), Decision::Throttle { .. }));
        assert!(matches!(gcra(tat, rate, NOW + 250_000 + retry_after_us), Decision::Admit { .. }));
    }

    #[test]
    fn a_bucket_recovers_fully_after_waiting() {
        let rate = Rate::new(60, 4).unwrap();
        let mut offsets = vec![0; 10];
        // Four seconds later the bucket is full again: four at once, not more.
        offsets.extend([4_000_000; 10]);
        let ds = run(rate, &offsets);
        assert_eq!(admitted(&ds[..10]), 4);
        assert_eq!(admitted(&ds[10..]), 4);
        // A stale TAT far in the past counts as a full bucket.
        assert!(matches!(gcra(Some(1), rate, NOW), Decision::Admit { tat_us } if tat_us == NOW + 1_000_000));
    }

    #[test]
    fn rates_round_to_microseconds_and_zero_is_off() {
        assert_eq!(Rate::new(7_000, 1).unwrap().emission_us, 8_571);
        assert_eq!(Rate::new(u64::MAX, 2).unwrap(), Rate { emission_us: 1, tolerance_us: 1 });
        assert_eq!(Rate::new(0, 5), None);
        assert_eq!(Rate::new(5, 0), None);
        assert_eq!(ceil_ms(1), 1);
        assert_eq!(ceil_ms(1000), 1);
        assert_eq!(ceil_ms(1001), 2);
    }

    #[test]
    fn limit_keys_are_namespaced_and_do_not_collide() {
        let rate = Rate::new(60, 1);
        let all = RateLimits { client: rate, principal: rate, task: rate };
        let a = all.limits("c", ("https://a", "b:c"), "t");
        let b = all.limits("c", ("https://ab", ":c"), "t");
        assert_ne!(a[1].key, b[1].key);
        assert!(a.iter().all(|l| l.key.starts_with("{tessera}:rl:")));
        assert_eq!(
            a.iter().map(|l| l.dimension).collect::<Vec<_>>(),
            [Dimension::Client, Dimension::Principal, Dimension::Task]
        );
        // A client and a task of the same name are different buckets.
        let same = all.limits("x", ("https://i", "s"), "x");
        assert_ne!(same[0].key, same[2].key);
        let off = RateLimits::default();
        assert!(off.is_off() && off.limits("c", ("i", "s"), "t").is_empty());
        let task_only = RateLimits { task: rate, ..RateLimits::default() };
        assert_eq!(
            task_only.limits("c", ("i", "s"), "t").iter().map(|l| l.dimension).collect::<Vec<_>>(),
            [Dimension::Task]
        );
    }
}
