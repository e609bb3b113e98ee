//! TIME_WAIT and orphaned FIN_WAIT2: the two substates of a timewait socket, counted apart.
//!
//! `tcp_time_wait()` hands a closing connection to a timewait socket in one of two substates,
//! which is what `ss` shows as its state: TIME_WAIT (the peer's FIN came: the usual active
//! close), or FIN_WAIT2 (the socket's process had closed it and the peer had not closed its
//! side yet: a server closing idle clients makes these). Both count in sockstat's `tw`, so the
//! kernel-comparable count is the sum. The event tells the substate at the handover
//! (`Transition::orphan`); later a FIN from the peer turns a FIN_WAIT2 one into TIME_WAIT and
//! re-arms its timer with no event at all, which only the kernel's table shows. So:
//!
//! - an entry is counted in the substate its event reported (`timewait_entered` or
//!   `fin_wait2_entered`), and its "now" gauge follows the substate the latest dump reports;
//! - an entry the event reported as TIME_WAIT that a dump shows in FIN_WAIT2 was a guess (no
//!   BTF to read the socket's flags, an entry recovered without its event, a recording made
//!   before the two were told apart): the kernel never turns TIME_WAIT back into FIN_WAIT2, so
//!   the entry moves to `fin_wait2_entered` too.

use super::{Map, Model, Peer, Proc, Tuple};
use crate::state::TcpState;

/// The substate of a timewait socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Substate {
    TimeWait,
    /// An orphan the peer has not closed yet (ss: FIN-WAIT-2 with a timewait timer).
    FinWait2,
}

impl Substate {
    /// From the state the kernel reports for a timewait socket (sock_diag gives its
    /// substate), or the state an event reported for its entry.
    pub(super) fn of(state: TcpState) -> Self {
        match state {
            TcpState::FinWait2 => Self::FinWait2,
            _ => Self::TimeWait,
        }
    }
}

/// The per-substate counters of a process and of a peer: both keep `tw_now`, `fw2_now`,
/// `tw_entered` and `fw2_entered`, so one definition serves both.
macro_rules! substate_counters {
    ($($owner:ty),+) => {$(
        impl $owner {
            pub(super) fn now_mut(&mut self, sub: Substate) -> &mut u64 {
                match sub {
                    Substate::TimeWait => &mut self.tw_now,
                    Substate::FinWait2 => &mut self.fw2_now,
                }
            }

            pub(super) fn entered_mut(&mut self, sub: Substate) -> &mut u64 {
                match sub {
                    Substate::TimeWait => &mut self.tw_entered,
                    Substate::FinWait2 => &mut self.fw2_entered,
                }
            }
        }
    )+};
}

substate_counters!(Proc, Peer);

impl Model {
    pub(super) fn entered_total_mut(&mut self, sub: Substate) -> &mut u64 {
        match sub {
            Substate::TimeWait => &mut self.tw_entered_total,
            Substate::FinWait2 => &mut self.fw2_entered_total,
        }
    }

    /// Brings each tracked timewait socket's substate in line with a dump's (`kernel_tw`:
    /// deadline and substate by 4-tuple): its gauge moves; its entry moves only from a guessed
    /// TIME_WAIT to FIN_WAIT2 (see the module's documentation).
    pub(super) fn correct_substates(&mut self, kernel_tw: &Map<Tuple, (u64, Substate)>) {
        let changed: Vec<(Tuple, Substate)> = self
            .timewait
            .iter()
            .filter_map(|(key, tw)| {
                let &(_, sub) = kernel_tw.get(key)?;
                (sub != tw.sub).then_some((*key, sub))
            })
            .collect();
        for (key, sub) in changed {
            let Some(&old) = self.timewait.get(&key) else {
                continue;
            };
            self.uncount_tw(&old);
            let mut tw = old;
            if sub == Substate::FinWait2 && tw.entered_as == Substate::TimeWait {
                self.move_entry(tw.pid, tw.peer);
                tw.entered_as = Substate::FinWait2;
            }
            tw.sub = sub;
            self.count_tw(&tw);
            self.timewait.insert(key, tw);
        }
    }

    /// Moves one entry of `pid` toward `peer` from TIME_WAIT to FIN_WAIT2.
    fn move_entry(&mut self, pid: u32, peer: super::PeerKey) {
        fn shift(tw: &mut u64, fw2: &mut u64) {
            *tw = tw.saturating_sub(1);
            *fw2 += 1;
        }
        if let Some(proc) = self.procs.get_mut(&pid) {
            shift(&mut proc.tw_entered, &mut proc.fw2_entered);
            if let Some(p) = proc.peers.get_mut(&peer) {
                shift(&mut p.tw_entered, &mut p.fw2_entered);
            }
        }
        shift(&mut self.tw_entered_total, &mut self.fw2_entered_total);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::SocketAddr};

    use jiff::Timestamp;

    use super::super::{KernelSocket, Limits, Outside, ProcStatus, snapshot::ProcessRow};
    use super::*;
    use crate::event::{Attribution, Comm, Family, Transition};
    use TcpState::*;

    const S: u64 = 1_000_000_000;
    const SERVER: u32 = 20;
    const CLIENT: u32 = 10;
    const SRV: &str = "127.0.0.1:8080";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn client(n: u16) -> String {
        format!("127.0.0.1:{}", 40000 + n)
    }

    fn ev(
        pid: u32,
        skaddr: u64,
        old: TcpState,
        new: TcpState,
        local: &str,
        remote: &str,
    ) -> Transition {
        Transition {
            netns: 0,
            mono_ns: S,
            skaddr,
            cookie: None,
            pid,
            comm: Comm::from(if pid == SERVER { "server" } else { "client" }),
            cgroup_id: 0,
            attribution: Attribution::Owner,
            current_pid: 0,
            family: Family::Ipv4,
            local: addr(local),
            remote: addr(remote),
            old,
            new,
            reset: None,
            failure: None,
            orphan: false,
        }
    }

    /// The server closes an accepted connection first and the client does not close: with
    /// `orphan`, the kernel side read the socket's flags and reported FIN_WAIT2; without it
    /// (no BTF, an older recording) the entry is reported as TIME_WAIT.
    fn server_closes_idle_client(m: &mut Model, n: u16, orphan: bool) {
        let (cl, sk) = (client(n), 0x100 + u64::from(n));
        for t in [
            ev(SERVER, sk, Listen, SynRecv, SRV, &cl),
            ev(SERVER, sk, SynRecv, Established, SRV, &cl),
            ev(SERVER, sk, Established, FinWait1, SRV, &cl),
            ev(SERVER, sk, FinWait1, FinWait2, SRV, &cl),
            Transition {
                new: if orphan { FinWait2 } else { TimeWait },
                orphan,
                ..ev(SERVER, sk, FinWait2, TimeWait, SRV, &cl)
            },
        ] {
            m.apply(&t);
        }
    }

    fn tw_socket(local: &str, remote: &str, state: TcpState, expires_ns: u64) -> KernelSocket {
        KernelSocket {
            netns: 0,
            state,
            local: addr(local),
            remote: addr(remote),
            cookie: 1,
            inode: 0,
            timewait: true,
            expires_ns,
        }
    }

    fn reconcile(m: &mut Model, kernel: &[KernelSocket], at: u64) {
        m.reconcile(
            kernel,
            at,
            &mut |_: &[u64]| HashMap::new(),
            &|_| true,
            &mut |_| ProcStatus::Alive,
        );
    }

    fn snap(m: &mut Model, at: u64) -> crate::model::Snapshot {
        m.snapshot(at, Timestamp::UNIX_EPOCH, Outside::default(), &|_| true)
    }

    /// (timewait_entered, timewait_now, fin_wait2_entered, fin_wait2_now)
    fn counts(r: &ProcessRow) -> (u64, u64, u64, u64) {
        (
            r.timewait_entered,
            r.timewait_now,
            r.fin_wait2_entered,
            r.fin_wait2_now,
        )
    }

    fn row(s: &crate::model::Snapshot, pid: u32) -> &ProcessRow {
        s.processes
            .iter()
            .find(|p| p.pid == pid)
            .unwrap_or_else(|| panic!("pid {pid} in {s:#?}"))
    }

    #[test]
    fn an_orphan_entry_is_counted_as_fin_wait2_not_time_wait() {
        let mut m = Model::new(0, Limits::default());
        for n in 0..3 {
            server_closes_idle_client(&mut m, n, true);
        }
        let s = snap(&mut m, 2 * S);
        let r = row(&s, SERVER);
        assert_eq!(counts(r), (0, 0, 3, 3));
        assert_eq!((r.closes, r.timewait_per_s), (3, 0.0));
        assert_eq!(
            (r.peers[0].fin_wait2_entered, r.peers[0].fin_wait2_now),
            (3, 3)
        );
        assert_eq!(r.peers[0].timewait_now, 0);
        let t = &s.totals;
        assert_eq!(
            (
                t.timewait_now,
                t.fin_wait2_now,
                t.timewait_entered,
                t.fin_wait2_entered
            ),
            (0, 3, 0, 3)
        );
        assert_eq!(t.timewait_per_s, 0.0, "no TIME_WAIT churn");
    }

    /// The clients close: a FIN reaching each orphan makes it TIME_WAIT and re-arms its timer,
    /// with no event. The dump moves the gauge; the entries stay as they were made, and the
    /// sum of the gauges stays what the kernel counts in `tw`.
    #[test]
    fn a_fin_reaching_an_orphan_moves_its_gauge_to_time_wait_and_counts_it_once() {
        let mut m = Model::new(0, Limits::default());
        server_closes_idle_client(&mut m, 0, true);
        server_closes_idle_client(&mut m, 1, true);
        // The clients' sockets close (LAST_ACK -> CLOSE): no timewait for them.
        for n in 0..2u16 {
            let sk = 0x900 + u64::from(n);
            let cl = client(n);
            m.apply(&ev(CLIENT, sk, SynSent, Established, &cl, SRV));
            m.apply(&ev(CLIENT, sk, Established, CloseWait, &cl, SRV));
            m.apply(&ev(CLIENT, sk, CloseWait, LastAck, &cl, SRV));
            m.apply(&ev(CLIENT, sk, LastAck, Close, &cl, SRV));
        }
        // The first one got its FIN (TIME_WAIT, 60 s again); the second is still FIN_WAIT2.
        let kernel = [
            tw_socket(SRV, &client(0), TimeWait, 60 * S),
            tw_socket(SRV, &client(1), FinWait2, 50 * S),
        ];
        reconcile(&mut m, &kernel, 10 * S);
        let s = snap(&mut m, 11 * S);
        assert_eq!(counts(row(&s, SERVER)), (0, 1, 2, 1));
        assert_eq!(counts(row(&s, CLIENT)), (0, 0, 0, 0));
        let t = &s.totals;
        assert_eq!(t.timewait_now + t.fin_wait2_now, 2, "as the kernel's tw");
        assert_eq!(
            t.timewait_entered + t.fin_wait2_entered,
            2,
            "two entries, not four"
        );
        // Again: nothing moves twice.
        reconcile(&mut m, &kernel, 12 * S);
        assert_eq!(counts(row(&snap(&mut m, 13 * S), SERVER)), (0, 1, 2, 1));
        // The FIN_WAIT2 one expires at its timer (10 s + 50 s); the re-armed one lives on,
        // past its entry's 60 s.
        let s = snap(&mut m, 65 * S);
        assert_eq!(counts(row(&s, SERVER)), (0, 1, 2, 0));
        let s = snap(&mut m, 75 * S);
        assert_eq!(counts(row(&s, SERVER)), (0, 0, 2, 0));
    }

    /// Without the flag the entry is a guess: the kernel's table saying FIN_WAIT2 moves it,
    /// entry and gauge (the kernel never turns TIME_WAIT back into FIN_WAIT2).
    #[test]
    fn a_guessed_time_wait_the_dump_shows_in_fin_wait2_moves_entry_and_gauge() {
        let mut m = Model::new(0, Limits::default());
        server_closes_idle_client(&mut m, 0, false);
        server_closes_idle_client(&mut m, 1, false);
        let s = snap(&mut m, 2 * S);
        assert_eq!(counts(row(&s, SERVER)), (2, 2, 0, 0));
        assert_eq!(s.totals.timewait_per_s, 1.0);
        let kernel = [
            tw_socket(SRV, &client(0), FinWait2, 55 * S),
            tw_socket(SRV, &client(1), TimeWait, 55 * S),
        ];
        reconcile(&mut m, &kernel, 3 * S);
        let s = snap(&mut m, 4 * S);
        let r = row(&s, SERVER);
        assert_eq!(counts(r), (1, 1, 1, 1));
        assert_eq!(
            (r.peers[0].timewait_entered, r.peers[0].fin_wait2_entered),
            (1, 1)
        );
        assert_eq!(
            (s.totals.timewait_entered, s.totals.fin_wait2_entered),
            (1, 1)
        );
        assert_eq!(s.totals.timewait_per_s, 0.0, "no negative rate");
        // Its peer's FIN later: the gauge moves back, the entry stays FIN_WAIT2.
        let kernel = [
            tw_socket(SRV, &client(0), TimeWait, 60 * S),
            tw_socket(SRV, &client(1), TimeWait, 53 * S),
        ];
        reconcile(&mut m, &kernel, 5 * S);
        assert_eq!(counts(row(&snap(&mut m, 6 * S), SERVER)), (1, 2, 1, 0));
    }

    /// A skipped close found by the dump takes the dump's substate.
    #[test]
    fn a_recovered_entry_takes_the_dumps_substate() {
        let mut m = Model::new(0, Limits::default());
        let cl = client(0);
        for t in [
            ev(SERVER, 1, SynRecv, Established, SRV, &cl),
            ev(SERVER, 1, Established, FinWait1, SRV, &cl),
            ev(SERVER, 1, FinWait1, FinWait2, SRV, &cl),
        ] {
            m.apply(&t);
        }
        reconcile(&mut m, &[tw_socket(SRV, &cl, FinWait2, 58 * S)], 2 * S);
        let s = snap(&mut m, 3 * S);
        assert_eq!(counts(row(&s, SERVER)), (0, 0, 1, 1));
        assert_eq!(s.totals.timewait_recovered, 1);
        // Its event comes late after all: counted once, still FIN_WAIT2.
        m.apply(&Transition {
            new: FinWait2,
            orphan: true,
            ..ev(SERVER, 1, FinWait2, TimeWait, SRV, &cl)
        });
        let s = snap(&mut m, 4 * S);
        assert_eq!(counts(row(&s, SERVER)), (0, 0, 1, 1));
        assert_eq!(s.totals.timewait_recovered, 0);
    }

    #[test]
    fn timewait_sockets_from_before_the_start_are_split_by_substate() {
        let mut m = Model::new(0, Limits::default());
        let kernel = [
            tw_socket("10.0.0.1:80", "10.0.0.9:5000", FinWait2, 30 * S),
            tw_socket("10.0.0.1:80", "10.0.0.9:5001", FinWait2, 30 * S),
            tw_socket("10.0.0.1:5555", "10.0.0.2:443", TimeWait, 30 * S),
        ];
        reconcile(&mut m, &kernel, S);
        let s = snap(&mut m, 2 * S);
        let before = row(&s, 0);
        assert_eq!(counts(before), (0, 1, 0, 2));
        let fw2: u64 = before.peers.iter().map(|p| p.fin_wait2_now).sum();
        let tw: u64 = before.peers.iter().map(|p| p.timewait_now).sum();
        assert_eq!((tw, fw2), (1, 2));
        assert_eq!((s.totals.timewait_now, s.totals.fin_wait2_now), (1, 2));
        // Gone at their timers.
        let s = snap(&mut m, 33 * S);
        assert!(s.processes.iter().all(|p| p.pid != 0), "{s:#?}");
    }

    /// A FIN_WAIT2 entry the model aged out (60 s after its entry) that the kernel still has,
    /// re-armed as TIME_WAIT by the peer's FIN: counted again, as TIME_WAIT.
    #[test]
    fn an_aged_orphan_re_armed_by_a_fin_comes_back_as_time_wait() {
        let mut m = Model::new(0, Limits::default());
        server_closes_idle_client(&mut m, 0, true);
        assert_eq!(counts(row(&snap(&mut m, 63 * S), SERVER)), (0, 0, 1, 0));
        reconcile(
            &mut m,
            &[tw_socket(SRV, &client(0), TimeWait, 40 * S)],
            64 * S,
        );
        let s = snap(&mut m, 65 * S);
        assert_eq!(counts(row(&s, SERVER)), (0, 1, 1, 0));
        assert!(s.processes.iter().all(|p| p.pid != 0));
    }
}
