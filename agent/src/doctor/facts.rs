//! What `twtrace doctor` reads: settings, counters, the socket table and open files of this
//! network namespace and host, each as read (the rules in `super::rules` only look at these).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::Arc,
};

use jiff::Timestamp;
use serde::Serialize;

use crate::{
    kernel::{
        netstat::Counters,
        nofile, procnet,
        sockdiag::{self, DiagSocket, SockStat},
        sysctl::{self, PortPool, Setting, TwReuse},
    },
    model::snapshot::Snapshot,
    recording,
};

/// The share of a process's soft `nofile` limit in use from which doctor warns (its rules), and
/// from which a process's command line is read here even beyond the ones shown.
pub const NOFILE_WARN: f64 = 0.8;

/// The sysctls read, in the order they are shown: those a recording's header keeps, then the
/// ones only the doctor looks at.
pub const SYSCTLS: &[&str] =
    &concat::<{ recording::SYSCTLS.len() + DOCTOR_ONLY.len() }>(recording::SYSCTLS, DOCTOR_ONLY);

/// Two lists of names as one array, at compile time.
const fn concat<const N: usize>(a: &[&'static str], b: &[&'static str]) -> [&'static str; N] {
    assert!(a.len() + b.len() == N);
    let mut out = [""; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - a.len()];
        i += 1;
    }
    out
}

/// The sysctls the doctor reads beyond [`recording::SYSCTLS`].
const DOCTOR_ONLY: &[&str] = &[
    "net.ipv4.tcp_max_orphans",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_syncookies",
    // Removed in Linux 4.12: absent is the expected answer.
    "net.ipv4.tcp_tw_recycle",
];

/// The settings-file lines looked for: the folklore ones and those the rules name.
pub const SETTINGS_KEYS: &[&str] = &[
    "net.ipv4.tcp_tw_recycle",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_timestamps",
];

/// The counters kept and shown (group, name); the rules read these.
pub const COUNTERS: &[(&str, &str)] = &[
    ("TcpExt", "ListenOverflows"),
    ("TcpExt", "ListenDrops"),
    ("TcpExt", "TCPReqQFullDrop"),
    ("TcpExt", "TCPReqQFullDoCookies"),
    ("TcpExt", "SyncookiesSent"),
    ("TcpExt", "TCPTimeWaitOverflow"),
    ("TcpExt", "TW"),
    ("TcpExt", "TWRecycled"),
    ("TcpExt", "TCPAbortOnData"),
    ("TcpExt", "TCPAbortOnClose"),
    ("TcpExt", "TCPAbortOnMemory"),
    ("TcpExt", "TCPAbortOnTimeout"),
    ("TcpExt", "TCPAbortOnLinger"),
    ("TcpExt", "TCPAbortFailed"),
    ("TcpExt", "TCPMemoryPressures"),
    ("Tcp", "ActiveOpens"),
    ("Tcp", "PassiveOpens"),
    ("Tcp", "AttemptFails"),
    ("Tcp", "EstabResets"),
    ("Tcp", "CurrEstab"),
    ("Tcp", "OutRsts"),
];

/// A check that could not run, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    pub check: String,
    pub why: String,
}

/// What a `--watch` saw.
#[derive(Clone, Debug)]
pub struct Watched {
    /// Seconds watched.
    pub seconds: f64,
    /// The leaderboard at the end (rates over the whole watch).
    pub snapshot: Option<Arc<Snapshot>>,
    /// The counters when the watch began.
    pub counters_before: Option<Counters>,
}

/// One destination's share of the local ports connect() picks from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Destination {
    /// The source address the ports are counted for (each has its own pool).
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    /// Timewait sockets toward it, on ports from the range: TIME_WAIT, and orphaned FIN_WAIT2
    /// ones, which hold their 4-tuple the same way.
    pub timewait: u64,
    /// In any other state (ESTABLISHED, CLOSE_WAIT, SYN_SENT...), on ports from the range.
    pub other: u64,
    /// Whether `tcp_tw_reuse` lets connect() take the TIME_WAIT ones' ports for it.
    pub reuse: bool,
}

impl Destination {
    /// Ports connect() cannot pick for another connection to it now.
    pub fn blocked(&self) -> u64 {
        self.other + if self.reuse { 0 } else { self.timewait }
    }

    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.raddr, self.rport)
    }
}

/// What the kernel's socket table (sock_diag, this network namespace) says.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SocketFacts {
    /// Ports something listens on.
    pub listening_ports: BTreeSet<u16>,
    /// Timewait sockets in the TIME_WAIT substate.
    pub timewait: u64,
    /// Of those, on a port this namespace listens on: connections it accepted and closed
    /// first.
    pub timewait_incoming: u64,
    /// Timewait sockets in the FIN_WAIT2 substate: orphaned connections waiting for the peer's
    /// FIN, for at most `tcp_fin_timeout`.
    pub fin_wait2_orphans: u64,
    /// The longest time a TIME_WAIT socket has left, in ms (at most 60,000).
    pub longest_timewait_ms: Option<u32>,
    /// The destinations holding most local ports, most first (at most five).
    pub destinations: Vec<Destination>,
}

const TIME_WAIT: u8 = 6;
const FIN_WAIT2: u8 = 5;
const SYN_RECV: u8 = 3;
const LISTEN: u8 = 10;
const NEW_SYN_RECV: u8 = 12;
/// Destinations kept.
const DESTINATIONS: usize = 5;

impl SocketFacts {
    /// From a dump of the socket table, with the port range and `tcp_tw_reuse` in force.
    pub fn from_dump(
        dump: &[DiagSocket],
        range: Option<&PortPool>,
        reuse: Option<TwReuse>,
    ) -> Self {
        let listening_ports: BTreeSet<u16> = dump
            .iter()
            .filter(|d| d.state == LISTEN)
            .map(|d| d.local.port())
            .collect();
        let mut facts = Self {
            listening_ports,
            ..Self::default()
        };
        let mut by_dest: BTreeMap<(IpAddr, SocketAddr), (u64, u64)> = BTreeMap::new();
        for d in dump {
            let tw = d.timewait && d.state == TIME_WAIT;
            if tw {
                facts.timewait += 1;
                if facts.listening_ports.contains(&d.local.port()) {
                    facts.timewait_incoming += 1;
                }
                facts.longest_timewait_ms = facts.longest_timewait_ms.max(Some(d.expires_ms));
            } else if d.timewait && d.state == FIN_WAIT2 {
                facts.fin_wait2_orphans += 1;
            }
            // Ports connect() picked: in the range, not a listener's, not an accepted
            // connection's (those have the listening port).
            let picked = range.is_some_and(|r| r.picks(d.local.port()))
                && !matches!(d.state, LISTEN | SYN_RECV | NEW_SYN_RECV)
                && !facts.listening_ports.contains(&d.local.port());
            if picked {
                let e = by_dest.entry((d.local.ip(), d.remote)).or_default();
                // A timewait socket holds its 4-tuple in either substate, and connect()
                // treats both alike (`tcp_twsk_unique()`).
                if d.timewait {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
        let mut dests: Vec<Destination> = by_dest
            .into_iter()
            .map(|((laddr, remote), (timewait, other))| Destination {
                laddr,
                raddr: remote.ip(),
                rport: remote.port(),
                timewait,
                other,
                reuse: reuse.is_some_and(|r| r.applies(laddr, remote.ip())),
            })
            .collect();
        dests.sort_by(|a, b| {
            b.blocked()
                .cmp(&a.blocked())
                .then((b.timewait + b.other).cmp(&(a.timewait + a.other)))
                .then(a.peer().cmp(&b.peer()))
        });
        dests.truncate(DESTINATIONS);
        facts.destinations = dests;
        facts
    }
}

/// Everything read.
#[derive(Clone, Debug)]
pub struct Facts {
    pub time: Timestamp,
    pub host: String,
    pub kernel: String,
    /// The network namespace read (nsfs inode of /proc/self/ns/net).
    pub netns: Option<u64>,
    /// Seconds since boot (/proc/uptime).
    pub uptime_s: Option<f64>,
    /// [`SYSCTLS`] as read; `None`: this kernel has no such setting.
    pub sysctls: Vec<(&'static str, Option<String>)>,
    /// The local port range and its reserved ports.
    pub ports: Option<PortPool>,
    /// [`COUNTERS`], as read now.
    pub counters: Counters,
    pub sockstat: Option<SockStat>,
    pub sockets: Option<SocketFacts>,
    /// Open files against limits.
    pub nofile: nofile::Scan,
    /// Settings-file lines setting [`SETTINGS_KEYS`], in the order they are applied.
    pub settings: Vec<Setting>,
    pub skipped: Vec<Skipped>,
    pub watch: Option<Watched>,
}

impl Facts {
    /// A sysctl's value; `None` when absent or unreadable.
    pub fn sysctl(&self, name: &str) -> Option<&str> {
        self.sysctls
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether the sysctl was read (present or absent) rather than unreadable.
    pub fn sysctl_read(&self, name: &str) -> bool {
        self.sysctls.iter().any(|(n, _)| *n == name)
    }

    /// A single-number sysctl.
    pub fn sysctl_num(&self, name: &str) -> Option<i64> {
        self.sysctl(name)?.trim().parse().ok()
    }

    pub fn tw_reuse(&self) -> Option<TwReuse> {
        TwReuse::parse(self.sysctl(TwReuse::NAME)?)
    }

    /// A counter's value now.
    pub fn counter(&self, group: &str, name: &str) -> Option<i64> {
        self.counters.get(group, name)
    }

    /// How much a counter rose during the watch, when there was one.
    pub fn counter_delta(&self, group: &str, name: &str) -> Option<i64> {
        let before = self.watch.as_ref()?.counters_before.as_ref()?;
        self.counters.since(before).get(group, name)
    }

    /// The settings-file lines for `key`, in the order applied.
    pub fn settings_for(&self, key: &str) -> impl Iterator<Item = &Setting> + '_ {
        let key = key.to_owned();
        self.settings.iter().filter(move |s| s.key == key)
    }

    /// Reads everything from this host: no privileges needed, except for other users'
    /// open-file counts (listed in `skipped` when refused).
    pub fn gather(watch: Option<Watched>) -> Self {
        let mut skipped = Vec::new();
        let (host, kernel) = crate::recording::uname();
        let mut sysctls = Vec::new();
        for &name in SYSCTLS {
            match sysctl::read(name) {
                Ok(v) => sysctls.push((name, v)),
                Err(e) => skipped.push(Skipped {
                    check: format!("sysctl {name}"),
                    why: format!("{}: {e}", sysctl::path(name).display()),
                }),
            }
        }
        let ports = match PortPool::read() {
            Ok(r) => Some(r),
            Err(e) => {
                skipped.push(Skipped {
                    check: "local port range".into(),
                    why: e.to_string(),
                });
                None
            }
        };
        let counters = match Counters::read() {
            Ok(c) => c,
            Err(e) => {
                skipped.push(Skipped {
                    check: "TCP counters".into(),
                    why: format!(
                        "{} and {}: {e}",
                        crate::kernel::netstat::NETSTAT,
                        crate::kernel::netstat::SNMP
                    ),
                });
                Counters::default()
            }
        };
        let sockstat = match sockdiag::sockstat() {
            Ok(s) => Some(s),
            Err(e) => {
                skipped.push(Skipped {
                    check: "sockstat".into(),
                    why: format!("{e:#}"),
                });
                None
            }
        };
        let reuse = sysctls
            .iter()
            .find(|(n, _)| *n == TwReuse::NAME)
            .and_then(|(_, v)| TwReuse::parse(v.as_deref()?));
        let sockets = match sockdiag::dump_tcp() {
            Ok(dump) => Some(SocketFacts::from_dump(&dump, ports.as_ref(), reuse)),
            Err(e) => {
                skipped.push(Skipped {
                    check: "socket table".into(),
                    why: format!("sock_diag: {e:#}"),
                });
                None
            }
        };
        let mut scan = nofile::scan(std::process::id());
        // Only those shown or named in a finding need their command lines.
        for (i, u) in scan.uses.iter_mut().enumerate() {
            if i < super::NOFILE_SHOWN || u.ratio() >= NOFILE_WARN {
                u.cmdline = procnet::cmdline(u.pid);
            }
        }
        if scan.refused > 0 {
            skipped.push(Skipped {
                check: format!("open files of {} other users' processes", scan.refused),
                why: "listing /proc/PID/fd of another user's process needs root \
                      (CAP_DAC_READ_SEARCH); their limits were read, their open files not \
                      counted"
                    .into(),
            });
        }
        Self {
            time: Timestamp::now(),
            host,
            kernel,
            netns: fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino()),
            uptime_s: fs::read_to_string("/proc/uptime")
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse().ok()),
            sysctls,
            ports,
            counters: counters.only(COUNTERS),
            sockstat,
            sockets,
            nofile: scan,
            settings: sysctl::settings(Path::new("/"), SETTINGS_KEYS),
            skipped,
            watch,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::Family;

    /// A socket as sock_diag reports it.
    pub(crate) fn sock(state: u8, timewait: bool, local: &str, remote: &str) -> DiagSocket {
        DiagSocket {
            netns: 0,
            family: Family::Ipv4,
            state,
            local: local.parse().expect("local"),
            remote: remote.parse().expect("remote"),
            cookie: 0,
            inode: 0,
            uid: 0,
            timewait,
            expires_ms: if timewait { 59_000 } else { 0 },
        }
    }

    pub(crate) fn range() -> PortPool {
        PortPool::parse("32768 60999", "").expect("range")
    }

    #[test]
    fn time_wait_is_split_into_incoming_and_outgoing() {
        let mut dump = vec![
            sock(LISTEN, false, "0.0.0.0:8080", "0.0.0.0:0"),
            // Accepted on 8080 and closed first by this host.
            sock(TIME_WAIT, true, "10.0.0.1:8080", "10.0.0.9:40000"),
            sock(TIME_WAIT, true, "10.0.0.1:8080", "10.0.0.9:40001"),
            // Outgoing, from ephemeral ports.
            sock(TIME_WAIT, true, "10.0.0.1:33000", "10.0.0.5:5432"),
            sock(1, false, "10.0.0.1:33001", "10.0.0.5:5432"),
            sock(8, false, "10.0.0.1:33002", "10.0.0.5:5432"),
            sock(TIME_WAIT, true, "10.0.0.1:33003", "10.0.0.6:443"),
            // An orphan waiting for its peer's FIN.
            sock(FIN_WAIT2, true, "10.0.0.1:33004", "10.0.0.7:80"),
            // A request socket of the listener: not a picked port.
            sock(NEW_SYN_RECV, false, "10.0.0.1:8080", "10.0.0.9:40002"),
            // A port outside the range (bound by the caller).
            sock(1, false, "10.0.0.1:2000", "10.0.0.5:5432"),
        ];
        dump[3].expires_ms = 59_800;
        let f = SocketFacts::from_dump(&dump, Some(&range()), Some(TwReuse::Off));
        assert_eq!(f.listening_ports, BTreeSet::from([8080]));
        assert_eq!(
            (f.timewait, f.timewait_incoming, f.fin_wait2_orphans),
            (4, 2, 1)
        );
        assert_eq!(f.longest_timewait_ms, Some(59_800));
        let d = &f.destinations[0];
        assert_eq!(d.peer(), "10.0.0.5:5432".parse().expect("addr"));
        assert_eq!((d.timewait, d.other, d.blocked()), (1, 2, 3));
        // The orphan holds its port toward its peer as a TIME_WAIT socket would.
        let ports: Vec<u16> = f.destinations.iter().map(|d| d.rport).collect();
        assert_eq!(ports, [5432, 443, 80]);
    }

    #[test]
    fn reuse_frees_time_wait_ports_for_loopback_only_by_default() {
        let dump = vec![
            sock(TIME_WAIT, true, "127.0.0.1:33000", "127.0.0.1:9000"),
            sock(TIME_WAIT, true, "127.0.0.1:33001", "127.0.0.1:9000"),
            sock(TIME_WAIT, true, "10.0.0.1:33000", "10.0.0.5:5432"),
        ];
        let f = SocketFacts::from_dump(&dump, Some(&range()), Some(TwReuse::Loopback));
        let lo = f
            .destinations
            .iter()
            .find(|d| d.rport == 9000)
            .expect("loopback");
        let far = f
            .destinations
            .iter()
            .find(|d| d.rport == 5432)
            .expect("remote");
        assert!(lo.reuse && !far.reuse);
        assert_eq!((lo.blocked(), far.blocked()), (0, 1));
        assert_eq!(f.destinations[0].rport, 5432, "blocked ports first");
        // Without a port range nothing is counted as picked.
        assert!(
            SocketFacts::from_dump(&dump, None, None)
                .destinations
                .is_empty()
        );
    }

    #[test]
    fn reads_this_host_without_privileges() {
        let f = Facts::gather(None);
        assert_eq!(f.sysctls.len(), SYSCTLS.len(), "{:?}", f.skipped);
        assert!(f.sysctl("net.ipv4.ip_local_port_range").is_some());
        assert!(f.ports.is_some());
        assert!(f.counter("TcpExt", "ListenOverflows").is_some());
        assert!(f.sockets.is_some());
        assert!(!f.kernel.is_empty());
    }
}
