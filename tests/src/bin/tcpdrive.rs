//! tcpdrive: makes loopback TCP connections with a known pid and comm, so the integration tests
//! can check what twtrace attributes to whom.
//!
//! ```text
//! tcpdrive server --bind ADDR --count N --mode MODE --comm NAME
//! tcpdrive client --connect ADDR --count N --mode MODE --comm NAME [--hold-ms T] [--wait-stdin]
//! ```
//!
//! The server binds and listens, prints `port <n>` on stdout, accepts exactly N connections one
//! after the other, then exits. The client makes N sequential connections, then exits. Which side
//! closes first (and so which side gets TIME_WAIT) is chosen by the mode:
//!
//! - `client-first`: the client writes one byte and closes; the server reads to EOF, then closes.
//! - `server-first`: the server writes one byte and closes; the client reads to EOF, then closes.
//! - `abort`: the client writes one byte and closes with SO_LINGER {on, 0}, which sends a reset;
//!   the server reads until EOF or the reset error, then closes. No TIME_WAIT anywhere.
//! - `leak`: the server writes one byte and closes; the client reads to EOF but keeps every socket
//!   open (so each sits in CLOSE_WAIT), prints `holding`, sleeps `--hold-ms`, then exits.
//!
//! `--wait-stdin` makes the client wait for one line on stdin before it connects, so a test can
//! learn its pid and start twtrace with `--pid` first.

use std::ffi::CString;
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage:
  tcpdrive server --bind ADDR --count N --mode MODE --comm NAME
  tcpdrive client --connect ADDR --count N --mode MODE --comm NAME [--hold-ms T] [--wait-stdin]
modes: client-first, server-first, abort, leak";

/// The kernel keeps TASK_COMM_LEN (16) bytes of comm including the NUL; longer names are silently
/// cut, which would make the tests compare against a name the kernel never reports.
const MAX_COMM: usize = 15;

/// Accept-queue length asked of the kernel (capped by net.core.somaxconn, 4096 by default). std
/// listens with a backlog of 128, and in client-first mode the client can run ahead of the
/// sequential server by more than that; an overflowing queue drops handshakes and turns the exact
/// event sequences into retransmission noise.
const BACKLOG: libc::c_int = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ClientFirst,
    ServerFirst,
    Abort,
    Leak,
}

impl Mode {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "client-first" => Ok(Self::ClientFirst),
            "server-first" => Ok(Self::ServerFirst),
            "abort" => Ok(Self::Abort),
            "leak" => Ok(Self::Leak),
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Role {
    Server {
        bind: SocketAddr,
    },
    Client {
        connect: SocketAddr,
        hold: Duration,
        wait_stdin: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
struct Config {
    role: Role,
    count: usize,
    mode: Mode,
    comm: String,
}

fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Config, String> {
    let mut args = args.into_iter();
    let role = args.next().ok_or("missing subcommand (server or client)")?;
    let is_server = match role.as_str() {
        "server" => true,
        "client" => false,
        other => return Err(format!("unknown subcommand {other:?}")),
    };

    let mut addr = None;
    let mut count = None;
    let mut mode = None;
    let mut comm = None;
    let mut hold = None;
    let mut wait_stdin = false;
    while let Some(flag) = args.next() {
        // Flags that belong to the other role are refused rather than ignored: a test passing
        // --hold-ms to the server would otherwise silently test something else.
        match (flag.as_str(), is_server) {
            ("--wait-stdin", false) => {
                wait_stdin = true;
                continue;
            }
            ("--bind", true) | ("--connect", false) | ("--hold-ms", false) => {}
            ("--count" | "--mode" | "--comm", _) => {}
            _ => return Err(format!("unexpected argument {flag:?} for {role}")),
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bind" | "--connect" => {
                let parsed = value
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("{flag} {value:?}: {e}"))?;
                addr = Some(parsed);
            }
            "--count" => {
                let n = value
                    .parse::<usize>()
                    .map_err(|e| format!("--count {value:?}: {e}"))?;
                if n == 0 {
                    return Err("--count must be at least 1".into());
                }
                count = Some(n);
            }
            "--mode" => mode = Some(Mode::parse(&value)?),
            "--comm" => {
                if value.is_empty() || value.len() > MAX_COMM || value.contains('\0') {
                    return Err(format!(
                        "--comm {value:?}: needs 1 to {MAX_COMM} bytes and no NUL"
                    ));
                }
                comm = Some(value);
            }
            "--hold-ms" => {
                let ms = value
                    .parse::<u64>()
                    .map_err(|e| format!("--hold-ms {value:?}: {e}"))?;
                hold = Some(Duration::from_millis(ms));
            }
            _ => unreachable!("flag {flag} was accepted above"),
        }
    }

    let addr_flag = if is_server { "--bind" } else { "--connect" };
    let addr = addr.ok_or_else(|| format!("{addr_flag} is required"))?;
    let role = if is_server {
        Role::Server { bind: addr }
    } else {
        Role::Client {
            connect: addr,
            hold: hold.unwrap_or(Duration::from_millis(1000)),
            wait_stdin,
        }
    };
    Ok(Config {
        role,
        count: count.ok_or("--count is required")?,
        mode: mode.ok_or("--mode is required")?,
        comm: comm.ok_or("--comm is required")?,
    })
}

/// Attaches what was being done to an I/O error, so a failing driver says where it failed.
trait Context<T> {
    fn context(self, what: &str) -> Result<T, String>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn set_comm(comm: &str) -> Result<(), String> {
    let name = CString::new(comm).map_err(|e| format!("comm {comm:?}: {e}"))?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer;
    // `name` is a valid C string that outlives the call (parse_args capped it at 15 bytes).
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    if rc != 0 {
        return Err(format!(
            "prctl(PR_SET_NAME, {comm:?}): {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn raise_backlog(listener: &TcpListener) -> io::Result<()> {
    // Calling listen() again on a listening socket only updates its backlog: no state change, so
    // no extra CLOSE -> LISTEN transition shows up in the trace.
    // SAFETY: the fd belongs to `listener`, which is borrowed (so open) for the whole call.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd belongs to `stream`, borrowed for the whole call; the option value points to
    // an initialised `linger` that lives on this stack frame, and we pass its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads until EOF. With `reset_ends`, a connection reset also counts as the end (abort mode
/// expects exactly that); any other error is a real failure.
fn read_to_end_of_stream(stream: &mut TcpStream, reset_ends: bool) -> io::Result<()> {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if reset_ends && e.kind() == ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn run_server(bind: SocketAddr, count: usize, mode: Mode) -> Result<(), String> {
    let listener = TcpListener::bind(bind).context(&format!("bind {bind}"))?;
    raise_backlog(&listener).context("listen")?;
    let port = listener.local_addr().context("local_addr")?.port();
    let mut out = io::stdout().lock();
    writeln!(out, "port {port}").context("stdout")?;
    out.flush().context("stdout")?;

    for i in 0..count {
        let (mut stream, _) = listener.accept().context(&format!("accept #{i}"))?;
        match mode {
            Mode::ClientFirst => {
                read_to_end_of_stream(&mut stream, false).context(&format!("read #{i}"))?
            }
            Mode::Abort => {
                read_to_end_of_stream(&mut stream, true).context(&format!("read #{i}"))?
            }
            Mode::ServerFirst | Mode::Leak => {
                stream.write_all(b"x").context(&format!("write #{i}"))?
            }
        }
        // Closing here (not at exit) is the point: each close is one transition the test counts.
        drop(stream);
    }
    Ok(())
}

fn run_client(
    connect: SocketAddr,
    count: usize,
    mode: Mode,
    hold: Duration,
    wait_stdin: bool,
) -> Result<(), String> {
    if wait_stdin {
        let mut line = String::new();
        let n = io::stdin().lock().read_line(&mut line).context("stdin")?;
        // EOF means whoever started us is gone: making traffic nobody watches is pointless.
        if n == 0 {
            return Err("stdin closed before the go line".into());
        }
    }

    let mut held = Vec::new();
    for i in 0..count {
        let mut stream =
            TcpStream::connect(connect).context(&format!("connect #{i} to {connect}"))?;
        match mode {
            Mode::ClientFirst => stream.write_all(b"x").context(&format!("write #{i}"))?,
            Mode::ServerFirst => {
                read_to_end_of_stream(&mut stream, false).context(&format!("read #{i}"))?
            }
            Mode::Abort => {
                stream.write_all(b"x").context(&format!("write #{i}"))?;
                set_linger_zero(&stream).context(&format!("SO_LINGER #{i}"))?;
            }
            Mode::Leak => {
                read_to_end_of_stream(&mut stream, false).context(&format!("read #{i}"))?;
                // Kept open on purpose: the socket stays in CLOSE_WAIT until we exit.
                held.push(stream);
                continue;
            }
        }
        drop(stream);
    }

    if mode == Mode::Leak {
        let mut out = io::stdout().lock();
        writeln!(out, "holding").context("stdout")?;
        out.flush().context("stdout")?;
        std::thread::sleep(hold);
    }
    // The leaked sockets are closed by process exit, as they would be in a leaking program.
    drop(held);
    Ok(())
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tcpdrive: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Before any socket exists, so every transition carries the final comm.
    if let Err(e) = set_comm(&config.comm) {
        eprintln!("tcpdrive: {e}");
        return ExitCode::FAILURE;
    }
    let result = match config.role {
        Role::Server { bind } => run_server(bind, config.count, config.mode),
        Role::Client {
            connect,
            hold,
            wait_stdin,
        } => run_client(connect, config.count, config.mode, hold, wait_stdin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpdrive ({}): {e}", config.comm);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Config, String> {
        parse_args(args.split_whitespace().map(String::from))
    }

    #[test]
    fn server_v6() {
        let config = parse("server --bind [::1]:0 --count 3 --mode abort --comm tws-x").unwrap();
        assert_eq!(
            config,
            Config {
                role: Role::Server {
                    bind: "[::1]:0".parse().unwrap()
                },
                count: 3,
                mode: Mode::Abort,
                comm: "tws-x".into(),
            }
        );
    }

    #[test]
    fn client_defaults_and_flags() {
        let config = parse("client --connect 127.0.0.1:80 --count 1 --mode leak --comm c").unwrap();
        assert_eq!(
            config.role,
            Role::Client {
                connect: "127.0.0.1:80".parse().unwrap(),
                hold: Duration::from_millis(1000),
                wait_stdin: false,
            }
        );
        let config = parse(
            "client --wait-stdin --connect 127.0.0.1:80 --hold-ms 5 --count 2 --mode server-first --comm c",
        )
        .unwrap();
        assert_eq!(
            config.role,
            Role::Client {
                connect: "127.0.0.1:80".parse().unwrap(),
                hold: Duration::from_millis(5),
                wait_stdin: true,
            }
        );
        assert_eq!(config.mode, Mode::ServerFirst);
    }

    #[test]
    fn rejects_bad_input() {
        let ok = "--count 1 --mode client-first --comm c";
        // Role-specific flags on the wrong role.
        assert!(parse(&format!("server --bind 127.0.0.1:0 --hold-ms 1 {ok}")).is_err());
        assert!(parse(&format!("server --bind 127.0.0.1:0 --wait-stdin {ok}")).is_err());
        assert!(parse(&format!("client --bind 127.0.0.1:0 {ok}")).is_err());
        // Missing or malformed values.
        assert!(parse(&format!("client {ok}")).is_err());
        assert!(parse("client --connect 127.0.0.1:1 --mode abort --comm c").is_err());
        assert!(parse("client --connect 127.0.0.1:1 --count 0 --mode abort --comm c").is_err());
        assert!(parse("client --connect 127.0.0.1 --count 1 --mode abort --comm c").is_err());
        assert!(parse("client --connect 127.0.0.1:1 --count 1 --mode nope --comm c").is_err());
        assert!(parse("client --connect 127.0.0.1:1 --count 1 --mode abort --comm").is_err());
        assert!(parse("").is_err());
        assert!(parse(&format!("proxy {ok}")).is_err());
    }

    #[test]
    fn comm_length_limit() {
        let base = "server --bind 127.0.0.1:0 --count 1 --mode leak --comm";
        assert!(parse(&format!("{base} {}", "a".repeat(15))).is_ok());
        assert!(parse(&format!("{base} {}", "a".repeat(16))).is_err());
    }
}
