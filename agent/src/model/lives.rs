//! How long connections to one peer live, over the last minute: the evidence for "a new
//! connection per request". Connection lifetimes are known from the trace (open at
//! `CLOSE -> SYN_SENT` or `LISTEN -> SYN_RECV`, end when the socket leaves the full-socket
//! table), so a peer's lifetimes are kept as counts in logarithmic buckets, in two 30-second
//! windows: the last minute in 2 x 13 counters per peer, whatever the rate.

/// Upper bounds of the lifetime buckets, in ns (the last bucket has none). One second is an
/// edge, so "is the median under a second" is answered exactly.
const EDGES_NS: [u64; 12] = [
    1_000_000,
    4_000_000,
    16_000_000,
    64_000_000,
    250_000_000,
    1_000_000_000,
    4_000_000_000,
    16_000_000_000,
    64_000_000_000,
    256_000_000_000,
    1_024_000_000_000,
    4_096_000_000_000,
];
const BUCKETS: usize = EDGES_NS.len() + 1;
/// Index of the first bucket at or above one second.
const ONE_SECOND: usize = 6;
/// Length of one window.
const WINDOW_NS: u64 = 30_000_000_000;

/// Lifetimes of the connections to one peer that ended in the last 30 to 60 seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lives {
    current: [u32; BUCKETS],
    previous: [u32; BUCKETS],
    /// Start of `current`; 0 before the first life.
    start_ns: u64,
    /// Whether `previous` covers the 30 s before `start_ns`.
    has_previous: bool,
}

/// What the last minute's lifetimes say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LifeStats {
    /// Connections ended per second over the covered time.
    pub per_s: f64,
    /// Share of them that lived under a second.
    pub short_share: f64,
    /// An upper bound of the median lifetime: the upper edge of the bucket holding it (None:
    /// the median lived longer than the largest edge, about 68 minutes).
    pub median_le_s: Option<f64>,
    /// Connections counted.
    pub count: u64,
}

impl Lives {
    /// Moves the windows on to `now_ns`.
    fn roll(&mut self, now_ns: u64) {
        if self.start_ns == 0 {
            self.start_ns = now_ns;
            return;
        }
        let age = now_ns.saturating_sub(self.start_ns);
        if age < WINDOW_NS {
            return;
        }
        if age < 2 * WINDOW_NS {
            self.previous = self.current;
            self.has_previous = true;
            self.start_ns += WINDOW_NS;
        } else {
            // Quiet for over a minute: nothing in either window is recent.
            self.previous = [0; BUCKETS];
            self.has_previous = false;
            self.start_ns = now_ns;
        }
        self.current = [0; BUCKETS];
    }

    /// A connection that lived `life_ns` ended at `now_ns`.
    pub fn record(&mut self, life_ns: u64, now_ns: u64) {
        self.roll(now_ns);
        let i = EDGES_NS.partition_point(|&edge| edge <= life_ns);
        self.current[i] = self.current[i].saturating_add(1);
    }

    /// The statistics at `now_ns`; None when no connection ended in the last minute.
    pub fn stats(&mut self, now_ns: u64) -> Option<LifeStats> {
        self.roll(now_ns);
        // Per peer at every snapshot: on the stack.
        let counts: [u64; BUCKETS] =
            std::array::from_fn(|i| u64::from(self.current[i]) + u64::from(self.previous[i]));
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return None;
        }
        let from = if self.has_previous {
            self.start_ns.saturating_sub(WINDOW_NS)
        } else {
            self.start_ns
        };
        // At least one second, so a burst just after the start is not read as a huge rate.
        let covered_s = (now_ns.saturating_sub(from) as f64 / 1e9).max(1.0);
        let short: u64 = counts[..ONE_SECOND].iter().sum();
        let mut seen = 0;
        let mut median = BUCKETS - 1;
        for (i, &n) in counts.iter().enumerate() {
            seen += n;
            // The lower median: with an even count, the smaller middle value.
            if 2 * seen >= count {
                median = i;
                break;
            }
        }
        Some(LifeStats {
            per_s: count as f64 / covered_s,
            short_share: short as f64 / count as f64,
            median_le_s: EDGES_NS.get(median).map(|&e| e as f64 / 1e9),
            count,
        })
    }

    /// Whether anything ended in the last minute.
    pub fn is_empty(&self) -> bool {
        self.current.iter().chain(&self.previous).all(|&n| n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    #[test]
    fn nothing_recorded_gives_nothing() {
        let mut l = Lives::default();
        assert_eq!(l.stats(10 * S), None);
        assert!(l.is_empty());
    }

    #[test]
    fn short_lives_give_a_median_under_a_second_and_their_rate() {
        let mut l = Lives::default();
        // 100 connections of 2 ms over 10 s.
        for i in 0..100 {
            l.record(2 * MS, S + i * 100 * MS);
        }
        let s = l.stats(11 * S).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.short_share, 1.0);
        assert_eq!(s.median_le_s, Some(0.004));
        // Covered from the first life (1 s) to 11 s.
        assert!((s.per_s - 10.0).abs() < 1e-9, "{}", s.per_s);
    }

    #[test]
    fn the_median_is_the_middle_bucket() {
        let mut l = Lives::default();
        for _ in 0..3 {
            l.record(5 * S, S);
        }
        for _ in 0..2 {
            l.record(10 * MS, S);
        }
        let s = l.stats(2 * S).unwrap();
        assert_eq!(s.median_le_s, Some(16.0));
        assert_eq!(s.short_share, 0.4);
        // Exactly one second is not under a second.
        let mut l = Lives::default();
        l.record(S, S);
        assert_eq!(l.stats(2 * S).unwrap().short_share, 0.0);
        assert_eq!(l.stats(2 * S).unwrap().median_le_s, Some(4.0));
    }

    #[test]
    fn lives_older_than_a_minute_are_forgotten() {
        let mut l = Lives::default();
        l.record(MS, S);
        // 40 s later the first window became the previous one: still counted.
        l.record(MS, 41 * S);
        assert_eq!(l.stats(41 * S).unwrap().count, 2);
        // 80 s after the start the first life's window is gone.
        assert_eq!(l.stats(80 * S).unwrap().count, 1);
        // Quiet for more than a minute: nothing left.
        assert_eq!(l.stats(200 * S), None);
        assert!(l.is_empty());
    }

    #[test]
    fn very_long_lives_have_no_median_bound() {
        let mut l = Lives::default();
        l.record(5_000 * S, 5_001 * S);
        assert_eq!(l.stats(5_001 * S).unwrap().median_le_s, None);
    }
}
