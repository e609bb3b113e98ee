//! A differential test of [`Model::apply`] and a micro-benchmark of it.
//!
//! The differential test replays a long pseudo-random but realistic event sequence (client-
//! and server-first lifecycles, resets, refused connects, accepts, orphans, skipped events,
//! address reuse, tcp_tw_reuse, sockets from before the start found by dumps, inherited and
//! reused owners, a small peer cap) and digests every snapshot's JSON, every value `apply`
//! returned and the model's whole internal state. The expected digest was recorded on the
//! code before `apply` was optimised: any change of behaviour changes it. With
//! `REPLAY_TRACE=<file>` every digested text is appended to the file, to diff two runs.
//!
//! Some of the model's results depend on the order of its hash maps, which are seeded at
//! random per process (which of two sockets of one 4-tuple a dump recovers, the namespace a
//! dump gives a process, which peer of several new ones a dump puts in "other"): the
//! simulation avoids those cases, so the digest is the same at every run.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    net::SocketAddr,
};

use jiff::Timestamp;

use super::{KernelSocket, Limits, Model, Outside, ProcStatus, Tuple, tuple};
use crate::{
    event::{Attribution, Call, Comm, Errno, Family, Reset, SyscallFailure, Transition},
    state::TcpState::{self, *},
};

/// splitmix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `pct` percent.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// FNV-1a, stable across runs and Rust releases.
struct Fnv(u64);

impl Fnv {
    fn add(&mut self, s: &str) {
        if let Ok(path) = std::env::var("REPLAY_TRACE") {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .expect("trace");
            let _ = writeln!(f, "{s}");
        }
        for b in s.bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
    }
}

const CLIENTS: [u32; 4] = [100, 101, 102, 103];
const SERVERS: [u32; 2] = [200, 201];
const WORKERS: [u32; 3] = [300, 301, 302];
/// Holds the sockets `CLIENTS[3]` leaves behind when it exits.
const CHILD: u32 = 400;
const EXITS_AT: u64 = 20_000_000_000;
const NETNS: [u32; 2] = [0, 4_026_532_001];

fn comm(pid: u32) -> Comm {
    Comm::from(format!("p{pid}").as_str())
}

fn sa(s: String) -> SocketAddr {
    s.parse().expect("socket address")
}

/// One side's event, before it has a time.
#[derive(Clone, Copy)]
struct Step {
    pid: u32,
    skaddr: u64,
    old: TcpState,
    new: TcpState,
    local: SocketAddr,
    remote: SocketAddr,
    attribution: Attribution,
    reset: bool,
    orphan: bool,
    /// Not delivered to the model (a skipped event), but the kernel made it.
    hidden: bool,
    /// Not before this long after the connection started (a CLOSE_WAIT left for a while).
    delay_ns: u64,
}

/// A socket in the simulated kernel's table.
#[derive(Clone, Copy)]
struct KSock {
    netns: u32,
    state: TcpState,
    local: SocketAddr,
    remote: SocketAddr,
    inode: u64,
    holder: u32,
}

/// The simulated kernel: what a dump shows.
#[derive(Default)]
struct Kernel {
    full: HashMap<u64, KSock>,
    /// (netns, local, remote) -> (deadline, FIN_WAIT2 substate)
    tw: HashMap<(u32, SocketAddr, SocketAddr), (u64, bool)>,
    listeners: HashMap<(u32, SocketAddr), ()>,
}

struct Conn {
    netns: u32,
    client: SocketAddr,
    tainted: bool,
    started: u64,
    steps: VecDeque<Step>,
    /// Per skaddr, its inode and who holds it.
    holders: Vec<(u64, u64, u32)>,
}

struct Sim {
    rng: Rng,
    now: u64,
    kernel: Kernel,
    conns: Vec<Conn>,
    free_skaddrs: Vec<u64>,
    next_inode: u64,
    /// Every 4-tuple the model may hash, to print keys stably.
    names: HashMap<Tuple, String>,
    /// Client addresses of open connections, and of those with a skipped event: never two
    /// sockets of one 4-tuple in the model at once, whose order in its maps would decide
    /// which one a dump recovers (a race of the model's that is not `apply`'s).
    taken: std::collections::HashSet<(u32, SocketAddr)>,
}

impl Sim {
    fn name(&mut self, netns: u32, l: SocketAddr, r: SocketAddr) {
        self.names
            .insert(tuple(netns, l, r), format!("{netns}/{l}/{r}"));
    }

    fn skaddr(&mut self) -> u64 {
        let i = self.rng.below(self.free_skaddrs.len() as u64) as usize;
        self.free_skaddrs.swap_remove(i)
    }

    /// Starts a new connection of a random kind.
    fn open(&mut self) {
        let r = &mut self.rng;
        // A process lives in one namespace: the servers and workers of each are apart.
        let client = CLIENTS[r.below(4) as usize];
        let ns = client as usize % 2;
        let netns = NETNS[ns];
        let kind = r.below(100);
        // Few client ports and servers, so 4-tuples recur (tcp_tw_reuse, a SYN to TIME_WAIT),
        // but never two open connections, or one whose events were skipped, on one.
        let cl = loop {
            let cl = sa(format!("10.0.1.{}:{}", r.below(3), 40000 + r.below(1000)));
            if self.taken.insert((netns, cl)) {
                break cl;
            }
        };
        let r = &mut self.rng;
        let zero = sa(format!("{}:0", cl.ip()));
        let hide_start = r.pct(3);
        // Only connections to the servers: the child has two peers, below any cap, so the
        // order a dump moves its sockets in (the model's map order) cannot matter.
        let inherit = client == CLIENTS[3] && kind >= 12 && r.pct(50);
        let c = self.skaddr();
        let mut steps = Vec::new();
        let st = |pid, skaddr, old, new, local, remote, attribution| Step {
            pid,
            skaddr,
            old,
            new,
            local,
            remote,
            attribution,
            reset: false,
            orphan: false,
            hidden: false,
            delay_ns: 0,
        };
        let owner = Attribution::Owner;
        let l = Attribution::Listener;
        let (c_inode, s_inode) = (self.next_inode, self.next_inode + 1);
        self.next_inode += 2;
        let mut holders = vec![(c, c_inode, if inherit { CHILD } else { client })];
        if kind < 12 {
            // An outgoing connection to a remote twtrace sees one side of: many peers for
            // the cap, sometimes refused.
            let remote = sa(format!(
                "10.9.0.{}:{}",
                self.rng.below(12),
                [443, 5432][self.rng.below(2) as usize]
            ));
            self.name(netns, zero, remote);
            self.name(netns, cl, remote);
            steps.push(st(client, c, Close, SynSent, zero, remote, owner));
            if self.rng.pct(20) {
                let mut s = st(client, c, SynSent, Close, zero, remote, owner);
                s.reset = true;
                steps.push(s);
            } else {
                steps.push(st(client, c, SynSent, Established, cl, remote, owner));
                steps.push(st(client, c, Established, FinWait1, cl, remote, owner));
                steps.push(st(client, c, FinWait1, FinWait2, cl, remote, owner));
                let mut s = st(client, c, FinWait2, TimeWait, cl, remote, owner);
                if self.rng.pct(20) {
                    s.new = FinWait2;
                    s.orphan = true;
                }
                steps.push(s);
            }
        } else {
            let srv_i = self.rng.below(2) as usize;
            let srv = sa(format!("10.0.0.1:{}", [8080, 9090][srv_i]));
            let server = SERVERS[srv_i] + 10 * ns as u32;
            let s = self.skaddr();
            holders.push((s, s_inode, server));
            self.name(netns, zero, srv);
            self.name(netns, cl, srv);
            self.name(netns, srv, cl);
            let accept = self.rng.pct(40);
            let worker = WORKERS[self.rng.below(3) as usize] + 10 * ns as u32;
            let spid = if accept { worker } else { server };
            if accept {
                holders[1].2 = worker;
            }
            // The attribution of a softirq transition of the server's socket.
            let soft = |rng: &mut Rng| -> (u32, Attribution) {
                match rng.below(4) {
                    0 => (0, Attribution::Unknown),
                    1 => (spid, owner),
                    _ => (server, l),
                }
            };
            steps.push(st(client, c, Close, SynSent, zero, srv, owner));
            steps.push(st(server, s, Listen, SynRecv, srv, cl, l));
            steps.push(st(client, c, SynSent, Established, cl, srv, owner));
            steps.push(st(server, s, SynRecv, Established, srv, cl, l));
            if accept {
                steps.push(st(
                    worker,
                    s,
                    Established,
                    Established,
                    srv,
                    cl,
                    Attribution::Accepted,
                ));
            }
            if kind < 22 {
                // Reset.
                let mut a = st(client, c, Established, Close, cl, srv, owner);
                a.reset = true;
                let (p, at) = soft(&mut self.rng);
                let mut b = st(p, s, Established, Close, srv, cl, at);
                b.reset = true;
                steps.extend([a, b]);
            } else if kind < 60 {
                // The client closes first.
                let (p, at) = soft(&mut self.rng);
                steps.push(st(client, c, Established, FinWait1, cl, srv, owner));
                steps.push(st(p, s, Established, CloseWait, srv, cl, at));
                let mut last_ack = st(spid, s, CloseWait, LastAck, srv, cl, owner);
                if self.rng.pct(2) {
                    last_ack.delay_ns = 2_000_000_000 + self.rng.below(33_000_000_000);
                }
                if !self.rng.pct(1) {
                    steps.push(last_ack);
                    steps.push(st(client, c, FinWait1, FinWait2, cl, srv, owner));
                    steps.push(st(client, c, FinWait2, TimeWait, cl, srv, owner));
                    let (p, at) = soft(&mut self.rng);
                    steps.push(st(p, s, LastAck, Close, srv, cl, at));
                }
            } else {
                // The server closes first; some clients leak CLOSE_WAIT for a while.
                let cpid = if self.rng.pct(20) { 0 } else { client };
                let cat = if cpid == 0 {
                    Attribution::Unknown
                } else {
                    owner
                };
                steps.push(st(spid, s, Established, FinWait1, srv, cl, owner));
                steps.push(st(cpid, c, Established, CloseWait, cl, srv, cat));
                let (p, at) = soft(&mut self.rng);
                steps.push(st(p, s, FinWait1, FinWait2, srv, cl, at));
                let mut last_ack = st(client, c, CloseWait, LastAck, cl, srv, owner);
                if self.rng.pct(3) {
                    last_ack.delay_ns = 2_000_000_000 + self.rng.below(33_000_000_000);
                }
                if !self.rng.pct(1) {
                    steps.push(last_ack);
                    let (p, at) = soft(&mut self.rng);
                    let mut tw = st(p, s, FinWait2, TimeWait, srv, cl, at);
                    if self.rng.pct(10) {
                        tw.new = FinWait2;
                        tw.orphan = true;
                    }
                    steps.push(tw);
                    steps.push(st(cpid, c, LastAck, Close, cl, srv, cat));
                }
            }
        }
        for (i, s) in steps.iter_mut().enumerate() {
            // Before the start: the handshake went by unseen, a dump finds the sockets.
            s.hidden = (hide_start && i < 4) || self.rng.below(200) == 0;
        }
        let tainted = steps.iter().any(|s| s.hidden);
        self.conns.push(Conn {
            netns,
            client: cl,
            tainted,
            started: self.now,
            steps: steps.into(),
            holders,
        });
    }

    /// The next event of a random open connection, applied to the kernel's table.
    fn step(&mut self) -> Option<Transition> {
        if (self.conns.len() < 30 || self.rng.pct(8)) && self.free_skaddrs.len() > 2 {
            self.open();
        }
        let i = self.rng.below(self.conns.len() as u64) as usize;
        let conn = &mut self.conns[i];
        if conn
            .steps
            .front()
            .is_some_and(|s| self.now < conn.started + s.delay_ns)
        {
            return None;
        }
        let Some(s) = conn.steps.pop_front() else {
            let done = self.conns.swap_remove(i);
            if !done.tainted {
                self.taken.remove(&(done.netns, done.client));
            }
            for (skaddr, _, _) in done.holders {
                if !self.kernel.full.contains_key(&skaddr) {
                    self.free_skaddrs.push(skaddr);
                }
            }
            return None;
        };
        let netns = conn.netns;
        let (inode, holder) = conn
            .holders
            .iter()
            .find(|h| h.0 == s.skaddr)
            .map(|h| (h.1, h.2))
            .unwrap_or((0, 0));
        self.now += self.rng.below(800_000);
        let now = self.now;
        // The kernel's table.
        match s.new {
            _ if s.old == s.new && !s.orphan => {}
            TimeWait | FinWait2 if s.orphan || s.new == TimeWait => {
                self.kernel.full.remove(&s.skaddr);
                self.kernel
                    .tw
                    .insert((netns, s.local, s.remote), (now + 60_000_000_000, s.orphan));
            }
            Close => {
                self.kernel.full.remove(&s.skaddr);
            }
            state => {
                if matches!((s.old, s.new), (SynSent, Established) | (Listen, SynRecv)) {
                    self.kernel.tw.remove(&(netns, s.local, s.remote));
                }
                self.kernel.full.insert(
                    s.skaddr,
                    KSock {
                        netns,
                        state,
                        local: s.local,
                        remote: s.remote,
                        inode,
                        holder,
                    },
                );
            }
        }
        // The server's socket lives on past its connection's events only in the table.
        if s.hidden {
            return None;
        }
        let (failure, old, new) = (None, s.old, s.new);
        Some(Transition {
            mono_ns: now,
            skaddr: s.skaddr,
            cookie: matches!(new, TimeWait | Close).then_some(s.skaddr ^ 0xabc),
            pid: s.pid,
            comm: comm(s.pid),
            cgroup_id: u64::from(s.pid % 3) * 77,
            attribution: s.attribution,
            current_pid: 0,
            netns,
            family: Family::Ipv4,
            local: s.local,
            remote: s.remote,
            old,
            new,
            reset: s.reset.then_some(Reset::Received),
            failure,
            orphan: s.orphan,
        })
    }

    /// The kernel's table as sock_diag would give it at `now`, timewait sockets past their
    /// deadline dropped, a few entries skipped (a busy table).
    fn dump(&mut self) -> Vec<KernelSocket> {
        let now = self.now;
        let late = self.rng.below(1_500_000_000);
        self.kernel.tw.retain(|_, (d, _)| *d + late > now);
        let mut out = Vec::new();
        let mut full: Vec<_> = self.kernel.full.iter().collect();
        full.sort_by_key(|(k, _)| **k);
        for (_, k) in full {
            out.push(KernelSocket {
                netns: k.netns,
                state: k.state,
                local: k.local,
                remote: k.remote,
                cookie: k.inode,
                inode: k.inode,
                timewait: false,
                expires_ns: 0,
            });
        }
        let mut tw: Vec<_> = self.kernel.tw.iter_mut().collect();
        tw.sort_by_key(|(k, _)| **k);
        for (&(netns, local, remote), (deadline, fw2)) in tw {
            // A FIN reaches an orphan: TIME_WAIT now, its timer re-armed.
            if *fw2 && self.rng.pct(30) {
                *fw2 = false;
                *deadline = now + 60_000_000_000;
            }
            out.push(KernelSocket {
                netns,
                state: if *fw2 { FinWait2 } else { TimeWait },
                local,
                remote,
                cookie: 0,
                inode: 0,
                timewait: true,
                expires_ns: deadline.saturating_sub(now),
            });
        }
        let mut ls: Vec<_> = self.kernel.listeners.keys().copied().collect();
        ls.sort();
        for (netns, local) in ls {
            out.push(KernelSocket {
                netns,
                state: Listen,
                local,
                remote: sa("0.0.0.0:0".into()),
                cookie: 0,
                inode: 0,
                timewait: false,
                expires_ns: 0,
            });
        }
        // Where a busy dump misses a socket depends on where its messages broke off and on
        // what changed in between: not the same place twice.
        let skip = self.rng.below(53);
        let mut i = 0;
        out.retain(|_| {
            i += 1;
            i % 53 != skip
        });
        out
    }
}

fn listen(pid: u32, netns: u32, local: SocketAddr, old: TcpState, new: TcpState) -> Transition {
    Transition {
        mono_ns: 0,
        skaddr: 0xdead_0000 + u64::from(local.port()) + u64::from(netns % 7),
        cookie: None,
        pid,
        comm: comm(pid),
        cgroup_id: 0,
        attribution: Attribution::Owner,
        current_pid: pid,
        netns,
        family: Family::Ipv4,
        local,
        remote: sa("0.0.0.0:0".into()),
        old,
        new,
        reset: None,
        failure: None,
        orphan: false,
    }
}

/// The model's internal state, printed with stable keys and orders.
fn internal(m: &Model, names: &HashMap<Tuple, String>) -> String {
    let name = |t: &Tuple| names.get(t).cloned().unwrap_or_else(|| "?".into());
    let mut out = String::new();
    let mut socks: Vec<_> = m.socks.iter().collect();
    socks.sort_by_key(|(k, _)| **k);
    for (k, s) in socks {
        let mut s = *s;
        let t = name(&s.tuple);
        s.tuple = 0;
        let _ = writeln!(out, "sock {k:x} {t} {s:?}");
    }
    let mut v: Vec<String> = m
        .seeded
        .iter()
        .map(|(k, s)| {
            let mut s = *s;
            s.tuple = 0;
            format!("seeded {} {s:?}", name(k))
        })
        .collect();
    v.sort();
    out.extend(v.into_iter().map(|l| l + "\n"));
    for (label, map) in [("tw", &m.timewait), ("aged", &m.aged)] {
        let mut v: Vec<String> = map
            .iter()
            .map(|(k, s)| format!("{label} {} {s:?}", name(k)))
            .collect();
        v.sort();
        out.extend(v.into_iter().map(|l| l + "\n"));
    }
    let procs = m
        .procs
        .iter()
        .map(|(&pid, p)| (pid, p))
        .chain(m.retired.iter().map(|(pid, p)| (*pid + 1_000_000, p)));
    let mut rows: Vec<String> = procs
        .map(|(pid, p)| {
            let mut q = p.clone();
            q.peers = Default::default();
            let mut peers: Vec<String> = p
                .peers
                .iter()
                .map(|(k, v)| format!("{k:?} {v:?}"))
                .collect();
            peers.sort();
            format!("proc {pid} {q:?} {peers:?}\n")
        })
        .collect();
    rows.sort();
    out.extend(rows);
    let mut bs: Vec<String> = m.before_start_tw.iter().map(|b| format!("{b:?}")).collect();
    bs.sort();
    let mut ls: Vec<_> = m.listening.iter().copied().collect();
    ls.sort();
    let _ = writeln!(
        out,
        "bs {bs:?} slack {} unattributed {} listening {ls:?} totals {} {} {} {} {} {:?}",
        m.tw_slack_ns,
        m.unattributed_events,
        m.tw_entered_total,
        m.fw2_entered_total,
        m.tw_recovered,
        m.tw_entered_prev,
        m.tw_rate,
        m.failures.connect_total,
    );
    out
}

/// What a replay went through, to check that it covers the branches of `apply`.
#[derive(Debug, Default)]
struct Coverage {
    applied: usize,
    /// `apply` named another owner (an inherited socket).
    shown: usize,
    /// The most sockets seeded from a dump at once.
    seeded_max: usize,
    /// Events of sockets that were seeded when they came.
    seeded_hits: usize,
    recovered: u64,
    /// Closing sockets a dump took out (their close was skipped).
    closing_taken: usize,
    retired: usize,
    sizes: (usize, usize, usize),
}

/// Replays `events` pseudo-random events and returns the digest and what was covered.
fn replay(seed: u64, events: usize, cap: usize) -> (u64, Coverage) {
    let mut cov = Coverage::default();
    let limits = Limits {
        max_peers_per_process: cap,
        ..Limits::default()
    };
    let mut m = Model::new(0, limits);
    let mut sim = Sim {
        rng: Rng(seed),
        now: 1_000_000,
        kernel: Kernel::default(),
        conns: Vec::new(),
        free_skaddrs: (0..600u64)
            .map(|i| 0xffff_8880_0000_0000 + i * 0x940)
            .collect(),
        next_inode: 1000,
        names: HashMap::new(),
        taken: Default::default(),
    };
    let mut digest = Fnv(0xcbf2_9ce4_8422_2325);
    for (ns, netns) in NETNS.into_iter().enumerate() {
        for (pid, port) in SERVERS.into_iter().zip([8080, 9090]) {
            let pid = pid + 10 * ns as u32;
            let local = sa(format!("10.0.0.1:{port}"));
            m.apply(&listen(pid, netns, local, Close, Listen));
            sim.kernel.listeners.insert((netns, local), ());
        }
    }
    // Delivery lags the kernel (the ring buffer): a dump can see what the model has not yet.
    let mut ring: VecDeque<Transition> = VecDeque::new();
    let (mut applied, mut next_snap, mut next_dump) = (0, 1_000_000_000u64, 2_500_000_000u64);
    let mut reused_once = false;
    while applied < events {
        if let Some(t) = sim.step() {
            ring.push_back(t);
        }
        // A failed connect() now and then, and a listener closing and coming back.
        if sim.rng.pct(1) {
            let pid = CLIENTS[sim.rng.below(4) as usize];
            let mut t = listen(
                pid,
                NETNS[pid as usize % 2],
                sa("0.0.0.0:0".into()),
                Close,
                Close,
            );
            t.remote = sa(format!("10.9.0.{}:443", sim.rng.below(12)));
            t.mono_ns = sim.now;
            t.failure = Some(SyscallFailure {
                call: if sim.rng.pct(80) {
                    Call::Connect
                } else {
                    Call::Bind
                },
                errno: Errno::EADDRNOTAVAIL,
            });
            ring.push_back(t);
        }
        if sim.rng.below(2000) == 0 {
            let local = sa("10.0.0.1:9090".into());
            let mut t = listen(SERVERS[1], 0, local, Listen, Close);
            t.mono_ns = sim.now;
            ring.push_back(t);
            let mut t = listen(SERVERS[1], 0, local, Close, Listen);
            t.mono_ns = sim.now;
            ring.push_back(t);
        }
        let lag = sim.rng.below(12) as usize;
        while ring.len() > lag {
            let Some(t) = ring.pop_front() else { break };
            if !m.seeded.is_empty() && m.seeded.contains_key(&tuple(t.netns, t.local, t.remote)) {
                cov.seeded_hits += 1;
            }
            let shown = m.apply(&t);
            applied += 1;
            if shown.is_some() {
                cov.shown += 1;
                digest.add(&format!("{applied} {shown:?}"));
            }
        }
        let now = sim.now;
        let exists = |pid: u32| !(pid == CLIENTS[3] && now >= EXITS_AT);
        if now >= next_dump {
            next_dump += 2_500_000_000 + sim.rng.below(1_000_000_000);
            let kernel = sim.dump();
            let holders: HashMap<u64, u32> = sim
                .kernel
                .full
                .values()
                .map(|k| (k.inode, k.holder))
                .collect();
            let reuse = !reused_once && now > 30_000_000_000;
            reused_once |= reuse;
            let mut asked = 0usize;
            let closing: Vec<(u64, Tuple)> = m
                .socks
                .iter()
                .filter(|(_, s)| s.state.before_timewait() || s.state == LastAck)
                .map(|(&skaddr, s)| (skaddr, s.tuple))
                .collect();
            m.reconcile(
                &kernel,
                now,
                &mut |inodes: &[u64]| {
                    asked += inodes.len();
                    inodes
                        .iter()
                        .filter_map(|i| holders.get(i).map(|&p| (*i, (p, comm(p)))))
                        .collect()
                },
                &|_| true,
                &mut |pid| {
                    if !exists(pid) {
                        ProcStatus::Exited
                    } else if reuse && pid == CLIENTS[2] {
                        ProcStatus::Reused
                    } else {
                        ProcStatus::Alive
                    }
                },
            );
            // A closing socket a dump takes out without a timewait socket of its 4-tuple in
            // the dump (`recover_vanished`: its close was skipped) is one the kernel no
            // longer has.
            let timewait: std::collections::HashSet<Tuple> = kernel
                .iter()
                .filter(|k| k.timewait)
                .map(|k| tuple(k.netns, k.local, k.remote))
                .collect();
            for (skaddr, key) in closing {
                if m.socks.contains_key(&skaddr) || timewait.contains(&key) {
                    continue;
                }
                cov.closing_taken += 1;
                if let Some(k) = sim.kernel.full.get(&skaddr) {
                    assert_ne!(
                        tuple(k.netns, k.local, k.remote),
                        key,
                        "{}: the kernel still has it ({:?}), in dump: {}",
                        sim.names.get(&key).map_or("?", String::as_str),
                        k.state,
                        kernel
                            .iter()
                            .any(|d| tuple(d.netns, d.local, d.remote) == key)
                    );
                }
            }
            digest.add(&format!("dump {now} asked {asked}"));
            cov.seeded_max = cov.seeded_max.max(m.seeded.len());
            digest.add(&internal(&m, &sim.names));
        }
        if now >= next_snap {
            next_snap += 1_000_000_000;
            let s = m.snapshot(now, Timestamp::UNIX_EPOCH, Outside::default(), &exists);
            digest.add(&serde_json::to_string(&s).expect("json"));
            digest.add(&internal(&m, &sim.names));
        }
    }
    digest.add(&internal(&m, &sim.names));
    cov.applied = applied;
    cov.recovered = m.tw_recovered;
    cov.retired = m.retired.len();
    cov.sizes = m.sizes();
    (digest.0, cov)
}

/// (seed, peer cap, digest): the digests were recorded on the code before `apply` was
/// optimised (commit 7b8efde), and the optimisation did not change any of them. Recorded again
/// when the simulated dump's missed socket started to change place from dump to dump and a
/// tracked socket's state came to include its namespace (both change the digested text): with
/// `Model::recover_vanished`, which came then, switched off, the run gives the same digests,
/// so that rule changed nothing here. Recorded once more when a dump that has a tracked
/// ESTABLISHED or CLOSE_WAIT socket in a later state came to keep it in that state instead of
/// dropping it: every snapshot's totals stayed the same except the lifetimes ended (+22 of
/// 28,026 at the middle snapshot of the first seed), which were the ones lost before. And again
/// when peers came to count their resets: the traced text was the old one once that new field
/// was taken out of it. The small cap puts most of the clients' outgoing peers in "other".
const CASES: [(u64, usize, u64); 2] = [
    (0x0074_7774_7261_6365, 6, 0x9515_499a_3650_e08e),
    (0x006d_6f64_656c, 64, 0x51b0_875f_893a_913d),
];
const EVENTS: usize = 150_000;

#[test]
fn apply_replays_a_long_sequence_exactly_as_before_its_optimisation() {
    // All replayed first, so that a change shows every digest.
    let runs: Vec<_> = CASES
        .iter()
        .map(|&(seed, cap, _)| replay(seed, EVENTS, cap))
        .collect();
    for (&(seed, cap, _), (digest, cov)) in CASES.iter().zip(&runs) {
        println!("seed {seed:#x} cap {cap}: digest {digest:#x}, {cov:?}");
    }
    for (&(seed, _, expected), (digest, cov)) in CASES.iter().zip(runs) {
        assert!(
            cov.shown > 0
                && cov.seeded_max > 0
                && cov.seeded_hits > 0
                && cov.recovered > 0
                && cov.retired > 0
                && cov.sizes.1 > 0
                && cov.sizes.2 > 0,
            "{cov:?}"
        );
        assert_eq!(digest, expected, "seed {seed:#x}: {digest:#x}");
    }
}

/// Client-first churn as the kernel reports it at peak: each connection's 11 transitions
/// (both sides, with the worker's accept), a few connections interleaved, kernel addresses
/// reused from a pool, ports cycling so 4-tuples recur once their TIME_WAIT is old.
fn churn(events: usize) -> Vec<Transition> {
    let srv = sa("10.0.0.1:8080".into());
    let zero = sa("10.0.1.1:0".into());
    let mut out = Vec::with_capacity(events + 16);
    let mut pool: VecDeque<u64> = (0..4096u64)
        .map(|i| 0xffff_8880_0000_0000 + i * 0x940)
        .collect();
    let mut now = 1_000_000u64;
    let mut n = 0u64;
    const WIDTH: usize = 8;
    while out.len() < events {
        let mut batch: Vec<Vec<Transition>> = Vec::with_capacity(WIDTH);
        for _ in 0..WIDTH {
            let (Some(c), Some(s)) = (pool.pop_front(), pool.pop_front()) else {
                break;
            };
            let cl = sa(format!("10.0.1.1:{}", 32768 + n % 28000));
            n += 1;
            let l = Attribution::Listener;
            let o = Attribution::Owner;
            let ev = |pid, skaddr, old, new, local, remote, attribution| Transition {
                mono_ns: 0,
                skaddr,
                cookie: None,
                pid,
                comm: comm(pid),
                cgroup_id: 7,
                attribution,
                current_pid: 0,
                netns: 0,
                family: Family::Ipv4,
                local,
                remote,
                old,
                new,
                reset: None,
                failure: None,
                orphan: false,
            };
            let (client, server, worker) = (CLIENTS[0], SERVERS[0], WORKERS[0]);
            batch.push(vec![
                ev(client, c, Close, SynSent, zero, srv, o),
                ev(server, s, Listen, SynRecv, srv, cl, l),
                ev(client, c, SynSent, Established, cl, srv, o),
                ev(server, s, SynRecv, Established, srv, cl, l),
                ev(
                    worker,
                    s,
                    Established,
                    Established,
                    srv,
                    cl,
                    Attribution::Accepted,
                ),
                ev(client, c, Established, FinWait1, cl, srv, o),
                ev(server, s, Established, CloseWait, srv, cl, l),
                ev(worker, s, CloseWait, LastAck, srv, cl, o),
                ev(client, c, FinWait1, FinWait2, cl, srv, o),
                ev(client, c, FinWait2, TimeWait, cl, srv, o),
                ev(server, s, LastAck, Close, srv, cl, l),
            ]);
            pool.extend([c, s]);
        }
        // Round-robin over the batch: each connection's events in order, interleaved.
        for i in 0..11 {
            for conn in &batch {
                let mut t = conn[i];
                now += 2_500;
                t.mono_ns = now;
                out.push(t);
            }
        }
    }
    out.truncate(events);
    out
}

/// `apply`'s cost per event under realistic churn; run with
/// `cargo test --release -p twtrace model_apply_speed -- --ignored --nocapture`.
#[test]
#[ignore = "a micro-benchmark: run it in release mode, by hand"]
fn model_apply_speed() {
    const N: usize = 2_000_000;
    let events = churn(N);
    let mut best = f64::MAX;
    for round in 0..3 {
        let mut m = Model::new(0, Limits::default());
        let mut spent = std::time::Duration::ZERO;
        let mut next_snap = 1_000_000_000;
        for chunk in events.chunks(4096) {
            let start = std::time::Instant::now();
            for t in chunk {
                std::hint::black_box(m.apply(std::hint::black_box(t)));
            }
            spent += start.elapsed();
            // The agent's snapshot each second ages TIME_WAIT out; not timed.
            let now = chunk.last().map_or(0, |t| t.mono_ns);
            if now >= next_snap {
                next_snap += 1_000_000_000;
                m.snapshot(now, Timestamp::UNIX_EPOCH, Outside::default(), &|_| true);
            }
        }
        let ns = spent.as_nanos() as f64 / N as f64;
        println!("round {round}: {ns:.1} ns/event, sizes {:?}", m.sizes());
        best = best.min(ns);
    }
    println!("model_apply_speed: {best:.1} ns/event (best of 3, {N} events)");
}
