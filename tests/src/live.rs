//! Harness for the leaderboard in JSON mode (`twtrace --json --interval 1 ...`): one snapshot
//! object per line.

use std::{process::ExitStatus, time::Duration};

use serde_json::Value;

use crate::{Attached, Stopped};

/// A running `twtrace --json ...`.
pub struct Live(Attached);

/// Everything a stopped leaderboard printed.
pub struct LiveRun {
    pub snapshots: Vec<Value>,
    pub stderr: Vec<String>,
    pub status: ExitStatus,
}

impl Live {
    /// Starts `twtrace --json --interval 1 <args>` and returns once it is attached.
    pub fn start(args: &[String]) -> Self {
        let mut all: Vec<String> = ["--json", "--interval", "1"].map(String::from).into();
        all.extend_from_slice(args);
        Self(Attached::start(&all))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Waits `settle` (at least one snapshot and one reconciliation), stops twtrace with
    /// SIGTERM and parses every snapshot it printed.
    pub fn stop_after(self, settle: Duration) -> LiveRun {
        let Stopped {
            stdout,
            stderr,
            status,
        } = self.0.stop_after(settle);
        let snapshots = stdout
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON snapshot ({e}): {l}"))
            })
            .collect();
        assert!(
            status.success(),
            "twtrace exited with {status}; stderr: {stderr:#?}"
        );
        LiveRun {
            snapshots,
            stderr,
            status,
        }
    }
}

impl LiveRun {
    pub fn last(&self) -> &Value {
        self.snapshots
            .last()
            .unwrap_or_else(|| panic!("no snapshot printed; stderr: {:#?}", self.stderr))
    }
}

/// The row of `pid` in a snapshot.
pub fn process(snapshot: &Value, pid: u32) -> Option<&Value> {
    snapshot["processes"]
        .as_array()?
        .iter()
        .find(|p| p["pid"] == pid)
}

/// A counter of `pid`'s row, 0 when the process has no row.
pub fn counter(snapshot: &Value, pid: u32, field: &str) -> u64 {
    process(snapshot, pid)
        .and_then(|p| p[field].as_u64())
        .unwrap_or(0)
}

/// `pid`'s timewait entries in both substates: `timewait_entered` (TIME_WAIT) plus
/// `fin_wait2_entered` (orphans whose peer had not closed yet). Every connection leaves one
/// timewait entry on the side that closed first; which substate it starts in depends on
/// whether the peer closed before our FIN was acknowledged (docs/kernel.md), so a test that
/// counts one entry per connection counts both.
pub fn timewait_entries(snapshot: &Value, pid: u32) -> u64 {
    counter(snapshot, pid, "timewait_entered") + counter(snapshot, pid, "fin_wait2_entered")
}

/// Resets that ended `pid`'s outgoing connections to port `rport` (its peer rows without an
/// `lport`). Such a connection made no timewait entry: the kernel makes none after a reset.
pub fn outgoing_resets(snapshot: &Value, pid: u32, rport: u16) -> u64 {
    process(snapshot, pid)
        .and_then(|p| p["peers"].as_array())
        .into_iter()
        .flatten()
        .filter(|peer| peer.get("lport").is_none() && peer["rport"] == rport)
        .filter_map(|peer| peer["resets"].as_u64())
        .sum()
}

/// `pid`'s timewait sockets alive now, in both substates.
pub fn timewait_sockets_now(snapshot: &Value, pid: u32) -> u64 {
    counter(snapshot, pid, "timewait_now") + counter(snapshot, pid, "fin_wait2_now")
}

/// The totals' timewait sockets alive now in both substates: what sockstat's `tw` counts.
pub fn timewait_total_now(snapshot: &Value) -> u64 {
    let t = &snapshot["totals"];
    t["timewait_now"].as_u64().expect("totals.timewait_now")
        + t["fin_wait2_now"].as_u64().expect("totals.fin_wait2_now")
}
