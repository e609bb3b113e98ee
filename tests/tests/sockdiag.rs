//! `twtrace::sockdiag` against the running kernel: real loopback sockets, looked up in the
//! sock_diag dump and compared with what the sockets themselves say (addresses, the inode behind
//! the fd, SO_COOKIE) and with /proc/net/sockstat.
//!
//! Run as root: `cargo test -p twtrace-tests --test sockdiag -- --nocapture`. Without root every
//! test prints `SKIPPED: needs root` and passes. The timing run is ignored by default:
//! `cargo test --release -p twtrace-tests --test sockdiag -- --ignored --nocapture`.

use std::{
    fs::File,
    io::{self, Read as _},
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd as _},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use twtrace::{
    event::Family,
    kernel::sockdiag::{DiagSocket, SockDiag, dump_tcp, sockstat},
};

const ESTABLISHED: u8 = 1;
const FIN_WAIT2: u8 = 5;
const TIME_WAIT: u8 = 6;
const LISTEN: u8 = 10;

fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return false;
    }
    eprintln!("SKIPPED: needs root: {test} dumps the kernel's socket table and counts on it");
    true
}

/// The inode of the socket behind `fd`, from its /proc/self/fd link (`socket:[N]`).
fn inode_of(fd: &impl AsFd) -> u64 {
    let raw = fd.as_fd().as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{raw}")).expect("reading the fd link");
    twtrace::kernel::procnet::socket_inode(&link.to_string_lossy()).expect("a socket:[N] link")
}

/// SO_COOKIE: `sock_gen_cookie()` of the socket (net/core/sock.c), the value inet_diag reports
/// and tcp:tcp_destroy_sock prints as `sock_cookie`.
fn so_cookie(fd: &impl AsFd) -> u64 {
    let mut cookie: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is open for the borrow's lifetime; the kernel writes at most `len` bytes
    // (8, a u64) into `cookie`, which lives across the call, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    assert_eq!(len as usize, mem::size_of::<u64>());
    cookie
}

fn find(dump: &[DiagSocket], local: SocketAddr, remote: SocketAddr) -> DiagSocket {
    let hits: Vec<_> = dump
        .iter()
        .filter(|s| s.local == local && s.remote == remote)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "exactly one socket {local} -> {remote} in the dump, found {hits:?}"
    );
    *hits[0]
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// A connection whose client closed first: the client socket is left in TIME_WAIT. Returns the
/// client's local address and, when asked to generate it before the close, its cookie.
fn time_wait_connection(listener: &TcpListener, cookie_first: bool) -> (SocketAddr, Option<u64>) {
    let client = TcpStream::connect(listener.local_addr().expect("loopback socket"))
        .expect("loopback socket");
    let (mut server, _) = listener.accept().expect("loopback socket");
    let local = client.local_addr().expect("loopback socket");
    let cookie = cookie_first.then(|| so_cookie(&client));
    drop(client);
    // Reading EOF proves the client's FIN arrived before the server closes.
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).expect("loopback socket");
    drop(server);
    (local, cookie)
}

#[test]
fn dump_sees_loopback_sockets() {
    const TEST: &str = "dump_sees_loopback_sockets";
    if skip_unless_root(TEST) {
        return;
    }
    let l4 = TcpListener::bind("127.0.0.1:0").expect("loopback socket");
    let l6 = TcpListener::bind("[::1]:0").expect("loopback socket");
    let (a4, a6) = (
        l4.local_addr().expect("loopback socket"),
        l6.local_addr().expect("loopback socket"),
    );
    let c4 = TcpStream::connect(a4).expect("loopback socket");
    let (s4, _) = l4.accept().expect("loopback socket");
    let c6 = TcpStream::connect(a6).expect("loopback socket");
    let (s6, _) = l6.accept().expect("loopback socket");
    let (tw_local, _) = time_wait_connection(&l4, false);
    let (tw2_local, tw2_cookie) = time_wait_connection(&l6, true);
    // An orphaned FIN_WAIT2 socket: the client closes, the server never does.
    let fw2_client = TcpStream::connect(a6).expect("loopback socket");
    let (_fw2_server, _) = l6.accept().expect("loopback socket");
    let fw2_local = fw2_client.local_addr().expect("loopback socket");
    drop(fw2_client);

    // The ACKs and FINs that move the two clients on are processed in softirq, which may run a
    // little after close() returns (FIN_WAIT1 was seen here): wait for them rather than flake.
    let deadline = Instant::now() + Duration::from_secs(2);
    let dump = loop {
        let dump = dump_tcp().expect("loopback socket");
        let tw_seen = [tw_local, tw2_local]
            .iter()
            .all(|&local| dump.iter().any(|s| s.local == local && s.timewait));
        let fw2_seen = dump
            .iter()
            .any(|s| s.local == fw2_local && s.state == FIN_WAIT2);
        if tw_seen && fw2_seen || Instant::now() > deadline {
            break dump;
        }
        thread::sleep(Duration::from_millis(20));
    };
    eprintln!("{TEST}: {} sockets in the dump", dump.len());

    for (listener, addr, family) in [(&l4, a4, Family::Ipv4), (&l6, a6, Family::Ipv6)] {
        // A listener has no peer: the unspecified address of its family, port 0.
        let s = find(&dump, addr, SocketAddr::new(unspecified(addr.ip()), 0));
        eprintln!("{TEST}: listener {s:?}");
        assert_eq!((s.state, s.family, s.timewait), (LISTEN, family, false));
        assert_eq!(s.inode, inode_of(listener), "listener inode");
        assert_eq!(s.cookie, so_cookie(listener), "listener cookie = SO_COOKIE");
        assert_eq!(s.uid, 0);
    }

    for (client, server, family) in [(&c4, &s4, Family::Ipv4), (&c6, &s6, Family::Ipv6)] {
        let (cl, sl) = (
            client.local_addr().expect("loopback socket"),
            server.local_addr().expect("loopback socket"),
        );
        for (stream, local, remote) in [(client, cl, sl), (server, sl, cl)] {
            let s = find(&dump, local, remote);
            assert_eq!(
                (s.state, s.family, s.timewait),
                (ESTABLISHED, family, false)
            );
            assert_eq!(s.inode, inode_of(stream), "{local} inode");
            assert_eq!(s.cookie, so_cookie(stream), "{local} cookie = SO_COOKIE");
        }
    }

    let tw = find(&dump, tw_local, a4);
    eprintln!("{TEST}: timewait {tw:?}");
    assert!(tw.timewait, "{tw:?}");
    assert_eq!(
        (tw.state, tw.inode, tw.uid, tw.family),
        (TIME_WAIT, 0, 0, Family::Ipv4)
    );
    // A timewait socket copies its full socket's cookie at creation (inet_twsk_alloc()), so it
    // keeps the SO_COOKIE / tcp_destroy_sock value when that was generated before the close.
    let tw2 = find(&dump, tw2_local, a6);
    assert!(tw2.timewait, "{tw2:?}");
    assert_eq!(
        Some(tw2.cookie),
        tw2_cookie,
        "timewait cookie = the full socket's SO_COOKIE"
    );

    // net/ipv4/tcp.c __tcp_close(): an orphan reaching FIN_WAIT2 becomes a timewait socket with
    // substate FIN_WAIT2 when tcp_fin_timeout <= TCP_TIMEWAIT_LEN (60 s, the default); with a
    // longer timeout the full socket waits on a keepalive timer instead.
    let fin_timeout = fin_timeout();
    let fw2 = find(&dump, fw2_local, a6);
    eprintln!("{TEST}: orphaned FIN_WAIT2 (tcp_fin_timeout {fin_timeout}) {fw2:?}");
    assert_eq!(
        (fw2.state, fw2.inode, fw2.family),
        (FIN_WAIT2, 0, Family::Ipv6)
    );
    assert_eq!(fw2.timewait, fin_timeout <= 60, "{fw2:?}");

    let mut cookies: Vec<u64> = dump.iter().map(|s| s.cookie).collect();
    assert!(cookies.iter().all(|&c| c != 0), "a zero cookie");
    cookies.sort_unstable();
    let n = cookies.len();
    cookies.dedup();
    assert_eq!(cookies.len(), n, "duplicate cookies in the dump");
    // Only what a timer says is timewait: every other socket has either an inode or a state a
    // socket without a file can be in.
    assert!(dump.iter().all(|s| !s.timewait || s.inode == 0));
}

/// Puts the calling thread in a fresh network namespace with loopback up, and back in the
/// original one on drop (aya's `test_helpers::NetNsGuard` does the same): the dump and
/// /proc/thread-self/net/sockstat then see this test's sockets only, whatever else the machine
/// is doing. Timewait sockets are per namespace; so is `tw` in sockstat.
struct NetNsGuard {
    original: File,
}

impl NetNsGuard {
    fn new() -> Self {
        let original = File::open("/proc/thread-self/ns/net").expect("opening our netns");
        // SAFETY: unshare() takes no pointers; CLONE_NEWNET moves only this thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        // A child process starts in the namespace of the thread that spawns it.
        let status = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running `ip link set lo up` (iproute2)");
        assert!(status.success(), "ip link set lo up: {status}");
        Self { original }
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        // SAFETY: `original` is an open nsfs file for as long as `self` lives; setns() takes no
        // other pointer.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            eprintln!(
                "setns back to the original netns: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// net.ipv4.tcp_fin_timeout of the calling thread's namespace.
fn fin_timeout() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout")
        .expect("loopback socket")
        .trim()
        .parse()
        .expect("loopback socket")
}

/// The dump's timewait sockets are exactly what /proc/net/sockstat counts as `tw`: both
/// families, and orphaned FIN_WAIT2 sockets turned timewait.
#[test]
fn timewait_count_matches_sockstat() {
    const TEST: &str = "timewait_count_matches_sockstat";
    if skip_unless_root(TEST) {
        return;
    }
    let _netns = NetNsGuard::new();
    let l4 = TcpListener::bind("127.0.0.1:0").expect("loopback socket");
    let l6 = TcpListener::bind("[::1]:0").expect("loopback socket");
    for _ in 0..3 {
        time_wait_connection(&l4, false);
        time_wait_connection(&l6, false);
    }
    let fw2_client =
        TcpStream::connect(l4.local_addr().expect("loopback socket")).expect("loopback socket");
    let (_fw2_server, _) = l4.accept().expect("loopback socket");
    drop(fw2_client);
    // See dump_sees_loopback_sockets for why the orphan may or may not be a timewait socket.
    let expected = 6 + u64::from(fin_timeout() <= 60);

    // The last ACKs and FINs are processed in softirq: a read is stable once sockstat agrees
    // before and after the dump and no socket of the dump is still on its way (FIN_WAIT1,
    // LAST_ACK, CLOSING, or a full FIN_WAIT2 about to turn timewait).
    for attempt in 1..=100 {
        let before = sockstat().expect("loopback socket");
        let dump = dump_tcp().expect("loopback socket");
        let after = sockstat().expect("loopback socket");
        let moving = dump
            .iter()
            .any(|s| matches!(s.state, 4 | 9 | 11) || (s.state == FIN_WAIT2 && !s.timewait));
        if before.tw != after.tw || moving {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let tw = dump.iter().filter(|s| s.timewait).count() as u64;
        let by_state = |family, state| {
            dump.iter()
                .filter(|s| s.timewait && s.family == family && s.state == state)
                .count()
        };
        eprintln!(
            "{TEST}: attempt {attempt}: sockstat tw {}, dump {tw} timewait of {} sockets",
            after.tw,
            dump.len()
        );
        assert_eq!(tw, after.tw, "dump vs /proc/thread-self/net/sockstat");
        assert_eq!(tw, expected, "{dump:#?}");
        assert_eq!(by_state(Family::Ipv4, TIME_WAIT), 3);
        assert_eq!(by_state(Family::Ipv6, TIME_WAIT), 3);
        assert_eq!(by_state(Family::Ipv4, FIN_WAIT2) as u64, expected - 6);
        return;
    }
    panic!("{TEST}: the namespace's sockets never settled");
}

/// Times `dump_tcp()` with ~30,000 TIME_WAIT sockets present (they last 60 s).
#[test]
#[ignore = "makes 30,000 TIME_WAIT sockets; run with --ignored (and --release for the real figure)"]
fn dump_time_with_30k_timewait() {
    const TEST: &str = "dump_time_with_30k_timewait";
    if skip_unless_root(TEST) {
        return;
    }
    // Our own namespace: the count is ours alone. The kernel still walks the whole (global)
    // established hash, other namespaces' sockets included, as it would in production.
    let _netns = NetNsGuard::new();
    const LISTENERS: usize = 4;
    const PER_LISTENER: usize = 7_500;
    // Each destination has its own ephemeral ports (32768-60999 by default), and connect() scans
    // the even half (14,116) first (net/ipv4/inet_hashtables.c __inet_hash_connect()). Past that,
    // tcp_tw_reuse=2 (loopback) hands a TIME_WAIT 4-tuple older than tcp_tw_reuse_delay to the
    // new connection, killing the timewait socket: 2 x 15,000 left only ~29,100. 4 x 7,500 stays
    // within the even ports.
    let listeners: Vec<TcpListener> = (0..LISTENERS)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("loopback socket"))
        .collect();
    let start = Instant::now();
    for listener in &listeners {
        for _ in 0..PER_LISTENER {
            let client = TcpStream::connect(listener.local_addr().expect("loopback socket"))
                .expect("loopback socket");
            let (server, _) = listener.accept().expect("loopback socket");
            drop(client);
            // Wait for the client's FIN (EOF) before closing, so the client is the one left in
            // TIME_WAIT; shutdown + read is cheaper than read_to_end's buffer.
            server.shutdown(Shutdown::Write).ok();
            let mut byte = [0u8; 1];
            let _ = (&server).read(&mut byte);
        }
    }
    eprintln!(
        "{TEST}: made {} connections in {:?}, sockstat {:?}",
        LISTENERS * PER_LISTENER,
        start.elapsed(),
        sockstat().expect("loopback socket")
    );

    let report = |what: &str, mut times: Vec<Duration>, dump: &[DiagSocket]| {
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        eprintln!(
            "{TEST}: {what}: {} sockets ({} timewait): min {:.1} ms, median {:.1} ms, \
             max {:.1} ms over {} runs",
            dump.len(),
            dump.iter().filter(|s| s.timewait).count(),
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
            times.len()
        );
    };
    let mut last = Vec::new();
    let times = (0..20)
        .map(|_| {
            let t = Instant::now();
            last = dump_tcp().expect("loopback socket");
            t.elapsed()
        })
        .collect();
    report("dump_tcp()", times, &last);
    let mut kept = SockDiag::open().expect("loopback socket");
    let times = (0..20)
        .map(|_| {
            let t = Instant::now();
            kept.dump_tcp_into(&mut last).expect("loopback socket");
            t.elapsed()
        })
        .collect();
    report("kept SockDiag::dump_tcp_into()", times, &last);
    let tw = last.iter().filter(|s| s.timewait).count();
    assert!(
        tw >= LISTENERS * PER_LISTENER,
        "expected {} timewait sockets, saw {tw}",
        LISTENERS * PER_LISTENER
    );
}
