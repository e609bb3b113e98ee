//! The rows behind the TUI's views, derived from a snapshot without I/O: peers grouped across
//! processes, the filter's matcher, and the orderings the views share.

use std::{
    borrow::Cow,
    cmp::{Ordering, Reverse},
    collections::HashMap,
    fmt::Write as _,
    ops::Range,
};

use crate::container::short_id;
use crate::model::snapshot::{PeerKey, PeerRow, ProcessRow, Snapshot};

/// One peer across all processes: the sums of its rows and the processes behind it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerGroup {
    /// One of its rows, (process index, peer index) into the snapshot: it names the peer.
    pub(super) rep: (usize, usize),
    pub timewait_entered: u64,
    pub timewait_now: u64,
    pub close_wait_now: u64,
    pub established_now: u64,
    /// Into `App::members`: the rows of the processes behind it, biggest TIME_WAIT total first.
    pub(super) members: Range<usize>,
}

impl PeerGroup {
    /// How many processes talk to this peer.
    pub fn process_count(&self) -> usize {
        self.members.len()
    }
}

/// Groups every process's peer rows by peer, into reused buffers; the groups in the order of
/// [`PeerKey::text_order`].
pub(super) fn build_groups(
    snap: &Snapshot,
    members: &mut Vec<(usize, usize)>,
    groups: &mut Vec<PeerGroup>,
) {
    let procs = &snap.processes;
    members.clear();
    for (p, proc_row) in procs.iter().enumerate() {
        members.extend((0..proc_row.peers.len()).map(|r| (p, r)));
    }
    let peer = |&(p, r): &(usize, usize)| &procs[p].peers[r];
    // Stable: among equal contributions the model's process order stays.
    members.sort_by_cached_key(|m| {
        let r = peer(m);
        (
            r.peer.text_order(),
            Reverse(r.timewait_entered),
            Reverse(r.established_now),
        )
    });
    groups.clear();
    let mut start = 0;
    while start < members.len() {
        let first = peer(&members[start]);
        let mut end = start + 1;
        while end < members.len() {
            let next = peer(&members[end]);
            if next.peer != first.peer {
                break;
            }
            end += 1;
        }
        let mut g = PeerGroup {
            rep: members[start],
            members: start..end,
            ..PeerGroup::default()
        };
        for m in &members[start..end] {
            let r = peer(m);
            g.timewait_entered += r.timewait_entered;
            g.timewait_now += r.timewait_now;
            g.close_wait_now += r.close_wait_now;
            g.established_now += r.established_now;
        }
        groups.push(g);
        start = end;
    }
}

/// The network namespace most rows of `procs` share (0 when no row knows its own): on a host
/// that is the host's, so a row in another one is in a pod or a container even when no runtime
/// was recognised from its cgroup. A tie goes to the lowest inode, which is the host's: recent
/// kernels give the initial namespace a fixed inode below every allocated one (4026531833,
/// 0xEFFFFFF9, against allocations from 0xF0000000), and older ones allocated it at boot.
pub(super) fn common_netns(procs: &[ProcessRow], counts: &mut HashMap<u32, usize>) -> u32 {
    counts.clear();
    for p in procs.iter().filter(|p| p.netns != 0) {
        *counts.entry(p.netns).or_default() += 1;
    }
    counts
        .iter()
        .max_by_key(|&(&ns, &n)| (n, Reverse(ns)))
        .map_or(0, |(&ns, _)| ns)
}

/// What the CONTAINER column shows for `p`: its container's short id; else, when its network
/// namespace is known and is not `common` (see [`common_netns`]), `ns:INODE`; else `-`.
pub(super) fn container_label(p: &ProcessRow, common: u32) -> Cow<'_, str> {
    match &p.container {
        Some(id) => Cow::Borrowed(short_id(id)),
        None if p.netns != 0 && p.netns != common => Cow::Owned(format!("ns:{}", p.netns)),
        None => Cow::Borrowed("-"),
    }
}

/// What the filter text matches. Text matches a comm, a command line or a peer label
/// ("10.0.0.5:5432", "→:80") as a case-insensitive substring, and a container id as a prefix (as `docker` and
/// `crictl` take ids: the short id or the full one both work, and a few hex letters typed for
/// a comm hit one id in thousands rather than any of the 64 places a substring could). A
/// number matches a pid, a port or a network namespace inode exactly, because "80" as a
/// substring would also pick pid 1802 and port 8080; the three ranges do not overlap (pids
/// stay under 2^22, inodes start near 2^32 - 2^28).
pub(super) struct Matcher<'a> {
    pub(super) lower: &'a str,
    pub(super) number: Option<u32>,
}

impl Matcher<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.lower.is_empty()
    }

    /// The process itself (not its peers) matches.
    pub(super) fn owner(&self, p: &ProcessRow) -> bool {
        match self.number {
            Some(n) => p.pid == n || (p.netns != 0 && p.netns == n),
            None => {
                contains_ci(&p.comm, self.lower)
                    || p.cmdline
                        .as_deref()
                        .is_some_and(|c| contains_ci(c, self.lower))
                    || p.container
                        .as_deref()
                        .is_some_and(|id| starts_with_ci(id, self.lower))
            }
        }
    }

    pub(super) fn peer(&self, r: &PeerRow, scratch: &mut String) -> bool {
        match self.number {
            Some(n) => match r.peer {
                PeerKey::Out { rport, .. } => rport != 0 && u32::from(rport) == n,
                PeerKey::In { lport, .. } => u32::from(lport) == n,
                PeerKey::Other => false,
            },
            None => {
                scratch.clear();
                // The label as shown. Writing to a String cannot fail.
                let _ = write!(scratch, "{:#}", r.peer);
                contains_ci(scratch, self.lower)
            }
        }
    }

    pub(super) fn process(&self, p: &ProcessRow, scratch: &mut String) -> bool {
        self.is_empty() || self.owner(p) || p.peers.iter().any(|r| self.peer(r, scratch))
    }
}

/// `needle` is already ASCII-lowercased.
pub(super) fn contains_ci(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// `needle` is already ASCII-lowercased.
fn starts_with_ci(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .get(..needle.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(needle.as_bytes()))
}

pub(super) fn directed(o: Ordering, descending: bool) -> Ordering {
    if descending { o.reverse() } else { o }
}

/// The capped rest goes last whatever the sort: the top rows should name peers one can act on.
pub(super) fn other_last(a: &PeerRow, b: &PeerRow) -> Ordering {
    let other = |r: &PeerRow| r.peer == PeerKey::Other;
    other(a).cmp(&other(b))
}

/// Addresses in numeric order (10.0.0.9 before 10.0.0.10), then ports.
pub(super) fn peer_order(a: &PeerRow, b: &PeerRow) -> Ordering {
    let (a, b) = (a.peer, b.peer);
    a.raddr()
        .cmp(&b.raddr())
        .then_with(|| a.lport().cmp(&b.lport()))
        .then_with(|| a.rport().cmp(&b.rport()))
}

/// The selection after a refresh: on the anchored row if found, else the old index clamped.
pub(super) fn settle(old: usize, found: Option<usize>, len: usize) -> usize {
    found.unwrap_or(old).min(len.saturating_sub(1))
}
