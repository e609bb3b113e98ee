//! Failed connect() and bind() calls (`Transition::failure`): counted per process, per peer
//! (connect() only: a bind() has no peer) and per destination of a connect(), which the
//! per-destination port pool view asks about ([`Model::connect_failures_to`]).
//!
//! A failure changes no socket's state: the transitions the kernel reports around a failed
//! connect() (`CLOSE -> SYN_SENT -> CLOSE`, the port lookup failing in between) come as events of
//! their own and are counted as they always were.

use std::net::IpAddr;

use super::{Map, Model, snapshot::FailureRow, snapshot::PeerKey};
use crate::event::{Call, Errno, SyscallFailure, Transition};

/// Destinations told apart by [`Destinations`]; failures toward more are counted in its total
/// only (about 40 bytes each: 650 KiB at most).
pub const MAX_DESTINATIONS: usize = 16_384;

/// One process's failed calls.
#[derive(Clone, Debug, Default)]
pub(super) struct Counts {
    pub(super) connect: u64,
    pub(super) bind: u64,
    /// By call and errno: a handful of pairs at most (the kernel reports five).
    by_errno: Vec<(Call, Errno, u64)>,
}

impl Counts {
    fn add(&mut self, f: SyscallFailure) {
        match f.call {
            Call::Connect => self.connect += 1,
            Call::Bind => self.bind += 1,
        }
        match self
            .by_errno
            .iter_mut()
            .find(|(c, e, _)| (*c, *e) == (f.call, f.errno))
        {
            Some((_, _, n)) => *n += 1,
            None => self.by_errno.push((f.call, f.errno, 1)),
        }
    }

    /// The breakdown as a snapshot shows it: connect() first, then most frequent first.
    pub(super) fn rows(&self) -> Vec<FailureRow> {
        let mut rows: Vec<FailureRow> = self
            .by_errno
            .iter()
            .map(|&(call, errno, count)| FailureRow { call, errno, count })
            .collect();
        rows.sort_by_key(|r| (r.call != Call::Connect, std::cmp::Reverse(r.count), r.errno));
        rows
    }
}

/// Connect failures by destination, and the totals since start.
#[derive(Debug, Default)]
pub(super) struct Destinations {
    /// (network namespace, remote address, remote port) -> failed connect() calls.
    by_destination: Map<(u32, IpAddr, u16), u64>,
    pub(super) connect_total: u64,
    pub(super) bind_total: u64,
}

impl Model {
    /// A failed connect() or bind(): counted for the calling process (made if need be: a
    /// process whose every bind() fails makes no transition), for the peer and the destination
    /// of a connect(), and in the totals.
    pub(super) fn failure(&mut self, t: &Transition, f: SyscallFailure) {
        let cap = self.limits.max_peers_per_process;
        let proc = super::proc_of_event(&mut self.procs, t.pid, t);
        proc.failures.add(f);
        let d = &mut self.failures;
        match f.call {
            Call::Connect => {
                d.connect_total += 1;
                let peer = proc.intern_peer(PeerKey::of(false, t.local, t.remote), cap);
                if let Some(p) = proc.peers.get_mut(&peer) {
                    p.connect_failures += 1;
                    p.last_ns = p.last_ns.max(t.mono_ns);
                }
                let key = (t.netns, t.remote.ip(), t.remote.port());
                if let Some(n) = d.by_destination.get_mut(&key) {
                    *n += 1;
                } else if d.by_destination.len() < MAX_DESTINATIONS {
                    d.by_destination.insert(key, 1);
                }
            }
            Call::Bind => d.bind_total += 1,
        }
    }

    /// Failed connect() calls toward `raddr`:`rport` in network namespace `netns` since start
    /// (0 when namespaces are not known; addresses as events carry them, v4-mapped ones as
    /// IPv4). 0 for a destination beyond the first [`MAX_DESTINATIONS`] that failed.
    pub fn connect_failures_to(&self, netns: u32, raddr: IpAddr, rport: u16) -> u64 {
        self.failures
            .by_destination
            .get(&(netns, raddr, rport))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use jiff::Timestamp;

    use super::*;
    use crate::{
        event::{Attribution, Comm, Family},
        model::{Limits, Outside},
        state::TcpState,
    };

    const S: u64 = 1_000_000_000;

    fn failed(pid: u32, call: Call, errno: Errno, addr: &str, netns: u32) -> Transition {
        let addr: SocketAddr = addr.parse().expect("addr");
        let none = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0);
        let (local, remote) = match call {
            Call::Connect => (none, addr),
            Call::Bind => (addr, none),
        };
        Transition {
            mono_ns: S,
            skaddr: 0xffff_0000,
            cookie: None,
            pid,
            comm: Comm::from("client"),
            cgroup_id: 5,
            attribution: Attribution::Owner,
            current_pid: pid,
            netns,
            family: Family::Ipv4,
            local,
            remote,
            old: TcpState::Close,
            new: TcpState::Close,
            reset: None,
            failure: Some(SyscallFailure { call, errno }),
            orphan: false,
        }
    }

    fn snapshot(m: &mut Model) -> crate::model::snapshot::Snapshot {
        m.snapshot(2 * S, Timestamp::UNIX_EPOCH, Outside::default(), &|_| true)
    }

    #[test]
    fn failures_count_per_process_peer_destination_and_in_total() {
        let mut m = Model::new(0, Limits::default());
        let ns = 4_026_532_000;
        for _ in 0..3 {
            m.apply(&failed(
                10,
                Call::Connect,
                Errno::EADDRNOTAVAIL,
                "10.0.0.5:8080",
                ns,
            ));
        }
        m.apply(&failed(
            10,
            Call::Connect,
            Errno::EAGAIN,
            "10.0.0.5:8080",
            ns,
        ));
        m.apply(&failed(
            10,
            Call::Connect,
            Errno::EADDRNOTAVAIL,
            "10.0.0.6:8080",
            ns,
        ));
        m.apply(&failed(
            11,
            Call::Bind,
            Errno::EADDRINUSE,
            "0.0.0.0:9000",
            ns,
        ));
        // The same destination in another namespace is another destination.
        m.apply(&failed(
            12,
            Call::Connect,
            Errno::EADDRNOTAVAIL,
            "10.0.0.5:8080",
            7,
        ));

        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(m.connect_failures_to(ns, ip("10.0.0.5"), 8080), 4);
        assert_eq!(m.connect_failures_to(ns, ip("10.0.0.6"), 8080), 1);
        assert_eq!(m.connect_failures_to(7, ip("10.0.0.5"), 8080), 1);
        assert_eq!(m.connect_failures_to(ns, ip("10.0.0.5"), 8081), 0);
        // A bind() has no destination.
        assert_eq!(m.connect_failures_to(ns, ip("0.0.0.0"), 9000), 0);

        let snap = snapshot(&mut m);
        assert_eq!(snap.totals.connect_failures, 6);
        assert_eq!(snap.totals.bind_failures, 1);
        let row = |pid| {
            snap.processes
                .iter()
                .find(|p| p.pid == pid)
                .unwrap_or_else(|| panic!("no row for {pid}"))
        };
        let client = row(10);
        assert_eq!((client.connect_failures, client.bind_failures), (5, 0));
        assert_eq!(client.comm, "client");
        assert_eq!(client.netns, ns);
        assert_eq!(
            client
                .failures
                .iter()
                .map(|r| (r.call, r.errno, r.count))
                .collect::<Vec<_>>(),
            [
                (Call::Connect, Errno::EADDRNOTAVAIL, 4),
                (Call::Connect, Errno::EAGAIN, 1)
            ]
        );
        let peer = |addr: &str| {
            let addr: SocketAddr = addr.parse().expect("addr");
            client
                .peers
                .iter()
                .find(|r| {
                    r.peer
                        == PeerKey::Out {
                            raddr: addr.ip(),
                            rport: addr.port(),
                        }
                })
                .map_or(0, |r| r.connect_failures)
        };
        assert_eq!(peer("10.0.0.5:8080"), 4);
        assert_eq!(peer("10.0.0.6:8080"), 1);
        // Nothing else moved: no socket, no open, no close.
        assert_eq!(
            (
                client.opens,
                client.closes,
                client.timewait_now,
                client.established_now
            ),
            (0, 0, 0, 0)
        );
        let binder = row(11);
        assert_eq!((binder.connect_failures, binder.bind_failures), (0, 1));
        assert!(binder.peers.is_empty(), "{:?}", binder.peers);
        assert_eq!(m.sizes().1, 0, "no socket is tracked for a failure");
    }

    #[test]
    fn destinations_are_bounded() {
        let mut m = Model::new(0, Limits::default());
        for i in 0..MAX_DESTINATIONS + 10 {
            let port = 1 + (i % 60_000) as u16;
            let host = i / 60_000;
            let t = failed(
                10,
                Call::Connect,
                Errno::EADDRNOTAVAIL,
                &format!("10.0.{host}.1:{port}"),
                1,
            );
            m.apply(&t);
        }
        assert_eq!(m.failures.by_destination.len(), MAX_DESTINATIONS);
        assert_eq!(m.failures.connect_total, (MAX_DESTINATIONS + 10) as u64);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(m.connect_failures_to(1, ip, 1), 1);
    }
}
