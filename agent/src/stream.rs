//! The one stream every command consumes: what the kernel (or a recording of it) says, item by
//! item. A live source and a recording yield the same items, so every sink works on both.

use crate::{
    event::{Comm, Transition},
    kernel::sysctl::PortSettings,
    model::KernelSocket,
};

/// Whether a consumer wants more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// One item of the stream; a recording holds exactly these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Event(Transition),
    Kernel(KernelTruth),
    Stats(Stats),
    /// The stream stopped cleanly: a recording without it was cut short.
    End {
        mono_ns: u64,
    },
}

impl Item {
    /// The item's CLOCK_MONOTONIC time.
    pub fn mono_ns(&self) -> u64 {
        match self {
            Self::Event(t) => t.mono_ns,
            Self::Kernel(k) => k.dump_ns,
            Self::Stats(s) => s.mono_ns,
            Self::End { mono_ns } => *mono_ns,
        }
    }
}

/// What a reconciliation with the kernel used: the kernel's socket table, the owners found for
/// its unowned sockets (inode -> pid, comm), and sockstat's `tw`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTruth {
    pub dump_ns: u64,
    pub sockets: Vec<KernelSocket>,
    pub owners: Vec<(u64, u32, Comm)>,
    pub timewait_kernel: Option<u64>,
    /// Each dumped namespace's local-port sysctls, read with the dump (live only: a recording
    /// does not hold them, and a replay uses its header's).
    pub port_settings: Vec<(u32, PortSettings)>,
}

/// The tracer's counters at one moment (written once a second).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub mono_ns: u64,
    pub kernel: KernelStats,
    /// sockstat's `tw`, summed over every network namespace read.
    pub timewait_kernel: Option<u64>,
    /// Network namespaces whose sockets were read (None: only twtrace's own).
    pub namespaces: Option<u32>,
}

/// Counters kept by the kernel program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Events handed to the ring buffer.
    pub events: u64,
    /// Events dropped because the ring buffer was full.
    pub lost: u64,
    /// Sockets not tracked because the socket table was full.
    pub table_full: u64,
    /// Events sent without a known owner.
    pub unattributed: u64,
    /// Accepted sockets whose listener was unknown.
    pub listener_miss: u64,
    /// Events dropped by the in-kernel filters.
    pub filtered: u64,
    /// Tracepoint hits the kernel skipped because another BPF program was running on that CPU
    /// (the programs' `recursion_misses`): events lost before the program ran.
    pub skipped: u64,
    /// accept() returned a socket the kernel program had no entry for (its owner stays the
    /// listener's until a reconcile asks /proc).
    pub accept_miss: u64,
}

impl KernelStats {
    /// What happened since `base` (counters taken earlier in the same run).
    pub fn since(&self, base: &Self) -> Self {
        Self {
            events: self.events.saturating_sub(base.events),
            lost: self.lost.saturating_sub(base.lost),
            table_full: self.table_full.saturating_sub(base.table_full),
            unattributed: self.unattributed.saturating_sub(base.unattributed),
            listener_miss: self.listener_miss.saturating_sub(base.listener_miss),
            filtered: self.filtered.saturating_sub(base.filtered),
            skipped: self.skipped.saturating_sub(base.skipped),
            accept_miss: self.accept_miss.saturating_sub(base.accept_miss),
        }
    }

    /// Every event that never reached twtrace: the ring buffer was full, or the kernel skipped
    /// the program.
    pub fn lost_total(&self) -> u64 {
        self.lost.saturating_add(self.skipped)
    }
}

/// What the user is told when a run ends: the events seen and everything that went wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events that reached the sinks (after the selection).
    pub received: u64,
    pub unattributed: u64,
    /// The kernel program's counters over the run (or over the replayed window).
    pub kernel: KernelStats,
    /// Records from the kernel that could not be decoded.
    pub undecodable: u64,
}

impl Tally {
    /// `twtrace: N events, N lost, N unattributed` and whatever else went wrong, never silently.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "twtrace: {} events, {} lost, {} unattributed",
            self.received,
            self.kernel.lost_total(),
            self.unattributed
        );
        let extras = [
            (
                self.kernel.skipped,
                "of the lost skipped by the kernel (another BPF program was running on that CPU)",
            ),
            (self.kernel.table_full, "not tracked (socket table full)"),
            (
                self.kernel.listener_miss,
                "accepted sockets with no known listener",
            ),
            (
                self.kernel.accept_miss,
                "accept()s of sockets not in the socket table",
            ),
            (self.undecodable, "undecodable"),
        ];
        for (n, what) in extras {
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_every_problem_and_only_those() {
        let clean = Tally {
            received: 10,
            unattributed: 2,
            ..Tally::default()
        };
        assert_eq!(
            clean.summary(),
            "twtrace: 10 events, 0 lost, 2 unattributed"
        );
        let bad = Tally {
            kernel: KernelStats {
                lost: 3,
                table_full: 4,
                listener_miss: 5,
                skipped: 7,
                ..KernelStats::default()
            },
            undecodable: 6,
            ..clean
        };
        assert_eq!(
            bad.summary(),
            "twtrace: 10 events, 10 lost, 2 unattributed, 7 of the lost skipped by the kernel \
             (another BPF program was running on that CPU), 4 not tracked (socket table full), \
             5 accepted sockets with no known listener, 6 undecodable"
        );
    }

    #[test]
    fn counters_since_a_base_never_underflow() {
        let base = KernelStats {
            events: 5,
            lost: 2,
            ..KernelStats::default()
        };
        let now = KernelStats {
            events: 9,
            lost: 1,
            ..KernelStats::default()
        };
        let d = now.since(&base);
        assert_eq!((d.events, d.lost), (4, 0));
    }
}
