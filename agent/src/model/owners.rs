//! Who owns a socket twtrace did not see being made, or whose owner is gone: the answers /proc
//! gives at each kernel dump, applied to the model.

use std::collections::HashMap;

use super::{KernelSocket, Map, Model, PeerKey, Set, Sock, Tuple, tuple};
use crate::event::Comm;

impl Model {
    /// Sockets the kernel has and twtrace never saw (from before the start), with the owners
    /// /proc gave them.
    pub(super) fn seed(
        &mut self,
        new: &[&KernelSocket],
        owners: &HashMap<u64, (u32, Comm)>,
        dump_ns: u64,
        listening: &Set<(u32, u16)>,
        keep: &dyn Fn(u32) -> bool,
    ) {
        for k in new {
            let (pid, comm) = owners
                .get(&k.inode)
                .copied()
                .unwrap_or((0, Comm::default()));
            if !keep(pid) {
                continue;
            }
            let proc = self.procs.entry(pid).or_default();
            if pid != 0 {
                proc.comm = comm;
                proc.netns = k.netns;
            }
            let cap = self.limits.max_peers_per_process;
            let peer = proc.intern_peer(
                PeerKey::of(
                    listening.contains(&(k.netns, k.local.port())),
                    k.local,
                    k.remote,
                ),
                cap,
            );
            let key = tuple(k.netns, k.local, k.remote);
            let sock = Sock {
                pid,
                state: k.state,
                peer,
                tuple: key,
                netns: k.netns,
                seen_ns: dump_ns,
                // Found already in its state: its age is at least the time since.
                since_ns: dump_ns,
                since_known: false,
                opened_ns: None,
                inherited_from: None,
                by_listener: false,
            };
            self.count(&sock);
            self.seeded.insert(key, sock);
        }
    }

    /// Moves every tracked socket that /proc says another process holds to that process. The
    /// model asks only about sockets of exited owners (and unknown ones), so live this is the
    /// inheritance; replayed, the recorded answers lead to the same moves.
    pub(super) fn adopt(
        &mut self,
        owners: &HashMap<u64, (u32, Comm)>,
        kernel_full: &Map<Tuple, &KernelSocket>,
        listening: &Set<(u32, u16)>,
    ) {
        let holder = |s: &Sock| -> Option<(u32, Comm, &KernelSocket)> {
            let k = kernel_full.get(&s.tuple)?;
            let &(pid, comm) = owners.get(&k.inode)?;
            (pid != 0 && pid != s.pid).then_some((pid, comm, *k))
        };
        let moved: Vec<(Option<u64>, Sock, u32, Comm, PeerKey)> = self
            .socks
            .iter()
            .map(|(&skaddr, s)| (Some(skaddr), s))
            .chain(self.seeded.values().map(|s| (None, s)))
            .filter_map(|(skaddr, s)| {
                let (pid, comm, k) = holder(s)?;
                let key = match s.peer {
                    PeerKey::Other => PeerKey::of(
                        listening.contains(&(k.netns, k.local.port())),
                        k.local,
                        k.remote,
                    ),
                    key => key,
                };
                Some((skaddr, *s, pid, comm, key))
            })
            .collect();
        // Held by the listener's owner itself: the guess was right, no need to ask again.
        for s in self.socks.values_mut().chain(self.seeded.values_mut()) {
            if s.by_listener
                && kernel_full
                    .get(&s.tuple)
                    .and_then(|k| owners.get(&k.inode))
                    .is_some_and(|&(pid, _)| pid == s.pid)
            {
                s.by_listener = false;
            }
        }
        let cap = self.limits.max_peers_per_process;
        for (skaddr, old, pid, comm, key) in moved {
            self.uncount(&old);
            let proc = self.procs.entry(pid).or_default();
            proc.comm = comm;
            let peer = proc.intern_peer(key, cap);
            // A socket that was only the listener's guess was never its owner's: the process
            // holding it is the owner, not an heir.
            let inherited_from = if old.by_listener {
                None
            } else {
                old.inherited_from.or((old.pid != 0).then_some(old.pid))
            };
            let sock = Sock {
                pid,
                peer,
                inherited_from,
                by_listener: false,
                ..old
            };
            self.count(&sock);
            match skaddr {
                Some(skaddr) => self.socks.insert(skaddr, sock),
                None => self.seeded.insert(sock.tuple, sock),
            };
        }
    }
}
