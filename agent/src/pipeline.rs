//! The one loop every command runs: items from one [`Source`] go through the model to every
//! [`Sink`]. Snapshots are taken at the stream's stats items, by stream time, so a replay shows
//! exactly the seconds a report of the same recording lists, and the live view the same seconds
//! a recording of it replays.

use std::{
    cell::RefCell,
    collections::HashMap,
    io::{self, Write as _},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    clock::WallClock,
    event::{Attribution, Call, Comm, Transition},
    kernel::sysctl::PortSettings,
    model::{
        Limits, Model, Outside,
        ports::{self, Ports},
        snapshot::Snapshot,
    },
    sink::{End, Sink, View},
    source::{Processes, Source},
    stream::{Flow, Item, KernelStats, KernelTruth, Stats, Tally},
};

/// Which sockets the user asked about. Applied to every item, live (where the kernel filtered
/// already) and replayed alike.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub pids: Vec<u32>,
    /// `--port`: either end's port.
    pub ports: Vec<u16>,
    /// `--lport`, `--rport`: the local, the remote port.
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    /// `-4`/`-6`: only IPv4 or only IPv6 connections. Checked here rather than in the kernel
    /// program: the family costs nothing to check per event in user space, while a kernel
    /// filter would need a new global and a check on every hook for a saving of a few events.
    pub ip: Option<Ip>,
    /// Only this network namespace's sockets.
    pub netns: Option<u32>,
    /// `--cgroup`: only sockets whose owner is in this cgroup (its v2 path) or below it.
    ///
    /// Events are not checked here: an event carries only its owner's cgroup id, and live the
    /// kernel program already kept only the ids of this cgroup and those below it (a set the
    /// tracer keeps current as cgroups come and go). A replay refuses `--cgroup`
    /// (`FilterArgs::check_replay`), and a recording made with it holds only those sockets.
    /// What it changes here is the kernel's table: see [`Selection::table_socket`].
    pub cgroup: Option<String>,
}

/// An IP version (`-4`, `-6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ip {
    V4,
    V6,
}

impl Ip {
    /// 4 or 6, as recordings store it.
    pub fn number(self) -> u8 {
        match self {
            Self::V4 => 4,
            Self::V6 => 6,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            4 => Some(Self::V4),
            6 => Some(Self::V6),
            _ => None,
        }
    }

    /// The version of a connection: its remote address's, or its local one's when the remote
    /// is unspecified (a failed bind()). An IPv4-mapped address (a dual-stack socket talking to
    /// an IPv4 peer) is IPv4 traffic, so it counts as IPv4.
    pub fn of(local: SocketAddr, remote: SocketAddr) -> Self {
        let ip = if remote.ip().is_unspecified() {
            local.ip()
        } else {
            remote.ip()
        };
        if ip.to_canonical().is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }
}

impl Selection {
    pub fn event(&self, t: &Transition) -> bool {
        // A failed connect() is about its destination port, a failed bind() about the port it
        // asked for; the other end of either is no port at all.
        let (local, remote) = match t.failure.map(|f| f.call) {
            Some(Call::Connect) => (None, Some(t.remote.port())),
            Some(Call::Bind) => (Some(t.local.port()), None),
            None => (Some(t.local.port()), Some(t.remote.port())),
        };
        self.pid(t.pid)
            && self.netns.is_none_or(|n| n == t.netns)
            && self.ports_match(local, remote)
            && self.ip.is_none_or(|ip| ip == Ip::of(t.local, t.remote))
    }

    /// Whether a socket of the kernel's table belongs in the view, by its ports, addresses and
    /// namespace (its owner is [`Selection::table_socket`]'s question).
    pub fn table_entry(&self, netns: u32, local: SocketAddr, remote: SocketAddr) -> bool {
        self.netns.is_none_or(|n| n == netns)
            && self.ports_match(Some(local.port()), Some(remote.port()))
            && self.ip.is_none_or(|ip| ip == Ip::of(local, remote))
    }

    /// Every port filter given holds: `--port` either end, `--lport` the local end, `--rport`
    /// the remote one.
    fn ports_match(&self, local: Option<u16>, remote: Option<u16>) -> bool {
        let any = |list: &[u16], port: Option<u16>| port.is_some_and(|p| list.contains(&p));
        (self.ports.is_empty() || any(&self.ports, local) || any(&self.ports, remote))
            && (self.lports.is_empty() || any(&self.lports, local))
            && (self.rports.is_empty() || any(&self.rports, remote))
    }

    /// The ports the kernel program may keep connections of (either end's, empty: all): a
    /// superset of what [`Selection::ports_match`] keeps, which then narrows it down. `--port`
    /// alone says it; else any `--lport` or `--rport` value.
    pub fn kernel_ports(&self) -> Vec<u16> {
        if !self.ports.is_empty() {
            return self.ports.clone();
        }
        let mut all: Vec<u16> = self.lports.iter().chain(&self.rports).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether sockets of `pid` belong in the view; pid 0 stands for the unowned ones, which
    /// belong only when no pid was asked for.
    pub fn pid(&self, pid: u32) -> bool {
        self.pids.is_empty() || self.pids.contains(&pid)
    }

    /// Whether a socket the kernel's table has and no event showed (one from before the start),
    /// held by `pid` (0: no holder found), belongs in the view. As [`Selection::pid`], except
    /// that under `--cgroup` none does: the table does not say whose cgroup a socket is in, and
    /// the holder's cgroup is not looked up, so such sockets stay out, as unowned ones do under
    /// `--pid`.
    pub fn table_socket(&self, pid: u32) -> bool {
        self.cgroup.is_none() && self.pid(pid)
    }

    /// Both selections at once (a recording made with `--pid`, replayed with another).
    pub fn and(&self, other: &Self) -> Self {
        fn both<T: Copy + PartialEq>(a: &[T], b: &[T]) -> Vec<T> {
            match (a.is_empty(), b.is_empty()) {
                (true, _) => b.to_vec(),
                (_, true) => a.to_vec(),
                _ => a.iter().copied().filter(|p| b.contains(p)).collect(),
            }
        }
        Self {
            pids: both(&self.pids, &other.pids),
            lports: both(&self.lports, &other.lports),
            rports: both(&self.rports, &other.rports),
            ip: self.ip.or(other.ip),
            // A recording made with --port holds only those ports' sockets already.
            ports: if self.ports.is_empty() {
                other.ports.clone()
            } else {
                self.ports.clone()
            },
            netns: self.netns.or(other.netns),
            cgroup: self.cgroup.clone().or_else(|| other.cgroup.clone()),
        }
    }
}

/// When snapshots are taken.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    /// Stream time between snapshots.
    pub interval: Duration,
    /// Stop after this many.
    pub count: Option<u64>,
}

impl Default for Cadence {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            count: None,
        }
    }
}

/// Why the loop stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
    /// The source ended: a recording's end, or `--duration`.
    SourceEnded,
    /// The user quit the terminal view.
    ViewQuit,
    /// `--count` snapshots were shown.
    Count,
    /// A sink's limit (`--max-size`), with its words.
    Sink(String),
    /// An error (returned beside the tally).
    Error,
}

/// The synchronous heart of the pipeline: no I/O of its own, so tests feed it items directly.
pub struct Core<'a> {
    sinks: Vec<Box<dyn Sink + 'a>>,
    processes: Box<dyn Processes + 'a>,
    selection: Selection,
    cadence: Cadence,
    clock: WallClock,
    start_ns: u64,
    wants_model: bool,
    limits: Limits,
    model: Option<Model>,
    /// Local ports per destination, beside the model (see [`crate::model::ports`]).
    ports: Ports,
    tally: Tally,
    /// The kernel program's counters at the first stats item: losses count from there.
    base: Option<KernelStats>,
    timewait_kernel: Option<u64>,
    namespaces: Option<u32>,
    first_ns: Option<u64>,
    last_ns: Option<u64>,
    last_snapshot_ns: Option<u64>,
    /// Items since the last snapshot.
    since_snapshot: u64,
    snapshots: u64,
    last: Option<Arc<Snapshot>>,
    /// The first frame ([`Sink::wants_first_frame`]) was sent, or there was no need for it.
    first_frame_sent: bool,
    stopped: Option<Stopped>,
    error: Option<anyhow::Error>,
    ended: bool,
    problems: Vec<String>,
}

impl<'a> Core<'a> {
    pub fn new(
        sinks: Vec<Box<dyn Sink + 'a>>,
        processes: Box<dyn Processes + 'a>,
        selection: Selection,
        cadence: Cadence,
        clock: WallClock,
        start_ns: u64,
    ) -> Self {
        let wants_model = sinks.iter().any(|s| s.wants_model());
        Self {
            sinks,
            processes,
            selection,
            cadence,
            clock,
            start_ns,
            wants_model,
            limits: Limits::default(),
            model: None,
            ports: Ports::new(),
            tally: Tally::default(),
            base: None,
            timewait_kernel: None,
            namespaces: None,
            first_ns: None,
            first_frame_sent: false,
            last_ns: None,
            last_snapshot_ns: None,
            since_snapshot: 0,
            snapshots: 0,
            last: None,
            stopped: None,
            error: None,
            ended: false,
            problems: Vec::new(),
        }
    }

    /// The model's bounds and thresholds (`--min-age`), instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The local-port settings assumed for namespaces whose own the stream does not carry: a
    /// replay's, from its header.
    pub fn set_port_fallback(&mut self, settings: Option<PortSettings>) {
        self.ports.set_fallback(settings);
    }

    /// Why the stream should stop, once it should.
    pub fn stopped(&self) -> Option<&Stopped> {
        self.stopped.as_ref()
    }

    /// Takes one item. Returns `Flow::Stop` once the pipeline wants no more.
    pub fn item(&mut self, item: Item) -> Flow {
        if self.ended {
            return Flow::Stop;
        }
        let ns = item.mono_ns();
        self.first_ns.get_or_insert(ns);
        self.last_ns = Some(self.last_ns.map_or(ns, |l| l.max(ns)));
        if self.wants_model && self.model.is_none() {
            self.model = Some(Model::new(self.start_ns.min(ns), self.limits));
        }
        let result = match item {
            Item::Event(t) => self.event(&t),
            Item::Kernel(k) => self.kernel(k),
            Item::Stats(s) => self.stats(&s),
            Item::End { mono_ns } => self.end(mono_ns),
        };
        if let Err(e) = result {
            self.fail(e);
        }
        if self.stopped.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn event(&mut self, t: &Transition) -> anyhow::Result<()> {
        if !self.selection.event(t) {
            return Ok(());
        }
        self.tally.received += 1;
        if t.attribution == Attribution::Unknown {
            self.tally.unattributed += 1;
        }
        let inherited = self.model.as_mut().and_then(|m| m.apply(t));
        if self.model.is_some() {
            let (pid, comm) = inherited.unwrap_or((t.pid, t.comm));
            self.ports.event(t, pid, comm);
        }
        // The owner the views show: a socket whose owner exited goes to whoever holds it now.
        let shown = inherited.map(|(pid, comm)| Transition {
            pid,
            comm,
            attribution: Attribution::Inherited,
            ..*t
        });
        self.since_snapshot += 1;
        for sink in &mut self.sinks {
            // Recorders keep what the kernel said; a replay derives the same rewrite again.
            let t = match &shown {
                Some(shown) if !sink.raw_events() => shown,
                _ => t,
            };
            sink.event(t)?;
        }
        Ok(())
    }

    fn kernel(&mut self, mut k: KernelTruth) -> anyhow::Result<()> {
        let selection = &self.selection;
        k.sockets
            .retain(|s| selection.table_entry(s.netns, s.local, s.remote));
        if let Some(model) = self.model.as_mut() {
            // The model asks only about sockets it has no owner for, or whose owner exited;
            // what it is told is kept with the dump, so a replay of it gets the same answers.
            // Both questions go to the same answerer, one after the other.
            let processes = RefCell::new(&mut self.processes);
            let mut found: Vec<(u64, u32, Comm)> = Vec::new();
            let selection = &self.selection;
            let truth = &k;
            let mut owners = |inodes: &[u64]| -> HashMap<u64, (u32, Comm)> {
                let answer = processes.borrow_mut().owners(truth, inodes);
                found.extend(
                    answer
                        .iter()
                        .map(|(&inode, &(pid, comm))| (inode, pid, comm)),
                );
                answer
            };
            let mut status = |pid: u32| processes.borrow_mut().status(pid);
            model.reconcile(
                &k.sockets,
                k.dump_ns,
                &mut owners,
                &|pid| selection.table_socket(pid),
                &mut status,
            );
            found.sort_unstable_by_key(|&(inode, _, _)| inode);
            k.owners = found;
            self.ports.dump(&k.sockets, k.dump_ns, &k.port_settings);
        }
        if k.timewait_kernel.is_some() {
            self.timewait_kernel = k.timewait_kernel;
        }
        self.since_snapshot += 1;
        for sink in &mut self.sinks {
            sink.kernel(&k)?;
        }
        if self.last.is_none() && !self.first_frame_sent {
            self.first_frame_sent = true;
            if self.sinks.iter().any(|s| s.wants_first_frame())
                && let Some(snap) = self.build_snapshot(k.dump_ns)?
            {
                for sink in self.sinks.iter_mut().filter(|s| s.wants_first_frame()) {
                    sink.snapshot(&snap)?;
                }
            }
        }
        Ok(())
    }

    fn stats(&mut self, s: &Stats) -> anyhow::Result<()> {
        let base = *self.base.get_or_insert(s.kernel);
        self.tally.kernel = s.kernel.since(&base);
        if s.timewait_kernel.is_some() {
            self.timewait_kernel = s.timewait_kernel;
        }
        if s.namespaces.is_some() {
            self.namespaces = s.namespaces;
        }
        for sink in &mut self.sinks {
            sink.stats(s, &self.tally)?;
        }
        // Stats items come about once a second, give or take the source's scheduling: a tenth
        // of the interval's tolerance keeps a late one from skipping a snapshot.
        let interval = u64::try_from(self.cadence.interval.as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_snapshot_ns.unwrap_or(self.start_ns);
        if s.mono_ns.saturating_add(interval / 10) >= last.saturating_add(interval) {
            self.snapshot(s.mono_ns)?;
        }
        Ok(())
    }

    fn end(&mut self, mono_ns: u64) -> anyhow::Result<()> {
        // What came after the last snapshot is shown once more: the end is a snapshot too.
        if self.model.is_some() && (self.last.is_none() || self.since_snapshot > 0) {
            self.snapshot(self.last_ns.unwrap_or(mono_ns))?;
        }
        self.finish(mono_ns)
    }

    fn snapshot(&mut self, now_ns: u64) -> anyhow::Result<()> {
        if self.cadence.count.is_some_and(|c| self.snapshots >= c) {
            return Ok(());
        }
        let Some(snap) = self.build_snapshot(now_ns)? else {
            return Ok(());
        };
        self.last_snapshot_ns = Some(now_ns);
        self.since_snapshot = 0;
        self.snapshots += 1;
        self.last = Some(Arc::clone(&snap));
        for sink in &mut self.sinks {
            sink.snapshot(&snap)?;
        }
        if self.cadence.count.is_some_and(|c| self.snapshots >= c) {
            self.stop(Stopped::Count);
        }
        Ok(())
    }

    /// The model's picture at `now_ns`, with what the pipeline adds (destinations, containers,
    /// command lines); None without a model.
    fn build_snapshot(&mut self, now_ns: u64) -> anyhow::Result<Option<Arc<Snapshot>>> {
        let Some(model) = self.model.as_mut() else {
            return Ok(None);
        };
        let outside = Outside {
            lost_events: self.tally.kernel.lost_total(),
            timewait_kernel: self.timewait_kernel,
            namespaces: self.namespaces,
        };
        let time = jiff::Timestamp::try_from(self.clock.to_system_time(now_ns))?;
        let processes = &mut self.processes;
        let mut snap = model.snapshot(now_ns, time, outside, &|pid| processes.exists(pid));
        snap.destinations = self
            .ports
            .snapshot(now_ns, &|key| ports::connect_failures(model, key));
        snap.port_settings = self.ports.settings();
        for row in &mut snap.processes {
            if row.cgroup_id != 0
                && let Some(c) = processes.container(row.cgroup_id)
            {
                row.runtime = Some(c.runtime.name());
                row.pod_uid = c.pod_uid;
                row.container = Some(c.id);
            }
        }
        processes.cmdlines(&mut snap.processes);
        Ok(Some(Arc::new(snap)))
    }

    fn finish(&mut self, mono_ns: u64) -> anyhow::Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        let end = End {
            mono_ns,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            tally: self.tally,
            snapshot: self.last.clone(),
            problems: self.problems.clone(),
        };
        let mut first_error = None;
        for sink in &mut self.sinks {
            // Every sink gets its end, whatever another one said.
            if let Err(e) = sink.end(&end)
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Asks the loop to stop (the first reason wins).
    pub fn stop(&mut self, why: Stopped) {
        self.stopped.get_or_insert(why);
    }

    fn fail(&mut self, e: anyhow::Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        self.stop(Stopped::Error);
    }

    /// After a batch: sinks flush, and say whether they reached a limit.
    pub fn batch_done(&mut self) {
        let mut result = Ok(());
        for sink in &mut self.sinks {
            if let Err(e) = sink.batch_done() {
                result = Err(e);
                break;
            }
            if let Some(why) = sink.stop_reason() {
                self.stopped.get_or_insert(Stopped::Sink(why));
            }
        }
        if let Err(e) = result {
            self.fail(e);
        }
    }

    pub fn user_signal(&mut self, now_ns: u64) {
        let mut result = Ok(());
        for sink in &mut self.sinks {
            if let Err(e) = sink.user_signal(now_ns) {
                result = Err(e);
                break;
            }
        }
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// Closes the run: the sinks' end (if the stream did not end already), then the tally, why
    /// it stopped and the first error.
    pub fn close(mut self, undecodable: u64, problems: Vec<String>) -> Outcome {
        self.problems = problems;
        if !self.ended {
            let at = self.last_ns.unwrap_or(self.start_ns);
            if let Err(e) = self.finish(at) {
                self.fail(e);
            }
        }
        self.tally.undecodable = undecodable;
        Outcome {
            tally: self.tally,
            stopped: self.stopped.unwrap_or(Stopped::SourceEnded),
            error: self.error,
        }
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct Outcome {
    pub tally: Tally,
    pub stopped: Stopped,
    pub error: Option<anyhow::Error>,
}

/// The signals every command stops on, installed once.
pub struct Signals {
    stop: StopSignals,
    usr1: Option<Signal>,
}

struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

impl Signals {
    /// SIGINT, SIGTERM and SIGHUP (a closed terminal or dropped ssh session, common during
    /// incidents) stop cleanly; SIGUSR1 is caught only when a sink uses it, so elsewhere it
    /// keeps its default meaning.
    pub fn install(user_signal: bool) -> anyhow::Result<Self> {
        let get = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Self {
            stop: StopSignals {
                int: get(SignalKind::interrupt(), "SIGINT")?,
                term: get(SignalKind::terminate(), "SIGTERM")?,
                hup: get(SignalKind::hangup(), "SIGHUP")?,
            },
            usr1: if user_signal {
                Some(get(SignalKind::user_defined1(), "SIGUSR1")?)
            } else {
                None
            },
        })
    }
}

async fn user_signal(usr1: &mut Option<Signal>) {
    match usr1.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Runs `source` through `core` until the source ends, a signal, the view's quit, `--count`,
/// a sink's limit or an error; then ends the stream (the kernel's queued events, the final
/// counters and the end mark still reach the sinks) and closes the run.
pub async fn run<S: Source>(
    source: &mut S,
    mut core: Core<'_>,
    signals: &mut Signals,
    view: Option<View<'_>>,
) -> Outcome {
    let has_view = view.is_some();
    let mut view = view.unwrap_or_else(|| Box::pin(std::future::pending()));
    // Warnings would garble a full-screen view: they wait for its end there.
    let mut deferred: Vec<String> = Vec::new();
    enum Woke {
        Batch(anyhow::Result<bool>),
        View(anyhow::Result<()>),
        Signal,
        User,
    }
    let mut view_done = false;
    loop {
        let woke = {
            let mut feed = |item| core.item(item);
            tokio::select! {
                r = source.pump(&mut feed) => Woke::Batch(r),
                r = view.as_mut() => Woke::View(r),
                () = signals.stop.recv() => Woke::Signal,
                () = user_signal(&mut signals.usr1) => Woke::User,
            }
        };
        match woke {
            Woke::Batch(Ok(true)) => {}
            Woke::Batch(Ok(false)) => core.stop(Stopped::SourceEnded),
            Woke::Batch(Err(e)) => core.fail(e),
            Woke::View(r) => {
                view_done = true;
                match r {
                    Ok(()) => core.stop(Stopped::ViewQuit),
                    Err(e) => core.fail(e),
                }
            }
            Woke::Signal => core.stop(Stopped::Signal),
            Woke::User => {
                // What the kernel already sent belongs in the capture.
                source.drain(&mut |item| core.item(item));
                core.user_signal(crate::clock::monotonic_ns());
            }
        }
        core.batch_done();
        warn(source.take_warnings(), has_view, &mut deferred);
        if core.stopped().is_some() {
            break;
        }
    }
    // At the end of a recording the view keeps its last picture (marked ended) until the user
    // quits; otherwise it goes now, giving the terminal back before the last words are printed.
    let keep_view = has_view && !view_done && core.stopped() == Some(&Stopped::SourceEnded);
    if !keep_view {
        view = Box::pin(std::future::pending());
    }
    source.stop(&mut |item| core.item(item));
    core.batch_done();
    warn(source.take_warnings(), keep_view, &mut deferred);
    let mut outcome = core.close(source.undecodable(), source.problems());
    if keep_view && outcome.error.is_none() {
        let r = tokio::select! {
            r = view.as_mut() => r,
            () = signals.stop.recv() => Ok(()),
        };
        if let Err(e) = r {
            outcome.error = Some(e);
        }
    }
    drop(view);
    warn(deferred, false, &mut Vec::new());
    outcome
}

fn warn(lines: Vec<String>, defer: bool, deferred: &mut Vec<String>) {
    if lines.is_empty() {
        return;
    }
    if defer {
        deferred.extend(lines);
        return;
    }
    let mut err = io::stderr().lock();
    for line in lines {
        // A closed stderr must not stop the stream. The line names a file someone else may
        // have named.
        let _ = writeln!(err, "twtrace: {}", crate::text::escape(&line));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        net::{IpAddr, Ipv4Addr, SocketAddr},
        rc::Rc,
    };

    use proptest::prelude::*;

    use super::*;
    use crate::{
        event::Family,
        recording::tests::{arb_record, header},
        source::Recorded,
        state::TcpState,
    };

    /// What a test sink saw: every snapshot and the end.
    type Seen = (Vec<Arc<Snapshot>>, Option<End>);

    /// Keeps every snapshot and the end.
    #[derive(Clone, Default)]
    struct Collect(Rc<RefCell<Seen>>);

    impl Sink for Collect {
        fn wants_snapshots(&self) -> bool {
            true
        }
        fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
            self.0.borrow_mut().0.push(Arc::clone(snap));
            Ok(())
        }
        fn end(&mut self, end: &End) -> anyhow::Result<()> {
            self.0.borrow_mut().1 = Some(end.clone());
            Ok(())
        }
    }

    /// A [`Collect`] that also wants the first frame, as the terminal view does.
    #[derive(Clone, Default)]
    struct FirstFrame(Collect);

    impl Sink for FirstFrame {
        fn wants_snapshots(&self) -> bool {
            true
        }
        fn wants_first_frame(&self) -> bool {
            true
        }
        fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
            self.0.snapshot(snap)
        }
    }

    #[test]
    fn the_first_frame_shows_the_first_dump_at_once_to_the_view_only() {
        let tw = |port: u16| crate::model::KernelSocket {
            netns: 0,
            state: TcpState::TimeWait,
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            remote: "127.0.0.1:6000".parse().expect("addr"),
            cookie: 1,
            inode: 0,
            timewait: true,
            expires_ns: 50 * S,
        };
        let dump = |at: u64| {
            Item::Kernel(KernelTruth {
                dump_ns: at,
                sockets: (5000..5300).map(tw).collect(),
                owners: Vec::new(),
                timewait_kernel: Some(300),
                port_settings: Vec::new(),
            })
        };
        let (view, printer) = (FirstFrame::default(), Collect::default());
        let mut c = Core::new(
            vec![Box::new(view.clone()), Box::new(printer.clone())],
            Box::new(Recorded),
            Selection::default(),
            Cadence {
                interval: Duration::from_secs(1),
                count: Some(1),
            },
            header().clock(),
            S,
        );
        c.item(dump(S + 1000));
        let first: Vec<(u64, Option<u64>)> = view
            .0
            .0
            .borrow()
            .0
            .iter()
            .map(|s| (s.totals.timewait_now, s.totals.timewait_kernel))
            .collect();
        assert_eq!(
            first,
            vec![(300, Some(300))],
            "at once, with the dump's totals"
        );
        assert!(
            printer.0.borrow().0.is_empty(),
            "a printer waits for the interval"
        );
        // A second dump makes no second early frame; the interval's snapshot is --count's one.
        c.item(dump(S + 500_000_000));
        c.item(Item::Stats(Stats {
            mono_ns: 2 * S,
            ..Stats::default()
        }));
        assert_eq!(view.0.0.borrow().0.len(), 2);
        assert_eq!(printer.0.borrow().0.len(), 1);
        assert_eq!(c.stopped, Some(Stopped::Count));
    }

    fn core(
        sink: &Collect,
        selection: Selection,
        cadence: Cadence,
        start_ns: u64,
    ) -> Core<'static> {
        Core::new(
            vec![Box::new(sink.clone())],
            Box::new(Recorded),
            selection,
            cadence,
            header().clock(),
            start_ns,
        )
    }

    fn connection(i: u64, pid: u32, comm: &str, t0: u64) -> Vec<Transition> {
        let base = Transition {
            netns: 0,
            mono_ns: t0,
            skaddr: 0x1000 + i,
            cookie: None,
            pid,
            comm: Comm::from(comm),
            cgroup_id: 1,
            attribution: Attribution::Owner,
            current_pid: pid,
            family: Family::Ipv4,
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000 + i as u16),
            remote: "127.0.0.1:8080".parse().expect("addr"),
            old: TcpState::Close,
            new: TcpState::SynSent,
            reset: None,
            failure: None,
            orphan: false,
        };
        let step = |k: u64, old, new| Transition {
            mono_ns: t0 + k,
            old,
            new,
            ..base
        };
        vec![
            base,
            step(1, TcpState::SynSent, TcpState::Established),
            step(2, TcpState::Established, TcpState::FinWait1),
            step(3, TcpState::FinWait1, TcpState::FinWait2),
            step(4, TcpState::FinWait2, TcpState::TimeWait),
        ]
    }

    const S: u64 = 1_000_000_000;

    /// 7 connections in the first recorded second, 3 in the second, a stats item after each.
    fn two_seconds() -> Vec<Item> {
        let mut items = Vec::new();
        for i in 0..7 {
            items.extend(
                connection(i, 4242, "client", S + 100_000_000 + i * 100)
                    .into_iter()
                    .map(Item::Event),
            );
        }
        items.push(Item::Stats(Stats {
            mono_ns: 2 * S,
            ..Stats::default()
        }));
        for i in 7..10 {
            items.extend(
                connection(i, 4242, "client", 2 * S + 100_000_000 + i * 100)
                    .into_iter()
                    .map(Item::Event),
            );
        }
        items.push(Item::Stats(Stats {
            mono_ns: 3 * S,
            ..Stats::default()
        }));
        items
    }

    fn feed(core: &mut Core<'_>, items: &[Item]) {
        for item in items {
            core.item(item.clone());
        }
    }

    #[test]
    fn snapshots_follow_stream_time_and_the_end_is_one_more_only_if_something_came() {
        let sink = Collect::default();
        let mut c = core(&sink, Selection::default(), Cadence::default(), S);
        feed(&mut c, &two_seconds());
        c.item(Item::End { mono_ns: 3 * S });
        let out = c.close(0, Vec::new());
        assert!(out.error.is_none());
        let (snaps, end) = sink.0.borrow().clone();
        let tl: Vec<(f64, u64)> = snaps
            .iter()
            .map(|p| (p.totals.timewait_per_s, p.totals.timewait_now))
            .collect();
        // Nothing came after the last stats item: the end adds no snapshot.
        assert_eq!(tl, vec![(7.0, 7), (3.0, 10)]);
        let row = snaps[1]
            .processes
            .iter()
            .find(|p| p.pid == 4242)
            .expect("client row");
        assert_eq!((row.timewait_entered, row.comm.as_str()), (10, "client"));
        assert_eq!(out.tally.received, 50);
        let end = end.expect("end");
        assert_eq!(
            (end.first_ns, end.last_ns),
            (Some(S + 100_000_000), Some(3 * S))
        );

        // An event after the last stats item: the end shows it in one more snapshot.
        let sink = Collect::default();
        let mut c = core(&sink, Selection::default(), Cadence::default(), S);
        feed(&mut c, &two_seconds());
        feed(
            &mut c,
            &connection(20, 4242, "client", 3 * S + 10)
                .into_iter()
                .map(Item::Event)
                .collect::<Vec<_>>(),
        );
        c.item(Item::End {
            mono_ns: 3 * S + 500,
        });
        c.close(0, Vec::new());
        let snaps = sink.0.borrow().0.clone();
        assert_eq!(snaps.len(), 3);
        assert_eq!(snaps[2].totals.timewait_entered, 11);
    }

    #[test]
    fn a_late_stats_item_still_makes_its_snapshot_and_an_early_one_does_not() {
        let sink = Collect::default();
        let mut c = core(&sink, Selection::default(), Cadence::default(), 0);
        for ns in [950_000_000, 1_200_000_000, 1_960_000_000, 3_000_000_000] {
            c.item(Item::Stats(Stats {
                mono_ns: ns,
                ..Stats::default()
            }));
        }
        let times: usize = sink.0.borrow().0.len();
        // 0.95 s (within a tenth of the interval), 1.96 s, 3.0 s; not 1.2 s.
        assert_eq!(times, 3);
    }

    #[test]
    fn selection_and_count_apply_to_every_source() {
        // --pid of another process: nothing.
        let sink = Collect::default();
        let sel = Selection {
            pids: vec![1],
            ..Selection::default()
        };
        let mut c = core(&sink, sel, Cadence::default(), S);
        feed(&mut c, &two_seconds());
        let out = c.close(0, Vec::new());
        assert_eq!(out.tally.received, 0);
        assert!(
            sink.0
                .borrow()
                .0
                .iter()
                .all(|s| s.totals.timewait_entered == 0)
        );

        // --count 1: one snapshot, then the pipeline stops, also at the end.
        let sink = Collect::default();
        let cadence = Cadence {
            count: Some(1),
            ..Cadence::default()
        };
        let mut c = core(&sink, Selection::default(), cadence, S);
        feed(&mut c, &two_seconds());
        assert_eq!(c.stopped(), Some(&Stopped::Count));
        c.item(Item::End { mono_ns: 4 * S });
        let out = c.close(0, Vec::new());
        assert_eq!(out.stopped, Stopped::Count);
        assert_eq!(sink.0.borrow().0.len(), 1);
    }

    #[test]
    fn losses_count_from_the_first_stats_item() {
        let sink = Collect::default();
        let mut c = core(&sink, Selection::default(), Cadence::default(), 0);
        for (ns, lost) in [(0, 5), (S, 7), (2 * S, 12)] {
            c.item(Item::Stats(Stats {
                namespaces: None,
                mono_ns: ns,
                kernel: KernelStats {
                    lost,
                    ..KernelStats::default()
                },
                timewait_kernel: Some(3),
            }));
        }
        let out = c.close(0, Vec::new());
        assert_eq!(out.tally.kernel.lost, 7);
        let snaps = sink.0.borrow().0.clone();
        assert_eq!(snaps.last().map(|s| s.lost_events), Some(7));
        assert_eq!(
            snaps.last().map(|s| s.totals.timewait_kernel),
            Some(Some(3))
        );
    }

    #[test]
    fn a_failure_is_selected_by_the_port_it_is_about() {
        let failed = |call, local: &str, remote: &str| Transition {
            old: TcpState::Close,
            new: TcpState::Close,
            local: local.parse().expect("addr"),
            remote: remote.parse().expect("addr"),
            failure: Some(crate::event::SyscallFailure {
                call,
                errno: crate::event::Errno::EADDRNOTAVAIL,
            }),
            ..connection(0, 4242, "client", S)[0]
        };
        use crate::event::Call::{Bind, Connect};
        let connect = failed(Connect, "0.0.0.0:0", "10.0.0.5:8080");
        let bind = failed(Bind, "0.0.0.0:8080", "0.0.0.0:0");
        let to = |ports: &[u16]| Selection {
            ports: ports.to_vec(),
            ..Selection::default()
        };
        for t in [&connect, &bind] {
            assert!(to(&[8080]).event(t), "{t:?}");
            assert!(!to(&[9090]).event(t), "{t:?}");
            assert!(to(&[]).event(t));
            // Its other end is no port at all.
            assert!(!to(&[0]).event(t), "{t:?}");
        }
        // A connect() to 10.0.0.5:8080 from a socket bound to port 9090 (bind before connect)
        // is about 8080 only.
        let bound = failed(Connect, "0.0.0.0:9090", "10.0.0.5:8080");
        assert!(!to(&[9090]).event(&bound));
        // --rport is a failed connect()'s destination, --lport a failed bind()'s port.
        let rport = Selection {
            rports: vec![8080],
            ..Selection::default()
        };
        let lport = Selection {
            lports: vec![8080],
            ..Selection::default()
        };
        assert!(rport.event(&connect) && !rport.event(&bind));
        assert!(lport.event(&bind) && !lport.event(&connect));
        let pid = Selection {
            pids: vec![4242],
            netns: Some(0),
            ..Selection::default()
        };
        assert!(pid.event(&connect));
        assert!(
            !Selection {
                pids: vec![1],
                ..pid
            }
            .event(&connect)
        );
    }

    #[test]
    fn local_remote_ports_and_ip_versions_select_connections() {
        let conn = |local: &str, remote: &str| Transition {
            local: local.parse().expect("addr"),
            remote: remote.parse().expect("addr"),
            ..connection(0, 4242, "client", S)[0]
        };
        let v4 = conn("127.0.0.1:40000", "127.0.0.1:8080");
        let v6 = conn("[::1]:40000", "[::1]:8080");
        // A dual-stack socket talking to an IPv4 peer is IPv4 traffic.
        let mapped = conn("[::ffff:127.0.0.1]:40000", "[::ffff:127.0.0.1]:8080");
        let sel = |lports: &[u16], rports: &[u16], ip| Selection {
            lports: lports.to_vec(),
            rports: rports.to_vec(),
            ip,
            ..Selection::default()
        };
        for t in [&v4, &v6, &mapped] {
            assert!(sel(&[40000], &[], None).event(t));
            assert!(!sel(&[8080], &[], None).event(t), "8080 is the remote end");
            assert!(sel(&[], &[8080], None).event(t));
            assert!(!sel(&[], &[40000], None).event(t), "40000 is the local end");
            assert!(sel(&[40000], &[8080], None).event(t));
            assert!(!sel(&[40000], &[9090], None).event(t), "both must hold");
        }
        for (t, version) in [(&v4, Ip::V4), (&v6, Ip::V6), (&mapped, Ip::V4)] {
            assert_eq!(Ip::of(t.local, t.remote), version, "{t:?}");
            assert!(sel(&[], &[], Some(version)).event(t));
            let other = if version == Ip::V4 { Ip::V6 } else { Ip::V4 };
            assert!(!sel(&[], &[], Some(other)).event(t));
        }
        // The kernel's table goes through the same test.
        let s = sel(&[], &[8080], Some(Ip::V6));
        assert!(s.table_entry(0, v6.local, v6.remote));
        assert!(!s.table_entry(0, v4.local, v4.remote));
        assert!(
            !s.table_entry(0, v6.remote, v6.local),
            "the other side of it"
        );
        // A replay combines a recording's filters with the ones asked.
        let both = sel(&[40000, 40001], &[], Some(Ip::V4)).and(&sel(&[40001], &[80], None));
        assert_eq!(
            (both.lports, both.rports, both.ip),
            (vec![40001], vec![80], Some(Ip::V4))
        );
    }

    #[test]
    fn selections_combine() {
        let recorded = Selection {
            pids: vec![1, 2],
            ports: vec![80],
            cgroup: Some("/system.slice".into()),
            ..Selection::default()
        };
        let asked = Selection {
            pids: vec![2, 3],
            ..Selection::default()
        };
        let both = recorded.and(&asked);
        assert_eq!((both.pids, both.ports), (vec![2], vec![80]));
        assert_eq!(both.cgroup.as_deref(), Some("/system.slice"));
        let none = Selection::default().and(&asked);
        assert_eq!(none.pids, vec![2, 3]);
        assert_eq!(none.cgroup, None);
    }

    #[test]
    fn under_a_cgroup_filter_no_socket_from_before_the_start_is_shown() {
        let all = Selection::default();
        assert!(all.table_socket(0) && all.table_socket(77));
        let pid = Selection {
            pids: vec![77],
            ..Selection::default()
        };
        assert!(!pid.table_socket(0) && pid.table_socket(77) && !pid.table_socket(78));
        let cgroup = Selection {
            cgroup: Some("/kubepods".into()),
            ..Selection::default()
        };
        // Events are the kernel's business (it filtered them); the table's sockets stay out.
        assert!(cgroup.pid(77));
        assert!(!cgroup.table_socket(0) && !cgroup.table_socket(77));

        // Through the pipeline: a dump's CLOSE_WAIT socket and TIME_WAIT socket from before
        // the start, held by a process /proc names, count only without --cgroup.
        let socket = |timewait: bool, port: u16| crate::model::KernelSocket {
            netns: 0,
            state: if timewait {
                TcpState::TimeWait
            } else {
                TcpState::CloseWait
            },
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            remote: "127.0.0.1:6000".parse().expect("addr"),
            cookie: 1,
            inode: if timewait { 0 } else { 4242 },
            timewait,
            expires_ns: 30 * S,
        };
        for (selection, counted) in [(all, (1, 1)), (cgroup, (0, 0))] {
            let sink = Collect::default();
            let mut c = Core::new(
                vec![Box::new(sink.clone())],
                Box::new(OneOwner(Rc::default())),
                selection,
                Cadence::default(),
                header().clock(),
                0,
            );
            c.item(Item::Kernel(KernelTruth {
                dump_ns: S / 2,
                sockets: vec![socket(false, 5000), socket(true, 5001)],
                owners: Vec::new(),
                timewait_kernel: None,
                port_settings: Vec::new(),
            }));
            c.item(Item::Stats(Stats {
                mono_ns: S,
                ..Stats::default()
            }));
            let snaps = sink.0.borrow().0.clone();
            let t = &snaps.last().expect("a snapshot").totals;
            assert_eq!((t.close_wait_now, t.timewait_now), counted);
        }
    }

    /// Keeps the kernel dumps it is handed; wants the model but no snapshots, as a recorder.
    #[derive(Clone, Default)]
    struct Dumps(Rc<RefCell<Vec<KernelTruth>>>);

    impl Sink for Dumps {
        fn wants_model(&self) -> bool {
            true
        }
        fn kernel(&mut self, k: &KernelTruth) -> anyhow::Result<()> {
            self.0.borrow_mut().push(k.clone());
            Ok(())
        }
    }

    /// Answers every question with one process, and counts the questions.
    struct OneOwner(Rc<RefCell<Vec<u64>>>);

    impl Processes for OneOwner {
        fn owners(&mut self, _t: &KernelTruth, inodes: &[u64]) -> HashMap<u64, (u32, Comm)> {
            self.0.borrow_mut().extend_from_slice(inodes);
            inodes
                .iter()
                .map(|&i| (i, (77, Comm::from("holder"))))
                .collect()
        }
        fn exists(&self, _pid: u32) -> bool {
            true
        }
    }

    #[test]
    fn a_recorder_gets_the_owners_the_model_asked_for_without_any_snapshot() {
        let dumps = Dumps::default();
        let asked = Rc::new(RefCell::new(Vec::new()));
        let mut c = Core::new(
            vec![Box::new(dumps.clone())],
            Box::new(OneOwner(Rc::clone(&asked))),
            Selection::default(),
            Cadence::default(),
            header().clock(),
            0,
        );
        let socket = crate::model::KernelSocket {
            netns: 0,
            state: TcpState::CloseWait,
            local: "127.0.0.1:5000".parse().expect("addr"),
            remote: "127.0.0.1:6000".parse().expect("addr"),
            cookie: 1,
            inode: 4242,
            timewait: false,
            expires_ns: 0,
        };
        c.item(Item::Kernel(KernelTruth {
            dump_ns: S,
            sockets: vec![socket],
            owners: Vec::new(),
            timewait_kernel: None,
            port_settings: Vec::new(),
        }));
        assert_eq!(*asked.borrow(), vec![4242]);
        let seen = dumps.0.borrow();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].owners, vec![(4242, 77, Comm::from("holder"))]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A file whose checksums are right can still hold nonsense (a bug, a crafted file): the
        /// pipeline (model, snapshots, report) must survive it too.
        #[test]
        fn arbitrary_items_never_panic(items in prop::collection::vec(arb_record(), 0..40)) {
            let sink = Collect::default();
            let mut c = core(&sink, Selection::default(), Cadence::default(), 0);
            feed(&mut c, &items);
            let _ = c.close(0, Vec::new());
        }
    }
}
