//! churn: a loopback TCP connection-churn generator, as fast as the machine allows.
//!
//! ```text
//! churn [--clients <N>] [--servers <M>] [--duration <SECS>] [--count <N>] [--mode <MODE>] [--ipv6] [--port <P>]
//! ```
//!
//! N client threads (default 2, at most 1024) connect to a listener on 127.0.0.1 (or ::1 with
//! `--ipv6`; port `--port`, default 0: any free one) served by M acceptor threads (default 2, at
//! most 1024), over and over, for `--duration` seconds (default 10, fractions allowed) or until
//! `--count` connections are done, whichever comes first. The mode decides which side closes
//! first, and so which side collects the TIME_WAIT sockets:
//!
//! - `client-first` (default): the client writes one byte and closes; the server reads to EOF,
//!   then closes.
//! - `server-first`: the server writes one byte and closes; the client reads to EOF, then closes.
//!
//! `churn --help` says the same. Bad arguments are a usage error: a message and the usage on
//! stderr, exit status 2.
//!
//! The only line on stdout is the final result, machine-readable:
//! `connections=<n> seconds=<f> rate=<f> addr_unavailable=<n> errors=<n>`; everything meant for
//! humans goes to stderr. `cargo xtask bench` runs it with and without tracers attached.
//!
//! A long run at full speed cycles through the ephemeral port range many times; that works on
//! loopback because `net.ipv4.tcp_tw_reuse=2` (the default) lets connect() reuse a TIME_WAIT
//! 4-tuple. When it cannot, connect() fails with EADDRNOTAVAIL: that is counted, announced and
//! reported in the result, never retried silently.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};

/// Accept-queue length asked of the kernel (capped by net.core.somaxconn, 4096 by default). std
/// listens with 128, and at full speed the clients run ahead of the acceptors by more than that
/// whenever the scheduler favours them; an overflowing queue drops SYNs, and the retransmission
/// timeouts (1 s) would then measure the scheduler instead of connection setup.
const BACKLOG: libc::c_int = 4096;

/// How long the end of a run waits for the acceptors to finish the connections the clients made,
/// so every connection goes through its full sequence of states before the listener closes.
const SERVE_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed connect(): long enough not to burn the CPU the measurement is about,
/// short enough that a transient shortage of ports costs little.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// Which side closes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The client writes one byte and closes first: TIME_WAIT on the client side.
    ClientFirst,
    /// The server writes one byte and closes first: TIME_WAIT on the server side.
    ServerFirst,
}

/// A loopback TCP connection-churn generator, as fast as the machine allows. Prints one result
/// line on stdout: `connections=<n> seconds=<f> rate=<f> addr_unavailable=<n> errors=<n>`.
#[derive(Debug, Clone, PartialEq, Parser)]
// A repeated flag replaces the earlier value instead of being an error.
#[command(name = "churn", args_override_self = true)]
struct Cli {
    /// Client threads (1 to 1024).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = threads())]
    clients: usize,
    /// Acceptor threads (1 to 1024).
    #[arg(long, value_name = "M", default_value_t = 2, value_parser = threads())]
    servers: usize,
    /// How long to run, in seconds (fractions allowed).
    #[arg(
        long,
        value_name = "SECS",
        default_value = "10",
        value_parser = positive_seconds,
        allow_negative_numbers = true
    )]
    duration: Duration,
    /// Stop after this many connections in total (for small calibration runs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Which side closes first.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Mode::ClientFirst)]
    mode: Mode,
    /// Listen on ::1 instead of 127.0.0.1.
    #[arg(long)]
    ipv6: bool,
    /// The listener's port; 0 picks a free one.
    #[arg(long, value_name = "P", default_value_t = 0)]
    port: u16,
}

fn threads() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..=1024)
}

fn positive_seconds(value: &str) -> Result<Duration, String> {
    let secs = value.parse::<f64>().map_err(|e| e.to_string())?;
    // try_from_secs_f64 rejects NaN, infinities and negatives; zero makes no run.
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "must be a positive number of seconds".to_owned())
}

/// What the run did; printed as the final line.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Outcome {
    connections: u64,
    seconds: f64,
    addr_unavailable: u64,
    errors: u64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.connections as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn line(&self) -> String {
        format!(
            "connections={} seconds={:.3} rate={:.1} addr_unavailable={} errors={}",
            self.connections,
            self.seconds,
            self.rate(),
            self.addr_unavailable,
            self.errors
        )
    }
}

/// Counters shared by all threads. Each client keeps its connection count locally and returns
/// it when joined, so the hot loop touches no shared cache line except the `stop` flag (read
/// only) and, with `--count`, the ticket counter.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Tickets handed out under `--count`.
    tickets: AtomicU64,
    /// Connections the acceptors finished (read to EOF or wrote, then closed).
    served: AtomicU64,
    addr_unavailable: AtomicU64,
    errors: AtomicU64,
    /// The first error of each kind is printed, later ones are only counted.
    error_shown: AtomicBool,
}

impl Shared {
    fn error(&self, what: &str, err: &io::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.error_shown.swap(true, Ordering::Relaxed) {
            eprintln!("churn: {what}: {err} (further errors are only counted)");
        }
    }
}

fn raise_backlog(listener: &TcpListener) -> io::Result<()> {
    // Calling listen() again on a listening socket only updates its backlog.
    // SAFETY: the fd belongs to `listener`, which is borrowed (so open) for the whole call.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wakes every thread blocked in accept() on this listener (Linux returns EINVAL to them).
/// std has no way to do that for a listener, and dropping it would not wake them.
fn shutdown_listener(listener: &TcpListener) -> io::Result<()> {
    // SAFETY: the fd belongs to `listener`, borrowed for the whole call; shutdown(2) does not
    // close it, so the acceptors' handles stay valid.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads until EOF (the peer's FIN).
fn read_to_eof(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve(listener: &TcpListener, mode: Mode, shared: &Shared) {
    loop {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // The end of the run shuts the listener down; that wakes us with EINVAL.
            Err(_) if shared.stop.load(Ordering::Relaxed) => return,
            Err(e) => {
                shared.error("accept", &e);
                thread::sleep(ERROR_BACKOFF);
                continue;
            }
        };
        let result = match mode {
            Mode::ClientFirst => read_to_eof(&mut stream),
            Mode::ServerFirst => stream.write_all(b"x"),
        };
        match result {
            // Closing here (dropping the stream) is the transition being measured.
            Ok(()) => {
                drop(stream);
                shared.served.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.error("server read/write", &e),
        }
    }
}

/// One client thread; returns how many connections it completed.
fn client(addr: SocketAddr, mode: Mode, count: Option<u64>, shared: &Shared) -> u64 {
    let mut done = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(count) = count
            && shared.tickets.fetch_add(1, Ordering::Relaxed) >= count
        {
            break;
        }
        let mut stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                // Out of ephemeral ports: counted and announced by the main thread.
                shared.addr_unavailable.fetch_add(1, Ordering::Relaxed);
                give_back_ticket(count, shared);
                thread::sleep(ERROR_BACKOFF);
                continue;
            }
            Err(e) => {
                shared.error(&format!("connect {addr}"), &e);
                give_back_ticket(count, shared);
                thread::sleep(ERROR_BACKOFF);
                continue;
            }
        };
        let result = match mode {
            Mode::ClientFirst => stream.write_all(b"x"),
            Mode::ServerFirst => read_to_eof(&mut stream),
        };
        match result {
            Ok(()) => done += 1,
            Err(e) => shared.error("client write/read", &e),
        }
        // The close (client-first: the active close that makes TIME_WAIT) happens here.
        drop(stream);
    }
    done
}

/// A failed connect() did not make a connection, so with `--count` another try is owed.
fn give_back_ticket(count: Option<u64>, shared: &Shared) {
    if count.is_some() {
        shared.tickets.fetch_sub(1, Ordering::Relaxed);
    }
}

fn run(config: &Cli) -> Result<Outcome, String> {
    let ip = if config.ipv6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    let bind = SocketAddr::new(ip, config.port);
    let listener = TcpListener::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    raise_backlog(&listener).map_err(|e| format!("listen on {bind}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local address of the listener: {e}"))?;
    let listener = Arc::new(listener);
    let shared = Arc::new(Shared::default());
    eprintln!(
        "churn: {} client and {} server threads, {}, {addr}, {:.1} s{}",
        config.clients,
        config.servers,
        match config.mode {
            Mode::ClientFirst => "client closes first",
            Mode::ServerFirst => "server closes first",
        },
        config.duration.as_secs_f64(),
        config
            .count
            .map(|n| format!(" or {n} connections"))
            .unwrap_or_default()
    );

    let mut servers = Vec::with_capacity(config.servers);
    for i in 0..config.servers {
        let (listener, shared) = (Arc::clone(&listener), Arc::clone(&shared));
        let mode = config.mode;
        let handle = thread::Builder::new()
            .name(format!("churn-srv{i}"))
            .spawn(move || serve(&listener, mode, &shared))
            .map_err(|e| format!("starting a server thread: {e}"))?;
        servers.push(handle);
    }
    let start = Instant::now();
    let mut clients = Vec::with_capacity(config.clients);
    for i in 0..config.clients {
        let shared = Arc::clone(&shared);
        let (mode, count) = (config.mode, config.count);
        let handle = thread::Builder::new()
            .name(format!("churn-cli{i}"))
            .spawn(move || client(addr, mode, count, &shared))
            .map_err(|e| format!("starting a client thread: {e}"))?;
        clients.push(handle);
    }

    // Sleep in short steps: to notice a --count run that finished early, and to announce port
    // exhaustion while it happens rather than only at the end.
    let deadline = start + config.duration;
    let mut unavailable_shown = 0;
    loop {
        let now = Instant::now();
        if now >= deadline || clients.iter().all(|c| c.is_finished()) {
            break;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(100)));
        let unavailable = shared.addr_unavailable.load(Ordering::Relaxed);
        if unavailable > unavailable_shown {
            eprintln!(
                "churn: connect() failed with EADDRNOTAVAIL {unavailable} times so far \
                 (ephemeral ports exhausted; is net.ipv4.tcp_tw_reuse 0?)"
            );
            unavailable_shown = unavailable;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut connections = 0;
    for handle in clients {
        connections += handle
            .join()
            .map_err(|_| "a client thread panicked".to_owned())?;
    }
    let seconds = start.elapsed().as_secs_f64();

    // Let the acceptors finish what the clients made, so no connection is cut short by the
    // listener closing (that would end it with a reset and change its sequence of transitions).
    let grace = Instant::now() + SERVE_GRACE;
    while shared.served.load(Ordering::Relaxed) < connections && Instant::now() < grace {
        thread::sleep(Duration::from_millis(5));
    }
    let served = shared.served.load(Ordering::Relaxed);
    if served < connections {
        eprintln!(
            "churn: the servers finished only {served} of {connections} connections within {:?}",
            SERVE_GRACE
        );
    }
    shutdown_listener(&listener).map_err(|e| format!("shutting the listener down: {e}"))?;
    for handle in servers {
        handle
            .join()
            .map_err(|_| "a server thread panicked".to_owned())?;
    }
    // Closed explicitly to document the order: the listener goes last.
    drop(listener);

    Ok(Outcome {
        connections,
        seconds,
        addr_unavailable: shared.addr_unavailable.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
    })
}

fn main() -> ExitCode {
    // A usage error prints the message and the usage to stderr and exits with status 2.
    let config = Cli::parse();
    match run(&config) {
        Ok(outcome) => {
            let line = outcome.line();
            let mut out = io::stdout().lock();
            if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                eprintln!("churn: writing the result: {e}");
                return ExitCode::FAILURE;
            }
            if outcome.addr_unavailable > 0 || outcome.errors > 0 {
                eprintln!(
                    "churn: {} connect() calls failed with EADDRNOTAVAIL, {} other errors",
                    outcome.addr_unavailable, outcome.errors
                );
            }
            // A run that made no connection at all measured nothing.
            if outcome.connections == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("churn: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("churn").chain(args.split_whitespace()))
    }

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let config = parse("").expect("no arguments is valid");
        assert_eq!(
            config,
            Cli {
                clients: 2,
                servers: 2,
                duration: Duration::from_secs(10),
                count: None,
                mode: Mode::ClientFirst,
                ipv6: false,
                port: 0,
            }
        );
    }

    #[test]
    fn all_flags() {
        let config = parse(
            "--clients 3 --servers 4 --duration 2.5 --count 300 --mode server-first --ipv6 --port 9",
        )
        .expect("valid");
        assert_eq!(
            config,
            Cli {
                clients: 3,
                servers: 4,
                duration: Duration::from_millis(2500),
                count: Some(300),
                mode: Mode::ServerFirst,
                ipv6: true,
                port: 9,
            }
        );
        let limits = parse("--clients 1024 --servers 1 --port 65535 --count 1").expect("valid");
        assert_eq!(
            (limits.clients, limits.servers, limits.port, limits.count),
            (1024, 1, 65535, Some(1))
        );
    }

    /// What `cargo xtask bench` passes (xtask/src/bench.rs): the measurement runs and the
    /// calibration run.
    #[test]
    fn what_xtask_bench_passes() {
        assert_eq!(
            parse("--duration 10").expect("valid").duration,
            Duration::from_secs(10)
        );
        let calibration = parse("--port 40000 --count 5000 --clients 1 --servers 1 --duration 30")
            .expect("valid");
        assert_eq!(
            calibration,
            Cli {
                clients: 1,
                servers: 1,
                duration: Duration::from_secs(30),
                count: Some(5000),
                mode: Mode::ClientFirst,
                ipv6: false,
                port: 40000,
            }
        );
    }

    #[test]
    fn rejects_bad_input() {
        for (args, kind) in [
            ("--clients 0", ErrorKind::ValueValidation),
            ("--clients 1025", ErrorKind::ValueValidation),
            ("--clients x", ErrorKind::ValueValidation),
            ("--servers 0", ErrorKind::ValueValidation),
            ("--servers", ErrorKind::InvalidValue),
            ("--duration 0", ErrorKind::ValueValidation),
            ("--duration -1", ErrorKind::ValueValidation),
            ("--duration nan", ErrorKind::ValueValidation),
            ("--duration inf", ErrorKind::ValueValidation),
            ("--count 0", ErrorKind::ValueValidation),
            ("--mode abort", ErrorKind::InvalidValue),
            ("--port 70000", ErrorKind::ValueValidation),
            ("--frobnicate", ErrorKind::UnknownArgument),
            ("client", ErrorKind::UnknownArgument),
        ] {
            let err = parse(args).expect_err(args);
            assert_eq!(err.exit_code(), 2, "{args:?} is a usage error: {err}");
            assert_eq!(err.kind(), kind, "{args:?}: {err}");
        }
    }

    #[test]
    fn result_line_is_machine_readable() {
        let outcome = Outcome {
            connections: 1500,
            seconds: 0.5,
            addr_unavailable: 2,
            errors: 0,
        };
        assert_eq!(
            outcome.line(),
            "connections=1500 seconds=0.500 rate=3000.0 addr_unavailable=2 errors=0"
        );
        assert_eq!(Outcome::default().rate(), 0.0);
    }
}
