//! Latency distributions and how a run is printed: one markdown table row (what `docs/benchmarks.md`
//! quotes) and one JSON line (for scripts).

use std::time::Duration;

/// Latencies in microseconds, sorted once for the percentiles.
pub(crate) struct Latencies(Vec<u32>);

impl Latencies {
    pub(crate) fn new(mut samples: Vec<u32>) -> Latencies {
        samples.sort_unstable();
        Latencies(samples)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q`-quantile (nearest rank), in microseconds; 0 with no samples.
    pub(crate) fn quantile(&self, q: f64) -> u32 {
        if self.0.is_empty() {
            return 0;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }

    pub(crate) fn max(&self) -> u32 {
        self.0.last().copied().unwrap_or(0)
    }

    pub(crate) fn mean(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.iter().map(|&v| f64::from(v)).sum::<f64>() / self.0.len() as f64
    }
}

/// Microseconds of a duration, saturating.
pub(crate) fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Milliseconds with two decimals, from microseconds.
pub(crate) fn ms(us: u32) -> String {
    format!("{:.2}", f64::from(us) / 1000.0)
}
