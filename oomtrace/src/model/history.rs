//! Bounded time series of cumulative values, for "how much did this grow in the last N seconds".
//! Samples are taken at the collector's ticks (or replayed ticks), at most one per `step`, and
//! only when the value changed, so an idle thread costs one sample.
use std::collections::VecDeque;

/// Seconds of history kept: the longest window (60 s) plus one step of slack.
pub const KEEP_NS: u64 = 62_000_000_000;
pub const STEP_NS: u64 = 1_000_000_000;
const MAX_SAMPLES: usize = (KEEP_NS / STEP_NS) as usize + 2;

#[derive(Clone, Debug, Default)]
pub struct Series<V> {
    samples: VecDeque<(u64, V)>,
}

impl<V: Clone + PartialEq> Series<V> {
    /// Records `value` at `ts_ns`, dropping samples no window needs any more. The newest sample
    /// older than KEEP_NS stays as the baseline of the longest window.
    pub fn record(&mut self, ts_ns: u64, value: V) {
        let keep_first = self.samples.len() == 1;
        if let Some(back) = self.samples.back_mut() {
            if back.1 == value {
                return;
            }
            if ts_ns < back.0.saturating_add(STEP_NS) && !keep_first {
                // Within one step: the newest value replaces the last one (never the first:
                // it is the baseline of every window).
                back.1 = value;
                return;
            }
        }
        self.samples.push_back((ts_ns, value));
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| ts_ns.saturating_sub(*t) > KEEP_NS)
        {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The value as it was `window_ns` before `now_ns`: the newest sample at or before then, or
    /// the oldest sample when history is shorter than the window (growth since first seen).
    pub fn at(&self, now_ns: u64, window_ns: u64) -> Option<(u64, &V)> {
        let then = now_ns.saturating_sub(window_ns);
        self.samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= then)
            .or_else(|| self.samples.front())
            .map(|(t, v)| (*t, v))
    }

    /// The samples kept, oldest first (about a minute, one a second at most).
    pub fn samples(&self) -> impl Iterator<Item = &(u64, V)> {
        self.samples.iter()
    }

    pub fn latest(&self) -> Option<&V> {
        self.samples.back().map(|(_, v)| v)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn window_looks_back_to_the_newest_sample_at_or_before_its_start() {
        let mut s = Series::default();
        for i in 0..30u64 {
            s.record(i * S, (i * 10) as i64);
        }
        assert_eq!(s.at(29 * S, 10 * S), Some((19 * S, &190)));
        // History shorter than the window: the oldest sample.
        assert_eq!(s.at(29 * S, 60 * S), Some((0, &0)));
    }

    #[test]
    fn idle_values_cost_one_sample_and_history_is_bounded() {
        let mut s = Series::default();
        for i in 0..1000u64 {
            s.record(i * S, 7i64);
        }
        assert_eq!(s.len(), 1);
        let mut busy = Series::default();
        for i in 0..1000u64 {
            busy.record(i * S, i as i64);
        }
        assert!(busy.len() <= MAX_SAMPLES, "{}", busy.len());
        // The 60 s window still has its baseline.
        assert_eq!(busy.at(999 * S, 60 * S).map(|(t, _)| t), Some(939 * S));
    }

    #[test]
    fn samples_closer_than_a_step_update_the_last_value_but_never_the_first() {
        let mut s = Series::default();
        s.record(0, 0i64);
        s.record(S / 2, 5);
        assert_eq!(s.len(), 2, "the first sample is the baseline");
        s.record(S / 2 + 1, 6);
        assert_eq!(s.len(), 2);
        assert_eq!(s.latest(), Some(&6));
        assert_eq!(s.at(S, 10 * S), Some((0, &0)));
    }
}
