//! Mapping the kernel's CLOCK_MONOTONIC event timestamps to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time = monotonic time + offset, sampled once. (NTP slews wall time slowly; a trace
/// of an incident is minutes long, so one sample is precise enough.)
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Nanoseconds since the Unix epoch at monotonic time 0.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let mono = monotonic_ns();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        Self {
            offset_ns: wall as i128 - i128::from(mono),
        }
    }

    /// For tests and recordings: a clock whose monotonic zero is at `epoch_ns` since the epoch.
    pub fn with_offset(epoch_ns: i128) -> Self {
        Self {
            offset_ns: epoch_ns,
        }
    }

    pub fn to_system_time(self, mono_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.to_unix_ns(mono_ns))
    }

    /// Nanoseconds since the Unix epoch at `mono_ns`, clamped to what a `u64` holds (before the
    /// epoch is the epoch). The same instant as [`Self::to_system_time`], without a
    /// `SystemTime` to take apart again (`duration_since` showed in the `--json` profile).
    pub fn to_unix_ns(self, mono_ns: u64) -> u64 {
        let ns = (i128::from(mono_ns) + self.offset_ns).max(0);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, which
    // is what bpf_ktime_get_ns() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_monotonic_to_wall_time() {
        let clock = WallClock::with_offset(1_700_000_000_000_000_000);
        let t = clock.to_system_time(1_500_000_000);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).ok(),
            Some(1_700_000_001_500_000_000)
        );
    }

    #[test]
    fn live_clock_is_close_to_now() {
        let clock = WallClock::now();
        let mapped = clock.to_system_time(monotonic_ns());
        let drift = SystemTime::now()
            .duration_since(mapped)
            .unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_secs(1), "{drift:?}");
    }
}
