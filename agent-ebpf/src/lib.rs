//! Wire types shared by the kernel program (`src/main.rs`) and the agent.
//!
//! Only fixed-width integers and byte arrays cross the ring buffer, with explicit padding, so the
//! layout is the same on both sides and any byte pattern is a valid value. The agent converts tags
//! (states, families, attribution) with `TryFrom` instead of transmuting them.
#![no_std]

/// Tracepoint field offsets the kernel program reads. The agent checks every one of them against
/// the live `format` file before loading, because a kernel that moved a field would otherwise give
/// plausible-looking garbage.
pub mod offsets {
    /// `sock:inet_sock_set_state`.
    pub mod set_state {
        pub const SKADDR: usize = 8;
        pub const OLDSTATE: usize = 16;
        pub const NEWSTATE: usize = 20;
        pub const SPORT: usize = 24;
        pub const DPORT: usize = 26;
        pub const FAMILY: usize = 28;
        pub const PROTOCOL: usize = 30;
        pub const SADDR: usize = 32;
        pub const DADDR: usize = 36;
        pub const SADDR_V6: usize = 40;
        pub const DADDR_V6: usize = 56;
    }
    /// `tcp:tcp_destroy_sock` and `tcp:tcp_receive_reset` share this layout.
    pub mod tcp_sock {
        pub const SKADDR: usize = 8;
        pub const SOCK_COOKIE: usize = 64;
    }
    /// `tcp:tcp_send_reset` (Linux 6.10+ layout: the skb comes first, `skaddr` may be NULL).
    pub mod send_reset {
        pub const SKADDR: usize = 16;
    }
    /// `syscalls:sys_exit_accept4`, `sys_exit_accept`, `sys_exit_connect` and `sys_exit_bind`
    /// share this layout.
    pub mod sys_exit {
        pub const RET: usize = 16;
    }
    /// `syscalls:sys_enter_connect` (`uservaddr`) and `syscalls:sys_enter_bind` (`umyaddr`):
    /// the arguments, each 8 bytes wide whatever its C type.
    pub mod sys_enter_sockaddr {
        pub const FD: usize = 16;
        pub const ADDR: usize = 24;
        pub const ADDRLEN: usize = 32;
    }
}

/// Kernel TCP states (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
    pub const NEW_SYN_RECV: u32 = 12;
    pub const BOUND_INACTIVE: u32 = 13;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const SOCK_STREAM: u16 = 1;

/// The errnos a failed connect() or bind() is reported for (asm-generic/errno*.h; the same on
/// every architecture twtrace builds for).
pub mod errno {
    pub const EAGAIN: u16 = 11;
    pub const EADDRINUSE: u16 = 98;
    pub const EADDRNOTAVAIL: u16 = 99;
    pub const ENOBUFS: u16 = 105;
}

/// Which system call failed (`Event::call`, with `flags::SYSCALL_FAILED`).
pub mod call {
    pub const CONNECT: u16 = 1;
    pub const BIND: u16 = 2;
}

/// How the owner in an event was learnt (`Owner::how`).
pub mod how {
    /// No owner-made transition was seen for this socket (it predates twtrace, or the socket
    /// table was full).
    pub const UNKNOWN: u32 = 0;
    /// Captured from the current task at a transition the owner makes itself (connect, listen,
    /// close, shutdown).
    pub const OWNER: u32 = 1;
    /// An accepted socket no process has taken yet: the owner of the listener on its local
    /// port (and network namespace), a guess where several processes share that port.
    pub const LISTENER: u32 = 2;
    /// Captured from the task whose accept() returned this socket: the process that holds it.
    pub const ACCEPTED: u32 = 3;
}

/// `Event::flags` bits.
pub mod flags {
    /// `tcp:tcp_receive_reset` fired for this socket before this transition.
    pub const RESET_RECEIVED: u32 = 1 << 0;
    /// `tcp:tcp_send_reset` fired for this socket (before the event was sent; for a stashed close
    /// that includes resets sent right after the state change, as tcp_disconnect() does).
    pub const RESET_SENT: u32 = 1 << 1;
    /// This `* -> CLOSE` was held back until `tcp:tcp_destroy_sock`, which supplied `cookie`.
    pub const DESTROYED: u32 = 1 << 2;
    /// A stashed close sent early because the socket changed state again before being destroyed.
    pub const FLUSHED: u32 = 1 << 3;
    /// The current task made this transition itself (it was captured as the owner).
    pub const OWNER_MADE: u32 = 1 << 4;
    /// Not a state change: a process took the socket with accept() and is its owner from now
    /// on (`oldstate == newstate`, the state it is in).
    pub const ACCEPTED: u32 = 1 << 5;
    /// Not a state change: a connect() or bind() on a TCP socket failed with one of the errnos
    /// of [`crate::errno`] (`Event::call` and `Event::errno` say which). The destination of a
    /// connect() is in `ends.daddr`/`dport`, the address of a bind() in `saddr`/`sport`; the
    /// owner is the calling task; `oldstate == newstate == CLOSE`.
    pub const SYSCALL_FAILED: u32 = 1 << 6;
    /// On a `FIN_WAIT2 -> CLOSE` only: the socket was orphaned (`SOCK_DEAD`: its process had
    /// closed it) and the peer's FIN had not arrived (`SOCK_DONE` clear), so `tcp_time_wait()`
    /// handed the connection to a timewait socket in the FIN_WAIT2 substate, not TIME_WAIT
    /// (`ss` shows it as FIN-WAIT-2 with a timewait timer; sockstat counts it in `tw`). Read
    /// from `sk->sk_flags` (offset and bits from BTF); never set without them, so such a close
    /// is then reported as TIME_WAIT, as before. (Bit 6 is `SYSCALL_FAILED`.)
    pub const ORPHAN_FIN_WAIT2: u32 = 1 << 7;
}

/// Index of each counter in the `STATS` per-CPU array.
pub mod stat {
    /// Events handed to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Events lost because the ring buffer was full.
    pub const LOST: u32 = 1;
    /// Sockets that could not be tracked because the socket table was full.
    pub const TABLE_FULL: u32 = 2;
    /// Events whose socket had no known owner.
    pub const UNATTRIBUTED: u32 = 3;
    /// Accepted sockets whose listener was not known.
    pub const LISTENER_MISS: u32 = 4;
    /// Events dropped by the in-kernel `--pid` / `--port` / `--netns` / `--cgroup` filters.
    pub const FILTERED: u32 = 5;
    /// accept() returned a socket the kernel program could not find in its socket table (a
    /// socket table full, or the fd could not be followed to its socket).
    pub const ACCEPT_MISS: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Map names, shared so a rename cannot silently break the agent.
pub mod maps {
    /// The event rings, [`crate::MAX_RINGS`] of them: a CPU writes to ring `cpu & RING_MASK`.
    pub const EVENTS: [&str; crate::MAX_RINGS] = [
        "EVENTS0", "EVENTS1", "EVENTS2", "EVENTS3", "EVENTS4", "EVENTS5", "EVENTS6", "EVENTS7",
    ];
    pub const STATS: &str = "STATS";
    pub const SOCKETS: &str = "SOCKETS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const PID_FILTER: &str = "PID_FILTER";
    pub const PORT_FILTER: &str = "PORT_FILTER";
    pub const CGROUP_FILTER: &str = "CGROUP_FILTER";
    pub const CALLS: &str = "CALLS";
}

/// Global names patched by the loader.
pub mod globals {
    /// `u32`: bit 0 = filter on owner pid, bit 1 = filter on port, bit 2 = on network namespace,
    /// bit 3 = on the owner's cgroup.
    pub const FILTERS: &str = "FILTERS";
    /// `u32`: rings in use minus one (a power of two minus one, below [`crate::MAX_RINGS`]):
    /// the mask that picks a CPU's ring. 0 (one ring) unless the agent says otherwise.
    pub const RING_MASK: &str = "RING_MASK";
    pub const FILTER_PID: u32 = 1 << 0;
    pub const FILTER_PORT: u32 = 1 << 1;
    pub const FILTER_NETNS: u32 = 1 << 2;
    pub const FILTER_CGROUP: u32 = 1 << 3;
    /// `u32`: the network namespace `--netns` keeps (with `FILTER_NETNS`).
    pub const NETNS_FILTER: &str = "NETNS_FILTER";
    /// `u32`: 1 when the kernel struct offsets below were resolved from BTF; 0 leaves the
    /// namespace at 0 and the accept programs unattached.
    pub const BTF_OK: &str = "BTF_OK";
    /// `u32` byte offsets into kernel structs, from the kernel's BTF (see
    /// agent/src/kernel/btf.rs): `struct sock` to its `struct net *`, and so on.
    pub const OFF_SOCK_NET: &str = "OFF_SOCK_NET";
    pub const OFF_NET_INUM: &str = "OFF_NET_INUM";
    pub const OFF_TASK_FILES: &str = "OFF_TASK_FILES";
    pub const OFF_FILES_FDT: &str = "OFF_FILES_FDT";
    pub const OFF_FDTABLE_FD: &str = "OFF_FDTABLE_FD";
    pub const OFF_FDTABLE_MAX_FDS: &str = "OFF_FDTABLE_MAX_FDS";
    pub const OFF_FILE_PRIVATE_DATA: &str = "OFF_FILE_PRIVATE_DATA";
    pub const OFF_SOCKET_SK: &str = "OFF_SOCKET_SK";
    /// `struct sock` to its `sk_protocol` and `sk_type` (both u16): a failed connect()/bind() is
    /// reported for TCP stream sockets only.
    pub const OFF_SOCK_PROTOCOL: &str = "OFF_SOCK_PROTOCOL";
    pub const OFF_SOCK_TYPE: &str = "OFF_SOCK_TYPE";
    /// `u32`: `struct sock` to `__sk_common.skc_flags` (`sk->sk_flags`, an unsigned long).
    pub const OFF_SOCK_FLAGS: &str = "OFF_SOCK_FLAGS";
    /// `u32`: bit numbers of `SOCK_DEAD` and `SOCK_DONE` in `sk_flags` (`enum sock_flags`).
    pub const BIT_SOCK_DEAD: &str = "BIT_SOCK_DEAD";
    pub const BIT_SOCK_DONE: &str = "BIT_SOCK_DONE";
}

/// Program names (the function names in `src/main.rs`).
pub mod programs {
    pub const SET_STATE: &str = "inet_sock_set_state";
    pub const DESTROY: &str = "tcp_destroy_sock";
    pub const RECEIVE_RESET: &str = "tcp_receive_reset";
    pub const SEND_RESET: &str = "tcp_send_reset";
    pub const ACCEPT4: &str = "sys_exit_accept4";
    pub const ACCEPT: &str = "sys_exit_accept";
    pub const ENTER_CONNECT: &str = "sys_enter_connect";
    pub const EXIT_CONNECT: &str = "sys_exit_connect";
    pub const ENTER_BIND: &str = "sys_enter_bind";
    pub const EXIT_BIND: &str = "sys_exit_bind";
}

pub const COMM_LEN: usize = 16;
/// Event rings the kernel program can write to. One ring shared by every CPU costs each
/// event a reservation under the ring's lock, whose cache line then moves between CPUs: at
/// four churn generators on two CPUs that was about 190 of the 519 ns of a set_state hit
/// (docs/kernel.md). So CPUs write to rings of their own (CPU ids modulo the rings in use),
/// and the agent merges them by timestamp.
pub const MAX_RINGS: usize = 8;
pub const MAX_PID_FILTER: u32 = 64;
pub const MAX_PORT_FILTER: u32 = 64;
/// Cgroups `--cgroup` can hold: the chosen one and everything below it. A Kubernetes node's
/// `/kubepods` has a few per container (pod, container, sometimes a sandbox), so this is room
/// for thousands of containers; a bigger tree is said once (agent/src/kernel/tracer.rs).
pub const MAX_CGROUP_FILTER: u32 = 16_384;

/// The process a socket belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Process id (the kernel's tgid); 0 when unknown.
    pub tgid: u32,
    /// One of [`how`].
    pub how: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A thread's comm and cgroup as the kernel program last asked for them (the kernel program's
/// per-CPU `OWNERS` cache).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CachedOwner {
    /// `bpf_get_current_pid_tgid()` of the thread; 0 for an empty slot.
    pub pid_tgid: u64,
    /// `bpf_ktime_get_ns()` when they were asked for.
    pub at_ns: u64,
    /// The owner as filled then (its tgid, cgroup and comm).
    pub owner: Owner,
}

/// Where a connection runs: family, ports and addresses, as the transitions report them.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ends {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    pub _pad: u16,
    /// Local address; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    /// Remote address; IPv4 uses the first 4 bytes.
    pub daddr: [u8; 16],
}

/// One TCP state transition, as sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds at the transition.
    pub ts_ns: u64,
    /// Kernel address of the full socket: the key that follows one connection across its states.
    pub skaddr: u64,
    /// Socket cookie, 0 when not known (only a destroyed socket's is).
    pub cookie: u64,
    pub owner: Owner,
    pub oldstate: u32,
    pub newstate: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Process id of the task that was current when the tracepoint fired (often not the owner).
    pub current_tgid: u32,
    /// The socket's network namespace (the inode `ls -Li /proc/PID/ns/net` shows); 0 when not
    /// known (the kernel's BTF gave no offsets).
    pub netns: u32,
    /// With `flags::SYSCALL_FAILED`: the errno the call returned (one of [`errno`]); else 0.
    pub errno: u16,
    /// With `flags::SYSCALL_FAILED`: which call failed (one of [`call`]); else 0.
    pub call: u16,
    pub ends: Ends,
}

/// Per-socket state kept in the kernel, keyed by skaddr.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockEntry {
    pub owner: Owner,
    /// [`flags`] bits gathered so far (resets).
    pub flags: u32,
    /// 1 when `pending` holds a close waiting for `tcp:tcp_destroy_sock`.
    pub has_pending: u32,
    /// The socket's network namespace, read once per socket life.
    pub netns: u32,
    /// Its state after the last transition (what an accept event reports).
    pub state: u32,
    /// As of its last life's start (what an accept event reports), and as of its close while
    /// that close is held.
    pub ends: Ends,
    /// With `has_pending`: the close waiting for `tcp:tcp_destroy_sock`. The rest of its event
    /// is in the entry (owner, namespace, ends), so the entry stays small: at four churn
    /// generators every byte of it is cache traffic on each lookup and insert.
    pub held: Held,
}

/// What a held `* -> CLOSE` knows beyond its socket's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    pub ts_ns: u64,
    pub current_tgid: u32,
    pub oldstate: u32,
    /// The event's [`flags`] at the transition.
    pub flags: u32,
    pub _pad: u32,
}

/// The key of a listener: its network namespace and local port. Listeners that share a port
/// in one namespace (SO_REUSEPORT, a pre-fork server's workers) share an entry: a child socket's
/// tracepoint does not say which listener it came from. accept() then names the real owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

/// A listening socket's owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenerEntry {
    pub owner: Owner,
    pub skaddr: u64,
}

/// A connect() or bind() between its enter and exit tracepoints: the sockaddr as the caller
/// passed it, copied from user memory at the enter. `CALLS` holds one per thread slot (see
/// [`MAX_CALLS`]), owned by the thread whose `pid_tgid` it holds.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallArgs {
    /// The calling thread (`bpf_get_current_pid_tgid()`); 0 when the slot is free.
    pub pid_tgid: u64,
    pub fd: u32,
    /// One of [`call`].
    pub call: u16,
    /// `AF_INET` or `AF_INET6` (other families are not kept).
    pub family: u16,
    /// Host order.
    pub port: u16,
    pub _pad: [u16; 3],
    /// IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
}

/// Slots of `CALLS`, an array indexed by thread id modulo this (a power of two): a thread's
/// call lives in its slot from its enter to its exit. Two threads share a slot only if their
/// ids differ by a multiple of it, and only if both are inside connect()/bind() at the same
/// moment can one of their failures go unreported (or, rarer still, carry the other's address).
pub const MAX_CALLS: u32 = 16_384;
const _: () = assert!(MAX_CALLS.is_power_of_two());

pub const EVENT_SIZE: usize = size_of::<Event>();
const _: () = assert!(EVENT_SIZE == 120);
const _: () = assert!(align_of::<Event>() == 8);
// The kernel program stores the addresses as whole words (`addr16` in src/main.rs).
const _: () = assert!(core::mem::offset_of!(Ends, saddr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Ends, daddr) % 8 == 0);
const _: () = assert!(size_of::<Ends>() == 40);
const _: () = assert!(size_of::<SockEntry>() == 112);
const _: () = assert!(size_of::<CallArgs>() == 40);
const _: () = assert!(core::mem::offset_of!(CallArgs, addr) % 8 == 0);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with explicit padding: every
    // bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Held {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenerEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CallArgs {}
}
