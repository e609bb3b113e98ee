//! CLOSE_WAIT leak evidence: how old each process's CLOSE_WAIT sockets are, and how its gauges
//! moved over the last minute.
//!
//! A socket in CLOSE_WAIT means the peer closed and the local process has not called close():
//! an HTTP client or a pool that never releases connections. One young CLOSE_WAIT is normal (the
//! process has not read the end of the stream yet); many old ones, or a count that keeps
//! growing, are a leak.

use std::{collections::VecDeque, fmt};

use serde::{Serialize, Serializer, ser::SerializeMap as _};

/// Upper bounds of the age buckets, in seconds; the last bucket has none.
pub const AGE_EDGES_S: [u64; 6] = [1, 10, 30, 60, 300, 1800];
/// The buckets' names in the JSON and the text.
const AGE_LABELS: [&str; 7] = [
    "lt_1s", "lt_10s", "lt_30s", "lt_1m", "lt_5m", "lt_30m", "ge_30m",
];

/// A process's CLOSE_WAIT sockets counted by age.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseWaitAges(pub [u64; 7]);

impl CloseWaitAges {
    pub fn add(&mut self, age_ns: u64) {
        let s = age_ns / 1_000_000_000;
        let i = AGE_EDGES_S.partition_point(|&edge| edge <= s);
        self.0[i] += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }
}

/// `{"lt_1s": 2, "lt_30m": 7}`: the non-empty buckets.
impl Serialize for CloseWaitAges {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (label, &n) in AGE_LABELS.iter().zip(&self.0) {
            if n > 0 {
                map.serialize_entry(label, &n)?;
            }
        }
        map.end()
    }
}

/// `<1s:2 <30m:7`, for text output.
impl fmt::Display for CloseWaitAges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (label, &n) in AGE_LABELS.iter().zip(&self.0) {
            if n > 0 {
                let label = label.replace("lt_", "<").replace("ge_", ">=");
                write!(f, "{}{label}:{n}", if first { "" } else { " " })?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A process's gauges at one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub mono_ns: u64,
    pub close_wait: u64,
    pub established: u64,
}

/// How far back growth is measured.
const WINDOW_NS: u64 = 60_000_000_000;
/// Growth is not extrapolated from less than this.
const MIN_SPAN_NS: u64 = 10_000_000_000;
/// ESTABLISHED "only grows" when it grew by at least this much without ever falling ...
const EST_GROWTH_MIN: u64 = 10;
/// ... over at least this long.
const EST_SPAN_NS: u64 = 30_000_000_000;

/// Adds `sample` and forgets those older than a minute (keeping the newest of those, so the
/// span can reach a full minute).
pub fn push(samples: &mut VecDeque<Sample>, sample: Sample) {
    samples.push_back(sample);
    while samples.len() > 1
        && samples
            .get(1)
            .is_some_and(|s| sample.mono_ns.saturating_sub(s.mono_ns) >= WINDOW_NS)
    {
        samples.pop_front();
    }
}

/// CLOSE_WAIT growth per minute over the samples' span (0 over less than 10 s).
pub fn close_wait_growth_per_min(samples: &VecDeque<Sample>) -> f64 {
    growth_per_min(samples, |s| s.close_wait)
}

/// ESTABLISHED growth per minute over the samples' span (0 over less than 10 s).
pub fn established_growth_per_min(samples: &VecDeque<Sample>) -> f64 {
    growth_per_min(samples, |s| s.established)
}

fn growth_per_min(samples: &VecDeque<Sample>, gauge: impl Fn(&Sample) -> u64) -> f64 {
    let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
        return 0.0;
    };
    let span = last.mono_ns.saturating_sub(first.mono_ns);
    if span < MIN_SPAN_NS {
        return 0.0;
    }
    let delta = gauge(last) as f64 - gauge(first) as f64;
    round(delta * 60e9 / span as f64, 1)
}

/// Whether ESTABLISHED only grew: by at least 10, never falling, over at least 30 s.
pub fn established_only_grows(samples: &VecDeque<Sample>) -> bool {
    let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
        return false;
    };
    last.mono_ns.saturating_sub(first.mono_ns) >= EST_SPAN_NS
        && last.established >= first.established + EST_GROWTH_MIN
        && samples
            .iter()
            .zip(samples.iter().skip(1))
            .all(|(a, b)| b.established >= a.established)
}

/// `x` rounded to `digits` decimals, for JSON that people read.
pub fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn sample(t: u64, cw: u64, est: u64) -> Sample {
        Sample {
            mono_ns: t * S,
            close_wait: cw,
            established: est,
        }
    }

    #[test]
    fn ages_fall_in_their_buckets() {
        let mut a = CloseWaitAges::default();
        for s in [0, 1, 29, 30, 59, 60, 299, 300, 1799, 1800, 100_000] {
            a.add(s * S);
        }
        assert_eq!(a.0, [1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"lt_1s":1,"lt_10s":1,"lt_30s":1,"lt_1m":2,"lt_5m":2,"lt_30m":2,"ge_30m":2}"#
        );
        let mut b = CloseWaitAges::default();
        b.add(45 * S);
        b.add(2000 * S);
        assert_eq!(b.to_string(), "<1m:1 >=30m:1");
        assert!(CloseWaitAges::default().is_empty());
    }

    #[test]
    fn growth_is_per_minute_over_the_span() {
        let mut v = VecDeque::new();
        push(&mut v, sample(0, 0, 0));
        push(&mut v, sample(5, 5, 0));
        // Under 10 s: no extrapolation.
        assert_eq!(close_wait_growth_per_min(&v), 0.0);
        push(&mut v, sample(30, 30, 0));
        assert_eq!(close_wait_growth_per_min(&v), 60.0);
        // Falling counts give negative growth.
        push(&mut v, sample(60, 0, 0));
        assert_eq!(close_wait_growth_per_min(&v), 0.0);
        push(&mut v, sample(90, 0, 0));
        // The window keeps a minute: samples 30 s, 60 s and 90 s; 30 fewer over 60 s.
        assert_eq!(v.len(), 3);
        assert_eq!(close_wait_growth_per_min(&v), -30.0);
    }

    #[test]
    fn established_only_grows_needs_growth_without_a_fall_over_thirty_seconds() {
        let mut v = VecDeque::new();
        for (t, est) in [(0, 1), (10, 5), (20, 8), (30, 11)] {
            push(&mut v, sample(t, 0, est));
        }
        assert!(established_only_grows(&v));
        let mut dip = VecDeque::new();
        for (t, est) in [(0, 1), (10, 5), (20, 4), (30, 20)] {
            push(&mut dip, sample(t, 0, est));
        }
        assert!(!established_only_grows(&dip));
        let mut short = VecDeque::new();
        for (t, est) in [(0, 1), (10, 50)] {
            push(&mut short, sample(t, 0, est));
        }
        assert!(!established_only_grows(&short));
    }
}
