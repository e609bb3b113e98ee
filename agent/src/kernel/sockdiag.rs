//! The kernel's own view of TCP sockets: a NETLINK_SOCK_DIAG dump (what `ss` uses) and the `tw`
//! figure of /proc/net/sockstat.
//!
//! Timewait sockets emit no tracepoint when they die (see docs/kernel.md), so the
//! leaderboard reconciles its event-derived counts with this table every couple of seconds. One
//! dump is one request per address family; the kernel answers with as many datagrams as it takes
//! (each up to 32 KiB, net/netlink/af_netlink.c caps `max_recvmsg_len` there), then NLMSG_DONE.
//! Only the fixed `inet_diag_msg` header of each answer is decoded (no attributes are requested),
//! straight from the receive buffer: 30,000 sockets cost no allocation beyond the result `Vec`
//! (and none at all with a kept [`SockDiag`] and a reused vector).

use std::{fs, io, net::SocketAddr, num::NonZeroI32};

use anyhow::{Context as _, bail};
use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ALIGNTO, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, Parseable as _,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags, Timer},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use crate::event::{Family, unmap};

/// One socket as inet_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    /// The network namespace it was read in (nsfs inode): set by `crate::kernel::netns`, 0
    /// from a plain dump.
    pub netns: u32,
    pub family: Family,
    /// Kernel TCP state number (include/net/tcp_states.h: 1 ESTABLISHED ... 6 TIME_WAIT,
    /// 8 CLOSE_WAIT, 10 LISTEN...). For a timewait socket the kernel reports its substate
    /// (TIME_WAIT, or FIN_WAIT2 for an orphaned FIN_WAIT2 socket turned timewait); request
    /// sockets (half-open connections of a listener) are reported as SYN_RECV.
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `sock_gen_cookie()`: for a full socket, the value SO_COOKIE and tcp:tcp_destroy_sock's
    /// `sock_cookie` give. A timewait socket copies its full socket's cookie when it is created
    /// (net/ipv4/inet_timewait_sock.c `inet_twsk_alloc()`), which happens *before* the full
    /// socket's tcp_destroy_sock: if nothing had generated the cookie by then (SO_COOKIE, an
    /// earlier dump, a BPF helper), the copy is 0 and the first dump gives the timewait socket a
    /// fresh cookie, unequal to the tracepoint's. Seen here: destroy said 0x67afc, the dump 0x67aff.
    pub cookie: u64,
    /// 0 for timewait sockets (they have no inode), request sockets and orphaned sockets.
    pub inode: u64,
    pub uid: u32,
    /// A timewait socket (struct inet_timewait_sock), whatever its substate: these are what
    /// /proc/net/sockstat's `tw` counts.
    pub timewait: bool,
    /// `idiag_expires`: milliseconds until the socket's timer fires; for a timewait socket,
    /// until the kernel drops it.
    pub expires_ms: u32,
}

/// Every state bit from ESTABLISHED (1) to CLOSING (11). The kernel matches a timewait socket by
/// its substate (`tcp_diag_dump()`), so FIN_WAIT2-substate ones come with the FIN_WAIT2 bit, and it
/// adds NEW_SYN_RECV (request sockets) when SYN_RECV is asked for. BOUND_INACTIVE (13, bound but
/// neither listening nor connected) is left out: such sockets are in no TCP state that matters.
fn all_states() -> StateFlags {
    StateFlags::all()
}

/// Large enough for any dump datagram: the kernel sizes them to the reader's buffer, at most
/// 32 KiB (net/netlink/af_netlink.c, `netlink_recvmsg()` / `netlink_dump()`).
const RECV_BUF: usize = 64 * 1024;

/// nlmsghdr (16 bytes) + struct inet_diag_req_v2 (56 bytes, include/uapi/linux/inet_diag.h).
const REQUEST_LEN: usize = 16 + 56;

/// TCPDIAG_GETSOCK (include/uapi/linux/inet_diag.h): the request of sock_diag's predecessor,
/// which the kernel still serves (net/ipv4/inet_diag.c `inet_diag_dump_compat()`). Its dump asks
/// for family AF_UNSPEC: IPv4 and IPv6 sockets in one walk of the kernel's socket hash instead of
/// one walk per family. Answers are the same `inet_diag_msg`, under this message type.
const TCPDIAG_GETSOCK: u16 = 18;

/// nlmsghdr (16 bytes) + struct inet_diag_req (60 bytes, include/uapi/linux/inet_diag.h).
const COMPAT_REQUEST_LEN: usize = 16 + 60;

/// All TCP sockets of this network namespace, IPv4 and IPv6 (two dumps), every state.
pub fn dump_tcp() -> anyhow::Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    SockDiag::open()?.dump_tcp_into(&mut out)?;
    Ok(out)
}

/// A sock_diag netlink socket and its receive buffer, for a caller that dumps periodically and
/// wants no allocation per tick: keep one and call [`SockDiag::dump_tcp_into`] with the same
/// vector each time.
pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
    /// Sequence number of the last request; answers to earlier ones (left over from a dump that
    /// failed half-way) are ignored.
    seq: u32,
    /// The kernel refused the one-walk TCPDIAG_GETSOCK dump once: one dump per family since.
    one_walk_refused: bool,
    /// Which states a dump asks for (all, unless [`SockDiag::only_listeners`]).
    states: StateFlags,
}

impl SockDiag {
    pub fn open() -> anyhow::Result<Self> {
        Self::with_buffer(vec![0; RECV_BUF])
    }

    /// A socket with no receive buffer of its own, for a caller that keeps many (one per network
    /// namespace, `crate::kernel::netns`) and dumps them one after another through
    /// [`SockDiag::dump_tcp_with`]: one shared 64 KiB buffer instead of one per namespace. (Its
    /// [`SockDiag::dump_tcp_into`] allocates one on first use.)
    pub fn open_bare() -> anyhow::Result<Self> {
        Self::with_buffer(Vec::new())
    }

    fn with_buffer(buf: Vec<u8>) -> anyhow::Result<Self> {
        let mut socket =
            Socket::new(NETLINK_SOCK_DIAG).context("sock_diag: cannot open a netlink socket")?;
        socket
            .bind_auto()
            .context("sock_diag: cannot bind the netlink socket")?;
        Ok(Self {
            socket,
            buf,
            seq: 0,
            one_walk_refused: false,
            states: all_states(),
        })
    }

    /// Makes its dumps ask for listening sockets only: the kernel filters by state while it
    /// walks, so the answer is a few sockets even when the table holds 100,000 in TIME_WAIT
    /// (what /proc/net/tcp would list and twtrace would parse to find them).
    pub fn only_listeners(mut self) -> Self {
        self.states = StateFlags::LISTEN;
        self
    }

    /// The sockets of [`SockDiag::dump_tcp_into`] into `out` (cleared first), received into
    /// `buf` (grown to the needed size if smaller) instead of the socket's own buffer, and in
    /// one TCPDIAG_GETSOCK dump for both families: the kernel walks its socket hash, which
    /// every network namespace shares (unless net.ipv4.tcp_child_ehash_entries is set), once
    /// instead of twice. With many namespaces that walk is the whole cost: for 50 namespaces
    /// and 30,000 sockets, 105 to 170 ms instead of 175 to 350 ms here (the netns module's
    /// `measure_dump_all`). Falls back to a dump per family for good if the kernel refuses it.
    pub fn dump_tcp_with(
        &mut self,
        buf: &mut Vec<u8>,
        out: &mut Vec<DiagSocket>,
    ) -> anyhow::Result<()> {
        out.clear();
        self.append_tcp_with(buf, out)
    }

    /// [`SockDiag::dump_tcp_with`] appending to `out` instead of replacing it (one vector for
    /// every namespace: no copy, no second vector of a namespace's sockets). On failure `out`
    /// is as it was.
    pub fn append_tcp_with(
        &mut self,
        buf: &mut Vec<u8>,
        out: &mut Vec<DiagSocket>,
    ) -> anyhow::Result<()> {
        let start = out.len();
        std::mem::swap(&mut self.buf, buf);
        let result = self.dump_tcp_one_walk(out);
        std::mem::swap(&mut self.buf, buf);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn dump_tcp_one_walk(&mut self, out: &mut Vec<DiagSocket>) -> anyhow::Result<()> {
        let start = out.len();
        if self.one_walk_refused {
            return self.append_tcp_into(out);
        }
        self.seq = self.seq.wrapping_add(1);
        let mut skipped = 0usize;
        match self.receive(
            &compat_request(self.seq, self.states.clone()),
            out,
            &mut skipped,
        ) {
            Ok(()) => {
                warn_skipped(skipped);
                Ok(())
            }
            Err(e) => {
                // Refused for good only if the usual dump works: a failure of both is not about
                // the request.
                out.truncate(start);
                self.append_tcp_into(out)?;
                log::debug!(
                    "sock_diag: the one-walk TCPDIAG_GETSOCK dump failed ({e:#}); one dump per \
                     family from now on"
                );
                self.one_walk_refused = true;
                Ok(())
            }
        }
    }

    /// [`dump_tcp`] into `out`, which is cleared first.
    pub fn dump_tcp_into(&mut self, out: &mut Vec<DiagSocket>) -> anyhow::Result<()> {
        out.clear();
        self.append_tcp_into(out)
    }

    /// One dump per family, appended to `out`.
    fn append_tcp_into(&mut self, out: &mut Vec<DiagSocket>) -> anyhow::Result<()> {
        let mut skipped = 0usize;
        for family in [AF_INET, AF_INET6] {
            self.seq = self.seq.wrapping_add(1);
            self.dump_family(family, out, &mut skipped)?;
        }
        warn_skipped(skipped);
        Ok(())
    }

    fn dump_family(
        &mut self,
        family: u8,
        out: &mut Vec<DiagSocket>,
        skipped: &mut usize,
    ) -> anyhow::Result<()> {
        let request = request(family, self.seq, self.states.clone())?;
        self.receive(&request, out, skipped)
    }

    /// Sends a dump request numbered `self.seq` and appends its answers to `out`.
    fn receive(
        &mut self,
        request: &[u8],
        out: &mut Vec<DiagSocket>,
        skipped: &mut usize,
    ) -> anyhow::Result<()> {
        if self.buf.len() < RECV_BUF {
            self.buf.resize(RECV_BUF, 0);
        }
        // The kernel's netlink socket is port 0; sending to it needs no connect().
        let kernel = netlink_sys::SocketAddr::new(0, 0);
        self.socket
            .send_to(request, &kernel, 0)
            .context("sock_diag dump failed")?;
        loop {
            // MSG_TRUNC makes recv() return the datagram's real length, so a truncated one is
            // detected instead of parsed as if whole.
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("sock_diag dump failed"),
            };
            let Some(datagram) = self.buf.get(..n) else {
                bail!(
                    "sock_diag dump failed: a {n}-byte datagram does not fit the {}-byte buffer",
                    self.buf.len()
                );
            };
            if parse_datagram(datagram, self.seq, out, skipped)? == Progress::Done {
                return Ok(());
            }
        }
    }
}

fn warn_skipped(skipped: usize) {
    if skipped > 0 {
        log::warn!("sock_diag: skipped {skipped} malformed messages in the TCP socket dump");
    }
}

/// A TCPDIAG_GETSOCK `inet_diag_req` dump request for every TCP socket, both families. Built by
/// hand: netlink-packet-sock-diag knows only `inet_diag_req_v2`.
fn compat_request(seq: u32, states: StateFlags) -> [u8; COMPAT_REQUEST_LEN] {
    let mut bytes = [0; COMPAT_REQUEST_LEN];
    let (header, req) = bytes.split_at_mut(16);
    // struct nlmsghdr: length, type, flags, sequence number, port id (0 for the kernel).
    header[..4].copy_from_slice(&(COMPAT_REQUEST_LEN as u32).to_ne_bytes());
    header[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    header[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    header[8..12].copy_from_slice(&seq.to_ne_bytes());
    // struct inet_diag_req: idiag_family (a dump replaces it with AF_UNSPEC), src_len, dst_len,
    // ext (no attributes), the 48-byte socket id (zero: no filter), idiag_states, idiag_dbs.
    req[0] = AF_INET;
    req[52..56].copy_from_slice(&states.bits().to_ne_bytes());
    bytes
}

/// An `inet_diag_req_v2` dump request for every TCP socket of one family.
fn request(family: u8, seq: u32, states: StateFlags) -> anyhow::Result<[u8; REQUEST_LEN]> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    message.finalize();
    let mut bytes = [0; REQUEST_LEN];
    // `serialize` panics unless the buffer is exactly `buffer_len()` bytes.
    if message.buffer_len() != REQUEST_LEN {
        bail!(
            "sock_diag: the request is {} bytes, not the {REQUEST_LEN} of inet_diag_req_v2",
            message.buffer_len()
        );
    }
    message.serialize(&mut bytes);
    Ok(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

/// Walks the netlink messages of one received datagram, appending the sockets of the dump with
/// sequence number `seq`. Stops at NLMSG_DONE; fails on NLMSG_ERROR or a negative DONE status.
/// A message that cannot be parsed is skipped and counted in `skipped`; a header whose length
/// runs past the datagram ends the walk of that datagram (counted too). Never panics.
fn parse_datagram(
    mut data: &[u8],
    seq: u32,
    out: &mut Vec<DiagSocket>,
    skipped: &mut usize,
) -> anyhow::Result<Progress> {
    let align = usize::from(NLMSG_ALIGNTO);
    while !data.is_empty() {
        let Ok(msg) = NetlinkBuffer::new_checked(data) else {
            *skipped += 1;
            break;
        };
        let len = msg.length() as usize;
        if msg.sequence_number() == seq {
            match msg.message_type() {
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                    match InetResponseHeader::parse(msg.payload())
                        .ok()
                        .and_then(|h| from_header(&h))
                    {
                        Some(mut socket) => {
                            socket.expires_ms = expires_ms(msg.payload());
                            out.push(socket);
                        }
                        None => *skipped += 1,
                    }
                }
                NLMSG_DONE => {
                    // netlink_dump_done() (net/netlink/af_netlink.c) puts the dump's status in
                    // the payload: a negative errno when the dump itself failed.
                    if let Ok(done) = DoneBuffer::new_checked(msg.payload())
                        && done.code() < 0
                    {
                        return Err(errno(done.code())).context("sock_diag dump failed");
                    }
                    return Ok(Progress::Done);
                }
                NLMSG_ERROR => match ErrorBuffer::new_checked(msg.payload()) {
                    Ok(error) => {
                        // A zero code is an ACK, which a dump does not ask for.
                        if let Some(code) = error.code().map(NonZeroI32::get) {
                            return Err(errno(code)).context("sock_diag dump failed");
                        }
                    }
                    Err(_) => bail!("sock_diag dump failed: truncated NLMSG_ERROR"),
                },
                // NLMSG_NOOP and anything newer: nothing to count.
                _ => {}
            }
        }
        let next = len.div_ceil(align) * align;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(Progress::More)
}

/// Netlink carries errors as negative errno values.
fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.saturating_neg())
}

/// The crate's decoded `inet_diag_msg` as a [`DiagSocket`]; `None` for a family other than
/// AF_INET / AF_INET6.
fn from_header(h: &InetResponseHeader) -> Option<DiagSocket> {
    let family = match h.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        _ => return None,
    };
    let id = &h.socket_id;
    Some(DiagSocket {
        netns: 0,
        family,
        state: h.state,
        local: SocketAddr::new(unmap(id.source_address), id.source_port),
        remote: SocketAddr::new(unmap(id.destination_address), id.destination_port),
        cookie: cookie(id.cookie),
        inode: u64::from(h.inode),
        uid: h.uid,
        timewait: is_timewait(h.timer.as_ref()),
        expires_ms: 0,
    })
}

/// `idiag_expires` of an `inet_diag_msg`: after family, state, timer, retrans (4 bytes) and the
/// 48-byte `inet_diag_sockid`, in host order. Read from the bytes because the crate keeps it
/// only for full sockets' timers (`Timer::TimeWait` carries no duration).
fn expires_ms(payload: &[u8]) -> u32 {
    payload
        .get(52..56)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// Whether `idiag_timer` is 3, which the crate decodes as `Timer::TimeWait` (and nothing else).
/// net/ipv4/tcp_diag.c (net/ipv4/inet_diag.c before Linux 6.18) sets 3 only in
/// `tcp_twsk_diag_fill()`, for timewait sockets; full sockets get 0, 1, 2 or 4
/// (`inet_sk_diag_fill()`) and request sockets 1 (`tcp_req_diag_fill()`). The state cannot tell:
/// a timewait socket reports its substate, FIN_WAIT2 for an orphaned FIN_WAIT2 socket, a state a
/// full socket can be in too. Nor can `inode == 0`: request sockets and orphaned full sockets
/// (FIN_WAIT1, LAST_ACK after close()) have no inode either.
fn is_timewait(timer: Option<&Timer>) -> bool {
    matches!(timer, Some(Timer::TimeWait))
}

/// `idiag_cookie` as the crate hands it over: the raw 8 bytes of `__u32 idiag_cookie[2]`, each
/// half in host byte order. net/core/sock_diag.c `sock_diag_save_cookie()` stores
/// `cookie[0] = (u32)res; cookie[1] = (u32)(res >> 32)` for `res = sock_gen_cookie(sk)`.
fn cookie(raw: [u8; 8]) -> u64 {
    let [a, b, c, d, e, f, g, h] = raw;
    let low = u32::from_ne_bytes([a, b, c, d]);
    let high = u32::from_ne_bytes([e, f, g, h]);
    u64::from(low) | (u64::from(high) << 32)
}

/// The `TCP:` line of /proc/net/sockstat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockStat {
    pub inuse: u64,
    pub orphan: u64,
    /// Timewait sockets of this network namespace, IPv4 and IPv6 together (net/ipv4/proc.c prints
    /// the death row's `tw_refcount`, which both families share).
    pub tw: u64,
    pub alloc: u64,
}

/// Parses /proc/net/sockstat's `TCP:` line ("TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1").
/// `None` when the line is missing or lacks one of the four numbers.
pub fn parse_sockstat(text: &str) -> Option<SockStat> {
    let fields = text.lines().find_map(|line| line.strip_prefix("TCP:"))?;
    let (mut inuse, mut orphan, mut tw, mut alloc) = (None, None, None, None);
    let mut words = fields.split_whitespace();
    while let (Some(key), Some(value)) = (words.next(), words.next()) {
        let slot = match key {
            "inuse" => &mut inuse,
            "orphan" => &mut orphan,
            "tw" => &mut tw,
            "alloc" => &mut alloc,
            _ => continue,
        };
        *slot = Some(value.parse().ok()?);
    }
    Some(SockStat {
        inuse: inuse?,
        orphan: orphan?,
        tw: tw?,
        alloc: alloc?,
    })
}

/// Reads /proc/net/sockstat, for the calling thread's network namespace.
pub fn sockstat() -> anyhow::Result<SockStat> {
    // /proc/net links to /proc/self/net: the namespace of the process's main thread. The netlink
    // socket of `dump_tcp()` lives in the calling thread's, so read that one's to compare like
    // with like (they differ only after a thread's setns()/unshare(), as in the tests).
    const PATH: &str = "/proc/thread-self/net/sockstat";
    let text = fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    parse_sockstat(&text).with_context(|| format!("no parsable TCP line in {PATH}"))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn sockstat_normal_line() {
        let text = "sockets: used 13\n\
                    TCP: inuse 5 orphan 1 tw 2 alloc 7 mem 130\n\
                    UDP: inuse 0 mem 0\n";
        assert_eq!(
            parse_sockstat(text),
            Some(SockStat {
                inuse: 5,
                orphan: 1,
                tw: 2,
                alloc: 7
            })
        );
    }

    #[test]
    fn sockstat_large_and_reordered() {
        let text = "TCP: tw 30011 alloc 40000 inuse 9 orphan 0\n";
        assert_eq!(parse_sockstat(text).map(|s| s.tw), Some(30011));
    }

    #[test]
    fn sockstat_missing_tcp_line() {
        assert_eq!(
            parse_sockstat("sockets: used 13\nUDP: inuse 0 mem 0\n"),
            None
        );
        assert_eq!(parse_sockstat(""), None);
        // TCP6 lives in /proc/net/sockstat6 and has no `tw`.
        assert_eq!(parse_sockstat("TCP6: inuse 3\n"), None);
    }

    #[test]
    fn sockstat_garbage() {
        assert_eq!(
            parse_sockstat("TCP: inuse five orphan 0 tw 2 alloc 7"),
            None
        );
        assert_eq!(parse_sockstat("TCP: inuse 5 orphan 0 tw"), None);
        assert_eq!(parse_sockstat("TCP: inuse -1 orphan 0 tw 2 alloc 7"), None);
        assert_eq!(parse_sockstat("\u{0}\u{ff}TCP:"), None);
        assert_eq!(parse_sockstat("garbage\n\n"), None);
    }

    #[test]
    fn sockstat_reads_this_kernel() {
        // Every kernel with TCP has the line, in every network namespace.
        sockstat().expect("/proc/thread-self/net/sockstat has a TCP line");
    }

    #[test]
    fn cookie_is_low_half_then_high_half() {
        let low: u32 = 0x8765_4321;
        let high: u32 = 0x0000_0012;
        let mut raw = [0; 8];
        raw[..4].copy_from_slice(&low.to_ne_bytes());
        raw[4..].copy_from_slice(&high.to_ne_bytes());
        assert_eq!(cookie(raw), 0x0000_0012_8765_4321);
        assert_eq!(cookie([0; 8]), 0);
        assert_eq!(cookie([0xff; 8]), u64::MAX);
    }

    fn header(
        family: u8,
        src: IpAddr,
        dst: IpAddr,
        state: u8,
        timer: Option<Timer>,
    ) -> InetResponseHeader {
        InetResponseHeader {
            family,
            state,
            timer,
            socket_id: SocketId {
                source_port: 8080,
                destination_port: 40000,
                source_address: src,
                destination_address: dst,
                interface_id: 0,
                cookie: 7u64.to_ne_bytes(),
            },
            recv_queue: 0,
            send_queue: 0,
            uid: 1000,
            inode: 4242,
        }
    }

    const LO4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LO6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    #[test]
    fn ipv4_header_converts() {
        let s = from_header(&header(AF_INET, LO4, LO4, 1, None)).unwrap();
        assert_eq!(s.family, Family::Ipv4);
        assert_eq!(s.state, 1);
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.1:40000".parse().unwrap());
        assert_eq!((s.inode, s.uid, s.timewait), (4242, 1000, false));
        // 7 split into halves and joined again, whatever the host byte order.
        assert_eq!(
            s.cookie,
            if cfg!(target_endian = "little") {
                7
            } else {
                7 << 32
            }
        );
    }

    #[test]
    fn v4_mapped_addresses_are_unmapped() {
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let s = from_header(&header(AF_INET6, mapped, LO6, 1, None)).unwrap();
        assert_eq!(s.family, Family::Ipv6);
        assert_eq!(s.local, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "[::1]:40000".parse().unwrap());
    }

    #[test]
    fn timewait_is_the_timer_not_the_state() {
        // An orphaned FIN_WAIT2 socket turned timewait: substate FIN_WAIT2 (5), timer 3.
        let tw = from_header(&header(AF_INET6, LO6, LO6, 5, Some(Timer::TimeWait))).unwrap();
        assert!(tw.timewait);
        assert_eq!(tw.state, 5);
        // A full FIN_WAIT2 socket (keepalive-style timer 2) is not one.
        let full = header(
            AF_INET,
            LO4,
            LO4,
            5,
            Some(Timer::KeepAlive(Default::default())),
        );
        assert!(!from_header(&full).unwrap().timewait);
        assert!(
            !from_header(&header(AF_INET, LO4, LO4, 6, None))
                .unwrap()
                .timewait
        );
    }

    #[test]
    fn unknown_family_is_rejected() {
        assert_eq!(from_header(&header(1, LO4, LO4, 1, None)), None);
    }

    // Hand-built netlink datagrams, laid out as include/uapi/linux/netlink.h and
    // include/uapi/linux/inet_diag.h define them (native byte order but ports and addresses).

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(len.div_ceil(4) * 4, 0);
        m
    }

    /// struct inet_diag_msg: 72 bytes.
    #[allow(clippy::too_many_arguments)]
    fn diag_msg(
        family: u8,
        state: u8,
        timer: u8,
        sport: u16,
        dport: u16,
        src: [u8; 16],
        dst: [u8; 16],
        cookie: u64,
        inode: u32,
    ) -> Vec<u8> {
        let mut p = vec![family, state, timer, 0];
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&0u32.to_ne_bytes()); // idiag_if
        p.extend_from_slice(&(cookie as u32).to_ne_bytes());
        p.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        // expires: distinct per message so the test sees the right one was read.
        p.extend_from_slice(&(inode + 59_000).to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes()); // rqueue
        p.extend_from_slice(&0u32.to_ne_bytes()); // wqueue
        p.extend_from_slice(&1000u32.to_ne_bytes()); // uid
        p.extend_from_slice(&inode.to_ne_bytes());
        assert_eq!(p.len(), 72);
        p
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    fn parse(data: &[u8]) -> (anyhow::Result<Progress>, Vec<DiagSocket>, usize) {
        let (mut out, mut skipped) = (Vec::new(), 0);
        let r = parse_datagram(data, 1, &mut out, &mut skipped);
        (r, out, skipped)
    }

    #[test]
    fn multipart_datagram_then_done() {
        let cookie = 0x0000_0001_0000_0002;
        let mut d = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(AF_INET, 10, 0, 80, 0, v4([127, 0, 0, 1]), v4([0; 4]), 5, 99),
        );
        d.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(
                AF_INET,
                6,
                3,
                40000,
                80,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
                cookie,
                0,
            ),
        ));
        let (r, out, skipped) = parse(&d);
        assert_eq!(r.unwrap(), Progress::More);
        assert_eq!(skipped, 0);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].state, out[0].inode, out[0].timewait),
            (10, 99, false)
        );
        assert_eq!(out[0].local, "127.0.0.1:80".parse().unwrap());
        assert_eq!((out[1].state, out[1].inode, out[1].timewait), (6, 0, true));
        assert_eq!(out[1].cookie, cookie);
        assert_eq!((out[0].expires_ms, out[1].expires_ms), (59_099, 59_000));
        assert_eq!(out[1].remote, "127.0.0.1:80".parse().unwrap());

        let (r, out, _) = parse(&nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()));
        assert_eq!(r.unwrap(), Progress::Done);
        assert!(out.is_empty());
    }

    #[test]
    fn error_message_fails_the_dump() {
        let mut d = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(AF_INET, 1, 0, 1, 2, v4([1; 4]), v4([2; 4]), 1, 1),
        );
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0; 16]); // the offending request's header
        d.extend(nlmsg(NLMSG_ERROR, 1, &err));
        let e = format!("{:#}", parse(&d).0.unwrap_err());
        assert!(
            e.starts_with("sock_diag dump failed: Operation not permitted"),
            "{e}"
        );

        let e = format!(
            "{:#}",
            parse(&nlmsg(NLMSG_ERROR, 1, &[0xff])).0.unwrap_err()
        );
        assert_eq!(e, "sock_diag dump failed: truncated NLMSG_ERROR");

        let e = parse(&nlmsg(NLMSG_DONE, 1, &(-libc::ENOMEM).to_ne_bytes()))
            .0
            .unwrap_err();
        assert!(
            format!("{e:#}").starts_with("sock_diag dump failed: Cannot allocate memory"),
            "{e:#}"
        );
        // The kernel's errno stays in the chain, not only in the text.
        assert_eq!(
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(libc::ENOMEM)
        );
    }

    #[test]
    fn malformed_messages_are_skipped_and_counted() {
        // Too short for an inet_diag_msg, then a valid one: the second still counts.
        let mut d = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &[AF_INET, 1, 0]);
        d.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(AF_INET, 1, 0, 1, 2, v4([1; 4]), v4([2; 4]), 1, 1),
        ));
        // Unknown family.
        d.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(99, 1, 0, 1, 2, v4([1; 4]), v4([2; 4]), 1, 1),
        ));
        let (r, out, skipped) = parse(&d);
        assert_eq!(r.unwrap(), Progress::More);
        assert_eq!((out.len(), skipped), (1, 2));
    }

    #[test]
    fn truncated_datagrams_never_panic() {
        let mut d = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(AF_INET, 1, 0, 1, 2, v4([1; 4]), v4([2; 4]), 1, 1),
        );
        d.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &diag_msg(AF_INET, 1, 0, 1, 2, v4([1; 4]), v4([2; 4]), 1, 1),
        ));
        d.extend(nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()));
        for cut in 0..d.len() {
            let (r, out, skipped) = parse(&d[..cut]);
            // Whatever is cut, whole messages before the cut are kept and the rest is counted.
            let whole = cut / 88;
            assert_eq!(out.len(), whole.min(2), "cut at {cut}");
            assert_eq!(r.unwrap(), Progress::More, "cut at {cut}");
            assert_eq!(skipped, usize::from(cut % 88 != 0), "cut at {cut}");
        }
        // A length field smaller than a header, and one of zero, end the walk without looping.
        let mut bad = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &[]);
        bad[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(parse(&bad).2, 1);
        bad[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(parse(&bad).2, 1);
    }

    #[test]
    fn other_sequence_numbers_are_ignored() {
        let mut d = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            7,
            &diag_msg(AF_INET, 1, 0, 1, 2, v4([1; 4]), v4([2; 4]), 1, 1),
        );
        d.extend(nlmsg(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
        let (r, out, skipped) = parse(&d);
        assert_eq!(r.unwrap(), Progress::More);
        assert_eq!((out.len(), skipped), (0, 0));
    }

    #[test]
    fn compat_request_is_an_inet_diag_req() {
        let r = compat_request(9, all_states());
        let msg = NetlinkBuffer::new_checked(&r[..]).unwrap();
        assert_eq!(msg.length() as usize, r.len());
        assert_eq!(msg.message_type(), TCPDIAG_GETSOCK);
        assert_eq!(msg.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(msg.sequence_number(), 9);
        let p = msg.payload();
        assert_eq!(p.len(), 60);
        assert_eq!(p[0], AF_INET);
        assert!(p[1..52].iter().all(|&b| b == 0));
        assert_eq!(u32::from_ne_bytes([p[52], p[53], p[54], p[55]]), 0xffe);
        assert_eq!(&p[56..], [0; 4]);
    }

    #[test]
    fn one_walk_and_per_family_dumps_agree() {
        std::thread::spawn(|| {
            // SAFETY: unshare() changes only this thread's network namespace, a fresh one that
            // dies with the thread: the dumps see exactly the sockets made here.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            // `lo` is down in a new namespace: wildcard addresses need no interface.
            let _v4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            let _v6 = std::net::TcpListener::bind("[::]:0").unwrap();
            let mut diag = SockDiag::open_bare().unwrap();
            let (mut buf, mut per_family, mut one_walk, mut fallback) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            diag.dump_tcp_with(&mut buf, &mut one_walk).unwrap();
            assert!(!diag.one_walk_refused);
            diag.dump_tcp_into(&mut per_family).unwrap();
            diag.one_walk_refused = true;
            diag.dump_tcp_with(&mut buf, &mut fallback).unwrap();
            let key = |s: &DiagSocket| (s.local.is_ipv6(), s.local.port());
            for dump in [&mut per_family, &mut one_walk, &mut fallback] {
                dump.sort_by_key(key);
            }
            assert_eq!(per_family.len(), 2);
            assert_eq!(
                per_family.iter().map(|s| s.family).collect::<Vec<_>>(),
                [Family::Ipv4, Family::Ipv6]
            );
            assert_eq!(one_walk, per_family);
            assert_eq!(fallback, per_family);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn compat_answers_parse_like_sock_diag_ones() {
        let d = nlmsg(
            TCPDIAG_GETSOCK,
            1,
            &diag_msg(AF_INET, 6, 3, 1, 2, v4([1; 4]), v4([2; 4]), 1, 0),
        );
        let (r, out, skipped) = parse(&d);
        assert_eq!(r.unwrap(), Progress::More);
        assert_eq!((out.len(), skipped), (1, 0));
        assert!(out[0].timewait);
    }

    #[test]
    fn request_is_an_inet_diag_req_v2() {
        let r = request(AF_INET6, 2, all_states()).unwrap();
        let msg = NetlinkBuffer::new_checked(&r[..]).unwrap();
        assert_eq!(msg.message_type(), SOCK_DIAG_BY_FAMILY);
        assert_eq!(msg.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(msg.sequence_number(), 2);
        let p = msg.payload();
        assert_eq!((p[0], p[1], p[2]), (AF_INET6, IPPROTO_TCP, 0));
        // States 1 (ESTABLISHED) to 11 (CLOSING), TIME_WAIT (6) and FIN_WAIT2 (5) included.
        assert_eq!(u32::from_ne_bytes([p[4], p[5], p[6], p[7]]), 0xffe);
    }
}
