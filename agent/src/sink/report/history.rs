//! What a report keeps of every second besides the totals: per-process series (TIME_WAIT entered
//! per second, TIME_WAIT now, CLOSE_WAIT now) for the processes that ever ranked near the top,
//! and each process's CLOSE_WAIT peak. The final snapshot alone would show a process that held
//! 30 connections in CLOSE_WAIT and closed them before the end as 0.
//!
//! Memory is bounded whatever the recording's length: at most [`SERIES_MAX`] series of at most
//! [`SERIES_POINTS`] points each (beyond, neighbouring points merge, each then covering twice
//! the time), and at most [`PEAKS_MAX`] peaks.

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;

use crate::model::snapshot::{ProcessRow, Snapshot};

/// A process gets a series once it is among this many by TIME_WAIT rate or by CLOSE_WAIT now.
pub const SERIES_TOP: usize = 20;
/// Processes with a series; later entrants are counted, not charted.
pub const SERIES_MAX: usize = 64;
/// Points per series; past that, every two neighbouring points merge into one.
pub const SERIES_POINTS: usize = 2048;
/// Processes whose CLOSE_WAIT peak is kept; past that, the smallest peak makes room.
pub const PEAKS_MAX: usize = 4096;
/// Processes refused a series that are remembered, to count them.
const REFUSED_MAX: usize = 10_000;

/// One point of a series: one snapshot, or several merged.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    /// The sum of the TIME_WAIT rates of the snapshots merged here.
    tw_sum: f64,
    /// Snapshots merged here.
    n: u32,
    /// The highest TIME_WAIT now among them.
    pub tw_now: u64,
    /// The highest CLOSE_WAIT now among them.
    pub cw_now: u64,
}

impl Point {
    fn of(row: Option<&ProcessRow>) -> Self {
        row.map_or(
            Self {
                n: 1,
                ..Self::default()
            },
            |r| Self {
                tw_sum: r.timewait_per_s,
                n: 1,
                tw_now: r.timewait_now,
                cw_now: r.close_wait_now,
            },
        )
    }

    fn merge(&mut self, other: &Self) {
        self.tw_sum += other.tw_sum;
        self.n += other.n;
        self.tw_now = self.tw_now.max(other.tw_now);
        self.cw_now = self.cw_now.max(other.cw_now);
    }

    /// TIME_WAIT entered per second: the mean over the snapshots merged here.
    pub fn tw_per_s(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.tw_sum / f64::from(self.n)
        }
    }
}

/// One process's series, from the bucket it entered the top on; a snapshot without the process
/// counts as zeros.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub pid: u32,
    /// Its latest name.
    pub comm: String,
    /// The bucket of the first point.
    pub start: usize,
    pub points: Vec<Point>,
}

/// A process's highest CLOSE_WAIT now, and the first snapshot that saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    pub comm: String,
    pub close_wait: u64,
    pub time: Timestamp,
    /// The oldest any of its CLOSE_WAIT sockets got, in seconds, over the whole recording
    /// (a lower bound when `oldest_at_least`: the socket predates the recording).
    pub oldest_s: f64,
    pub oldest_at_least: bool,
}

/// Everything kept, snapshot by snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// Snapshots per bucket (a power of two); bucket `b` starts at snapshot `b * step`.
    pub step: usize,
    /// Snapshots seen.
    pub snapshots: usize,
    pub series: Vec<Series>,
    index: HashMap<u32, usize>,
    /// Processes that reached the top once every series was taken (at most REFUSED_MAX).
    refused: BTreeSet<u32>,
    peaks: HashMap<u32, Peak>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            step: 1,
            snapshots: 0,
            series: Vec::new(),
            index: HashMap::new(),
            refused: BTreeSet::new(),
            peaks: HashMap::new(),
        }
    }
}

impl History {
    pub fn push(&mut self, snap: &Snapshot) {
        self.track_top(snap);
        let rows: HashMap<u32, &ProcessRow> = snap.processes.iter().map(|p| (p.pid, p)).collect();
        let bucket = self.snapshots / self.step;
        for s in &mut self.series {
            let row = rows.get(&s.pid).copied();
            if let Some(r) = row {
                s.comm.clone_from(&r.comm);
            }
            add(s, bucket, Point::of(row));
        }
        for p in &snap.processes {
            self.peak(p, snap.time);
        }
        self.snapshots += 1;
        if self.snapshots.div_ceil(self.step) > SERIES_POINTS {
            self.compact();
        }
    }

    /// Gives a series to the processes now in the top by TIME_WAIT rate or CLOSE_WAIT now.
    fn track_top(&mut self, snap: &Snapshot) {
        let mut by_rate: Vec<&ProcessRow> = snap
            .processes
            .iter()
            .filter(|p| p.timewait_per_s > 0.0)
            .collect();
        by_rate.sort_by(|a, b| b.timewait_per_s.total_cmp(&a.timewait_per_s));
        let mut by_cw: Vec<&ProcessRow> = snap
            .processes
            .iter()
            .filter(|p| p.close_wait_now > 0)
            .collect();
        by_cw.sort_by_key(|p| std::cmp::Reverse(p.close_wait_now));
        let top = by_rate
            .iter()
            .take(SERIES_TOP)
            .chain(by_cw.iter().take(SERIES_TOP));
        for p in top {
            if self.index.contains_key(&p.pid) {
                continue;
            }
            if self.series.len() < SERIES_MAX {
                self.index.insert(p.pid, self.series.len());
                self.series.push(Series {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    start: self.snapshots / self.step,
                    points: Vec::new(),
                });
            } else if self.refused.len() < REFUSED_MAX {
                self.refused.insert(p.pid);
            }
        }
    }

    fn peak(&mut self, p: &ProcessRow, time: Timestamp) {
        if p.close_wait_now == 0 {
            return;
        }
        if let Some(peak) = self.peaks.get_mut(&p.pid) {
            if p.close_wait_oldest_s > peak.oldest_s {
                peak.oldest_s = p.close_wait_oldest_s;
                peak.oldest_at_least = p.close_wait_oldest_at_least;
            }
            if p.close_wait_now > peak.close_wait {
                *peak = Peak {
                    comm: p.comm.clone(),
                    close_wait: p.close_wait_now,
                    time,
                    ..*peak
                };
            }
            return;
        }
        if self.peaks.len() >= PEAKS_MAX {
            // The smallest peak makes room for a bigger one (rare: only with thousands of
            // processes holding CLOSE_WAIT).
            let smallest = self
                .peaks
                .iter()
                .min_by_key(|(pid, k)| (k.close_wait, std::cmp::Reverse(**pid)))
                .map(|(&pid, k)| (pid, k.close_wait));
            match smallest {
                Some((pid, least)) if least < p.close_wait_now => {
                    self.peaks.remove(&pid);
                }
                _ => return,
            }
        }
        self.peaks.insert(
            p.pid,
            Peak {
                comm: p.comm.clone(),
                close_wait: p.close_wait_now,
                time,
                oldest_s: p.close_wait_oldest_s,
                oldest_at_least: p.close_wait_oldest_at_least,
            },
        );
    }

    /// Halves the resolution: every two neighbouring buckets become one.
    fn compact(&mut self) {
        for s in &mut self.series {
            let old = std::mem::take(&mut s.points);
            let first = s.start;
            s.start = first / 2;
            for (j, p) in old.iter().enumerate() {
                add(s, (first + j) / 2, *p);
            }
        }
        self.step *= 2;
    }

    /// `pid`'s CLOSE_WAIT peak, if it ever had one.
    pub fn peak_of(&self, pid: u32) -> Option<&Peak> {
        self.peaks.get(&pid)
    }

    /// Every CLOSE_WAIT peak kept, highest first (then by pid).
    pub fn peaks(&self) -> Vec<(u32, &Peak)> {
        let mut v: Vec<(u32, &Peak)> = self.peaks.iter().map(|(&pid, k)| (pid, k)).collect();
        v.sort_by(|a, b| b.1.close_wait.cmp(&a.1.close_wait).then(a.0.cmp(&b.0)));
        v
    }

    /// Processes that reached the top after every series was taken (a lower bound past 10,000).
    pub fn refused(&self) -> usize {
        self.refused.len()
    }
}

/// Adds `p` to `s` at `bucket`: merged into the last point if that is the same bucket.
fn add(s: &mut Series, bucket: usize, p: Point) {
    if s.start + s.points.len() == bucket + 1
        && let Some(last) = s.points.last_mut()
    {
        last.merge(&p);
    } else {
        s.points.push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(second: i64, rows: &[(u32, f64, u64)]) -> Snapshot {
        Snapshot {
            time: Timestamp::from_second(1_795_564_800 + second).expect("time"),
            processes: rows
                .iter()
                .map(|&(pid, rate, cw)| ProcessRow {
                    pid,
                    comm: format!("p{pid}"),
                    timewait_per_s: rate,
                    close_wait_now: cw,
                    ..ProcessRow::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_closed_leak_keeps_its_peak_and_its_series() {
        let mut h = History::default();
        h.push(&snap(0, &[(1, 5.0, 0), (2, 0.0, 0)]));
        h.push(&snap(1, &[(1, 5.0, 0), (2, 0.0, 30)]));
        h.push(&snap(2, &[(1, 5.0, 0), (2, 0.0, 12)]));
        h.push(&snap(3, &[(1, 5.0, 0)]));
        let peak = h.peak_of(2).expect("peak");
        assert_eq!(peak.close_wait, 30);
        assert_eq!(peak.time, Timestamp::from_second(1_795_564_801).expect("t"));
        assert!(h.peak_of(1).is_none());
        let s2 = &h.series[h.index[&2]];
        assert_eq!(s2.start, 1, "entered the top at its first CLOSE_WAIT");
        let cw: Vec<u64> = s2.points.iter().map(|p| p.cw_now).collect();
        assert_eq!(cw, [30, 12, 0], "zeros once it is gone");
        assert_eq!(h.series[h.index[&1]].points.len(), 4);
    }

    #[test]
    fn series_are_capped_and_say_so() {
        let mut h = History::default();
        let rows: Vec<(u32, f64, u64)> = (1..=SERIES_TOP as u32 * 5)
            .map(|pid| (pid, f64::from(pid), 0))
            .collect();
        // A different top each second: the fastest SERIES_TOP, then the next ones.
        for (i, chunk) in rows.chunks(SERIES_TOP).enumerate() {
            h.push(&snap(i as i64, chunk));
        }
        assert_eq!(h.series.len(), SERIES_MAX);
        assert_eq!(h.refused(), SERIES_TOP * 5 - SERIES_MAX);
    }

    #[test]
    fn long_recordings_merge_points_keeping_peaks_and_means() {
        let mut h = History::default();
        let n = SERIES_POINTS * 4 - 1;
        for i in 0..n {
            let cw = if i == 1001 { 9 } else { 1 };
            h.push(&snap(i as i64, &[(7, (i % 2) as f64 * 2.0, cw)]));
        }
        assert_eq!(h.step, 4);
        let s = &h.series[0];
        assert_eq!(s.start, 0);
        assert!(s.points.len() <= SERIES_POINTS, "{}", s.points.len());
        assert_eq!(s.points.len(), n.div_ceil(4));
        assert_eq!(s.points[1001 / 4].cw_now, 9, "a peak survives merging");
        assert_eq!(s.points[0].tw_per_s(), 1.0, "rates are means");
        assert_eq!(s.points.iter().map(|p| p.n).sum::<u32>(), n as u32);
    }

    #[test]
    fn peaks_are_bounded_by_evicting_the_smallest() {
        let mut h = History::default();
        let rows: Vec<(u32, f64, u64)> = (1..=PEAKS_MAX as u32).map(|pid| (pid, 0.0, 1)).collect();
        h.push(&snap(0, &rows));
        h.push(&snap(1, &[(999_999, 0.0, 5)]));
        assert_eq!(h.peaks().len(), PEAKS_MAX);
        assert_eq!(h.peaks()[0].0, 999_999);
        h.push(&snap(2, &[(888_888, 0.0, 1)]));
        assert!(h.peak_of(888_888).is_none(), "not bigger than the smallest");
    }
}
