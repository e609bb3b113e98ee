//! holdsrv: a server that accepts connections and never closes them, in the shapes real servers
//! take, so the integration tests can check who twtrace says holds each accepted socket.
//!
//! ```text
//! holdsrv --bind <ADDR> [--shape single|prefork|reuseport] [--workers <N>] --comm <NAME>
//! ```
//!
//! - `single`: one process listens and accepts (comm NAME).
//! - `prefork`: the process (comm NAME) listens, then forks N workers (comm NAME-w1 ...) that
//!   accept on the inherited listener with accept4(); the parent accepts nothing (gunicorn,
//!   Apache prefork, nginx's master and workers).
//! - `reuseport`: N worker processes (comm NAME-w1 ...), each with its own SO_REUSEPORT listener
//!   on the one port, accepting with accept() (nginx `reuseport`, envoy); the parent only waits.
//!   The port must be given.
//!
//! Every accepted socket is kept open and never read, so when a client closes, the server's
//! socket stays in CLOSE_WAIT in the process that accepted it. Lines on stdout: `port <P>` once
//! listening, then `worker <i> <pid>` for each worker. Runs until killed; workers die with the
//! parent (PR_SET_PDEATHSIG), so killing the parent cleans up everything.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use twtrace_tests::child::{say, set_comm};

const MAX_COMM: usize = 15;
const BACKLOG: libc::c_int = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    Single,
    Prefork,
    Reuseport,
}

/// A server that accepts connections and never closes them.
#[derive(Debug, Parser)]
#[command(name = "holdsrv")]
struct Cli {
    /// Address to listen on, e.g. 0.0.0.0:8080 (port 0: any, not with `reuseport`).
    #[arg(long, value_name = "ADDR")]
    bind: SocketAddr,
    #[arg(long, value_enum, default_value = "single")]
    shape: Shape,
    /// Worker processes (prefork, reuseport).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Process name (workers add `-w<i>`); at most 15 bytes.
    #[arg(long, value_name = "NAME")]
    comm: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.comm.len() + 4 > MAX_COMM || cli.comm.contains('\0') {
        eprintln!("holdsrv: --comm must be at most {} bytes", MAX_COMM - 4);
        return ExitCode::from(2);
    }
    if cli.shape == Shape::Reuseport && cli.bind.port() == 0 {
        eprintln!("holdsrv: reuseport needs a port");
        return ExitCode::from(2);
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdsrv: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> io::Result<()> {
    set_comm(&cli.comm)?;
    match cli.shape {
        Shape::Single => {
            let listener = listen(cli.bind, false)?;
            say(&format!("port {}", listener.local_addr()?.port()))?;
            hold_accept4(&listener)
        }
        Shape::Prefork => {
            let listener = listen(cli.bind, false)?;
            say(&format!("port {}", listener.local_addr()?.port()))?;
            for i in 1..=cli.workers {
                if fork_worker(&cli.comm, i)? {
                    return hold_accept4(&listener);
                }
            }
            park()
        }
        Shape::Reuseport => {
            say(&format!("port {}", cli.bind.port()))?;
            for i in 1..=cli.workers {
                if fork_worker(&cli.comm, i)? {
                    let listener = listen(cli.bind, true)?;
                    return hold_accept(&listener);
                }
            }
            park()
        }
    }
}

/// Forks worker `i`; true in the worker (named, announced, bound to die with the parent).
fn fork_worker(comm: &str, i: u32) -> io::Result<bool> {
    // The parent prints before forking and flushes: a forked copy of a buffered line would be
    // printed twice.
    io::stdout().flush()?;
    // SAFETY: this program has one thread (clap and std start none), so the child may run any
    // code after fork().
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: prctl with an integer argument; no memory is passed.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
                return Err(io::Error::last_os_error());
            }
            set_comm(&format!("{comm}-w{i}"))?;
            say(&format!("worker {i} {}", std::process::id()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn listen(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for (opt, on) in [(libc::SO_REUSEADDR, true), (libc::SO_REUSEPORT, reuseport)] {
        if !on {
            continue;
        }
        // SAFETY: `one` outlives the call and its size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for this family.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain listen(2) on a bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Accepts forever with std's accept (accept4(2) on Linux), keeping every socket.
fn hold_accept4(listener: &TcpListener) -> io::Result<()> {
    let mut held = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => held.push(stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Accepts forever with plain accept(2), keeping every socket.
fn hold_accept(listener: &TcpListener) -> io::Result<()> {
    let mut held = Vec::new();
    loop {
        // SAFETY: accept(2) without an address buffer.
        let fd = unsafe {
            libc::accept(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: a fresh fd from accept(2), owned from here on.
        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

fn park() -> io::Result<()> {
    loop {
        std::thread::park();
    }
}
