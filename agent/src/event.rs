//! The one event type every view consumes: a TCP state transition with its owner, decoded from
//! the kernel's wire record (`twtrace_ebpf::Event`) or, later, from a recording.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use twtrace_ebpf::{AF_INET, AF_INET6, COMM_LEN, EVENT_SIZE, call, errno, flags, how};

pub use crate::state::Reset;
use crate::{
    infer,
    state::{TcpState, UnknownState},
};

/// How the owner of a transition was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attribution {
    /// The process made a transition of this socket itself (connect, listen, close, shutdown).
    Owner,
    /// An accepted socket no process has taken with accept() yet: owner of the listener on its
    /// port (a guess where several processes share the port).
    Listener,
    /// The process whose accept() returned the socket.
    Accepted,
    /// No owner-made transition was seen (the socket predates twtrace).
    Unknown,
    /// The owner the kernel program remembers has exited (or its pid now belongs to another
    /// process): the socket was re-resolved from /proc to the process holding it now (a fork
    /// child, or a process it was passed to with SCM_RIGHTS). Set by the agent, never by the
    /// kernel.
    Inherited,
}

impl Attribution {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Listener => "listener",
            Self::Accepted => "accepted",
            Self::Unknown => "unknown",
            Self::Inherited => "inherited",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// A process's command name: the kernel's 16-byte, NUL-padded `comm`, kept as bytes so decoding
/// an event allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    pub fn new(raw: [u8; COMM_LEN]) -> Self {
        Self(raw)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..len]
    }

    /// The name as text; a process may rename itself to anything, so invalid UTF-8 is replaced.
    pub fn to_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_str(), f)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_str())
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        let mut raw = [0; COMM_LEN];
        let n = s.len().min(COMM_LEN - 1);
        raw[..n].copy_from_slice(&s.as_bytes()[..n]);
        Self(raw)
    }
}

/// A system call whose failures twtrace counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Connect,
    Bind,
}

impl Call {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Bind => "bind",
        }
    }
}

/// An errno as a system call returned it (positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub u16);

impl Errno {
    pub const EAGAIN: Self = Self(errno::EAGAIN);
    pub const EADDRINUSE: Self = Self(errno::EADDRINUSE);
    pub const EADDRNOTAVAIL: Self = Self(errno::EADDRNOTAVAIL);
    pub const ENOBUFS: Self = Self(errno::ENOBUFS);

    /// The symbolic name and the C library's message, for the errnos twtrace reports.
    fn known(self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Self::EAGAIN => ("EAGAIN", "Resource temporarily unavailable"),
            Self::EADDRINUSE => ("EADDRINUSE", "Address already in use"),
            Self::EADDRNOTAVAIL => ("EADDRNOTAVAIL", "Cannot assign requested address"),
            Self::ENOBUFS => ("ENOBUFS", "No buffer space available"),
            _ => return None,
        })
    }

    /// `EADDRNOTAVAIL`; `errno 42` for one twtrace has no name for (a newer recording's).
    pub fn name(self) -> Cow<'static, str> {
        match self.known() {
            Some((name, _)) => Cow::Borrowed(name),
            None => Cow::Owned(format!("errno {}", self.0)),
        }
    }

    /// What strerror() says: `Cannot assign requested address`.
    pub fn message(self) -> Option<&'static str> {
        self.known().map(|(_, message)| message)
    }
}

impl fmt::Display for Errno {
    /// `EADDRNOTAVAIL (Cannot assign requested address)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(message) => write!(f, "{} ({message})", self.name()),
            None => f.write_str(&self.name()),
        }
    }
}

/// A connect() or bind() on a TCP socket that failed (see [`Transition::failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallFailure {
    pub call: Call,
    pub errno: Errno,
}

/// One TCP state transition of one socket, attributed to the socket's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`); `crate::clock` maps it to wall time.
    pub mono_ns: u64,
    /// Kernel address of the socket: follows one connection across its states.
    pub skaddr: u64,
    /// Socket cookie, known once the full socket is destroyed (a TIME_WAIT socket keeps it).
    pub cookie: Option<u64>,
    /// Owner's process id; 0 when unknown.
    pub pid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
    pub attribution: Attribution,
    /// The task that was current when the tracepoint fired, for comparison with tools that
    /// report that one.
    pub current_pid: u32,
    /// The socket's network namespace (nsfs inode); 0 when not known.
    pub netns: u32,
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub old: TcpState,
    /// As reported: `TimeWait` where inferred, and `FinWait2` (with `orphan`) for a close that
    /// left the connection in a timewait socket in the FIN_WAIT2 substate.
    pub new: TcpState,
    pub reset: Option<Reset>,
    /// Not a state change but a failed connect() or bind() on a TCP socket: the calling process
    /// is `pid`, the destination of a connect() is `remote` (`local` unspecified, port 0), the
    /// address of a bind() `local` (`remote` unspecified); `old` and `new` are CLOSE, the
    /// socket's state after the failure.
    pub failure: Option<SyscallFailure>,
    /// `FIN_WAIT2 -> FIN_WAIT2`: the socket's process had closed it (an orphan) and the peer
    /// had not closed its side, so the kernel handed the connection to a timewait socket in
    /// the FIN_WAIT2 substate (`ss`: FIN-WAIT-2 with `timer:(timewait,...)`), which counts in
    /// sockstat's `tw` like TIME_WAIT. A FIN from the peer later makes it TIME_WAIT, with no
    /// event: only the kernel's table shows that.
    pub orphan: bool,
}

impl Transition {
    /// Not a state change but a process taking the socket with accept(): it owns it from now on
    /// (`attribution` is `Accepted`, `old` and `new` the state it is in). The kernel never
    /// reports a transition to the same state otherwise (a failure, which has them equal too,
    /// is no accept); an orphan's timewait entry is reported as one (see `orphan`).
    pub fn is_accept(&self) -> bool {
        self.failure.is_none() && self.old == self.new && !self.orphan
    }

    /// A failed connect() or bind(), not a transition (see [`Transition::failure`]).
    pub fn is_failure(&self) -> bool {
        self.failure.is_some()
    }

    /// The port a failure is about: a connect()'s destination port, a bind()'s local one.
    pub fn failure_port(&self) -> Option<u16> {
        self.failure.map(|f| match f.call {
            Call::Connect => self.remote.port(),
            Call::Bind => self.local.port(),
        })
    }

    /// The substate of the timewait socket this transition handed the connection to (TIME_WAIT,
    /// or FIN_WAIT2 for an orphan), or None when it made none.
    pub fn timewait(&self) -> Option<TcpState> {
        if self.orphan {
            Some(TcpState::FinWait2)
        } else if self.new == TcpState::TimeWait {
            Some(TcpState::TimeWait)
        } else {
            None
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected at least {EVENT_SIZE}")]
    Short(usize),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error(transparent)]
    State(#[from] UnknownState),
    #[error("unknown attribution {0}")]
    Attribution(u32),
    #[error("unknown failed system call {0}")]
    Call(u16),
}

/// Decodes one ring-buffer record. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Transition, DecodeError> {
    if bytes.len() < EVENT_SIZE {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: the length was checked above, `Event` is plain old data (any bit pattern is
    // valid), and `read_unaligned` makes no alignment assumption about the ring buffer slot.
    let raw: twtrace_ebpf::Event =
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<twtrace_ebpf::Event>()) };
    from_wire(&raw)
}

/// Converts a wire record, validating every tag.
pub fn from_wire(raw: &twtrace_ebpf::Event) -> Result<Transition, DecodeError> {
    let family = match raw.ends.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        other => return Err(DecodeError::Family(other)),
    };
    let attribution = match raw.owner.how {
        how::OWNER => Attribution::Owner,
        how::LISTENER => Attribution::Listener,
        how::ACCEPTED => Attribution::Accepted,
        how::UNKNOWN => Attribution::Unknown,
        other => return Err(DecodeError::Attribution(other)),
    };
    let old = TcpState::try_from(raw.oldstate)?;
    let raw_new = TcpState::try_from(raw.newstate)?;
    let failure = if raw.flags & flags::SYSCALL_FAILED != 0 {
        let call = match raw.call {
            call::CONNECT => Call::Connect,
            call::BIND => Call::Bind,
            other => return Err(DecodeError::Call(other)),
        };
        Some(SyscallFailure {
            call,
            errno: Errno(raw.errno),
        })
    } else {
        None
    };
    let (new, reset) = if raw.flags & (flags::ACCEPTED | flags::SYSCALL_FAILED) != 0 {
        // Not a transition: nothing to infer.
        (raw_new, None)
    } else {
        infer::reported(old, raw_new, raw.flags)
    };
    // The one close reported with its old state as new (see `infer::reported`).
    let orphan = raw_new == TcpState::Close && new == TcpState::FinWait2;
    let ends = &raw.ends;
    Ok(Transition {
        mono_ns: raw.ts_ns,
        skaddr: raw.skaddr,
        cookie: (raw.cookie != 0).then_some(raw.cookie),
        pid: raw.owner.tgid,
        comm: Comm::new(raw.owner.comm),
        cgroup_id: raw.owner.cgroup_id,
        attribution,
        current_pid: raw.current_tgid,
        netns: raw.netns,
        family,
        local: SocketAddr::new(addr(family, ends.saddr), ends.sport),
        remote: SocketAddr::new(addr(family, ends.daddr), ends.dport),
        old,
        new,
        reset,
        failure,
        orphan,
    })
}

/// IPv4 uses the first four bytes of the wire record's address.
fn addr(family: Family, raw: [u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        Family::Ipv6 => unmap(IpAddr::V6(Ipv6Addr::from(raw))),
    }
}

/// A v4-mapped IPv6 address (`::ffff:a.b.c.d`, an IPv6 socket talking IPv4) as the IPv4 address
/// people will search for. Every source of addresses (events, sock_diag) goes through this so
/// they compare equal.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use twtrace_ebpf::{Ends, Owner, tcp_state};

    use super::*;

    pub(crate) fn wire(old: u32, new: u32) -> twtrace_ebpf::Event {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        twtrace_ebpf::Event {
            ts_ns: 5_000_000_000,
            skaddr: 0xffff_8880_1234_5678,
            cookie: 0,
            owner: Owner {
                tgid: 4242,
                how: how::OWNER,
                cgroup_id: 7,
                comm,
            },
            oldstate: old,
            newstate: new,
            flags: 0,
            current_tgid: 99,
            netns: 4026531840,
            errno: 0,
            call: 0,
            ends: Ends {
                family: AF_INET,
                sport: 51000,
                dport: 8080,
                _pad: 0,
                saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                daddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
        }
    }

    fn bytes_of(ev: &twtrace_ebpf::Event) -> Vec<u8> {
        // SAFETY: `Event` is `#[repr(C)]` plain old data with explicit padding, so all of its
        // EVENT_SIZE bytes are initialised.
        unsafe {
            std::slice::from_raw_parts((ev as *const twtrace_ebpf::Event).cast::<u8>(), EVENT_SIZE)
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_ipv4_record_from_raw_bytes() {
        let t = decode(&bytes_of(&wire(
            tcp_state::SYN_SENT,
            tcp_state::ESTABLISHED,
        )))
        .expect("decodes");
        assert_eq!(t.pid, 4242);
        assert_eq!(t.comm.to_str(), "curl");
        assert_eq!(t.family, Family::Ipv4);
        assert_eq!(t.local, "127.0.0.1:51000".parse().expect("addr"));
        assert_eq!(t.remote, "10.1.2.3:8080".parse().expect("addr"));
        assert_eq!((t.old, t.new), (TcpState::SynSent, TcpState::Established));
        assert_eq!(t.attribution, Attribution::Owner);
        assert_eq!(t.cookie, None);
        assert_eq!(t.current_pid, 99);
        assert_eq!(t.netns, 4026531840);
        assert!(!t.is_accept());
    }

    #[test]
    fn an_accept_record_is_no_transition() {
        let mut ev = wire(tcp_state::CLOSE_WAIT, tcp_state::CLOSE_WAIT);
        ev.flags = flags::ACCEPTED | flags::OWNER_MADE;
        ev.owner.how = how::ACCEPTED;
        let t = from_wire(&ev).expect("decodes");
        assert!(t.is_accept());
        assert_eq!((t.old, t.new), (TcpState::CloseWait, TcpState::CloseWait));
        assert_eq!(t.attribution, Attribution::Accepted);
        assert_eq!(t.reset, None);
    }

    /// A connect() to 10.1.2.3:8080 that failed with EADDRNOTAVAIL, as the kernel sends it.
    pub(crate) fn failed_connect() -> twtrace_ebpf::Event {
        let mut ev = wire(tcp_state::CLOSE, tcp_state::CLOSE);
        ev.flags = flags::SYSCALL_FAILED | flags::OWNER_MADE;
        ev.call = call::CONNECT;
        ev.errno = errno::EADDRNOTAVAIL;
        ev.ends.sport = 0;
        ev.ends.saddr = [0; 16];
        ev.current_tgid = ev.owner.tgid;
        ev
    }

    #[test]
    fn a_failed_connect_is_a_failure_not_an_accept() {
        let t = from_wire(&failed_connect()).expect("decodes");
        assert_eq!(
            t.failure,
            Some(SyscallFailure {
                call: Call::Connect,
                errno: Errno::EADDRNOTAVAIL
            })
        );
        assert!(t.is_failure());
        assert!(!t.is_accept());
        assert_eq!((t.old, t.new), (TcpState::Close, TcpState::Close));
        assert_eq!(t.reset, None);
        assert_eq!(t.remote, "10.1.2.3:8080".parse().expect("addr"));
        assert_eq!(t.local, "0.0.0.0:0".parse().expect("addr"));
        assert_eq!(t.failure_port(), Some(8080));
        assert_eq!(t.pid, 4242);
        assert_eq!(t.netns, 4026531840);
        // A transition has none.
        let plain = from_wire(&wire(tcp_state::SYN_SENT, tcp_state::CLOSE)).expect("decodes");
        assert_eq!((plain.failure, plain.failure_port()), (None, None));
    }

    #[test]
    fn a_failed_bind_names_its_local_address() {
        let mut ev = wire(tcp_state::CLOSE, tcp_state::CLOSE);
        ev.flags = flags::SYSCALL_FAILED | flags::OWNER_MADE;
        ev.call = call::BIND;
        ev.errno = errno::EADDRINUSE;
        ev.ends.family = AF_INET6;
        ev.ends.sport = 8080;
        ev.ends.saddr = Ipv6Addr::LOCALHOST.octets();
        ev.ends.dport = 0;
        ev.ends.daddr = [0; 16];
        let t = from_wire(&ev).expect("decodes");
        assert_eq!(t.failure.map(|f| f.call), Some(Call::Bind));
        assert_eq!(t.failure_port(), Some(8080));
        assert_eq!(t.local, "[::1]:8080".parse().expect("addr"));
        assert_eq!(
            t.failure.map(|f| f.errno.to_string()).as_deref(),
            Some("EADDRINUSE (Address already in use)")
        );
        ev.call = 9;
        assert_eq!(from_wire(&ev), Err(DecodeError::Call(9)));
    }

    #[test]
    fn errnos_are_named_as_the_c_library_names_them() {
        assert_eq!(
            Errno::EADDRNOTAVAIL.to_string(),
            "EADDRNOTAVAIL (Cannot assign requested address)"
        );
        assert_eq!(Errno::EAGAIN.name(), "EAGAIN");
        assert_eq!(Errno::ENOBUFS.message(), Some("No buffer space available"));
        // The kernel's numbers, as libc has them.
        for (e, c) in [
            (Errno::EAGAIN, libc::EAGAIN),
            (Errno::EADDRINUSE, libc::EADDRINUSE),
            (Errno::EADDRNOTAVAIL, libc::EADDRNOTAVAIL),
            (Errno::ENOBUFS, libc::ENOBUFS),
        ] {
            assert_eq!(i32::from(e.0), c, "{}", e.name());
        }
        // One twtrace has no name for (a newer recording's) still shows.
        assert_eq!(Errno(42).to_string(), "errno 42");
        assert_eq!(Errno(42).message(), None);
    }

    #[test]
    fn decodes_from_an_unaligned_slot() {
        let mut buf = vec![0u8; 1];
        buf.extend(bytes_of(&wire(tcp_state::SYN_SENT, tcp_state::ESTABLISHED)));
        assert_eq!(decode(&buf[1..]).map(|t| t.pid), Ok(4242));
    }

    #[test]
    fn short_records_are_rejected() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Short(10)));
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
    }

    #[test]
    fn bad_tags_are_errors() {
        let mut ev = wire(tcp_state::SYN_SENT, tcp_state::ESTABLISHED);
        ev.ends.family = 1;
        assert_eq!(from_wire(&ev), Err(DecodeError::Family(1)));
        let mut ev = wire(tcp_state::SYN_SENT, 77);
        assert_eq!(from_wire(&ev), Err(DecodeError::State(UnknownState(77))));
        ev.newstate = tcp_state::ESTABLISHED;
        ev.owner.how = 9;
        assert_eq!(from_wire(&ev), Err(DecodeError::Attribution(9)));
    }

    #[test]
    fn ipv6_and_v4_mapped_addresses() {
        let mut ev = wire(tcp_state::SYN_SENT, tcp_state::ESTABLISHED);
        ev.ends.family = AF_INET6;
        ev.ends.saddr = Ipv6Addr::LOCALHOST.octets();
        ev.ends.daddr = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().octets();
        let t = from_wire(&ev).expect("decodes");
        assert_eq!(t.family, Family::Ipv6);
        assert_eq!(t.local.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(t.remote.ip(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    }

    #[test]
    fn cookie_zero_means_unknown() {
        let mut ev = wire(tcp_state::FIN_WAIT2, tcp_state::CLOSE);
        ev.flags = flags::DESTROYED;
        ev.cookie = 12345;
        let t = from_wire(&ev).expect("decodes");
        assert_eq!(t.cookie, Some(12345));
        assert_eq!(t.new, TcpState::TimeWait);
    }

    #[test]
    fn an_orphan_the_peer_has_not_closed_is_a_fin_wait2_timewait_entry() {
        let mut ev = wire(tcp_state::FIN_WAIT2, tcp_state::CLOSE);
        ev.flags = flags::DESTROYED | flags::ORPHAN_FIN_WAIT2;
        let t = from_wire(&ev).expect("decodes");
        assert_eq!(
            (t.old, t.new, t.orphan),
            (TcpState::FinWait2, TcpState::FinWait2, true)
        );
        assert!(!t.is_accept());
        assert_eq!(t.timewait(), Some(TcpState::FinWait2));
        ev.flags = flags::DESTROYED;
        let t = from_wire(&ev).expect("decodes");
        assert_eq!((t.new, t.orphan), (TcpState::TimeWait, false));
        assert_eq!(t.timewait(), Some(TcpState::TimeWait));
        // An accept of a socket in FIN_WAIT2 is no timewait entry.
        let mut ev = wire(tcp_state::FIN_WAIT2, tcp_state::FIN_WAIT2);
        ev.flags = flags::ACCEPTED | flags::ORPHAN_FIN_WAIT2;
        let t = from_wire(&ev).expect("decodes");
        assert!(t.is_accept() && !t.orphan && t.timewait().is_none());
    }

    #[test]
    fn comm_handles_full_length_and_invalid_utf8() {
        assert_eq!(Comm::new(*b"abcdefghijklmnop").to_str(), "abcdefghijklmnop");
        let mut raw = [0; COMM_LEN];
        raw[0] = 0xff;
        raw[1] = b'x';
        assert_eq!(Comm::new(raw).to_str(), "\u{fffd}x");
        assert_eq!(
            Comm::from("a-very-long-command-name").to_str(),
            "a-very-long-com"
        );
    }
}
