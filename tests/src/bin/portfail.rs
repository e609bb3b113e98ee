//! portfail: makes connect() and bind() fail the way port exhaustion does, with a known pid and
//! comm, and says how many times each failed, so the integration tests can compare twtrace's
//! counts with the truth.
//!
//! ```text
//! portfail serve --bind <ADDR> --comm <NAME>
//! portfail exhaust --connect <ADDR> --failures <N> --comm <NAME>
//! portfail bind --in-use <N> --not-local <M> [--in-use-v6 <K>] --comm <NAME>
//! ```
//!
//! - `serve`: listens, prints `port <P>`, then accepts for ever; each accepted connection is
//!   read to its end and closed, so the client closes first and keeps the TIME_WAIT socket (and
//!   its ephemeral port) for 60 s. Runs until killed.
//! - `exhaust`: connects again and again; each connection that succeeds writes one byte and
//!   closes first. Once the ephemeral ports toward the server are used up (a narrow
//!   `net.ipv4.ip_local_port_range` and `net.ipv4.tcp_tw_reuse=0` make that quick), connect()
//!   fails with EADDRNOTAVAIL; it stops after exactly N such failures and prints
//!   `connected <C>` and `eaddrnotavail <N>`. Any other error ends it with status 1.
//! - `bind`: binds a TCP listener on 127.0.0.1 (any port), then N TCP sockets to that same
//!   address (EADDRINUSE each) and M to 192.0.2.1:0, an address no host has
//!   (EADDRNOTAVAIL each), then K to a taken [::1] port (EADDRINUSE each, through a 28-byte
//!   sockaddr_in6); also a UDP socket to a taken UDP port (EADDRINUSE, not TCP: twtrace must
//!   not count it). Prints `eaddrinuse <N>`, `eaddrnotavail <M>` and `eaddrinuse_v6 <K>`,
//!   counting only the TCP failures it saw.
//!
//! Every socket that fails is closed before the next try.

use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use twtrace_tests::child::{say, set_comm};

/// How long `exhaust` may take before it gives up (the ports run out after a few connections).
const GIVE_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(name = "portfail")]
struct Cli {
    #[command(subcommand)]
    role: Role,
    /// The process name to take before any socket exists (at most 15 bytes).
    #[arg(long, global = true, value_name = "NAME", default_value = "portfail")]
    comm: String,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Listen, print `port <P>`, accept for ever; the client closes first.
    Serve {
        #[arg(long, value_name = "ADDR")]
        bind: SocketAddr,
    },
    /// Connect until connect() has failed with EADDRNOTAVAIL exactly N times.
    Exhaust {
        #[arg(long, value_name = "ADDR")]
        connect: SocketAddr,
        #[arg(long, value_name = "N")]
        failures: u64,
    },
    /// bind() N TCP sockets to a taken address and M to one no host has.
    Bind {
        #[arg(long, value_name = "N")]
        in_use: u64,
        #[arg(long, value_name = "M")]
        not_local: u64,
        #[arg(long, value_name = "K", default_value_t = 0)]
        in_use_v6: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = set_comm(&cli.comm).and_then(|()| match cli.role {
        Role::Serve { bind } => serve(bind),
        Role::Exhaust { connect, failures } => exhaust(connect, failures),
        Role::Bind {
            in_use,
            not_local,
            in_use_v6,
        } => binds(in_use, not_local, in_use_v6),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portfail: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(bind: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(bind)?;
    say(&format!("port {}", listener.local_addr()?.port()))?;
    loop {
        let (mut stream, _) = listener.accept()?;
        let mut buf = [0u8; 64];
        // To the client's close: the client's socket gets the TIME_WAIT.
        while stream.read(&mut buf)? > 0 {}
    }
}

fn exhaust(to: SocketAddr, want: u64) -> io::Result<()> {
    let deadline = Instant::now() + GIVE_UP;
    let (mut connected, mut failed) = (0u64, 0u64);
    while failed < want {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "gave up after {GIVE_UP:?}: {connected} connected, {failed} EADDRNOTAVAIL"
            )));
        }
        match TcpStream::connect(to) {
            Ok(mut stream) => {
                connected += 1;
                stream.write_all(b"x")?;
                // Closed first, here: this side keeps the TIME_WAIT socket and its port.
                drop(stream);
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => failed += 1,
            Err(e) => return Err(io::Error::other(format!("connect {to}: {e}"))),
        }
    }
    say(&format!("connected {connected}"))?;
    say(&format!("eaddrnotavail {failed}"))
}

/// A TCP socket bound to `addr` (no listen); the error of bind() as it came.
fn tcp_bind(addr: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory preconditions; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor this function owns from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is an initialised sockaddr_in on this stack frame, passed with its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Tries `n` binds to `addr`, each expected to fail with `errno`; returns how many did.
fn failing_binds(addr: SocketAddrV4, n: u64, errno: i32) -> io::Result<u64> {
    let mut failed = 0;
    for _ in 0..n {
        match tcp_bind(addr) {
            Err(e) if e.raw_os_error() == Some(errno) => failed += 1,
            Err(e) => return Err(io::Error::other(format!("bind {addr}: {e}"))),
            Ok(_) => {
                return Err(io::Error::new(
                    ErrorKind::AddrInUse,
                    format!("bind {addr} succeeded"),
                ));
            }
        }
    }
    Ok(failed)
}

fn binds(in_use: u64, not_local: u64, in_use_v6: u64) -> io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let SocketAddr::V4(taken) = listener.local_addr()? else {
        return Err(io::Error::other("an IPv4 listener has an IPv4 address"));
    };
    let eaddrinuse = failing_binds(taken, in_use, libc::EADDRINUSE)?;
    // TEST-NET-1 (RFC 5737): no host has it.
    let nowhere = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 0);
    let eaddrnotavail = failing_binds(nowhere, not_local, libc::EADDRNOTAVAIL)?;
    // IPv6: std's bind (SO_REUSEADDR set, which a listener's port refuses all the same).
    let mut eaddrinuse_v6 = 0;
    if in_use_v6 > 0 {
        let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))?;
        let taken = v6.local_addr()?;
        for _ in 0..in_use_v6 {
            match TcpListener::bind(taken) {
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => eaddrinuse_v6 += 1,
                other => return Err(io::Error::other(format!("bind {taken}: {other:?}"))),
            }
        }
    }
    // A UDP bind that fails the same way: not TCP, not to be counted.
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    match UdpSocket::bind(udp.local_addr()?) {
        Err(e) if e.kind() == ErrorKind::AddrInUse => {}
        other => return Err(io::Error::other(format!("UDP bind: {other:?}"))),
    }
    say(&format!("eaddrinuse {eaddrinuse}"))?;
    say(&format!("eaddrnotavail {eaddrnotavail}"))?;
    say(&format!("eaddrinuse_v6 {eaddrinuse_v6}"))
}
