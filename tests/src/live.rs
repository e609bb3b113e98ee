//! Harness for the leaderboard in JSON mode (`twtrace --json --interval 1 ...`): one snapshot
//! object per line.

use std::{
    io::{BufRead, BufReader},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc::Receiver,
    thread::{self, JoinHandle},
    time::Duration,
};

use serde_json::Value;

use crate::{ChildGuard, READY_TIMEOUT, STOP_TIMEOUT, line_reader, twtrace_bin, wait_for_line};

/// A running `twtrace --json ...`.
pub struct Live {
    guard: ChildGuard,
    stdout: JoinHandle<Vec<String>>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

/// Everything a stopped leaderboard printed.
pub struct LiveRun {
    pub snapshots: Vec<Value>,
    pub stderr: Vec<String>,
    pub status: ExitStatus,
}

impl Live {
    /// Starts `twtrace --json --interval 1 <args>` and returns once it is attached.
    pub fn start(args: &[String]) -> Self {
        let bin = twtrace_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["--json", "--interval", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!(
            "starting {} --json --interval 1 {}",
            bin.display(),
            args.join(" ")
        );
        let mut guard = ChildGuard::spawn("twtrace", &mut cmd);
        let stdout = guard.child_mut().stdout.take().expect("piped stdout");
        let stderr = guard.child_mut().stderr.take().expect("piped stderr");
        let stdout = thread::Builder::new()
            .name("twtrace-stdout".into())
            .spawn(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .collect()
            })
            .expect("spawn reader thread");
        let stderr = line_reader("twtrace-stderr".into(), stderr);
        let mut stderr_seen = Vec::new();
        wait_for_line(
            &stderr,
            "`twtrace: tracing` on stderr",
            READY_TIMEOUT,
            &mut stderr_seen,
            |l| l.starts_with("twtrace: tracing"),
        );
        Self {
            guard,
            stdout,
            stderr,
            stderr_seen,
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Waits `settle` (at least one snapshot and one reconciliation), stops twtrace with
    /// SIGTERM and parses every snapshot it printed.
    pub fn stop_after(mut self, settle: Duration) -> LiveRun {
        thread::sleep(settle);
        self.guard.signal(libc::SIGTERM);
        let status = self.guard.wait_timeout(STOP_TIMEOUT);
        let lines = self.stdout.join().expect("stdout reader thread panicked");
        let mut stderr = self.stderr_seen;
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            stderr.push(line);
        }
        let snapshots = lines
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
