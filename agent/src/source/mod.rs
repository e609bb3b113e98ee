//! Where the stream comes from: the live kernel ([`live`]) or a recording of it
//! ([`recording`]). Both yield the same [`Item`]s, and both answer the model's two questions
//! about processes, so everything downstream of the pipeline is the same for both.

pub mod live;
pub mod recording;

use std::collections::HashMap;

use crate::{
    clock::WallClock,
    container::Container,
    event::Comm,
    model::{ProcStatus, snapshot::ProcessRow},
    stream::{Flow, Item, KernelTruth},
};

/// A stream of items.
pub trait Source {
    /// Waits until items are available, then hands a batch of them to `f` (stopping early when
    /// `f` says so). Returns false once the stream has ended (after its `Item::End`).
    /// Cancel-safe: nothing is lost if the future is dropped while it waits.
    fn pump(
        &mut self,
        f: &mut dyn FnMut(Item) -> Flow,
    ) -> impl std::future::Future<Output = anyhow::Result<bool>>;

    /// Hands over what is already available without waiting (before a flight-recorder
    /// capture, so it holds what the kernel already sent).
    fn drain(&mut self, _f: &mut dyn FnMut(Item) -> Flow) {}

    /// Ends the stream now: hands over what is already available without waiting (the events
    /// the kernel queued), the final counters, and `Item::End`.
    fn stop(&mut self, f: &mut dyn FnMut(Item) -> Flow);

    /// Where the stream starts (CLOCK_MONOTONIC ns): rates and uptime count from here.
    fn start_ns(&self) -> u64;

    /// Maps the stream's monotonic times to wall time.
    fn clock(&self) -> WallClock;

    /// Records that could not be decoded so far.
    fn undecodable(&self) -> u64 {
        0
    }

    /// Everything found wrong with the input so far, each once (for a report).
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }

    /// Warnings for the user found since the last call (a damaged chunk of a recording).
    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// Answers the model's questions about processes: who holds a socket it has no owner for, and
/// whether a process still exists. Live, from /proc; for a recording, from what was recorded.
pub trait Processes {
    /// The holders of `inodes` (sockets of `truth` the model has no owner for): inode -> (pid,
    /// comm).
    fn owners(&mut self, truth: &KernelTruth, inodes: &[u64]) -> HashMap<u64, (u32, Comm)>;

    /// Whether `pid` still runs (exited processes age out of the leaderboard).
    fn exists(&self, pid: u32) -> bool;

    /// Whether the process first seen with `pid` still runs: asked at every kernel dump for the
    /// processes the model counts sockets for.
    fn status(&mut self, _pid: u32) -> ProcStatus {
        ProcStatus::Alive
    }

    /// The container a cgroup (v2 id) belongs to. Live only: a recording's cgroup ids are the
    /// recording machine's.
    fn container(&mut self, _cgroup_id: u64) -> Option<Container> {
        None
    }

    /// Fills each row's command line. Live only, from /proc: a recording does not hold them.
    fn cmdlines(&mut self, _rows: &mut [ProcessRow]) {}
}

/// The owners a recording holds: found by the recorder when it made each dump.
pub struct Recorded;

impl Processes for Recorded {
    /// Every recorded answer, asked for or not: the live model asked about the sockets of
    /// exited owners, which a replay cannot tell apart, so the answers themselves say which
    /// sockets changed hands.
    fn owners(&mut self, truth: &KernelTruth, _inodes: &[u64]) -> HashMap<u64, (u32, Comm)> {
        truth
            .owners
            .iter()
            .map(|&(inode, pid, comm)| (inode, (pid, comm)))
            .collect()
    }

    /// Every process stays: whether it still exists is not in the recording and does not
    /// matter after the fact.
    fn exists(&self, _pid: u32) -> bool {
        true
    }
}
