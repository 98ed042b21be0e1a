//! Open-loop pacing: how many events are due by a given time at a (varying) rate.
//!
//! A load generator that waits for answers before sending hides the latency it should
//! measure (coordinated omission); the pacer instead owes events by the clock and pays
//! them back after a stall, up to one second's worth.

/// Counts events owed at a rate that may change between calls.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    last_s: f64,
    credit: f64,
}

impl Pacer {
    /// A pacer starting at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events due now, at `now_s` seconds into the run, at `rate` events/s since the last
    /// call.
    pub fn due(&mut self, now_s: f64, rate: f64) -> u64 {
        let dt = (now_s - self.last_s).max(0.0);
        self.last_s = now_s;
        self.credit = (self.credit + dt * rate).min(rate.max(1.0));
        // The epsilon absorbs rounding in the sum of many small increments.
        let n = (self.credit + 1e-9).floor();
        self.credit = (self.credit - n).max(0.0);
        n as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pays_exactly_the_rate_over_time() {
        let mut p = Pacer::new();
        let total: u64 = (1..=1000).map(|ms| p.due(ms as f64 / 1000.0, 5000.0)).sum();
        assert_eq!(total, 5000);
    }

    #[test]
    fn fractional_rates_accumulate() {
        let mut p = Pacer::new();
        let total: u64 = (1..=100).map(|ms| p.due(ms as f64 / 1000.0, 30.0)).sum();
        assert_eq!(total, 3);
    }

    #[test]
    fn a_long_stall_is_repaid_at_most_one_second_worth() {
        let mut p = Pacer::new();
        assert_eq!(p.due(10.0, 100.0), 100);
    }
}
