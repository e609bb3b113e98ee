//! The live source: the kernel program's events, the kernel's socket table every `reconcile`
//! seconds (sock_diag, what `ss` uses) and the program's counters every `stats` period, as one
//! stream of items.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::time::{Instant, Interval, interval_at};

use super::{Processes, Source};
use crate::{
    clock::{WallClock, monotonic_ns},
    container::{CgroupPaths, Container},
    event::Comm,
    kernel::{
        netns::{AllNamespaces, NetnsId},
        procnet,
        sockdiag::{self, DiagSocket, SockDiag},
        sysctl::SysctlFiles,
        tracer::{Options, Tracer},
    },
    model::{KernelSocket, ProcStatus, VANISHED_DUMPS, snapshot::ProcessRow},
    state::TcpState,
    stream::{Flow, Item, KernelTruth, Stats},
};

/// How often the live source says what it measures.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    /// Between `Item::Stats` (the tracer's counters and sockstat's `tw`); snapshots are taken at
    /// these, so it is at most the snapshot interval.
    pub stats: Duration,
    /// Between `Item::Kernel` dumps of the socket table; None: never (the trace view).
    pub reconcile: Option<Duration>,
    /// The stream ends by itself after this long (`record --duration`).
    pub duration: Option<Duration>,
}

/// Where the kernel's socket table is read.
enum Tables {
    /// Every network namespace on the host (events carry namespaces).
    All(AllNamespaces),
    /// twtrace's own namespace only: the kernel gave no offsets for namespaces, so events
    /// carry namespace 0 and so does this table (and its local-port sysctls).
    Own(SockDiag, SysctlFiles),
}

pub struct Live {
    tracer: Tracer,
    ports: HashSet<u16>,
    /// Only this namespace's sockets (`--netns`).
    netns: Option<NetnsId>,
    tables: Option<Tables>,
    /// The last dump (each socket tagged with its namespace), reused.
    dump: Vec<DiagSocket>,
    /// Namespaces that could not be read were announced (once per run).
    unread_said: bool,
    /// For the user, printed by the pipeline after the batch (deferred under the full-screen
    /// view, which a line on stderr would garble).
    warnings: Vec<String>,
    stats_tick: Interval,
    reconcile_tick: Option<Interval>,
    deadline: Option<Instant>,
    start_ns: u64,
    clock: WallClock,
    started: bool,
    ended: bool,
}

impl Live {
    /// Checks privileges and the kernel, loads and attaches the program. Needs a tokio runtime.
    pub fn start(opts: &Options, cadence: Cadence) -> anyhow::Result<Self> {
        let tracer = Tracer::start(opts)?;
        let tables = match cadence.reconcile {
            Some(_) if tracer.netns_known => Some(Tables::All(AllNamespaces::new())),
            Some(_) => Some(Tables::Own(SockDiag::open()?, SysctlFiles::open_here())),
            None => None,
        };
        let now = Instant::now();
        Ok(Self {
            tracer,
            ports: opts.ports.iter().copied().collect(),
            netns: opts.netns,
            tables,
            dump: Vec::new(),
            unread_said: false,
            warnings: Vec::new(),
            stats_tick: interval_at(now + cadence.stats, cadence.stats),
            reconcile_tick: cadence
                .reconcile
                .map(|every| interval_at(now + every, every)),
            deadline: cadence.duration.map(|d| now + d),
            start_ns: monotonic_ns(),
            clock: WallClock::now(),
            started: false,
            ended: false,
        })
    }

    /// Things the user should know about this run (mounted tracefs, missing optional hooks).
    pub fn notices(&self) -> &[String] {
        &self.tracer.notices
    }

    fn stats(&mut self) -> Stats {
        let (timewait_kernel, namespaces) = self.timewait_kernel();
        Stats {
            mono_ns: monotonic_ns(),
            kernel: self.tracer.stats(),
            timewait_kernel,
            namespaces,
        }
    }

    /// sockstat's `tw` of every namespace read (or of `--netns`'s), and how many those are.
    fn timewait_kernel(&mut self) -> (Option<u64>, Option<u32>) {
        match &mut self.tables {
            Some(Tables::All(all)) => {
                let (tw, n) = all.timewait(self.netns);
                (tw, Some(n))
            }
            _ => (sockdiag::sockstat().ok().map(|s| s.tw), None),
        }
    }

    /// The kernel's socket table now, limited to the ports asked about. The events the kernel
    /// already queued go first, so the dump is never older than what the model knows.
    fn reconcile(&mut self, f: &mut dyn FnMut(Item) -> Flow) -> anyhow::Result<()> {
        self.drain(f);
        // Once more: with a ring per CPU a drain hands over only what was stamped before it
        // began, and what came while the first one was handed over (a whole batch at peak)
        // would otherwise reach the model after the dump. An event that races the dump is read
        // as a close the kernel skipped (a timewait socket in the table, a socket gone from
        // it), and a connection's lifetime was then lost: 1 of 200 in tests/tests/leaks.rs
        // under load, in 2 of 5 runs. The second drain is short, so the window is back to
        // what one ring had: the events committed while the table is read.
        self.drain(f);
        let dump_ns = monotonic_ns();
        let port_settings;
        match self.tables.as_mut() {
            None => return Ok(()),
            Some(Tables::All(all)) => {
                let dumped = all.dump_all(self.netns, &mut self.dump);
                port_settings = all.port_settings(self.netns);
                for (id, why) in &dumped.failed {
                    log::debug!("network namespace {id}: {why}");
                }
                // Said once: entering another namespace needs CAP_SYS_ADMIN (setns), and
                // without it the kernel's counts silently shrink to twtrace's own.
                if let Some((id, why)) = dumped.failed.first()
                    && !self.unread_said
                {
                    self.unread_said = true;
                    log::warn!(
                        "the sockets of {} of {} network namespaces cannot be read (namespace \
                         {id}: {why}); their events are still traced, but the kernel's counts \
                         leave them out (entering a namespace needs CAP_SYS_ADMIN)",
                        dumped.failed.len(),
                        dumped.namespaces
                    );
                }
            }
            Some(Tables::Own(diag, sysctls)) => {
                diag.dump_tcp_into(&mut self.dump)
                    .context("reading the kernel's socket table")?;
                port_settings = vec![(0, sysctls.read(&mut Vec::new()))];
            }
        }
        let ports = &self.ports;
        let sockets = self
            .dump
            .iter()
            .filter(|d| {
                ports.is_empty()
                    || ports.contains(&d.local.port())
                    || ports.contains(&d.remote.port())
            })
            .filter_map(|d| {
                Some(KernelSocket {
                    netns: d.netns,
                    state: TcpState::try_from(u32::from(d.state)).ok()?,
                    local: d.local,
                    remote: d.remote,
                    cookie: d.cookie,
                    inode: d.inode,
                    timewait: d.timewait,
                    expires_ns: u64::from(d.expires_ms) * 1_000_000,
                })
            })
            .collect();
        f(Item::Kernel(KernelTruth {
            dump_ns,
            sockets,
            // Filled by the pipeline with what the model asks for (see `Processes`).
            owners: Vec::new(),
            timewait_kernel: self.timewait_kernel().0,
            port_settings,
        }));
        Ok(())
    }
}

impl Source for Live {
    async fn pump(&mut self, f: &mut dyn FnMut(Item) -> Flow) -> anyhow::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        if !self.started {
            // The counters at attach time are the base losses are counted from, and the first
            // dump seeds the sockets that existed before the start.
            self.started = true;
            f(Item::Stats(self.stats()));
            self.reconcile(f)?;
            return Ok(true);
        }
        let deadline = self.deadline;
        let until_deadline = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let reconcile_tick = &mut self.reconcile_tick;
        let reconcile_due = async move {
            match reconcile_tick.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        // The branches only say what happened; the work is done after the select, when no
        // future borrows the source any more.
        enum Woke {
            Events,
            Stats,
            Reconcile,
            Deadline,
        }
        let woke = tokio::select! {
            r = self.tracer.next_batch(|t| { f(Item::Event(*t)); }) => {
                r.context("reading the ring buffer")?;
                Woke::Events
            }
            _ = self.stats_tick.tick() => Woke::Stats,
            _ = reconcile_due => Woke::Reconcile,
            _ = until_deadline => Woke::Deadline,
        };
        match woke {
            Woke::Events => {}
            Woke::Stats => {
                // `--cgroup`: cgroups made since the last tick join the kernel's filter.
                self.warnings.extend(self.tracer.refresh_cgroup_filter());
                self.drain(f);
                f(Item::Stats(self.stats()));
            }
            Woke::Reconcile => self.reconcile(f)?,
            Woke::Deadline => {
                self.stop(f);
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn drain(&mut self, f: &mut dyn FnMut(Item) -> Flow) {
        self.tracer.drain(|t| {
            f(Item::Event(*t));
        });
    }

    fn stop(&mut self, f: &mut dyn FnMut(Item) -> Flow) {
        if self.ended {
            return;
        }
        self.ended = true;
        // A last look at the kernel's table, so the final snapshot's gauges (and entries whose
        // events the kernel skipped, see `Model::recover_skipped`) are as of the stop, not of a
        // dump up to `--reconcile` old. It drains first. A failure here loses nothing recorded.
        // As many looks as `Model::recover_vanished` needs to count a close skipped in the last
        // seconds; each is one dump (tens of ms with a full timewait table).
        for _ in 0..VANISHED_DUMPS {
            if let Err(e) = self.reconcile(f) {
                log::warn!("final look at the kernel's socket table: {e:#}");
                break;
            }
        }
        self.drain(f);
        let stats = self.stats();
        let end = stats.mono_ns;
        f(Item::Stats(stats));
        f(Item::End { mono_ns: end });
    }

    fn start_ns(&self) -> u64 {
        self.start_ns
    }

    fn clock(&self) -> WallClock {
        self.clock
    }

    fn undecodable(&self) -> u64 {
        self.tracer.undecodable
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

/// The model's questions answered from /proc, as `ss -p` does.
pub struct ProcFs {
    cgroup_root: Option<PathBuf>,
    cgroups: CgroupPaths,
    /// Each pid's start time (clock ticks after boot) when first asked about: a pid that
    /// shows another start time later belongs to another process.
    started: HashMap<u32, u64>,
    /// Command lines read, per pid: (start time, command line) of each process seen under it,
    /// newest last. Kept while the pid has a row.
    cmdlines: HashMap<u32, Vec<(u64, String)>>,
}

impl ProcFs {
    pub fn new() -> Self {
        let cgroup_root = procnet::cgroup2_mount();
        Self {
            cgroups: CgroupPaths::new(cgroup_root.clone()),
            cgroup_root,
            started: HashMap::new(),
            cmdlines: HashMap::new(),
        }
    }
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcFs {
    /// The start time of the process `pid` names now, as first seen (see `status`).
    fn live_start(&mut self, pid: u32) -> Option<u64> {
        if let Some(&start) = self.started.get(&pid) {
            return Some(start);
        }
        let start = procnet::start_time(pid)?;
        self.started.insert(pid, start);
        Some(start)
    }

    /// The command line of the row of `pid`, read once per process (pid and start time).
    fn cmdline(&mut self, pid: u32, exited: bool) -> Option<String> {
        if exited {
            // The row's process is gone: its command line is the one read while it ran, from
            // the newest process seen under its pid that is not the one running now.
            let alive = if self.exists(pid) {
                self.started.get(&pid).copied()
            } else {
                None
            };
            let seen = self.cmdlines.get(&pid)?;
            return seen
                .iter()
                .rev()
                .find(|(start, _)| Some(*start) != alive)
                .map(|(_, c)| c.clone());
        }
        let start = self.live_start(pid)?;
        if let Some((_, c)) = self
            .cmdlines
            .get(&pid)
            .and_then(|seen| seen.iter().find(|(s, _)| *s == start))
        {
            return Some(c.clone());
        }
        // Empty just after an exec (the parent of a vfork resumes before the new program's
        // arguments are in place), and for processes with no user memory: asked again at the
        // next snapshot rather than kept.
        let cmdline = procnet::cmdline(pid)?;
        // Read from the process that had this start time, not from one that took its pid
        // since: asked again at the next snapshot otherwise.
        if procnet::start_time(pid) != Some(start) {
            return None;
        }
        let seen = self.cmdlines.entry(pid).or_default();
        seen.push((start, cmdline.clone()));
        if seen.len() > 4 {
            seen.remove(0);
        }
        Some(cmdline)
    }
}

impl Processes for ProcFs {
    fn owners(&mut self, _truth: &KernelTruth, inodes: &[u64]) -> HashMap<u64, (u32, Comm)> {
        if inodes.is_empty() {
            // Walking every process's fds costs; nothing to find.
            return HashMap::new();
        }
        let wanted: HashSet<u64> = inodes.iter().copied().collect();
        procnet::socket_holders(&wanted)
            .into_iter()
            .filter_map(|(inode, holders)| {
                let pid = holders.into_iter().min()?;
                let owner = procnet::owner_of(pid, self.cgroup_root.as_deref());
                Some((inode, (pid, Comm::new(owner.comm))))
            })
            .collect()
    }

    fn exists(&self, pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    fn container(&mut self, cgroup_id: u64) -> Option<Container> {
        self.cgroups.container(cgroup_id)
    }

    fn cmdlines(&mut self, rows: &mut [ProcessRow]) {
        for row in rows.iter_mut() {
            if row.pid != 0 {
                row.cmdline = self.cmdline(row.pid, row.exited);
            }
        }
        // Processes without a row any more are not asked about again.
        let shown: HashSet<u32> = rows.iter().map(|r| r.pid).collect();
        self.cmdlines.retain(|pid, _| shown.contains(pid));
    }

    fn status(&mut self, pid: u32) -> ProcStatus {
        // The first answer is remembered from the first question on: a pid reused between the
        // socket's first event and that question (at most one reconcile interval) is missed.
        let Some(now) = procnet::start_time(pid) else {
            self.started.remove(&pid);
            return ProcStatus::Exited;
        };
        match self.started.insert(pid, now) {
            Some(then) if then != now => ProcStatus::Reused,
            _ => ProcStatus::Alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn row(pid: u32, exited: bool) -> ProcessRow {
        ProcessRow {
            pid,
            exited,
            ..ProcessRow::default()
        }
    }

    #[test]
    fn command_lines_are_read_once_and_outlive_their_process() {
        let mut child = Command::new("sleep")
            .args(["29", "1"])
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // Its arguments are in place a moment after spawn() returns (see `cmdline`).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while procnet::cmdline(pid).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut procs = ProcFs::new();
        let mut rows = vec![row(pid, false), row(0, false)];
        procs.cmdlines(&mut rows);
        assert_eq!(rows[0].cmdline.as_deref(), Some("sleep 29 1"));
        assert_eq!(rows[1].cmdline, None, "pid 0 is no process");
        assert_eq!(procs.cmdlines[&pid].len(), 1);

        // Gone: its row keeps the command line read while it ran.
        child.kill().expect("kill");
        child.wait().expect("reap");
        let mut rows = vec![row(pid, true)];
        procs.cmdlines(&mut rows);
        assert_eq!(rows[0].cmdline.as_deref(), Some("sleep 29 1"));

        // A row that was never seen alive has none; rows that left are forgotten.
        let mut rows = vec![row(i32::MAX as u32, true)];
        procs.cmdlines(&mut rows);
        assert_eq!(rows[0].cmdline, None);
        assert!(procs.cmdlines.is_empty());
    }

    #[test]
    fn a_reused_pid_is_not_mislabelled() {
        let mut procs = ProcFs::new();
        let me = std::process::id();
        let start = procnet::start_time(me).expect("own start time");
        // As if another process, started earlier, had had this pid and been read then.
        procs
            .cmdlines
            .insert(me, vec![(start - 1, "old one".into())]);
        let mut rows = vec![row(me, false)];
        procs.cmdlines(&mut rows);
        let mine = procnet::cmdline(me);
        assert_eq!(rows[0].cmdline, mine, "the process running now");
        // The retired row of the earlier process keeps its own.
        let mut rows = vec![row(me, true), row(me, false)];
        procs.cmdlines(&mut rows);
        assert_eq!(rows[0].cmdline.as_deref(), Some("old one"));
        assert_eq!(rows[1].cmdline, mine);
    }
}
