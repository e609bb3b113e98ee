//! What the leaderboard shows at one instant: plain data built by `crate::model`, rendered by the
//! JSON and table printers and the terminal UI. Field names are the JSON schema (`twtrace --json`).

use std::fmt;

use jiff::Timestamp;
use serde::{Serialize, Serializer};

/// One refresh of the leaderboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// When the snapshot was taken; written in RFC 3339 UTC with whole seconds. The default,
    /// the Unix epoch, marks the placeholder a view shows before the first snapshot.
    #[serde(serialize_with = "whole_seconds")]
    pub time: Timestamp,
    /// Seconds covered by the `*_per_s` rates.
    pub interval_s: f64,
    /// Seconds since twtrace started.
    pub uptime_s: f64,
    /// Events the kernel could not hand over (ring buffer full) since start.
    pub lost_events: u64,
    /// Events since start whose socket had no known owner.
    pub unattributed_events: u64,
    pub totals: Totals,
    /// Sorted by TIME_WAIT entered in the interval, then in total, then pid.
    pub processes: Vec<ProcessRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// TIME_WAIT sockets alive now, as twtrace counts them (owned ones plus "(before start)").
    pub timewait_now: u64,
    /// The kernel's own count (`tw` in /proc/net/sockstat), when readable.
    pub timewait_kernel: Option<u64>,
    pub close_wait_now: u64,
    pub established_now: u64,
    /// TIME_WAIT entries since start.
    pub timewait_entered: u64,
    pub timewait_per_s: f64,
}

/// One process. `pid` 0 with `comm` "(before start)" holds sockets that existed before twtrace
/// started and have no known owner.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: String,
    /// Since start.
    pub timewait_entered: u64,
    /// In the last interval.
    pub timewait_per_s: f64,
    pub timewait_now: u64,
    pub close_wait_now: u64,
    pub established_now: u64,
    /// Connections opened (connect() or accepted) since start.
    pub opens: u64,
    pub opens_per_s: f64,
    /// Connections ended (CLOSE or TIME_WAIT) since start.
    pub closes: u64,
    pub closes_per_s: f64,
    /// Connections ended by a reset (sent or received) since start.
    pub resets: u64,
    /// TIME_WAIT entries per second over the last minute, oldest first (the drill-down's
    /// sparkline). Not in the JSON: the rates above carry the same information per interval.
    #[serde(skip)]
    pub timewait_history: Vec<u64>,
    /// Sorted like the processes; capped, with the rest summed in a peer whose `raddr` is "other".
    pub peers: Vec<PeerRow>,
}

/// Where a process's connections go. Outgoing connections are keyed by the remote address and
/// port; accepted ones by the client's address and the local (listening) port, with `rport` 0,
/// because a client's ephemeral port says nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerRow {
    pub raddr: String,
    pub rport: u16,
    /// The local listening port, for connections the process accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lport: Option<u16>,
    pub timewait_entered: u64,
    pub timewait_now: u64,
    pub close_wait_now: u64,
    pub established_now: u64,
}

/// Writes a time as snapshots do, in the JSON and the table: RFC 3339 in UTC with whole
/// seconds, the fraction cut off ("2026-11-25T16:00:00Z").
pub fn whole_seconds<S: Serializer>(time: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&WholeSeconds(*time))
}

/// A time shown as RFC 3339 in UTC with whole seconds, the fraction cut off.
#[derive(Clone, Copy, Debug)]
pub struct WholeSeconds(pub Timestamp);

impl fmt::Display for WholeSeconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Precision 0 truncates (as humantime's `format_rfc3339_seconds` did).
        write!(f, "{:.0}", self.0)
    }
}

/// The comm shown for sockets that predate twtrace and have no known owner.
pub const BEFORE_START: &str = "(before start)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_with_whole_seconds() {
        let t: Timestamp = "2026-11-25T16:00:00.999999Z".parse().expect("time");
        assert_eq!(WholeSeconds(t).to_string(), "2026-11-25T16:00:00Z");
        let snap = Snapshot {
            time: t,
            ..Snapshot::default()
        };
        let v = serde_json::to_value(&snap).expect("json");
        assert_eq!(v["time"], "2026-11-25T16:00:00Z");
    }
}
