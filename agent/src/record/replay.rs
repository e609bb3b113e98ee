//! Replays a recording through a fresh [`Model`]: events are applied, recorded kernel-truth
//! dumps reconciled (with the owners found when they were recorded), and a snapshot is taken at
//! every recorded second, exactly as the live leaderboard did.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::format::{Header, KernelTruth, Record, Stats};
use crate::{
    event::{Attribution, Comm, Transition},
    model::{Limits, Model, Outside},
    run::Tally,
    snapshot::Snapshot,
    tracer::KernelStats,
};

/// Which part of a recording to look at.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    /// Monotonic ns bounds (inclusive); replaying from `since` is as if twtrace had been started
    /// then.
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

impl Selection {
    pub fn event(&self, t: &Transition) -> bool {
        (self.pids.is_empty() || self.pids.contains(&t.pid))
            && (self.ports.is_empty()
                || self.ports.contains(&t.local.port())
                || self.ports.contains(&t.remote.port()))
    }

    /// Where a record stands relative to the time window.
    pub fn when(&self, mono_ns: u64) -> Window {
        if self.since_ns.is_some_and(|s| mono_ns < s) {
            Window::Before
        } else if self.until_ns.is_some_and(|u| mono_ns > u) {
            Window::After
        } else {
            Window::In
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Before,
    In,
    After,
}

/// One second of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelinePoint {
    pub time: String,
    pub timewait_per_s: f64,
    pub timewait_now: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timewait_kernel: Option<u64>,
}

pub struct Replay {
    header: Header,
    sel: Selection,
    model: Option<Model>,
    pub tally: Tally,
    /// The tracer's counters at the last stats record in the window.
    pub stats: KernelStats,
    /// The counters at the first stats record in the window (losses are reported from there).
    stats_base: Option<KernelStats>,
    timewait_kernel: Option<u64>,
    pub timeline: Vec<TimelinePoint>,
    pub last: Option<Snapshot>,
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    /// Records applied since the last snapshot.
    since_snapshot: u64,
    /// Snapshots are taken at recorded seconds at least this far apart (the leaderboard's
    /// --interval).
    interval_ns: u64,
    last_snapshot_ns: Option<u64>,
    keep: HashSet<u32>,
}

impl Replay {
    pub fn new(header: Header, sel: Selection) -> Self {
        // Both the recording's --pid and the report's narrow the view.
        let keep: HashSet<u32> = if header.filters.pids.is_empty() {
            sel.pids.iter().copied().collect()
        } else if sel.pids.is_empty() {
            header.filters.pids.iter().copied().collect()
        } else {
            sel.pids
                .iter()
                .copied()
                .filter(|p| header.filters.pids.contains(p))
                .collect()
        };
        Self {
            header,
            sel,
            model: None,
            tally: Tally::default(),
            stats: KernelStats::default(),
            stats_base: None,
            timewait_kernel: None,
            timeline: Vec::new(),
            last: None,
            first_ns: None,
            last_ns: None,
            since_snapshot: 0,
            interval_ns: 1_000_000_000,
            last_snapshot_ns: None,
            keep,
        }
    }

    /// Seconds between snapshots (default 1: every recorded second).
    pub fn set_interval(&mut self, secs: f64) {
        self.interval_ns = (secs * 1e9) as u64;
    }

    /// Snapshots taken so far.
    pub fn snapshots(&self) -> usize {
        self.timeline.len()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Feeds one record. Returns false once past the window's end (nothing later matters).
    pub fn feed(&mut self, r: &Record) -> bool {
        match self.sel.when(r.mono_ns()) {
            Window::Before => return true,
            Window::After => return false,
            Window::In => {}
        }
        let ns = r.mono_ns();
        self.first_ns.get_or_insert(ns);
        self.last_ns = Some(self.last_ns.map_or(ns, |l| l.max(ns)));
        let start = self
            .sel
            .since_ns
            .unwrap_or(self.header.start_mono_ns)
            .min(ns);
        let model = self
            .model
            .get_or_insert_with(|| Model::new(start, Limits::default()));
        match r {
            Record::Event(t) => {
                if !self.sel.event(t) {
                    return true;
                }
                self.tally.received += 1;
                if t.attribution == Attribution::Unknown {
                    self.tally.unattributed += 1;
                }
                model.apply(t);
                self.since_snapshot += 1;
            }
            Record::Kernel(k) => {
                reconcile(model, k, &self.sel.ports, &self.keep);
                self.timewait_kernel = k.timewait_kernel;
                self.since_snapshot += 1;
            }
            Record::Stats(s) => self.tick(s),
            Record::End { .. } => {}
        }
        true
    }

    fn tick(&mut self, s: &Stats) {
        self.stats_base.get_or_insert(s.kernel);
        self.stats = s.kernel;
        if s.timewait_kernel.is_some() {
            self.timewait_kernel = s.timewait_kernel;
        }
        // Stats records are about a second apart, give or take the recorder's scheduling.
        let due = self.last_snapshot_ns.is_none_or(|last| {
            s.mono_ns.saturating_add(100_000_000) >= last.saturating_add(self.interval_ns)
        });
        if due {
            self.snapshot(s.mono_ns);
        }
    }

    fn snapshot(&mut self, now_ns: u64) {
        let outside = Outside {
            lost_events: self.lost(),
            timewait_kernel: self.timewait_kernel,
        };
        let Some(model) = self.model.as_mut() else {
            return;
        };
        let time = humantime::format_rfc3339_seconds(self.header.wall_time(now_ns)).to_string();
        // Every process stays in the report: whether it still exists is not in the recording
        // and does not matter after the fact.
        let snap = model.snapshot(now_ns, time.clone(), outside, &|_| true);
        self.timeline.push(TimelinePoint {
            time,
            timewait_per_s: snap.totals.timewait_per_s,
            timewait_now: snap.totals.timewait_now,
            timewait_kernel: snap.totals.timewait_kernel,
        });
        self.last = Some(snap);
        self.since_snapshot = 0;
        self.last_snapshot_ns = Some(now_ns);
    }

    /// Events lost within the window.
    pub fn lost(&self) -> u64 {
        self.stats
            .lost
            .saturating_sub(self.stats_base.map_or(0, |b| b.lost))
    }

    /// The final snapshot: the last one taken, or one at the last record if records came after.
    pub fn finish(&mut self) -> Option<Snapshot> {
        if (self.last.is_none() || self.since_snapshot > 0)
            && let Some(ns) = self.last_ns
        {
            self.snapshot(ns);
        }
        self.last.clone()
    }
}

/// Reconciles `model` with a recorded dump: the same filtering as the live leaderboard, and the
/// owners the recorder found answer the model's questions.
pub fn reconcile(model: &mut Model, k: &KernelTruth, ports: &[u16], keep: &HashSet<u32>) {
    let filtered;
    let sockets = if ports.is_empty() {
        &k.sockets[..]
    } else {
        filtered = k
            .sockets
            .iter()
            .filter(|s| ports.contains(&s.local.port()) || ports.contains(&s.remote.port()))
            .copied()
            .collect::<Vec<_>>();
        &filtered[..]
    };
    let known: HashMap<u64, (u32, Comm)> = k
        .owners
        .iter()
        .map(|&(inode, pid, comm)| (inode, (pid, comm)))
        .collect();
    let mut owners = |inodes: &[u64]| -> HashMap<u64, (u32, Comm)> {
        inodes
            .iter()
            .filter_map(|i| known.get(i).map(|&o| (*i, o)))
            .collect()
    };
    model.reconcile(sockets, k.dump_ns, &mut owners, &|pid| {
        keep.is_empty() || keep.contains(&pid)
    });
}
