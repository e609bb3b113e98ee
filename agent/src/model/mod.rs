//! The leaderboard's model: per-socket state joined with owners, per-process and per-peer
//! counters, reconciled with the kernel's socket table. Plain Rust, no I/O: events and sock_diag
//! dumps go in, [`Snapshot`]s come out.
//!
//! Every event costs a few hash-map operations (O(1)); memory is bounded by the live sockets
//! (the kernel's own count), a per-process peer cap, and ageing of dead processes and idle peers.

use std::{
    cmp::Reverse,
    collections::{HashMap, HashSet, VecDeque},
    hash::{BuildHasher as _, Hasher as _},
    net::SocketAddr,
};

use jiff::Timestamp;

mod failures;
pub mod leaks;
pub mod lives;
mod owners;
pub mod ports;
#[cfg(test)]
mod replay_tests;
pub mod snapshot;
mod substate;

use crate::{
    event::{Attribution, Comm, Transition},
    state::TcpState,
};
use leaks::{CloseWaitAges, Sample};
use lives::Lives;
use snapshot::{BEFORE_START, Lifetimes, PeerKey, PeerRow, ProcessRow, Snapshot, Totals};
use substate::Substate;

/// Timer-wheel lateness assumed before any is measured. The kernel's timer wheel rounds a
/// timer up to the end of a bucket whose size grows with how far out it is
/// (kernel/time/timer.c: 64 buckets per level, each level 8 times coarser): TIME_WAIT's 60 s
/// is 15,000 jiffies at HZ=250 (this machine's kernel), which lands in level 3, buckets of 512
/// jiffies, so a timewait socket goes 0 to 2.048 s after its deadline, a whole bucket at once.
/// No single slack matches such bursts between two dumps (0.5 s removes part of a bucket early,
/// 2.1 s keeps the rest late; tried both against sockstat); each dump corrects the count, and
/// from the first overdue socket on the model learns how late this kernel runs.
const TW_SLACK_INITIAL_NS: u64 = 500_000_000;
/// Added to each measured lateness, for the time between the due moment and the dump.
const TW_SLACK_MARGIN_NS: u64 = 50_000_000;
/// Beyond this a socket was re-armed, not late: the coarsest bucket a 60 s timer lands in is
/// 4.096 s (HZ=1000, level 4).
const TW_SLACK_MAX_NS: u64 = 4_500_000_000;

/// How many TIME_WAIT-per-interval samples a process keeps for its sparkline.
pub const HISTORY_LEN: usize = 60;

/// A connection's 4-tuple and network namespace, hashed to 64 bits (pods on one host use the
/// same addresses, each in its own namespace): the maps hold up to the kernel's whole
/// TIME_WAIT table (tcp_max_tw_buckets, 131,072 here), where two 32-byte SocketAddrs per entry
/// would double the agent's memory. A collision among 10^5 live tuples has a probability of
/// about 10^-10.
type Tuple = u64;

fn tuple(netns: u32, local: SocketAddr, remote: SocketAddr) -> Tuple {
    // One hasher for the whole process, so equal tuples hash equally across calls; seeded at
    // random once, so peers cannot pick colliding tuples ahead. foldhash, not SipHash: this
    // runs for every event, and SipHash was the largest single item of the agent's profile.
    static HASHER: std::sync::LazyLock<foldhash::fast::RandomState> =
        std::sync::LazyLock::new(foldhash::fast::RandomState::default);
    match (local, remote) {
        // IPv4, nearly every event: the whole tuple is 128 bits, hashed in one step. The
        // derived `Hash` of the SocketAddrs wrote it in seven pieces (`SocketAddr as Hash` and
        // `BuildHasher::hash_one` were 4.5% of the agent's time at peak). Any other tuple
        // writes more than one piece below, so no two tuples write the same input.
        (SocketAddr::V4(l), SocketAddr::V4(r)) => {
            let mut h = HASHER.build_hasher();
            h.write_u128(
                (u128::from(netns) << 96)
                    | (u128::from(l.ip().to_bits()) << 64)
                    | (u128::from(l.port()) << 48)
                    | (u128::from(r.ip().to_bits()) << 16)
                    | u128::from(r.port()),
            );
            h.finish()
        }
        _ => HASHER.hash_one((netns, local, remote)),
    }
}

/// Bounds and ageing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Peers tracked per process; the rest are summed in one "other" peer.
    pub max_peers_per_process: usize,
    /// A peer with nothing alive is dropped after this long without events.
    pub peer_idle_ns: u64,
    /// A process with nothing alive is dropped after this long without events if it has exited.
    pub process_idle_ns: u64,
    /// How long the kernel keeps a TIME_WAIT socket (TCP_TIMEWAIT_LEN, 60 s, fixed at compile
    /// time in include/net/tcp.h). Expiring by age between reconciliations keeps TIME_WAIT-now
    /// exact under heavy churn, where thousands die every second.
    pub timewait_len_ns: u64,
    /// A CLOSE_WAIT socket older than this makes its process a leak suspect (`--min-age`).
    pub leak_min_age_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_peers_per_process: 64,
            peer_idle_ns: 60_000_000_000,
            process_idle_ns: 10_000_000_000,
            timewait_len_ns: 60_000_000_000,
            leak_min_age_ns: 30_000_000_000,
        }
    }
}

/// A live full socket (not LISTEN, not timewait).
#[derive(Clone, Copy, Debug)]
struct Sock {
    pid: u32,
    state: TcpState,
    peer: PeerKey,
    /// Its 4-tuple, to match it with the kernel's table.
    tuple: Tuple,
    /// Its network namespace (0: not known), to tell whether a dump covered it.
    netns: u32,
    /// Monotonic ns of the last event or of the kernel dump that confirmed it.
    seen_ns: u64,
    /// Since when it is in `state`: the event that put it there, or the dump that first found
    /// it (then only a lower bound of its age: `since_known` is false).
    since_ns: u64,
    since_known: bool,
    /// When its connection opened (`CLOSE -> SYN_SENT`, `LISTEN -> SYN_RECV`), if seen.
    opened_ns: Option<u64>,
    /// The owner the kernel program still names for it, when that process has exited (or its
    /// pid was reused) and `pid` is the process found holding the socket now.
    inherited_from: Option<u32>,
    /// Its owner is the listener's, a guess until a process accept()s it (or /proc names the
    /// process holding it: `reconcile` asks).
    by_listener: bool,
}

/// Since when a socket that was `previous` is in `state` after an event at `now_ns`, and
/// whether that is exact (`Sock::since_ns`, `since_known`): an event that did not change the
/// state carries its age over.
fn since(previous: Option<&Sock>, state: TcpState, now_ns: u64) -> (u64, bool) {
    match previous {
        Some(s) if s.state == state => (s.since_ns, s.since_known),
        _ => (now_ns, true),
    }
}

/// Dumps in a row a closing socket must be missing from before `Model::recover_vanished`
/// counts its skipped close. A busy dump misses a socket now and then (see there); three
/// misses of one socket in a row are unlikely enough. `Live` dumps that often when it stops.
pub const VANISHED_DUMPS: u32 = 3;

/// A timewait socket twtrace attributed: TIME_WAIT, or an orphan's FIN_WAIT2 (see `Substate`).
#[derive(Clone, Copy, Debug)]
struct TwSock {
    pid: u32,
    peer: PeerKey,
    entered_ns: u64,
    /// When the kernel will drop it: 60 s after entering, corrected from sock_diag's timer.
    deadline_ns: u64,
    /// Counted by `recover_skipped`, not by its event (which may still come: see `apply`).
    recovered: bool,
    /// Its substate now, which its "now" gauge follows; a dump corrects it.
    sub: Substate,
    /// The substate its entry was counted in.
    entered_as: Substate,
}

#[derive(Clone, Copy, Debug, Default)]
struct Peer {
    tw_entered: u64,
    tw_now: u64,
    /// Orphaned FIN_WAIT2 timewait sockets: entries and alive now.
    fw2_entered: u64,
    fw2_now: u64,
    cw_now: u64,
    est_now: u64,
    last_ns: u64,
    /// Failed connect() calls toward it (`failures.rs`).
    connect_failures: u64,
    /// Its connections that ended by a reset (no timewait entry then).
    resets: u64,
    /// Lifetimes of its connections that ended in the last minute.
    lives: Lives,
}

impl Peer {
    fn alive(&self) -> bool {
        self.tw_now + self.fw2_now + self.cw_now + self.est_now > 0
    }

    /// Adds a socket's gauges (`gauge` of its state).
    fn add_gauges(&mut self, (cw, est): (u64, u64)) {
        self.cw_now += cw;
        self.est_now += est;
    }
}

#[derive(Clone, Debug, Default)]
struct Proc {
    comm: Comm,
    /// The network namespace of its latest socket.
    netns: u32,
    /// Its cgroup v2 id, from the kernel program.
    cgroup_id: u64,
    tw_entered: u64,
    opens: u64,
    closes: u64,
    resets: u64,
    /// Counters at the previous snapshot, for per-interval rates.
    prev: (u64, u64, u64),
    rates: (f64, f64, f64),
    tw_now: u64,
    /// Orphaned FIN_WAIT2 timewait sockets: entries and alive now.
    fw2_entered: u64,
    fw2_now: u64,
    cw_now: u64,
    /// The most CLOSE_WAIT sockets it held at once.
    cw_peak: u64,
    est_now: u64,
    history: Vec<u64>,
    /// Its gauges at each snapshot of the last minute, for growth.
    samples: VecDeque<Sample>,
    /// CLOSE_WAIT now at each of the last HISTORY_LEN snapshots, oldest first.
    cw_history: Vec<u64>,
    peers: Map<PeerKey, Peer>,
    last_ns: u64,
    /// Failed connect() and bind() calls (`failures.rs`).
    failures: failures::Counts,
}

impl Proc {
    fn alive(&self) -> bool {
        self.tw_now + self.fw2_now + self.cw_now + self.est_now > 0
    }

    /// Adds a socket's gauges (`gauge` of its state); CLOSE_WAIT's peak follows.
    fn add_gauges(&mut self, (cw, est): (u64, u64)) {
        self.cw_now += cw;
        self.cw_peak = self.cw_peak.max(self.cw_now);
        self.est_now += est;
    }

    /// The key `key`'s counts live under: itself, or "other" once the cap is reached. Creates
    /// the peer entry.
    fn intern_peer(&mut self, key: PeerKey, cap: usize) -> PeerKey {
        self.intern_peer_mut(key, cap).0
    }

    /// [`Proc::intern_peer`], with the peer's counters: `apply` used to intern and then look
    /// the peer up again, hashing the key twice per event (`rustc_entry`, `HashMap::get_mut`
    /// and `Proc::intern_peer` were 11-17% of the agent's time at peak).
    fn intern_peer_mut(&mut self, key: PeerKey, cap: usize) -> (PeerKey, &mut Peer) {
        // Looked up twice only when the cap is reached (a known peer then, or "other").
        let key = if self.peers.len() >= cap && !self.peers.contains_key(&key) {
            PeerKey::Other
        } else {
            key
        };
        (key, self.peers.entry(key).or_default())
    }
}

/// One socket in the kernel's table (from sock_diag), as the model needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSocket {
    /// Its network namespace (nsfs inode); 0 when namespaces are not known.
    pub netns: u32,
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub cookie: u64,
    pub inode: u64,
    /// A timewait socket (whatever its substate).
    pub timewait: bool,
    /// Time until the socket's timer fires (for a timewait socket: until it is dropped).
    pub expires_ns: u64,
}

/// Finds the processes holding socket inodes: inode -> (pid, comm).
pub type OwnerLookup<'a> = dyn FnMut(&[u64]) -> HashMap<u64, (u32, Comm)> + 'a;

/// What became of a process the model counts sockets for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcStatus {
    Alive,
    Exited,
    /// The pid belongs to another process now (another start time).
    Reused,
}

/// Counters the model does not derive itself (from the tracer and /proc).
#[derive(Clone, Copy, Debug, Default)]
pub struct Outside {
    pub lost_events: u64,
    pub timewait_kernel: Option<u64>,
    pub namespaces: Option<u32>,
}

/// The model's hash maps and sets. Hashing was a fifth of the agent's CPU at peak with the
/// standard library's SipHash (perf, one churn generator); foldhash is several times faster and
/// still randomly seeded per process, so remote peers cannot choose colliding tuples ahead.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type Set<T> = HashSet<T, foldhash::fast::RandomState>;

#[derive(Debug)]
pub struct Model {
    limits: Limits,
    start_ns: u64,
    procs: Map<u32, Proc>,
    /// Event-born sockets by kernel address.
    socks: Map<u64, Sock>,
    /// Sockets found in the kernel's table with no event yet, by (local, remote).
    seeded: Map<Tuple, Sock>,
    timewait: Map<Tuple, TwSock>,
    /// TIME_WAIT sockets past TCP_TIMEWAIT_LEN, no longer counted, kept until the next
    /// reconciliation in case the kernel re-armed their timer (a FIN reaching an orphaned
    /// FIN_WAIT2 timewait socket starts its 60 s again).
    aged: Map<Tuple, TwSock>,
    /// Rows of processes whose pid was reused by another process: kept apart, so the new
    /// process never merges with the old one, until they age out.
    retired: Vec<(u32, Proc)>,
    /// Timewait sockets in the kernel's table whose owner twtrace never saw, with peers.
    /// (deadline from the kernel's timer, peer, substate).
    before_start_tw: Vec<(u64, PeerKey, Substate)>,
    /// How long after its deadline the kernel really drops a timewait socket, learnt from
    /// sockets it still had when they were due.
    tw_slack_ns: u64,
    unattributed_events: u64,
    /// Listening (namespace, port)s: the last dump's, plus those whose `* -> LISTEN` came since
    /// (less those closed), so a socket first seen mid-life can be told accepted or outgoing.
    listening: Set<(u32, u16)>,
    tw_entered_total: u64,
    /// Orphaned FIN_WAIT2 timewait entries since start.
    fw2_entered_total: u64,
    /// Timewait entries found by `recover_skipped` and `recover_vanished` (included in the two
    /// totals above).
    tw_recovered: u64,
    /// Closing sockets the last dumps did not have at all, with how many dumps in a row, and
    /// the last dump's time (see `recover_vanished`).
    vanished: Map<u64, u32>,
    vanished_dump_ns: u64,
    tw_entered_prev: u64,
    tw_rate: f64,
    last_snapshot_ns: u64,
    /// Failed connect() calls by destination, and the totals (`failures.rs`).
    failures: failures::Destinations,
}

impl Model {
    pub fn new(start_ns: u64, limits: Limits) -> Self {
        Self {
            limits,
            start_ns,
            procs: Map::default(),
            socks: Map::default(),
            seeded: Map::default(),
            timewait: Map::default(),
            aged: Map::default(),
            retired: Vec::new(),
            before_start_tw: Vec::new(),
            tw_slack_ns: TW_SLACK_INITIAL_NS,
            unattributed_events: 0,
            listening: Set::default(),
            tw_recovered: 0,
            vanished: Map::default(),
            vanished_dump_ns: 0,
            tw_entered_total: 0,
            fw2_entered_total: 0,
            tw_entered_prev: 0,
            tw_rate: 0.0,
            last_snapshot_ns: start_ns,
            failures: failures::Destinations::default(),
        }
    }

    /// Applies one transition. Returns the owner it is shown with when that is not the one
    /// the kernel program named: the process that inherited the socket from an exited owner.
    pub fn apply(&mut self, t: &Transition) -> Option<(u32, Comm)> {
        if let Some(f) = t.failure {
            self.failure(t, f);
            return None;
        }
        if t.is_accept() {
            self.accept(t);
            return None;
        }
        if t.attribution == Attribution::Unknown {
            self.unattributed_events += 1;
        }
        // Listening sockets are not connections; they are remembered (see `listening`).
        if t.new == TcpState::Listen {
            self.listening.insert((t.netns, t.local.port()));
            return None;
        }
        if t.old == TcpState::Listen && t.new != TcpState::SynRecv {
            // A listener closing; another one may still listen on the port (SO_REUSEPORT), which
            // the next dump restores.
            self.listening.remove(&(t.netns, t.local.port()));
            return None;
        }
        // The 4-tuple's key, hashed once for all the maps below.
        let key = tuple(t.netns, t.local, t.remote);
        if let Some(shown) = self.step_in_place(t, key) {
            return shown;
        }
        // The entry of a TIME_WAIT a reconciliation already counted: the event was not skipped
        // after all, only still in the ring buffer while the kernel's table was dumped. Counted
        // once; it is no longer "recovered".
        // Events before it that were in flight too (FIN_WAIT1 -> FIN_WAIT2) made the socket
        // anew here; it goes now.
        if t.timewait().is_some()
            && let Some(tw) = self.timewait.get_mut(&key)
            && tw.recovered
        {
            tw.recovered = false;
            self.tw_recovered = self.tw_recovered.saturating_sub(1);
            if let Some(old) = self.socks.remove(&t.skaddr) {
                self.uncount(&old);
            }
            return None;
        }
        let mut tracked = self.socks.remove(&t.skaddr);
        // A new life at an address whose last one was still closing: its close never came (a
        // closed socket's end is reported before its memory can be reused, so the kernel
        // skipped it). At peak that happens within microseconds, long before a dump could find
        // the socket still here in its closing state. A life starts at CLOSE (connect, listen)
        // or as a listener's child (LISTEN -> SYN_RECV: a client's freed socket is as likely to
        // come back as a server's accepted one).
        if matches!(t.old, TcpState::Close | TcpState::Listen)
            && let Some(old) = tracked.take_if(|old| old.state.before_timewait())
        {
            self.uncount(&old);
            // It closed before this event; when exactly is not known, its last event is the
            // best bound. A dump drops it from the "now" gauges if the kernel has no timewait
            // socket for it (a full table).
            // Its substate is not known: TIME_WAIT until a dump says otherwise.
            self.recover(
                &old,
                old.seen_ns.saturating_add(self.limits.timewait_len_ns),
                Substate::TimeWait,
            );
        }
        // A socket can be in the kernel's table before its first events are read (the dump
        // raced the ring buffer): its seeded copy must go, or it would be counted twice.
        // Most of the time nothing is seeded: no lookup then.
        let seeded = if self.seeded.is_empty() {
            None
        } else {
            self.seeded.remove(&key)
        };
        for old in tracked.iter().chain(seeded.iter()) {
            self.uncount(old);
        }
        let previous = tracked.or(seeded);
        // A socket found in the kernel's table keeps the owner /proc gave it when the kernel
        // side has none.
        // An inherited socket keeps its new owner while the kernel still names the exited one;
        // a transition its new owner makes itself (its close) teaches the kernel the same pid.
        let inherited_from = previous
            .and_then(|s| s.inherited_from)
            .filter(|&old| old == t.pid);
        // An accepted socket keeps its acceptor when a softirq transition raced the accept and
        // still names the listener's owner (see `accepted` in the kernel program), or when a
        // reconcile found the process holding it. Not across lives (the previous socket at
        // this address is another connection), and not for a socket the dump saw before its
        // events with no holder yet (pid 0: still in the accept queue): the listener's owner
        // is the better guess there.
        let new_life = matches!(t.old, TcpState::Close | TcpState::Listen);
        let accepted_already = !new_life
            && previous.is_some_and(|s| !s.by_listener && s.pid != 0)
            && t.attribution == Attribution::Listener;
        let pid = match previous {
            Some(s) if t.pid == 0 || inherited_from.is_some() || accepted_already => s.pid,
            _ => t.pid,
        };
        let by_listener = match previous {
            Some(s) if accepted_already || t.pid == 0 => s.by_listener,
            _ => t.attribution == Attribution::Listener,
        };
        // A new connection on a 4-tuple in TIME_WAIT means the kernel killed that timewait
        // socket: tcp_tw_reuse handed its port to connect(), or a SYN reached it and went to
        // the listener (tcp_timewait_state_process, TCP_TW_SYN).
        if matches!(
            (t.old, t.new),
            (TcpState::SynSent, TcpState::Established) | (TcpState::Listen, TcpState::SynRecv)
        ) {
            if let Some(tw) = self.timewait.remove(&key) {
                self.uncount_tw(&tw);
            }
            if !self.aged.is_empty() {
                self.aged.remove(&key);
            }
        }
        // A socket first seen mid-life (it predates twtrace) on a port its namespace listens
        // on was accepted: keyed as outgoing, each client's ephemeral port would be a peer of
        // its own and fill the process's peer cap at once.
        let accepted = match previous {
            Some(s) => matches!(s.peer, PeerKey::In { .. }),
            None => {
                t.old == TcpState::Listen
                    || t.attribution == Attribution::Listener
                    || self.listening.contains(&(t.netns, t.local.port()))
            }
        };
        let cap = self.limits.max_peers_per_process;
        let proc = proc_of_event(&mut self.procs, pid, t);
        let shown = inherited_from.map(|_| (pid, proc.comm));
        // A socket that stays (not a timewait entry, not a close) is counted here (`count`),
        // and a timewait entry here too (`enter_timewait`'s counters), while its process and
        // peer are at hand: nothing below changes their gauges before it is stored.
        let live = t.timewait().is_none() && t.new != TcpState::Close;
        let (cw, est) = gauge(t.new);
        if live {
            proc.add_gauges((cw, est));
        }
        // The ephemeral port is 0 at CLOSE -> SYN_SENT, but the peer is known from the start.
        let (peer, p) = proc.intern_peer_mut(PeerKey::of(accepted, t.local, t.remote), cap);
        p.last_ns = p.last_ns.max(t.mono_ns);
        let entry = t.timewait().map(Substate::of);
        if live {
            p.add_gauges((cw, est));
        } else {
            // Its life ends (a timewait entry or a close): `end_life`, on the peer at hand.
            record_life(p, previous.as_ref(), t.mono_ns);
            // As `proc.resets` below, for this peer.
            if entry.is_none() && t.new == TcpState::Close && t.reset.is_some() {
                p.resets += 1;
            }
        }
        if let Some(sub) = entry {
            *p.entered_mut(sub) += 1;
            *p.now_mut(sub) += 1;
            proc.closes += 1;
            *proc.entered_mut(sub) += 1;
            *proc.now_mut(sub) += 1;
        }
        if matches!(
            (t.old, t.new),
            (TcpState::Close, TcpState::SynSent) | (TcpState::Listen, TcpState::SynRecv)
        ) {
            proc.opens += 1;
        }
        let opened_ns = if matches!(
            (t.old, t.new),
            (TcpState::Close, TcpState::SynSent) | (TcpState::Listen, TcpState::SynRecv)
        ) {
            Some(t.mono_ns)
        } else {
            previous.and_then(|s| s.opened_ns)
        };
        // A timewait entry: TIME_WAIT, or FIN_WAIT2 for an orphan (`t.new` FIN_WAIT2 then).
        match (entry, t.new) {
            (Some(sub), _) => {
                // The rest of `enter_timewait`, its counters taken above.
                *self.entered_total_mut(sub) += 1;
                let tw = TwSock {
                    pid,
                    peer,
                    entered_ns: t.mono_ns,
                    deadline_ns: t.mono_ns.saturating_add(self.limits.timewait_len_ns),
                    recovered: false,
                    sub,
                    entered_as: sub,
                };
                // A 4-tuple is in TIME_WAIT once at most (see `enter_timewait`).
                if let Some(old) = self.timewait.insert(key, tw) {
                    self.uncount_tw(&old);
                }
            }
            (None, TcpState::Close) => {
                proc.closes += 1;
                if t.reset.is_some() {
                    proc.resets += 1;
                }
            }
            (None, state) => {
                let (since_ns, since_known) = since(previous.as_ref(), state, t.mono_ns);
                let sock = Sock {
                    pid,
                    state,
                    peer,
                    tuple: key,
                    netns: t.netns,
                    seen_ns: t.mono_ns,
                    since_ns,
                    since_known,
                    opened_ns,
                    inherited_from,
                    by_listener,
                };
                // Counted above.
                self.socks.insert(t.skaddr, sock);
            }
        }
        shown
    }

    /// `apply` for the most common event: a tracked socket moving between two live states (not
    /// a new life, not its end, not a socket also seeded from a dump). The socket is updated
    /// where it is, with one lookup: `apply` otherwise removes it and inserts it again, and at
    /// peak `HashMap::remove`, `RawTable::remove_entry` and the moves of the ~100-byte `Sock`
    /// were a fifth of the agent's time. Every derivation is `apply`'s with `previous` the
    /// tracked socket and `new_life` false; the result is exactly `apply`'s. None: not such an
    /// event (nothing changed), `apply` takes its general path.
    fn step_in_place(&mut self, t: &Transition, key: Tuple) -> Option<Option<(u32, Comm)>> {
        if t.timewait().is_some()
            || matches!(t.new, TcpState::Close)
            || matches!(t.old, TcpState::Close | TcpState::Listen)
            || (!self.seeded.is_empty() && self.seeded.contains_key(&key))
        {
            return None;
        }
        // Only `socks` is borrowed from here on, by `slot`: the other fields are used directly.
        let slot = self.socks.get_mut(&t.skaddr)?;
        let old = *slot;
        let inherited_from = old.inherited_from.filter(|&o| o == t.pid);
        let accepted_already =
            !old.by_listener && old.pid != 0 && t.attribution == Attribution::Listener;
        let pid = if t.pid == 0 || inherited_from.is_some() || accepted_already {
            old.pid
        } else {
            t.pid
        };
        let by_listener = if accepted_already || t.pid == 0 {
            old.by_listener
        } else {
            t.attribution == Attribution::Listener
        };
        // `LISTEN -> SYN_RECV` is a new life, not here.
        if (t.old, t.new) == (TcpState::SynSent, TcpState::Established) {
            if let Some(tw) = self.timewait.remove(&key) {
                uncount_tw_in(&mut self.procs, &tw);
            }
            if !self.aged.is_empty() {
                self.aged.remove(&key);
            }
        }
        let accepted = matches!(old.peer, PeerKey::In { .. });
        let cap = self.limits.max_peers_per_process;
        // `apply` takes the old socket's gauges off before anything else: the same here when
        // it was another process's (updated together with the new ones below otherwise).
        if old.pid != pid {
            uncount_in(&mut self.procs, &old);
        }
        let proc = proc_of_event(&mut self.procs, pid, t);
        let shown = inherited_from.map(|_| (pid, proc.comm));
        let state = t.new;
        let (cw, est) = gauge(state);
        let (old_cw, old_est) = gauge(old.state);
        // `uncount(old)` then `count(new)`, in that order (they saturate), on the process held
        // when it is the same one.
        let same_proc = old.pid == pid;
        if same_proc {
            proc.cw_now = proc.cw_now.saturating_sub(old_cw);
            proc.est_now = proc.est_now.saturating_sub(old_est);
        }
        proc.add_gauges((cw, est));
        let (peer, p) = proc.intern_peer_mut(PeerKey::of(accepted, t.local, t.remote), cap);
        p.last_ns = p.last_ns.max(t.mono_ns);
        if same_proc && old.peer == peer {
            p.cw_now = p.cw_now.saturating_sub(old_cw);
            p.est_now = p.est_now.saturating_sub(old_est);
        }
        p.add_gauges((cw, est));
        // Another peer of the same process (its entry may have aged out: nothing to take then).
        if same_proc
            && old.peer != peer
            && let Some(op) = proc.peers.get_mut(&old.peer)
        {
            op.cw_now = op.cw_now.saturating_sub(old_cw);
            op.est_now = op.est_now.saturating_sub(old_est);
        }
        let (since_ns, since_known) = since(Some(&old), state, t.mono_ns);
        *slot = Sock {
            pid,
            state,
            peer,
            tuple: key,
            netns: t.netns,
            seen_ns: t.mono_ns,
            since_ns,
            since_known,
            opened_ns: old.opened_ns,
            inherited_from,
            by_listener,
        };
        Some(shown)
    }

    /// A process took a socket with accept(): it owns the socket from now on, with its open,
    /// instead of the listener's owner (a pre-fork server's master, or whichever worker of an
    /// SO_REUSEPORT group registered last).
    fn accept(&mut self, t: &Transition) {
        // The 4-tuple is hashed only for a socket not born from events.
        let (old, key) = match self.socks.remove(&t.skaddr) {
            Some(s) => (s, None),
            None => {
                let key = tuple(t.netns, t.local, t.remote);
                match self.seeded.remove(&key) {
                    Some(s) => (s, Some(key)),
                    // Already closed, or never seen: nothing to move.
                    None => return,
                }
            }
        };
        self.uncount(&old);
        let cap = self.limits.max_peers_per_process;
        if old.pid != t.pid
            && old.by_listener
            && let Some(p) = self.procs.get_mut(&old.pid)
        {
            p.opens = p.opens.saturating_sub(1);
        }
        let proc = self.procs.entry(t.pid).or_default();
        proc.comm = t.comm;
        proc.netns = t.netns;
        proc.cgroup_id = t.cgroup_id;
        proc.last_ns = proc.last_ns.max(t.mono_ns);
        if old.pid != t.pid && old.by_listener {
            proc.opens += 1;
        }
        let peer = proc.intern_peer(PeerKey::of(true, t.local, t.remote), cap);
        let sock = Sock {
            pid: t.pid,
            peer,
            seen_ns: t.mono_ns,
            inherited_from: None,
            by_listener: false,
            ..old
        };
        self.count(&sock);
        match key {
            None => self.socks.insert(t.skaddr, sock),
            Some(key) => self.seeded.insert(key, sock),
        };
    }

    /// A connection of `pid` to `peer` ended at `end_ns`; `s` is its socket as last tracked.
    /// Only connections that were seen opening and got past the handshake have a lifetime (a
    /// refused connect() says nothing about reuse).
    fn end_life(&mut self, pid: u32, peer: PeerKey, s: Option<&Sock>, end_ns: u64) {
        if let Some(p) = self
            .procs
            .get_mut(&pid)
            .and_then(|proc| proc.peers.get_mut(&peer))
        {
            record_life(p, s, end_ns);
        }
    }

    /// Adds a socket's gauges to its process and peer (the peer was interned by the caller).
    fn count(&mut self, s: &Sock) {
        let proc = self.procs.entry(s.pid).or_default();
        let (cw, est) = gauge(s.state);
        proc.add_gauges((cw, est));
        let p = proc.peers.entry(s.peer).or_default();
        p.add_gauges((cw, est));
    }

    fn uncount(&mut self, s: &Sock) {
        uncount_in(&mut self.procs, s);
    }

    fn count_tw(&mut self, tw: &TwSock) {
        if let Some(proc) = self.procs.get_mut(&tw.pid) {
            *proc.now_mut(tw.sub) += 1;
            if let Some(p) = proc.peers.get_mut(&tw.peer) {
                *p.now_mut(tw.sub) += 1;
            }
        }
    }

    fn uncount_tw(&mut self, tw: &TwSock) {
        uncount_tw_in(&mut self.procs, tw);
    }

    /// TIME_WAIT entries whose event the kernel skipped. The kernel does not run a tracepoint
    /// program while another BPF program runs on that CPU (a softirq arriving inside one), and
    /// at peak whole softirq batches are skipped: a client's `FIN_WAIT2 -> CLOSE` (its TIME_WAIT
    /// entry) and its destroy with them. The socket then stays here in its closing state
    /// (FIN_WAIT1, FIN_WAIT2, CLOSING: the active closer's) until either
    /// - a new socket takes its kernel address (`apply`): a closed socket's end is reported
    ///   before its memory can be reused, so the close was skipped. At peak this comes within
    ///   microseconds. Or
    /// - a dump of the kernel's table holds its 4-tuple as a timewait socket: that is the
    ///   entry, and when it entered is known from the kernel's timer (here).
    ///
    /// A socket merely missing from a dump is no evidence: a dump of a busy table can skip
    /// sockets (sock_diag resumes each bucket by position, and the bucket changes between
    /// reads), and counting those put four entries too many on one pid at four generators.
    ///
    /// Either way the entry is counted for the owner twtrace knows, as the event would have
    /// been, and in `timewait_recovered`; the skipped events themselves stay counted as lost.
    fn recover_skipped(&mut self, kernel_tw: &Map<Tuple, (u64, Substate)>, dump_ns: u64) {
        let missed: Vec<u64> = self
            .socks
            .iter()
            .filter(|(_, s)| {
                s.state.before_timewait()
                    && s.seen_ns < dump_ns
                    && kernel_tw.contains_key(&s.tuple)
                    && !self.timewait.contains_key(&s.tuple)
            })
            .map(|(&skaddr, _)| skaddr)
            .collect();
        for skaddr in missed {
            if let Some(s) = self.socks.remove(&skaddr) {
                self.uncount(&s);
                let (deadline_ns, sub) = kernel_tw
                    .get(&s.tuple)
                    .copied()
                    .unwrap_or((dump_ns, Substate::TimeWait));
                self.recover(&s, deadline_ns, sub);
            }
        }
    }

    /// Closing sockets the kernel no longer has at all, neither as a full socket nor as a
    /// timewait one, in [`VANISHED_DUMPS`] dumps in a row and with no event of theirs since the
    /// first: their close was skipped by the kernel (and their destroy too, or the kernel
    /// program would have rebuilt the close), and no timewait socket is left for
    /// `recover_skipped` to find: the
    /// kernel's timewait table was full (`tcp_max_tw_buckets`: it made none), or tcp_tw_reuse
    /// gave the port to a new connection already. Both are usual at peak. Until their address
    /// came back as a new socket (see `apply`) they stayed tracked, and their TIME_WAIT entry,
    /// or their close, was missing: 1 or 2 per generator of 70,000-105,000 connections at four.
    ///
    /// FIN_WAIT1, FIN_WAIT2 and CLOSING end in a timewait socket unless a reset ends them, so
    /// they are counted as TIME_WAIT entries (their substate is not known); LAST_ACK as a close.
    /// Several dumps, because a dump of a busy table can miss a socket that is there
    /// (inet_diag resumes a hash bucket by position, and the bucket changes in between). Only in
    /// namespaces the dump has sockets of (`dumped`): a namespace twtrace cannot enter lists
    /// nothing, and its closing sockets are not gone. A socket whose namespace is not known
    /// (no BTF) is left alone for the same reason.
    fn recover_vanished(
        &mut self,
        present: &dyn Fn(Tuple) -> bool,
        dumped: &Set<u32>,
        dump_ns: u64,
    ) {
        let mut absent = Map::default();
        let mut gone = Vec::new();
        for (&skaddr, s) in &self.socks {
            let closing = s.state.before_timewait() || s.state == TcpState::LastAck;
            if !closing
                || s.seen_ns >= dump_ns
                || s.netns == 0
                || !dumped.contains(&s.netns)
                || present(s.tuple)
            {
                continue;
            }
            // In a row: absent from the dump before too, with no event of its since then.
            let before = if s.seen_ns < self.vanished_dump_ns {
                self.vanished.get(&skaddr).copied().unwrap_or(0)
            } else {
                0
            };
            if before + 1 >= VANISHED_DUMPS {
                gone.push(skaddr);
            } else {
                absent.insert(skaddr, before + 1);
            }
        }
        for skaddr in gone {
            let Some(s) = self.socks.remove(&skaddr) else {
                continue;
            };
            self.uncount(&s);
            if s.state == TcpState::LastAck {
                if let Some(proc) = self.procs.get_mut(&s.pid) {
                    proc.closes += 1;
                }
                self.end_life(s.pid, s.peer, Some(&s), s.seen_ns);
            } else {
                // Entered no later than its last event, when is not known; a timewait socket
                // the kernel never made (or gave away) counts in no "now" gauge: the expiry
                // check of `reconcile` takes it out again at once.
                self.recover(
                    &s,
                    s.seen_ns.saturating_add(self.limits.timewait_len_ns),
                    Substate::TimeWait,
                );
            }
        }
        self.vanished = absent;
        self.vanished_dump_ns = dump_ns;
    }

    /// Counts a closing socket's TIME_WAIT entry whose event never came (see
    /// `recover_skipped`), due at `deadline_ns`, in substate `sub`. The socket is already out
    /// of `socks`.
    fn recover(&mut self, s: &Sock, deadline_ns: u64, sub: Substate) {
        self.tw_recovered += 1;
        let entered_ns = deadline_ns.saturating_sub(self.limits.timewait_len_ns);
        self.enter_timewait(
            s.pid,
            s.peer,
            s.tuple,
            (entered_ns, deadline_ns),
            (sub, true),
        );
        self.end_life(s.pid, s.peer, Some(s), s.seen_ns);
    }

    /// A timewait entry for `pid` toward `peer` (interned already) in substate `how.0`: counted
    /// as a close and an entry, alive from `when.0` until `when.1` (a dump corrects that from
    /// the kernel's timer). `how.1`, recovered: counted without its event (see
    /// `recover_skipped`). `apply` does the same inline for an event's entry, on the process
    /// and peer it holds: keep the two alike.
    fn enter_timewait(
        &mut self,
        pid: u32,
        peer: PeerKey,
        key: Tuple,
        (entered_ns, deadline_ns): (u64, u64),
        (sub, recovered): (Substate, bool),
    ) {
        let proc = self.procs.entry(pid).or_default();
        proc.closes += 1;
        *proc.entered_mut(sub) += 1;
        *proc.now_mut(sub) += 1;
        if let Some(p) = proc.peers.get_mut(&peer) {
            *p.entered_mut(sub) += 1;
            *p.now_mut(sub) += 1;
        }
        *self.entered_total_mut(sub) += 1;
        let tw = TwSock {
            pid,
            peer,
            entered_ns,
            deadline_ns,
            recovered,
            sub,
            entered_as: sub,
        };
        // A 4-tuple is in TIME_WAIT once at most; a new entry means the kernel reused it
        // (tcp_tw_reuse) and the old timewait socket is gone.
        if let Some(old) = self.timewait.insert(key, tw) {
            self.uncount_tw(&old);
        }
    }

    /// Brings the "now" gauges in line with the kernel's socket table, dumped at `dump_ns`
    /// (monotonic, taken before the dump started). `owner_of_inode` finds the process holding a
    /// socket inode (via /proc/<pid>/fd); it is asked only about sockets twtrace has no owner for.
    /// `keep` says whether sockets of a pid belong in the view (`--pid`); pid 0 stands for the
    /// unowned ones.
    pub fn reconcile(
        &mut self,
        kernel: &[KernelSocket],
        dump_ns: u64,
        owner_of_inode: &mut OwnerLookup<'_>,
        keep: &dyn Fn(u32) -> bool,
        status: &mut dyn FnMut(u32) -> ProcStatus,
    ) {
        let listening: Set<(u32, u16)> = kernel
            .iter()
            .filter(|k| k.state == TcpState::Listen)
            .map(|k| (k.netns, k.local.port()))
            .collect();
        self.listening.clone_from(&listening);

        // TIME_WAIT: the kernel drops them after 60 s or when tcp_tw_reuse hands the port on.
        // Joined by 4-tuple, not by cookie: inet_twsk_alloc() copies the full socket's cookie
        // only if one was generated already, and tcp_destroy_sock generates it just after, so
        // the timewait socket usually gets a cookie of its own when sock_diag asks.
        // The kernel also says when each one's timer fires, which keeps the count exact between
        // dumps (thousands expire every second under churn) and covers re-armed timers.
        let deadline = |k: &KernelSocket| dump_ns.saturating_add(k.expires_ns);
        // With its substate, TIME_WAIT or FIN_WAIT2 (the state sock_diag reports for it).
        let kernel_tw: Map<Tuple, (u64, Substate)> = kernel
            .iter()
            .filter(|k| k.timewait)
            .map(|k| {
                let key = tuple(k.netns, k.local, k.remote);
                (key, (deadline(k), Substate::of(k.state)))
            })
            .collect();
        // Aged ones the kernel still has are late (the timer wheel fires a 60 s timer in a
        // bucket up to a few hundred ms after its deadline, more at low HZ) or were re-armed:
        // count them again, and learn how late the kernel runs so the next ones wait as long.
        let rearmed: Vec<Tuple> = self
            .aged
            .keys()
            .filter(|key| kernel_tw.contains_key(*key))
            .copied()
            .collect();
        for key in rearmed {
            if let Some(tw) = self.aged.remove(&key) {
                let overdue = kernel_tw.get(&key).is_some_and(|&(d, _)| d <= dump_ns);
                if overdue {
                    let late = dump_ns
                        .saturating_sub(tw.deadline_ns)
                        .saturating_add(TW_SLACK_MARGIN_NS);
                    self.tw_slack_ns = self.tw_slack_ns.max(late.min(TW_SLACK_MAX_NS));
                }
                self.count_tw(&tw);
                self.timewait.insert(key, tw);
            }
        }
        self.aged.clear();
        for (key, tw) in self.timewait.iter_mut() {
            if let Some(&(d, _)) = kernel_tw.get(key) {
                tw.deadline_ns = d;
            }
        }
        self.correct_substates(&kernel_tw);
        self.recover_skipped(&kernel_tw, dump_ns);
        // Every 4-tuple the dump has, full or timewait, and the namespaces it has sockets of.
        let kernel_open: Map<Tuple, TcpState> = kernel
            .iter()
            .filter(|k| !k.timewait)
            .map(|k| (tuple(k.netns, k.local, k.remote), k.state))
            .collect();
        let mut dumped: Set<u32> = Set::default();
        let mut last_netns = None;
        for k in kernel {
            // Sockets come grouped by namespace: one insert per run of them.
            if last_netns != Some(k.netns) {
                last_netns = Some(k.netns);
                dumped.insert(k.netns);
            }
        }
        self.recover_vanished(
            &|key| kernel_open.contains_key(&key) || kernel_tw.contains_key(&key),
            &dumped,
            dump_ns,
        );
        let expired: Vec<Tuple> = self
            .timewait
            .iter()
            .filter(|(key, tw)| tw.entered_ns < dump_ns && !kernel_tw.contains_key(key))
            .map(|(&key, _)| key)
            .collect();
        for key in expired {
            if let Some(tw) = self.timewait.remove(&key) {
                self.uncount_tw(&tw);
            }
        }
        self.before_start_tw.clear();
        for k in kernel.iter().filter(|k| {
            k.timewait
                && keep(0)
                && !self
                    .timewait
                    .contains_key(&tuple(k.netns, k.local, k.remote))
        }) {
            let peer = PeerKey::of(
                listening.contains(&(k.netns, k.local.port())),
                k.local,
                k.remote,
            );
            self.before_start_tw
                .push((deadline(k), peer, Substate::of(k.state)));
        }

        // Full sockets: drop what the kernel no longer has (a close twtrace did not see), add
        // what it has that twtrace never saw (sockets from before the start).
        // Only the gauged states (ESTABLISHED, CLOSE_WAIT) are reconciled: the others change
        // within milliseconds and a SYN_SENT socket's local port is not known yet.
        let kernel_full: Map<Tuple, &KernelSocket> = kernel
            .iter()
            .filter(|k| !k.timewait && gauge(k.state) != (0, 0))
            .map(|k| (tuple(k.netns, k.local, k.remote), k))
            .collect();
        let gone: Vec<u64> = self
            .socks
            .iter()
            .filter(|(_, s)| {
                gauge(s.state) != (0, 0)
                    && s.seen_ns < dump_ns
                    && !kernel_full.contains_key(&s.tuple)
            })
            .map(|(&skaddr, _)| skaddr)
            .collect();
        for skaddr in gone {
            let Some(mut s) = self.socks.remove(&skaddr) else {
                continue;
            };
            self.uncount(&s);
            // Still in the kernel's table, in a state past the one twtrace knows: its events
            // are on their way (or were skipped). It takes the kernel's state, and its events,
            // when they come, go on from there; dropped, its close would have found no socket
            // and its lifetime would have been lost.
            if let Some(&state) = kernel_open.get(&s.tuple) {
                s.state = state;
                s.since_ns = dump_ns;
                s.since_known = false;
                self.count(&s);
                self.socks.insert(skaddr, s);
            }
        }
        let gone_seeded: Vec<Tuple> = self
            .seeded
            .keys()
            .filter(|key| !kernel_full.contains_key(key))
            .copied()
            .collect();
        for key in gone_seeded {
            if let Some(s) = self.seeded.remove(&key) {
                self.uncount(&s);
            }
        }
        // Owners that exited or whose pid went to another process: the sockets they held are
        // asked about again, since the kernel program still names the old owner (a fork child
        // or a process the socket was passed to holds it now).
        let statuses: Map<u32, ProcStatus> = self
            .procs
            .keys()
            .filter(|&&pid| pid != 0)
            .map(|&pid| (pid, status(pid)))
            .filter(|&(_, st)| st != ProcStatus::Alive)
            .collect();
        // Sockets still attributed to their listener's owner are asked about too, as `ss -p`
        // would: the process holding one is its owner, whatever the kernel path missed (an
        // accept() it could not follow, a socket accepted before twtrace started).
        let stale: Vec<u64> = self
            .socks
            .values()
            .chain(self.seeded.values())
            .filter(|s| statuses.contains_key(&s.pid) || s.by_listener)
            .filter_map(|s| kernel_full.get(&s.tuple).map(|k| k.inode))
            .collect();
        let known: Set<Tuple> = self.socks.values().map(|s| s.tuple).collect();
        let new: Vec<&KernelSocket> = kernel_full
            .iter()
            .filter(|(key, _)| !known.contains(key) && !self.seeded.contains_key(key))
            .map(|(_, k)| *k)
            .collect();
        // Asked even with no question: a recording answers with what was found live, which
        // is how a replay learns which sockets changed hands.
        let mut inodes: Vec<u64> = new.iter().map(|k| k.inode).filter(|&i| i != 0).collect();
        inodes.extend(stale);
        let owners = owner_of_inode(&inodes);
        self.adopt(&owners, &kernel_full, &listening);
        self.seed(&new, &owners, dump_ns, &listening, keep);
        for (pid, st) in statuses {
            if st == ProcStatus::Reused
                && let Some(p) = self.procs.remove(&pid)
            {
                self.retired.push((pid, p));
            }
        }
    }

    /// Builds the leaderboard at `now_ns`, computes the interval's rates, and ages out dead
    /// processes and idle peers. `exists` tells whether a process is still alive.
    pub fn snapshot(
        &mut self,
        now_ns: u64,
        time: Timestamp,
        outside: Outside,
        exists: &dyn Fn(u32) -> bool,
    ) -> Snapshot {
        let slack = self.tw_slack_ns;
        let aged: Vec<Tuple> = self
            .timewait
            .iter()
            .filter(|(_, tw)| now_ns >= tw.deadline_ns.saturating_add(slack))
            .map(|(&key, _)| key)
            .collect();
        for key in aged {
            if let Some(tw) = self.timewait.remove(&key) {
                self.uncount_tw(&tw);
                self.aged.insert(key, tw);
            }
        }
        let interval_s = (now_ns.saturating_sub(self.last_snapshot_ns)) as f64 / 1e9;
        let per_s = |delta: u64| {
            if interval_s > 0.0 {
                delta as f64 / interval_s
            } else {
                0.0
            }
        };
        self.last_snapshot_ns = now_ns;
        // Saturating: a dump can move a guessed entry to FIN_WAIT2 (`correct_substates`).
        self.tw_rate = per_s(self.tw_entered_total.saturating_sub(self.tw_entered_prev));
        self.tw_entered_prev = self.tw_entered_total;

        let limits = self.limits;
        for proc in self.procs.values_mut() {
            let (tw, opens, closes) = proc.prev;
            let tw_delta = proc.tw_entered.saturating_sub(tw);
            proc.rates = (
                per_s(tw_delta),
                // An accept() moves an open from the listener's owner to the worker.
                per_s(proc.opens.saturating_sub(opens)),
                per_s(proc.closes - closes),
            );
            proc.prev = (proc.tw_entered, proc.opens, proc.closes);
            if proc.history.len() == HISTORY_LEN {
                proc.history.remove(0);
            }
            proc.history.push(tw_delta);
            leaks::push(
                &mut proc.samples,
                Sample {
                    mono_ns: now_ns,
                    close_wait: proc.cw_now,
                    established: proc.est_now,
                },
            );
            if proc.cw_history.len() == HISTORY_LEN {
                proc.cw_history.remove(0);
            }
            proc.cw_history.push(proc.cw_now);
            proc.peers
                .retain(|_, p| p.alive() || now_ns.saturating_sub(p.last_ns) < limits.peer_idle_ns);
        }
        self.procs.retain(|&pid, p| {
            pid == 0
                || p.alive()
                || now_ns.saturating_sub(p.last_ns) < limits.process_idle_ns
                || exists(pid)
        });
        self.retired.retain(|(_, p)| {
            p.alive() || now_ns.saturating_sub(p.last_ns) < limits.process_idle_ns
        });

        self.before_start_tw
            .retain(|&(deadline, _, _)| now_ns < deadline.saturating_add(slack));
        // (TIME_WAIT, FIN_WAIT2) per peer.
        let mut before_start: Map<PeerKey, (u64, u64)> = Map::default();
        for &(_, peer, sub) in &self.before_start_tw {
            let n = before_start.entry(peer).or_default();
            match sub {
                Substate::TimeWait => n.0 += 1,
                Substate::FinWait2 => n.1 += 1,
            }
        }
        let ages = self.close_wait_ages(now_ns);
        let ctx = RowContext {
            before_start_tw: &before_start,
            ages: &ages,
            now_ns,
        };
        let mut processes: Vec<ProcessRow> = self
            .procs
            .iter_mut()
            .filter_map(|(&pid, p)| {
                let mut r = row(pid, p, &ctx)?;
                r.exited = pid != 0 && !exists(pid);
                Some(r)
            })
            .chain(self.retired.iter_mut().filter_map(|(pid, p)| {
                let mut r = row(*pid, p, &ctx)?;
                r.exited = true;
                Some(r)
            }))
            .collect();
        if !self.procs.contains_key(&0)
            && let Some(r) = row(0, &mut Proc::default(), &ctx)
        {
            processes.push(r);
        }
        processes.sort_by(|a, b| {
            b.timewait_per_s
                .total_cmp(&a.timewait_per_s)
                .then(b.timewait_entered.cmp(&a.timewait_entered))
                .then(b.timewait_now.cmp(&a.timewait_now))
                .then(b.fin_wait2_now.cmp(&a.fin_wait2_now))
                .then(b.close_wait_now.cmp(&a.close_wait_now))
                .then(a.pid.cmp(&b.pid))
        });
        let totals = Totals {
            timewait_now: processes.iter().map(|p| p.timewait_now).sum(),
            fin_wait2_now: processes.iter().map(|p| p.fin_wait2_now).sum(),
            timewait_kernel: outside.timewait_kernel,
            namespaces: outside.namespaces,
            close_wait_now: processes.iter().map(|p| p.close_wait_now).sum(),
            established_now: processes.iter().map(|p| p.established_now).sum(),
            timewait_entered: self.tw_entered_total,
            fin_wait2_entered: self.fw2_entered_total,
            timewait_per_s: self.tw_rate,
            timewait_recovered: self.tw_recovered,
            connect_failures: self.failures.connect_total,
            bind_failures: self.failures.bind_total,
        };
        Snapshot {
            time,
            interval_s,
            uptime_s: now_ns.saturating_sub(self.start_ns) as f64 / 1e9,
            lost_events: outside.lost_events,
            unattributed_events: self.unattributed_events,
            totals,
            processes,
            ..Snapshot::default()
        }
    }

    /// The ages of every CLOSE_WAIT socket at `now_ns`, per process and per peer.
    fn close_wait_ages(&self, now_ns: u64) -> Map<u32, CloseWaitStats> {
        let min_age = self.limits.leak_min_age_ns;
        let mut out: Map<u32, CloseWaitStats> = Map::default();
        for s in self
            .socks
            .values()
            .chain(self.seeded.values())
            .filter(|s| s.state == TcpState::CloseWait)
        {
            let age = now_ns.saturating_sub(s.since_ns);
            let st = out.entry(s.pid).or_default();
            st.ages.add(age);
            if age >= min_age {
                st.old += 1;
            }
            if age > st.oldest_ns || (age == st.oldest_ns && !s.since_known) {
                st.oldest_ns = age;
                st.oldest_at_least = !s.since_known;
            }
            let peer = st.peers.entry(s.peer).or_default();
            *peer = (*peer).max(age);
        }
        out
    }

    /// Sockets and processes tracked, for bounds checks.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.procs.len(),
            self.socks.len() + self.seeded.len(),
            self.timewait.len(),
        )
    }
}

/// Records in `p` the lifetime of a connection to it that ended at `end_ns`, `s` its socket as
/// last tracked (see `Model::end_life`).
fn record_life(p: &mut Peer, s: Option<&Sock>, end_ns: u64) {
    if let Some(s) = s.filter(|s| !matches!(s.state, TcpState::SynSent | TcpState::SynRecv))
        && let Some(opened_ns) = s.opened_ns
    {
        p.lives.record(end_ns.saturating_sub(opened_ns), end_ns);
    }
}

/// Process `pid` as of event `t` (made if new): its name and cgroup when `t` names that
/// process, its namespace, its last activity. For both of `apply`'s paths and for failures.
fn proc_of_event<'a>(procs: &'a mut Map<u32, Proc>, pid: u32, t: &Transition) -> &'a mut Proc {
    let proc = procs.entry(pid).or_default();
    if t.pid != 0 && pid == t.pid {
        proc.comm = t.comm;
        if t.cgroup_id != 0 {
            proc.cgroup_id = t.cgroup_id;
        }
    }
    if t.netns != 0 {
        proc.netns = t.netns;
    }
    proc.last_ns = proc.last_ns.max(t.mono_ns);
    proc
}

/// Takes a socket's gauges from its process and peer; a free function so that `apply` can
/// call it while it holds a socket of `Model::socks`.
fn uncount_in(procs: &mut Map<u32, Proc>, s: &Sock) {
    let (cw, est) = gauge(s.state);
    if let Some(proc) = procs.get_mut(&s.pid) {
        proc.cw_now = proc.cw_now.saturating_sub(cw);
        proc.est_now = proc.est_now.saturating_sub(est);
        if let Some(p) = proc.peers.get_mut(&s.peer) {
            p.cw_now = p.cw_now.saturating_sub(cw);
            p.est_now = p.est_now.saturating_sub(est);
        }
    }
}

/// Takes a timewait socket from its process's and peer's "now" gauges (see `uncount_in`).
fn uncount_tw_in(procs: &mut Map<u32, Proc>, tw: &TwSock) {
    if let Some(proc) = procs.get_mut(&tw.pid) {
        let now = proc.now_mut(tw.sub);
        *now = now.saturating_sub(1);
        if let Some(p) = proc.peers.get_mut(&tw.peer) {
            let now = p.now_mut(tw.sub);
            *now = now.saturating_sub(1);
        }
    }
}

/// (CLOSE_WAIT, ESTABLISHED) contributions of a state.
fn gauge(state: TcpState) -> (u64, u64) {
    match state {
        TcpState::CloseWait => (1, 0),
        TcpState::Established => (0, 1),
        _ => (0, 0),
    }
}

/// A process's CLOSE_WAIT sockets by age, at one snapshot.
#[derive(Debug, Default)]
struct CloseWaitStats {
    ages: CloseWaitAges,
    /// Older than the leak threshold.
    old: u64,
    oldest_ns: u64,
    /// The oldest one's age is a lower bound (found in CLOSE_WAIT by a dump).
    oldest_at_least: bool,
    /// The oldest age per peer.
    peers: Map<PeerKey, u64>,
}

/// What every row of one snapshot is built with.
struct RowContext<'a> {
    /// Unowned timewait sockets per peer: (TIME_WAIT, FIN_WAIT2).
    before_start_tw: &'a Map<PeerKey, (u64, u64)>,
    ages: &'a Map<u32, CloseWaitStats>,
    now_ns: u64,
}

/// Seconds to one decimal, as ages are shown.
fn age_s(ns: u64) -> f64 {
    leaks::round(ns as f64 / 1e9, 1)
}

/// A process's row; pid 0 also carries the unowned timewait sockets, (TIME_WAIT, FIN_WAIT2)
/// per peer. None for an empty pid 0.
fn row(pid: u32, p: &mut Proc, ctx: &RowContext<'_>) -> Option<ProcessRow> {
    let cw = ctx.ages.get(&pid);
    let mut peers: Vec<PeerRow> = p
        .peers
        .iter_mut()
        .map(|(&peer, c)| PeerRow {
            peer,
            timewait_entered: c.tw_entered,
            timewait_now: c.tw_now,
            fin_wait2_entered: c.fw2_entered,
            fin_wait2_now: c.fw2_now,
            close_wait_now: c.cw_now,
            close_wait_oldest_s: cw
                .and_then(|st| st.peers.get(&peer))
                .map_or(0.0, |&ns| age_s(ns)),
            established_now: c.est_now,
            connect_failures: c.connect_failures,
            resets: c.resets,
            lifetimes: c.lives.stats(ctx.now_ns).map(|l| Lifetimes {
                ended: l.count,
                ended_per_s: leaks::round(l.per_s, 3),
                short_share: leaks::round(l.short_share, 3),
                median_le_s: l.median_le_s,
            }),
        })
        .collect();
    let (mut tw_now, mut fw2_now) = (p.tw_now, p.fw2_now);
    if pid == 0 {
        for (key, &(tw, fw2)) in ctx.before_start_tw {
            tw_now += tw;
            fw2_now += fw2;
            match peers.iter_mut().find(|r| r.peer == *key) {
                Some(r) => {
                    r.timewait_now += tw;
                    r.fin_wait2_now += fw2;
                }
                None => peers.push(PeerRow {
                    timewait_now: tw,
                    fin_wait2_now: fw2,
                    ..PeerRow::new(*key)
                }),
            }
        }
        let entered = p.tw_entered + p.fw2_entered;
        if tw_now + fw2_now + p.cw_now + p.est_now + entered + p.opens + p.closes == 0 {
            return None;
        }
    }
    peers.sort_by_cached_key(|r| {
        (
            Reverse(r.timewait_entered),
            Reverse(r.timewait_now),
            Reverse(r.fin_wait2_now),
            Reverse(r.close_wait_now),
            Reverse(r.established_now),
            r.peer.text_order(),
        )
    });
    Some(ProcessRow {
        pid,
        exited: false,
        comm: if pid == 0 {
            BEFORE_START.to_owned()
        } else {
            p.comm.to_str().into_owned()
        },
        netns: p.netns,
        cgroup_id: p.cgroup_id,
        container: None,
        runtime: None,
        pod_uid: None,
        cmdline: None,
        timewait_entered: p.tw_entered,
        timewait_per_s: p.rates.0,
        timewait_now: tw_now,
        fin_wait2_entered: p.fw2_entered,
        fin_wait2_now: fw2_now,
        close_wait_now: p.cw_now,
        close_wait_peak: p.cw_peak,
        close_wait_oldest_s: cw.map_or(0.0, |st| age_s(st.oldest_ns)),
        close_wait_oldest_at_least: cw.is_some_and(|st| st.oldest_at_least),
        close_wait_old: cw.map_or(0, |st| st.old),
        close_wait_growth_per_min: leaks::close_wait_growth_per_min(&p.samples),
        close_wait_ages: cw.map(|st| st.ages).unwrap_or_default(),
        leak_suspect: cw.is_some_and(|st| st.old > 0),
        established_now: p.est_now,
        established_growing: leaks::established_only_grows(&p.samples),
        established_growth_per_min: leaks::established_growth_per_min(&p.samples),
        opens: p.opens,
        opens_per_s: p.rates.1,
        closes: p.closes,
        closes_per_s: p.rates.2,
        resets: p.resets,
        connect_failures: p.failures.connect,
        bind_failures: p.failures.bind,
        failures: p.failures.rows(),
        timewait_history: p.history.clone(),
        close_wait_history: p.cw_history.clone(),
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(_pid: u32) -> ProcStatus {
        ProcStatus::Alive
    }
    use crate::event::{Family, Reset};

    const S: u64 = 1_000_000_000;
    const CLIENT: u32 = 10;
    const SERVER: u32 = 20;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    struct Ev(Transition);

    impl Ev {
        fn new(
            pid: u32,
            skaddr: u64,
            old: TcpState,
            new: TcpState,
            local: &str,
            remote: &str,
        ) -> Self {
            Self(Transition {
                netns: 0,
                mono_ns: S,
                skaddr,
                cookie: None,
                pid,
                comm: Comm::from(match pid {
                    CLIENT => "client",
                    SERVER => "server",
                    _ => "other",
                }),
                cgroup_id: 0,
                attribution: if pid == 0 {
                    Attribution::Unknown
                } else {
                    Attribution::Owner
                },
                current_pid: 0,
                family: Family::Ipv4,
                local: addr(local),
                remote: addr(remote),
                old,
                new,
                reset: None,
                failure: None,
                orphan: false,
            })
        }
        fn at(mut self, ns: u64) -> Self {
            self.0.mono_ns = ns;
            self
        }
        fn cookie(mut self, c: u64) -> Self {
            self.0.cookie = Some(c);
            self
        }
        fn by(mut self, a: Attribution) -> Self {
            self.0.attribution = a;
            self
        }
        fn reset(mut self) -> Self {
            self.0.reset = Some(Reset::Received);
            self
        }
    }

    use TcpState::*;

    /// One client-closes-first connection: 10 transitions, as the kernel reports them.
    fn client_first(m: &mut Model, n: u64, at: u64) {
        let (c, s) = (0x1000 + n * 2, 0x1001 + n * 2);
        let cport = 40000 + n as u16;
        let cl = format!("127.0.0.1:{cport}");
        let (srv, zero) = ("127.0.0.1:8080", "127.0.0.1:0");
        let l = Attribution::Listener;
        for ev in [
            Ev::new(CLIENT, c, Close, SynSent, zero, srv),
            Ev::new(CLIENT, c, SynSent, Established, &cl, srv),
            Ev::new(SERVER, s, Listen, SynRecv, srv, &cl).by(l),
            Ev::new(SERVER, s, SynRecv, Established, srv, &cl).by(l),
            Ev::new(CLIENT, c, Established, FinWait1, &cl, srv),
            Ev::new(SERVER, s, Established, CloseWait, srv, &cl).by(l),
            Ev::new(SERVER, s, CloseWait, LastAck, srv, &cl),
            Ev::new(CLIENT, c, FinWait1, FinWait2, &cl, srv),
            Ev::new(CLIENT, c, FinWait2, TimeWait, &cl, srv).cookie(500 + n),
            Ev::new(SERVER, s, LastAck, Close, srv, &cl).cookie(900 + n),
        ] {
            m.apply(&ev.at(at).0);
        }
    }

    fn snap(m: &mut Model, now: u64) -> Snapshot {
        m.snapshot(now, Timestamp::UNIX_EPOCH, Outside::default(), &|_| true)
    }

    fn proc(s: &Snapshot, pid: u32) -> &ProcessRow {
        s.processes
            .iter()
            .find(|p| p.pid == pid)
            .unwrap_or_else(|| panic!("pid {pid} in {s:#?}"))
    }

    #[test]
    fn empty_model_gives_an_empty_snapshot() {
        let mut m = Model::new(0, Limits::default());
        let s = snap(&mut m, S);
        assert!(s.processes.is_empty());
        assert_eq!(s.totals, Totals::default());
    }

    #[test]
    fn client_closing_first_gets_the_time_wait() {
        let mut m = Model::new(0, Limits::default());
        for n in 0..3 {
            client_first(&mut m, n, S);
        }
        let s = snap(&mut m, 2 * S);
        let c = proc(&s, CLIENT);
        assert_eq!(
            (c.timewait_entered, c.timewait_now, c.opens, c.closes),
            (3, 3, 3, 3)
        );
        assert_eq!((c.established_now, c.close_wait_now), (0, 0));
        assert_eq!(c.comm, "client");
        assert_eq!(c.peers.len(), 1);
        assert_eq!(
            c.peers[0],
            PeerRow {
                peer: PeerKey::Out {
                    raddr: addr("127.0.0.1:0").ip(),
                    rport: 8080
                },
                timewait_entered: 3,
                timewait_now: 3,
                fin_wait2_entered: 0,
                fin_wait2_now: 0,
                close_wait_now: 0,
                established_now: 0,
                connect_failures: 0,
                lifetimes: Some(Lifetimes {
                    ended: 3,
                    ended_per_s: 3.0,
                    short_share: 1.0,
                    median_le_s: Some(0.001)
                }),
                ..PeerRow::new(PeerKey::Other)
            }
        );
        let srv = proc(&s, SERVER);
        assert_eq!(
            (
                srv.timewait_entered,
                srv.timewait_now,
                srv.opens,
                srv.closes
            ),
            (0, 0, 3, 3)
        );
        // Accepted connections are grouped per client address and listening port.
        assert_eq!(srv.peers.len(), 1);
        assert_eq!(
            (srv.peers[0].peer.rport(), srv.peers[0].peer.lport()),
            (0, Some(8080))
        );
        assert_eq!(s.totals.timewait_now, 3);
        assert_eq!(s.totals.timewait_entered, 3);
        assert_eq!(s.processes[0].pid, CLIENT, "sorted by TIME_WAIT rate");
        assert_eq!(c.timewait_per_s, 1.5, "3 in a 2 s interval");
    }

    #[test]
    fn gauges_follow_each_socket_state() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(&Ev::new(CLIENT, 1, Close, SynSent, "127.0.0.1:0", srv).0);
        m.apply(&Ev::new(CLIENT, 1, SynSent, Established, cl, srv).0);
        let s = snap(&mut m, S);
        assert_eq!(proc(&s, CLIENT).established_now, 1);
        // The server closed; this client never does: a CLOSE_WAIT leak.
        m.apply(&Ev::new(CLIENT, 1, Established, CloseWait, cl, srv).0);
        let s = snap(&mut m, 2 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.established_now, c.close_wait_now), (0, 1));
        assert_eq!(c.peers[0].close_wait_now, 1);
        assert_eq!(s.totals.close_wait_now, 1);
        m.apply(&Ev::new(CLIENT, 1, CloseWait, LastAck, cl, srv).0);
        m.apply(&Ev::new(CLIENT, 1, LastAck, Close, cl, srv).0);
        let s = snap(&mut m, 3 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.established_now, c.close_wait_now, c.closes), (0, 0, 1));
        assert_eq!(
            c.close_wait_history,
            [0, 1, 0],
            "the drill-down's CLOSE_WAIT sparkline"
        );
    }

    #[test]
    fn a_socket_moves_to_the_process_that_closes_it() {
        let mut m = Model::new(0, Limits::default());
        let (srv, cl) = ("127.0.0.1:8080", "127.0.0.1:40000");
        let worker = 21;
        m.apply(
            &Ev::new(SERVER, 7, Listen, SynRecv, srv, cl)
                .by(Attribution::Listener)
                .0,
        );
        m.apply(
            &Ev::new(SERVER, 7, SynRecv, Established, srv, cl)
                .by(Attribution::Listener)
                .0,
        );
        assert_eq!(proc(&snap(&mut m, S), SERVER).established_now, 1);
        m.apply(&Ev::new(worker, 7, Established, FinWait1, srv, cl).0);
        m.apply(&Ev::new(worker, 7, FinWait1, TimeWait, srv, cl).cookie(3).0);
        let s = snap(&mut m, 2 * S);
        assert_eq!(proc(&s, SERVER).established_now, 0);
        let w = proc(&s, worker);
        assert_eq!((w.timewait_entered, w.timewait_now), (1, 1));
        assert_eq!(
            w.peers[0].peer.lport(),
            Some(8080),
            "still an accepted connection"
        );
    }

    #[test]
    fn resets_are_counted_as_closes() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(&Ev::new(CLIENT, 1, SynSent, Established, cl, srv).0);
        m.apply(&Ev::new(CLIENT, 1, Established, Close, cl, srv).reset().0);
        // A second connection to the same peer: a reset in FIN_WAIT2 (its TIME_WAIT would
        // have come next), then a third one that ends normally.
        let cl2 = "127.0.0.1:40001";
        m.apply(&Ev::new(CLIENT, 2, SynSent, Established, cl2, srv).0);
        m.apply(&Ev::new(CLIENT, 2, Established, FinWait1, cl2, srv).0);
        m.apply(&Ev::new(CLIENT, 2, FinWait1, FinWait2, cl2, srv).0);
        m.apply(&Ev::new(CLIENT, 2, FinWait2, Close, cl2, srv).reset().0);
        let cl3 = "127.0.0.1:40002";
        m.apply(&Ev::new(CLIENT, 3, SynSent, Established, cl3, srv).0);
        m.apply(&Ev::new(CLIENT, 3, Established, FinWait1, cl3, srv).0);
        m.apply(&Ev::new(CLIENT, 3, FinWait1, FinWait2, cl3, srv).0);
        m.apply(&Ev::new(CLIENT, 3, FinWait2, TimeWait, cl3, srv).0);
        let c = proc(&snap(&mut m, S), CLIENT).clone();
        assert_eq!(
            (c.closes, c.resets, c.timewait_entered, c.established_now),
            (3, 2, 1, 0)
        );
        // The peer's row has them too: its timewait entries and resets add up to the
        // connections that ended.
        assert_eq!(c.peers.len(), 1);
        assert_eq!(
            (c.peers[0].resets, c.peers[0].timewait_entered),
            (2, 1),
            "{:?}",
            c.peers[0]
        );
    }

    fn kernel_tw(cookie: u64, local: &str, remote: &str) -> KernelSocket {
        KernelSocket {
            netns: 0,
            state: TimeWait,
            local: addr(local),
            remote: addr(remote),
            cookie,
            inode: 0,
            timewait: true,
            expires_ns: 30 * S,
        }
    }

    fn no_owners(_: &[u64]) -> HashMap<u64, (u32, Comm)> {
        HashMap::new()
    }

    #[test]
    fn time_wait_leaves_when_the_kernel_drops_it() {
        let mut m = Model::new(0, Limits::default());
        client_first(&mut m, 0, S);
        client_first(&mut m, 1, S);
        // The kernel still has the second connection's only: the first expired (or was reused).
        m.reconcile(
            &[kernel_tw(501, "127.0.0.1:40001", "127.0.0.1:8080")],
            2 * S,
            &mut no_owners,
            &|_| true,
            &mut alive,
        );
        let s = snap(&mut m, 3 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.timewait_entered, c.timewait_now), (2, 1));
        assert_eq!(c.peers[0].timewait_now, 1);
        assert_eq!(s.totals.timewait_now, 1);
    }

    /// The kernel skipped a client's `FIN_WAIT2 -> CLOSE` (and its destroy): the next dump
    /// holds the 4-tuple in TIME_WAIT, so the entry is counted for the client, once, and said to
    /// be recovered. A socket still closing that the kernel has no timewait socket for is left
    /// alone, and a second dump does not count the first one again.
    #[test]
    fn time_wait_whose_event_was_skipped_is_recovered_from_the_dump() {
        let mut m = Model::new(0, Limits::default());
        let (cl, other, srv) = ("127.0.0.1:40000", "127.0.0.1:40001", "127.0.0.1:8080");
        for ev in [
            Ev::new(CLIENT, 1, SynSent, Established, cl, srv),
            Ev::new(CLIENT, 1, Established, FinWait1, cl, srv),
            Ev::new(CLIENT, 1, FinWait1, FinWait2, cl, srv),
            Ev::new(CLIENT, 2, SynSent, Established, other, srv),
            Ev::new(CLIENT, 2, Established, FinWait1, other, srv),
        ] {
            m.apply(&ev.at(S).0);
        }
        // The second socket is still closing in the kernel too.
        let kernel = [
            KernelSocket {
                expires_ns: 59 * S,
                ..kernel_tw(500, cl, srv)
            },
            full(FinWait1, other, srv, 0),
        ];
        m.reconcile(&kernel, 2 * S, &mut no_owners, &|_| true, &mut alive);
        let s = snap(&mut m, 3 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.timewait_entered, c.timewait_now, c.closes), (1, 1, 1));
        assert_eq!(c.peers[0].timewait_entered, 1);
        assert_eq!(
            (s.totals.timewait_entered, s.totals.timewait_recovered),
            (1, 1)
        );
        assert!(
            s.processes.iter().all(|p| p.pid != 0),
            "not shown as before start: {s:#?}"
        );
        // It expires with the kernel's timer: entered at 2 s + 59 s - 60 s.
        m.reconcile(&kernel, 4 * S, &mut no_owners, &|_| true, &mut alive);
        let s = snap(&mut m, 5 * S);
        assert_eq!(
            (s.totals.timewait_entered, s.totals.timewait_recovered),
            (1, 1)
        );
        // The second socket's close arrives normally: nothing recovered for it.
        m.apply(
            &Ev::new(CLIENT, 2, FinWait1, TimeWait, other, srv)
                .at(5 * S)
                .0,
        );
        let s = snap(&mut m, 6 * S);
        assert_eq!(
            (s.totals.timewait_entered, s.totals.timewait_recovered),
            (2, 1)
        );
    }

    /// A closing socket missing from a dump is not taken for a skipped close: a dump of a busy
    /// table can miss sockets. Nothing is counted until its event (or a new socket at its
    /// address) comes.
    #[test]
    fn a_closing_socket_missing_from_a_dump_is_not_counted() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        for ev in [
            Ev::new(CLIENT, 1, SynSent, Established, cl, srv),
            Ev::new(CLIENT, 1, Established, FinWait1, cl, srv),
            Ev::new(CLIENT, 1, FinWait1, FinWait2, cl, srv),
        ] {
            m.apply(&ev.at(S).0);
        }
        m.reconcile(&[], 2 * S, &mut no_owners, &|_| true, &mut alive);
        let s = snap(&mut m, 2 * S);
        assert_eq!(
            (s.totals.timewait_entered, s.totals.timewait_recovered),
            (0, 0)
        );
        m.apply(&Ev::new(CLIENT, 1, FinWait2, TimeWait, cl, srv).at(3 * S).0);
        let s = snap(&mut m, 3 * S);
        assert_eq!(
            (s.totals.timewait_entered, s.totals.timewait_recovered),
            (1, 0)
        );
    }

    /// A dump that has a tracked ESTABLISHED socket in a later state (its close is still in
    /// the ring buffer) keeps the socket, in the kernel's state: when its events come, its
    /// TIME_WAIT entry and its lifetime are counted. Dropped, the lifetime was lost.
    #[test]
    fn a_socket_the_dump_has_further_on_keeps_its_life() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(
            &Ev::new(CLIENT, 1, Close, SynSent, "127.0.0.1:0", srv)
                .at(S)
                .0,
        );
        m.apply(&Ev::new(CLIENT, 1, SynSent, Established, cl, srv).at(S).0);
        m.reconcile(
            &[full(FinWait1, cl, srv, 0)],
            2 * S,
            &mut no_owners,
            &|_| true,
            &mut alive,
        );
        let s = snap(&mut m, 2 * S);
        assert_eq!(proc(&s, CLIENT).established_now, 0, "the kernel's state");
        for ev in [
            Ev::new(CLIENT, 1, Established, FinWait1, cl, srv),
            Ev::new(CLIENT, 1, FinWait1, FinWait2, cl, srv),
            Ev::new(CLIENT, 1, FinWait2, TimeWait, cl, srv),
        ] {
            m.apply(&ev.at(2 * S + 1).0);
        }
        let s = snap(&mut m, 3 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.timewait_entered, c.closes), (1, 1));
        let ended = c.peers[0].lifetimes.as_ref().map(|l| l.ended);
        assert_eq!(ended, Some(1), "its lifetime: {:?}", c.peers[0].lifetimes);
    }

    /// A closing socket the kernel has neither as a full socket nor as a timewait one, in
    /// `VANISHED_DUMPS` dumps in a row with no event of its in between, had its close skipped
    /// with no timewait socket left to find (a full table, or its port reused): a client's
    /// FIN_WAIT2 counts as a TIME_WAIT entry, a server's LAST_ACK as a close. Sockets of a
    /// namespace the dump has nothing of, or of no known namespace, are left alone, and an
    /// event starts the count again.
    #[test]
    fn a_closing_socket_three_dumps_in_a_row_have_not_is_a_skipped_close() {
        const NS: u32 = 4_026_532_001;
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        let (cl2, cl3, cl4) = ("127.0.0.1:40002", "127.0.0.1:40003", "127.0.0.1:40004");
        let in_ns = |ev: Ev, netns: u32| {
            let mut t = ev.at(S).0;
            t.netns = netns;
            t
        };
        for (ev, netns) in [
            (Ev::new(CLIENT, 1, Established, FinWait1, cl, srv), NS),
            (Ev::new(CLIENT, 1, FinWait1, FinWait2, cl, srv), NS),
            (Ev::new(SERVER, 2, CloseWait, LastAck, srv, cl), NS),
            // Another namespace, which the dumps below have nothing of.
            (Ev::new(CLIENT, 3, FinWait1, FinWait2, cl3, srv), NS + 1),
            // No namespace known.
            (Ev::new(CLIENT, 4, FinWait1, FinWait2, cl4, srv), 0),
            // An event comes between the dumps.
            (Ev::new(CLIENT, 5, Established, FinWait1, cl2, srv), NS),
        ] {
            m.apply(&in_ns(ev, netns));
        }
        let kernel = [KernelSocket {
            netns: NS,
            ..full(Listen, srv, "0.0.0.0:0", 0)
        }];
        let counts = |m: &mut Model, at: u64| {
            let s = snap(m, at);
            let c = proc(&s, CLIENT);
            (
                c.timewait_entered,
                s.totals.timewait_recovered,
                proc(&s, SERVER).closes,
            )
        };
        for dump in 2..=3 {
            m.reconcile(&kernel, dump * S, &mut no_owners, &|_| true, &mut alive);
            assert_eq!(counts(&mut m, dump * S), (0, 0, 0), "dump at {dump} s");
        }
        m.apply(&{
            let mut t = Ev::new(CLIENT, 5, FinWait1, FinWait2, cl2, srv).at(3 * S).0;
            t.netns = NS;
            t
        });
        m.reconcile(&kernel, 4 * S, &mut no_owners, &|_| true, &mut alive);
        assert_eq!(counts(&mut m, 4 * S), (1, 1, 1));
        let s = snap(&mut m, 4 * S);
        assert_eq!(
            (s.totals.timewait_now, s.totals.timewait_entered),
            (0, 1),
            "no timewait socket is left, so none is counted now"
        );
        // Socket 5 needs three dumps of its own after its event; 3 and 4 are never taken.
        m.reconcile(&kernel, 5 * S, &mut no_owners, &|_| true, &mut alive);
        assert_eq!(counts(&mut m, 5 * S), (1, 1, 1));
        m.reconcile(&kernel, 6 * S, &mut no_owners, &|_| true, &mut alive);
        assert_eq!(counts(&mut m, 6 * S), (2, 2, 1));
        for dump in 7..=9 {
            m.reconcile(&kernel, dump * S, &mut no_owners, &|_| true, &mut alive);
        }
        assert_eq!(counts(&mut m, 9 * S), (2, 2, 1));
        assert_eq!(m.socks.len(), 2, "sockets 3 and 4 are still tracked");
    }

    /// At peak the kernel reuses a closed socket's memory at once: the next socket at the same
    /// address starts (CLOSE -> SYN_SENT, or a listener's child) while twtrace still has the
    /// old one closing, because its close was skipped. That is its TIME_WAIT entry, counted
    /// for the old owner at once; a dump without its timewait socket (a full table) takes it
    /// out of the "now" gauges, never out of the entries.
    #[test]
    fn a_closing_socket_whose_address_was_reused_is_a_recovered_entry() {
        let mut m = Model::new(0, Limits::default());
        let (cl, cl2, cl3, srv) = (
            "127.0.0.1:40000",
            "127.0.0.1:40001",
            "127.0.0.1:40002",
            "127.0.0.1:8080",
        );
        for ev in [
            Ev::new(CLIENT, 1, SynSent, Established, cl, srv),
            Ev::new(CLIENT, 1, Established, FinWait1, cl, srv),
            Ev::new(CLIENT, 1, FinWait1, FinWait2, cl, srv),
            // Skipped: FIN_WAIT2 -> CLOSE and the destroy. The address goes to another socket.
            Ev::new(CLIENT, 1, Close, SynSent, "127.0.0.1:0", srv),
            Ev::new(CLIENT, 1, SynSent, Established, cl2, srv),
            // And another one's to a server's accepted socket.
            Ev::new(CLIENT, 3, SynSent, Established, cl3, srv),
            Ev::new(CLIENT, 3, Established, FinWait1, cl3, srv),
            Ev::new(SERVER, 3, Listen, SynRecv, srv, "127.0.0.1:40009").by(Attribution::Listener),
        ] {
            m.apply(&ev.at(S).0);
        }
        let s = snap(&mut m, S);
        let c = proc(&s, CLIENT);
        assert_eq!(
            (c.timewait_entered, c.timewait_now, c.established_now),
            (2, 2, 1)
        );
        assert_eq!(s.totals.timewait_recovered, 2);
        // The kernel has the first one's timewait socket; the second was never made.
        let kernel = [
            kernel_tw(500, cl, srv),
            full(Established, cl2, srv, 0),
            full(SynRecv, srv, "127.0.0.1:40009", 0),
        ];
        m.reconcile(&kernel, 2 * S, &mut no_owners, &|_| true, &mut alive);
        let s = snap(&mut m, 2 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.timewait_entered, c.timewait_now), (2, 1));
        m.reconcile(&kernel, 4 * S, &mut no_owners, &|_| true, &mut alive);
        assert_eq!(snap(&mut m, 4 * S).totals.timewait_entered, 2);
    }

    /// A close still in the ring buffer while the kernel's table is dumped looks skipped at the
    /// dump; when its event arrives after all, the entry is not counted a second time.
    #[test]
    fn a_recovered_time_wait_whose_event_comes_late_is_counted_once() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(&Ev::new(CLIENT, 1, SynSent, Established, cl, srv).at(S).0);
        m.apply(&Ev::new(CLIENT, 1, Established, FinWait1, cl, srv).at(S).0);
        m.reconcile(
            &[kernel_tw(500, cl, srv)],
            2 * S,
            &mut no_owners,
            &|_| true,
            &mut alive,
        );
        // Still in FIN_WAIT1 at the dump: both of its last events were in flight.
        m.apply(&Ev::new(CLIENT, 1, FinWait1, FinWait2, cl, srv).at(2 * S).0);
        m.apply(&Ev::new(CLIENT, 1, FinWait2, TimeWait, cl, srv).at(2 * S).0);
        let s = snap(&mut m, 3 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.timewait_entered, c.timewait_now, c.closes), (1, 1, 1));
        assert_eq!(
            (s.totals.timewait_entered, s.totals.timewait_recovered),
            (1, 0)
        );
    }

    #[test]
    fn time_wait_entered_after_the_dump_is_not_pruned() {
        let mut m = Model::new(0, Limits::default());
        client_first(&mut m, 0, 5 * S);
        m.reconcile(&[], 4 * S, &mut no_owners, &|_| true, &mut alive);
        assert_eq!(proc(&snap(&mut m, 6 * S), CLIENT).timewait_now, 1);
    }

    #[test]
    fn unknown_time_wait_sockets_are_shown_before_start_with_peers() {
        let mut m = Model::new(0, Limits::default());
        client_first(&mut m, 0, S);
        let kernel = [
            kernel_tw(500, "127.0.0.1:40000", "127.0.0.1:8080"),
            kernel_tw(7, "10.0.0.1:5555", "10.0.0.2:443"),
            kernel_tw(8, "10.0.0.1:5556", "10.0.0.2:443"),
            kernel_tw(9, "10.0.0.1:5557", "10.0.0.3:80"),
        ];
        m.reconcile(&kernel, 2 * S, &mut no_owners, &|_| true, &mut alive);
        let s = snap(&mut m, 3 * S);
        let before = proc(&s, 0);
        assert_eq!(before.comm, BEFORE_START);
        assert_eq!((before.timewait_now, before.timewait_entered), (3, 0));
        assert_eq!(before.peers[0].peer.raddr(), Some(addr("10.0.0.2:0").ip()));
        assert_eq!(
            (before.peers[0].peer.rport(), before.peers[0].timewait_now),
            (443, 2)
        );
        assert_eq!(s.totals.timewait_now, 4, "owned plus before start");
        assert_eq!(proc(&s, CLIENT).timewait_now, 1);
        // The kernel said every timer fires 30 s after the dump: all gone then, without a dump.
        let s = snap(&mut m, 33 * S);
        assert!(
            s.processes.iter().all(|p| p.pid != 0),
            "before-start ones expired"
        );
        assert_eq!(
            s.totals.timewait_now, 0,
            "ours follows the kernel's deadline too"
        );
    }

    #[test]
    fn full_sockets_from_before_start_get_their_owner_from_proc() {
        let mut m = Model::new(0, Limits::default());
        let (l, r) = ("127.0.0.1:40000", "127.0.0.1:8080");
        let kernel = [KernelSocket {
            netns: 0,
            state: CloseWait,
            local: addr(l),
            remote: addr(r),
            cookie: 1,
            inode: 77,
            timewait: false,
            expires_ns: 0,
        }];
        let mut asked = Vec::new();
        m.reconcile(
            &kernel,
            S,
            &mut |inodes: &[u64]| {
                asked.extend_from_slice(inodes);
                HashMap::from([(77, (CLIENT, Comm::from("leaky")))])
            },
            &|_| true,
            &mut alive,
        );
        assert_eq!(asked, vec![77]);
        let s = snap(&mut m, 2 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.comm.as_str(), c.close_wait_now), ("leaky", 1));
        // Known now: not looked up again, still counted once.
        m.reconcile(
            &kernel,
            3 * S,
            &mut |inodes: &[u64]| {
                assert!(inodes.is_empty(), "no lookup expected: {inodes:?}");
                HashMap::new()
            },
            &|_| true,
            &mut alive,
        );
        assert_eq!(proc(&snap(&mut m, 4 * S), CLIENT).close_wait_now, 1);
        // Its first event (unknown owner in the kernel) keeps the owner /proc gave.
        m.apply(&Ev::new(0, 99, CloseWait, LastAck, l, r).at(5 * S).0);
        let s = snap(&mut m, 6 * S);
        assert_eq!(proc(&s, CLIENT).close_wait_now, 0);
        assert_eq!(s.totals.close_wait_now, 0);
        // Gone from the kernel without an event: dropped at the next reconciliation.
        m.reconcile(
            &kernel,
            7 * S,
            &mut |_: &[u64]| HashMap::new(),
            &|_| true,
            &mut alive,
        );
        m.reconcile(&[], 8 * S, &mut no_owners, &|_| true, &mut alive);
        assert_eq!(snap(&mut m, 9 * S).totals.close_wait_now, 0);
    }

    #[test]
    fn a_socket_seen_by_the_dump_before_its_events_is_counted_once() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(
            &Ev::new(CLIENT, 1, Close, SynSent, "127.0.0.1:0", srv)
                .at(S)
                .0,
        );
        let kernel = [KernelSocket {
            netns: 0,
            state: Established,
            local: addr(cl),
            remote: addr(srv),
            cookie: 1,
            inode: 5,
            timewait: false,
            expires_ns: 0,
        }];
        m.reconcile(
            &kernel,
            2 * S,
            &mut |_: &[u64]| HashMap::from([(5, (CLIENT, Comm::from("client")))]),
            &|_| true,
            &mut alive,
        );
        m.apply(
            &Ev::new(CLIENT, 1, SynSent, Established, cl, srv)
                .at(3 * S)
                .0,
        );
        let s = snap(&mut m, 4 * S);
        assert_eq!(proc(&s, CLIENT).established_now, 1);
        assert_eq!(s.totals.established_now, 1);
    }

    #[test]
    fn a_reused_time_wait_tuple_leaves_at_once() {
        let mut m = Model::new(0, Limits::default());
        client_first(&mut m, 0, S);
        assert_eq!(proc(&snap(&mut m, 2 * S), CLIENT).timewait_now, 1);
        // tcp_tw_reuse: connect() takes the same local port toward the same server.
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(
            &Ev::new(CLIENT, 77, Close, SynSent, "127.0.0.1:0", srv)
                .at(3 * S)
                .0,
        );
        m.apply(
            &Ev::new(CLIENT, 77, SynSent, Established, cl, srv)
                .at(3 * S)
                .0,
        );
        let c = proc(&snap(&mut m, 4 * S), CLIENT).clone();
        assert_eq!(
            (c.timewait_now, c.timewait_entered, c.established_now),
            (0, 1, 1)
        );
    }

    #[test]
    fn time_wait_expires_after_its_fixed_length_unless_re_armed() {
        let mut m = Model::new(0, Limits::default());
        client_first(&mut m, 0, S);
        client_first(&mut m, 1, S);
        assert_eq!(
            snap(&mut m, 61 * S).totals.timewait_now,
            2,
            "the kernel runs late"
        );
        assert_eq!(
            snap(&mut m, 62 * S).totals.timewait_now,
            0,
            "60 s after entering, plus the timer wheel's lateness"
        );
        // The kernel still has one (its timer was re-armed): counted again, not "before start".
        m.reconcile(
            &[kernel_tw(1, "127.0.0.1:40001", "127.0.0.1:8080")],
            62 * S,
            &mut no_owners,
            &|_| true,
            &mut alive,
        );
        let s = snap(&mut m, 63 * S);
        assert_eq!(proc(&s, CLIENT).timewait_now, 1);
        assert_eq!(s.totals.timewait_now, 1);
        assert!(s.processes.iter().all(|p| p.pid != 0));
    }

    #[test]
    fn the_kernels_lateness_is_learnt() {
        let mut m = Model::new(0, Limits::default());
        client_first(&mut m, 0, S);
        client_first(&mut m, 1, S);
        assert_eq!(snap(&mut m, 61 * S + S / 2).totals.timewait_now, 0);
        // Both due 61 s; at 62 s the kernel still has one, overdue: it runs 1 s late.
        let mut late = kernel_tw(1, "127.0.0.1:40001", "127.0.0.1:8080");
        late.expires_ns = 0;
        m.reconcile(&[late], 62 * S, &mut no_owners, &|_| true, &mut alive);
        assert_eq!(snap(&mut m, 62 * S).totals.timewait_now, 1);
        // The next ones wait that long too: a socket due at 100 s is still counted at 100.9 s.
        let (cl, srv) = ("127.0.0.1:40009", "127.0.0.1:8080");
        m.apply(&Ev::new(CLIENT, 9, FinWait2, TimeWait, cl, srv).at(40 * S).0);
        let s = snap(&mut m, 100 * S + 9 * S / 10);
        assert_eq!(
            proc(&s, CLIENT).timewait_now,
            1,
            "the new one; the late one went at 63 s"
        );
        assert_eq!(snap(&mut m, 101 * S + S / 10).totals.timewait_now, 0);
    }

    #[test]
    fn sockets_the_kernel_no_longer_has_are_dropped() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(&Ev::new(CLIENT, 1, SynSent, Established, cl, srv).at(S).0);
        m.reconcile(&[], 2 * S, &mut no_owners, &|_| true, &mut alive);
        assert_eq!(proc(&snap(&mut m, 3 * S), CLIENT).established_now, 0);
    }

    #[test]
    fn close_wait_sockets_have_ages_a_peak_and_make_a_leak_suspect() {
        let mut m = Model::new(0, Limits::default());
        let srv = "127.0.0.1:8080";
        // Three connections whose peer closed at 1 s, 2 s and 20 s; the client never closes
        // the first two, and closes the third at 25 s.
        for (i, at) in [1, 2, 20].into_iter().enumerate() {
            let cl = format!("127.0.0.1:{}", 40000 + i);
            let sk = 0x100 + i as u64;
            m.apply(
                &Ev::new(CLIENT, sk, Close, SynSent, "127.0.0.1:0", srv)
                    .at(0)
                    .0,
            );
            m.apply(&Ev::new(CLIENT, sk, SynSent, Established, &cl, srv).at(0).0);
            m.apply(
                &Ev::new(0, sk, Established, CloseWait, &cl, srv)
                    .at(at * S)
                    .0,
            );
        }
        let s = snap(&mut m, 21 * S);
        let c = proc(&s, CLIENT);
        assert_eq!((c.close_wait_now, c.close_wait_peak), (3, 3));
        assert_eq!(c.close_wait_oldest_s, 20.0);
        assert_eq!((c.close_wait_old, c.leak_suspect), (0, false));
        m.apply(
            &Ev::new(CLIENT, 0x102, CloseWait, LastAck, "127.0.0.1:40002", srv)
                .at(25 * S)
                .0,
        );
        let s = snap(&mut m, 40 * S);
        let c = proc(&s, CLIENT);
        // The peak stays; 39 s and 38 s old are past the 30 s threshold.
        assert_eq!((c.close_wait_now, c.close_wait_peak), (2, 3));
        assert_eq!(c.close_wait_oldest_s, 39.0);
        assert!(!c.close_wait_oldest_at_least);
        assert_eq!((c.close_wait_old, c.leak_suspect), (2, true));
        assert_eq!(c.close_wait_ages.0, [0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(c.peers[0].close_wait_oldest_s, 39.0);
        // From 3 at 21 s to 2 at 40 s: -1 over 19 s.
        assert_eq!(c.close_wait_growth_per_min, -3.2);
    }

    #[test]
    fn a_close_wait_socket_from_before_the_start_is_at_least_as_old_as_its_first_dump() {
        let mut m = Model::new(0, Limits::default());
        let kernel = [full(CloseWait, "127.0.0.1:40000", "127.0.0.1:8080", 77)];
        m.reconcile(
            &kernel,
            S,
            &mut |_: &[u64]| HashMap::from([(77, (CLIENT, Comm::from("leaky")))]),
            &|_| true,
            &mut alive,
        );
        let s = snap(&mut m, 41 * S);
        let c = proc(&s, CLIENT);
        assert_eq!(c.close_wait_oldest_s, 40.0);
        assert!(c.close_wait_oldest_at_least);
        assert!(c.leak_suspect);
    }

    #[test]
    fn lifetimes_are_kept_per_peer_from_open_to_close() {
        let mut m = Model::new(0, Limits::default());
        let (srv, other) = ("127.0.0.1:8080", "127.0.0.1:9090");
        // Ten 2 ms connections to srv, one 5 s connection to other, one refused connect.
        for i in 0..10u64 {
            let cl = format!("127.0.0.1:{}", 40000 + i);
            let (sk, at) = (0x100 + i, S + i * 100_000_000);
            m.apply(
                &Ev::new(CLIENT, sk, Close, SynSent, "127.0.0.1:0", srv)
                    .at(at)
                    .0,
            );
            m.apply(&Ev::new(CLIENT, sk, SynSent, Established, &cl, srv).at(at).0);
            m.apply(
                &Ev::new(CLIENT, sk, Established, FinWait1, &cl, srv)
                    .at(at + 1_000_000)
                    .0,
            );
            m.apply(
                &Ev::new(CLIENT, sk, FinWait1, FinWait2, &cl, srv)
                    .at(at + 1_500_000)
                    .0,
            );
            m.apply(
                &Ev::new(CLIENT, sk, FinWait2, TimeWait, &cl, srv)
                    .at(at + 2_000_000)
                    .0,
            );
        }
        let cl = "127.0.0.1:41000";
        m.apply(
            &Ev::new(CLIENT, 0x200, Close, SynSent, "127.0.0.1:0", other)
                .at(S)
                .0,
        );
        m.apply(
            &Ev::new(CLIENT, 0x200, SynSent, Established, cl, other)
                .at(S)
                .0,
        );
        m.apply(
            &Ev::new(CLIENT, 0x200, Established, Close, cl, other)
                .at(6 * S)
                .0,
        );
        m.apply(
            &Ev::new(CLIENT, 0x300, Close, SynSent, "127.0.0.1:0", other)
                .at(S)
                .0,
        );
        m.apply(
            &Ev::new(CLIENT, 0x300, SynSent, Close, "127.0.0.1:0", other)
                .at(S)
                .0,
        );
        let s = snap(&mut m, 11 * S);
        let c = proc(&s, CLIENT);
        let life = |port: u16| {
            c.peers
                .iter()
                .find(|p| p.peer.rport() == port)
                .and_then(|p| p.lifetimes)
                .expect("lifetimes")
        };
        assert_eq!(
            life(8080),
            Lifetimes {
                ended: 10,
                ended_per_s: 1.0,
                short_share: 1.0,
                median_le_s: Some(0.004)
            }
        );
        let o = life(9090);
        assert_eq!(
            (o.ended, o.short_share, o.median_le_s),
            (1, 0.0, Some(16.0))
        );
    }

    #[test]
    fn sockets_first_seen_mid_life_on_a_listening_port_are_accepted_ones() {
        let mut m = Model::new(0, Limits::default());
        // A server listening on 8080, found by a dump; its accepted sockets predate twtrace, so
        // their first events come mid-life and name the owner, not the listener.
        let listener = KernelSocket {
            state: Listen,
            ..full(Listen, "127.0.0.1:8080", "0.0.0.0:0", 1)
        };
        m.reconcile(&[listener], S, &mut no_owners, &|_| true, &mut alive);
        for i in 0..100u16 {
            let cl = format!("127.0.0.1:{}", 40000 + i);
            m.apply(
                &Ev::new(
                    SERVER,
                    0x100 + u64::from(i),
                    Established,
                    CloseWait,
                    "127.0.0.1:8080",
                    &cl,
                )
                .at(2 * S)
                .0,
            );
        }
        // And an outgoing connection of the same process, first seen mid-life too.
        m.apply(
            &Ev::new(
                SERVER,
                0x900,
                Established,
                FinWait1,
                "127.0.0.1:50000",
                "10.0.0.5:5432",
            )
            .at(2 * S)
            .0,
        );
        let s = snap(&mut m, 3 * S);
        let p = proc(&s, SERVER);
        let peers: Vec<String> = p.peers.iter().map(|r| r.peer.to_string()).collect();
        assert_eq!(peers, ["127.0.0.1 -> :8080", "10.0.0.5:5432"], "{peers:?}");
        assert_eq!(p.peers[0].close_wait_now, 100);
    }

    #[test]
    fn peers_beyond_the_cap_are_summed_as_other() {
        let limits = Limits {
            max_peers_per_process: 2,
            ..Limits::default()
        };
        let mut m = Model::new(0, limits);
        for (i, port) in [81u16, 82, 83, 84].into_iter().enumerate() {
            let remote = format!("10.0.0.9:{port}");
            let local = format!("10.0.0.1:{}", 40000 + i);
            m.apply(&Ev::new(CLIENT, i as u64, Established, FinWait1, &local, &remote).0);
            m.apply(
                &Ev::new(CLIENT, i as u64, FinWait1, TimeWait, &local, &remote)
                    .cookie(i as u64 + 1)
                    .0,
            );
        }
        let s = snap(&mut m, 2 * S);
        let c = proc(&s, CLIENT);
        assert_eq!(c.peers.len(), 3);
        let other = c
            .peers
            .iter()
            .find(|p| p.peer == PeerKey::Other)
            .expect("other bucket");
        assert_eq!((other.timewait_entered, other.timewait_now), (2, 2));
        assert_eq!(c.peers.iter().map(|p| p.timewait_now).sum::<u64>(), 4);
    }

    #[test]
    fn dead_idle_processes_and_idle_peers_age_out() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(&Ev::new(CLIENT, 1, SynSent, Established, cl, srv).at(S).0);
        m.apply(
            &Ev::new(CLIENT, 1, Established, Close, cl, srv)
                .reset()
                .at(S)
                .0,
        );
        m.apply(
            &Ev::new(SERVER, 2, SynSent, Established, "127.0.0.1:40001", srv)
                .at(S)
                .0,
        );
        m.apply(
            &Ev::new(SERVER, 2, Established, Close, "127.0.0.1:40001", srv)
                .reset()
                .at(S)
                .0,
        );
        let dead = |pid: u32| pid != CLIENT;
        let s = m.snapshot(5 * S, Timestamp::UNIX_EPOCH, Outside::default(), &dead);
        assert_eq!(s.processes.len(), 2, "idle for only 4 s");
        let s = m.snapshot(20 * S, Timestamp::UNIX_EPOCH, Outside::default(), &dead);
        assert_eq!(
            s.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![SERVER],
            "the exited one aged out"
        );
        assert_eq!(s.processes[0].peers.len(), 1, "peer idle for 19 s stays");
        let s = m.snapshot(70 * S, Timestamp::UNIX_EPOCH, Outside::default(), &dead);
        assert!(
            s.processes[0].peers.is_empty(),
            "idle peer aged out after a minute"
        );
        assert_eq!(m.sizes(), (1, 0, 0));
    }

    #[test]
    fn history_keeps_one_minute_of_samples() {
        let mut m = Model::new(0, Limits::default());
        for i in 0..70u64 {
            client_first(&mut m, i, (i + 1) * S);
            snap(&mut m, (i + 1) * S + 1);
        }
        let s = snap(&mut m, 100 * S);
        let c = proc(&s, CLIENT);
        assert_eq!(c.timewait_history.len(), HISTORY_LEN);
        assert_eq!(c.timewait_history.last(), Some(&0));
        assert_eq!(c.timewait_history[0], 1);
    }

    #[test]
    fn outside_counters_pass_through() {
        let mut m = Model::new(0, Limits::default());
        let t = Timestamp::from_second(1_795_564_800).expect("time");
        let s = m.snapshot(
            S,
            t,
            Outside {
                namespaces: None,
                lost_events: 5,
                timewait_kernel: Some(9),
            },
            &|_| true,
        );
        assert_eq!(
            (s.lost_events, s.totals.timewait_kernel, s.time),
            (5, Some(9), t)
        );
        assert_eq!(s.uptime_s, 1.0);
    }

    /// A CLOSE_WAIT leaker's socket at the reconcile: the kernel's view of one socket.
    fn full(state: TcpState, local: &str, remote: &str, inode: u64) -> KernelSocket {
        KernelSocket {
            netns: 0,
            state,
            local: addr(local),
            remote: addr(remote),
            cookie: 1,
            inode,
            timewait: false,
            expires_ns: 0,
        }
    }

    const CHILD: u32 = 11;

    const WORKER: u32 = 21;
    const WORKER2: u32 = 22;

    impl Ev {
        fn netns(mut self, n: u32) -> Self {
            self.0.netns = n;
            self
        }
    }

    /// A connection accepted through `SERVER`'s listener whose client closed first: the server
    /// socket waits in CLOSE_WAIT, attributed to the listener's owner.
    fn accepted_close_wait(m: &mut Model, skaddr: u64, cl: &str, netns: u32) {
        let (srv, l) = ("0.0.0.0:8080", Attribution::Listener);
        for ev in [
            Ev::new(SERVER, skaddr, Listen, SynRecv, srv, cl).by(l),
            Ev::new(SERVER, skaddr, SynRecv, Established, srv, cl).by(l),
            Ev::new(SERVER, skaddr, Established, CloseWait, srv, cl).by(l),
        ] {
            m.apply(&ev.netns(netns).0);
        }
    }

    fn accept(pid: u32, skaddr: u64, state: TcpState, cl: &str) -> Transition {
        Ev::new(pid, skaddr, state, state, "0.0.0.0:8080", cl)
            .by(Attribution::Accepted)
            .0
    }

    #[test]
    fn the_same_addresses_in_two_namespaces_are_two_sockets() {
        let mut m = Model::new(0, Limits::default());
        let cl = "10.0.0.2:40000";
        accepted_close_wait(&mut m, 1, cl, 4_026_532_001);
        accepted_close_wait(&mut m, 2, cl, 4_026_532_002);
        let s = snap(&mut m, S);
        assert_eq!(proc(&s, SERVER).close_wait_now, 2);
        // The kernel has both, one in each namespace: nothing is dropped or seeded.
        let kernel = [
            KernelSocket {
                netns: 4_026_532_001,
                ..full(CloseWait, "0.0.0.0:8080", cl, 0)
            },
            KernelSocket {
                netns: 4_026_532_002,
                ..full(CloseWait, "0.0.0.0:8080", cl, 0)
            },
        ];
        m.reconcile(&kernel, 2 * S, &mut no_owners, &|_| true, &mut |_| {
            ProcStatus::Alive
        });
        let s = snap(&mut m, 3 * S);
        assert_eq!(proc(&s, SERVER).close_wait_now, 2);
        assert_eq!(s.totals.close_wait_now, 2);
        // One namespace's dump alone keeps one of them.
        m.reconcile(&kernel[..1], 4 * S, &mut no_owners, &|_| true, &mut |_| {
            ProcStatus::Alive
        });
        assert_eq!(snap(&mut m, 5 * S).totals.close_wait_now, 1);
    }

    #[test]
    fn an_accept_moves_the_socket_and_its_open_to_the_worker() {
        let mut m = Model::new(0, Limits::default());
        let (cl1, cl2) = ("127.0.0.1:40001", "127.0.0.1:40002");
        accepted_close_wait(&mut m, 1, cl1, 7);
        accepted_close_wait(&mut m, 2, cl2, 7);
        let s = snap(&mut m, S);
        assert_eq!(
            (proc(&s, SERVER).close_wait_now, proc(&s, SERVER).opens),
            (2, 2)
        );
        assert_eq!(m.apply(&accept(WORKER, 1, CloseWait, cl1)), None);
        let mut t = accept(WORKER2, 2, CloseWait, cl2);
        t.netns = 7;
        m.apply(&t);
        let s = snap(&mut m, 2 * S);
        assert_eq!(proc(&s, SERVER).close_wait_now, 0);
        assert_eq!(proc(&s, SERVER).opens, 0);
        for w in [WORKER, WORKER2] {
            assert_eq!(
                (proc(&s, w).close_wait_now, proc(&s, w).opens),
                (1, 1),
                "{w}"
            );
        }
        // A softirq transition that raced the accept still names the listener's owner: the
        // worker keeps it.
        let late = Ev::new(SERVER, 2, CloseWait, LastAck, "0.0.0.0:8080", cl2)
            .by(Attribution::Listener)
            .netns(7);
        m.apply(&late.0);
        let s = snap(&mut m, 3 * S);
        assert_eq!(proc(&s, WORKER2).close_wait_now, 0, "it left CLOSE_WAIT");
        assert_eq!(proc(&s, SERVER).close_wait_now, 0);
        assert_eq!(proc(&s, WORKER).close_wait_now, 1);
        // An accept of a socket twtrace no longer tracks changes nothing.
        m.apply(&accept(WORKER, 99, Established, cl1));
        assert_eq!(snap(&mut m, 4 * S).totals.established_now, 0);
    }

    #[test]
    fn a_child_the_dump_saw_first_goes_to_the_listener_owner_with_its_open() {
        let mut m = Model::new(0, Limits::default());
        let cl = "127.0.0.1:40001";
        // The dump raced the ring buffer: the accepted socket is in the kernel's table, in the
        // accept queue, held by nobody.
        let kernel = [full(Established, "0.0.0.0:8080", cl, 0)];
        m.reconcile(&kernel, S, &mut no_owners, &|_| true, &mut |_| {
            ProcStatus::Alive
        });
        accepted_close_wait(&mut m, 1, cl, 0);
        let s = snap(&mut m, 2 * S);
        assert_eq!(proc(&s, SERVER).opens, 1);
        assert_eq!(proc(&s, SERVER).close_wait_now, 1);
        assert_eq!(counter_or_zero(&s, 0, |p| p.opens), 0);
        // A new life at the same address after a socket the reconcile gave to a worker is the
        // listener's again.
        m.apply(&accept(WORKER, 1, CloseWait, cl));
        m.apply(&Ev::new(WORKER, 1, CloseWait, LastAck, "0.0.0.0:8080", cl).0);
        m.apply(&Ev::new(WORKER, 1, LastAck, Close, "0.0.0.0:8080", cl).0);
        accepted_close_wait(&mut m, 1, "127.0.0.1:40002", 0);
        let s = snap(&mut m, 3 * S);
        assert_eq!(proc(&s, SERVER).close_wait_now, 1);
        assert_eq!(proc(&s, WORKER).close_wait_now, 0);
    }

    fn counter_or_zero(s: &Snapshot, pid: u32, f: impl Fn(&ProcessRow) -> u64) -> u64 {
        s.processes.iter().find(|p| p.pid == pid).map_or(0, f)
    }

    #[test]
    fn sockets_still_with_their_listener_are_asked_about_at_each_reconcile() {
        let mut m = Model::new(0, Limits::default());
        let (cl1, cl2) = ("127.0.0.1:40001", "127.0.0.1:40002");
        accepted_close_wait(&mut m, 1, cl1, 0);
        accepted_close_wait(&mut m, 2, cl2, 0);
        let kernel = [
            full(CloseWait, "0.0.0.0:8080", cl1, 101),
            full(CloseWait, "0.0.0.0:8080", cl2, 102),
        ];
        let mut asked = Vec::new();
        m.reconcile(
            &kernel,
            S,
            &mut |inodes: &[u64]| {
                asked.extend_from_slice(inodes);
                // A worker holds the first; the listener's owner itself the second.
                HashMap::from([
                    (101, (WORKER, Comm::from("worker"))),
                    (102, (SERVER, Comm::from("server"))),
                ])
            },
            &|_| true,
            &mut |_| ProcStatus::Alive,
        );
        asked.sort_unstable();
        assert_eq!(asked, vec![101, 102]);
        let s = snap(&mut m, 2 * S);
        assert_eq!(proc(&s, WORKER).close_wait_now, 1);
        assert_eq!(proc(&s, SERVER).close_wait_now, 1);
        // Both are settled: nothing is asked again.
        let mut asked = Vec::new();
        m.reconcile(
            &kernel,
            3 * S,
            &mut |inodes: &[u64]| {
                asked.extend_from_slice(inodes);
                HashMap::new()
            },
            &|_| true,
            &mut |_| ProcStatus::Alive,
        );
        assert!(asked.is_empty(), "{asked:?}");
        // The moved socket's next event, still naming the listener's owner, stays the worker's.
        let shown = m.apply(
            &Ev::new(SERVER, 1, CloseWait, LastAck, "0.0.0.0:8080", cl1)
                .by(Attribution::Listener)
                .0,
        );
        assert_eq!(shown, None);
        let s = snap(&mut m, 4 * S);
        assert_eq!(proc(&s, WORKER).close_wait_now, 0);
        assert_eq!(proc(&s, SERVER).close_wait_now, 1);
    }

    #[test]
    fn a_socket_whose_owner_exited_goes_to_the_process_holding_it() {
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        // The client connects, then forks a child that keeps the socket, and exits.
        m.apply(&Ev::new(CLIENT, 1, Close, SynSent, "127.0.0.1:0", srv).0);
        assert_eq!(
            m.apply(&Ev::new(CLIENT, 1, SynSent, Established, cl, srv).0),
            None
        );
        let kernel = [full(Established, cl, srv, 77)];
        let mut asked = Vec::new();
        m.reconcile(
            &kernel,
            S,
            &mut |inodes: &[u64]| {
                asked.extend_from_slice(inodes);
                HashMap::from([(77, (CHILD, Comm::from("child")))])
            },
            &|_| true,
            &mut |pid| {
                if pid == CLIENT {
                    ProcStatus::Exited
                } else {
                    ProcStatus::Alive
                }
            },
        );
        assert_eq!(
            asked,
            vec![77],
            "only the exited owner's socket is asked about"
        );
        let s = m.snapshot(2 * S, Timestamp::UNIX_EPOCH, Outside::default(), &|pid| {
            pid != CLIENT
        });
        assert_eq!(proc(&s, CHILD).established_now, 1);
        assert_eq!(proc(&s, CHILD).comm, "child");
        let gone = proc(&s, CLIENT);
        assert_eq!((gone.established_now, gone.exited), (0, true));
        assert!(!proc(&s, CHILD).exited);

        // The peer closes: the kernel still names the exited client; it is shown as the child.
        let shown = m.apply(&Ev::new(CLIENT, 1, Established, CloseWait, cl, srv).0);
        assert_eq!(shown, Some((CHILD, Comm::from("child"))));
        let s = snap(&mut m, 3 * S);
        assert_eq!(proc(&s, CHILD).close_wait_now, 1);
        assert_eq!(proc(&s, CLIENT).close_wait_now, 0);
        // The child closes it itself: the kernel learns the child, nothing is rewritten.
        assert_eq!(
            m.apply(&Ev::new(CHILD, 1, CloseWait, LastAck, cl, srv).0),
            None
        );
        let s = snap(&mut m, 4 * S);
        assert_eq!(proc(&s, CHILD).close_wait_now, 0);
    }

    #[test]
    fn a_reused_pid_never_merges_with_the_process_that_had_it() {
        let mut m = Model::new(0, Limits::default());
        client_first(&mut m, 0, S);
        m.reconcile(&[], 2 * S, &mut no_owners, &|_| true, &mut |pid| {
            if pid == CLIENT {
                ProcStatus::Reused
            } else {
                ProcStatus::Alive
            }
        });
        client_first(&mut m, 1, 3 * S);
        let s = snap(&mut m, 4 * S);
        let rows: Vec<(u64, bool)> = s
            .processes
            .iter()
            .filter(|p| p.pid == CLIENT)
            .map(|p| (p.timewait_entered, p.exited))
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.contains(&(1, true)), "the old process, marked");
        assert!(rows.contains(&(1, false)), "the new one, apart");
    }

    #[test]
    fn a_replay_moves_the_same_sockets_from_the_recorded_answers_alone() {
        // Replayed, nothing is known about processes (all alive): the recorded answer for a
        // tracked socket is what moves it.
        let mut m = Model::new(0, Limits::default());
        let (cl, srv) = ("127.0.0.1:40000", "127.0.0.1:8080");
        m.apply(&Ev::new(CLIENT, 1, Close, SynSent, "127.0.0.1:0", srv).0);
        m.apply(&Ev::new(CLIENT, 1, SynSent, Established, cl, srv).0);
        m.reconcile(
            &[full(Established, cl, srv, 77)],
            S,
            &mut |_: &[u64]| HashMap::from([(77, (CHILD, Comm::from("child")))]),
            &|_| true,
            &mut alive,
        );
        let shown = m.apply(&Ev::new(CLIENT, 1, Established, CloseWait, cl, srv).0);
        assert_eq!(shown, Some((CHILD, Comm::from("child"))));
    }
}
