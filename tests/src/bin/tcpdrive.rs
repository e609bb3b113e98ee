//! tcpdrive: makes loopback TCP connections with a known pid and comm, so the integration tests
//! can check what twtrace attributes to whom.
//!
//! ```text
//! tcpdrive server --bind <ADDR> --count <N> --mode <MODE> --comm <NAME>
//! tcpdrive client --connect <ADDR> --count <N> --mode <MODE> --comm <NAME> [--hold-ms <T>] [--wait-stdin]
//! ```
//!
//! (`tcpdrive help`, `tcpdrive server --help` and `tcpdrive client --help` say the same.) Bad
//! arguments are a usage error: a message and the usage on stderr, exit status 2.
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
//!   open (so each sits in CLOSE_WAIT), prints `holding`, sleeps `--hold-ms` (default 1000),
//!   then exits.
//! - `reuse`: one connection carries N requests (a kept-alive client): the client writes one
//!   byte and reads one back, N times, then closes first; the server accepts one connection,
//!   answers each byte, reads to EOF and closes.
//!
//! `--wait-stdin` makes the client wait for one line on stdin before it connects, so a test can
//! learn its pid and start twtrace with `--pid` first.

use std::ffi::CString;
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The kernel keeps TASK_COMM_LEN (16) bytes of comm including the NUL; longer names are silently
/// cut, which would make the tests compare against a name the kernel never reports.
const MAX_COMM: usize = 15;

/// Accept-queue length asked of the kernel (capped by net.core.somaxconn, 4096 by default). std
/// listens with a backlog of 128, and in client-first mode the client can run ahead of the
/// sequential server by more than that; an overflowing queue drops handshakes and turns the exact
/// event sequences into retransmission noise.
const BACKLOG: libc::c_int = 4096;

/// Which side closes first, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The client writes one byte and closes first: TIME_WAIT on the client side.
    ClientFirst,
    /// The server writes one byte and closes first: TIME_WAIT on the server side.
    ServerFirst,
    /// The client closes with SO_LINGER {on, 0}, sending a reset: no TIME_WAIT anywhere.
    Abort,
    /// The server closes first and the client keeps every socket open in CLOSE_WAIT.
    Leak,
    /// One connection, N request/response round trips; the client closes first.
    Reuse,
}

/// Makes loopback TCP connections with a known pid and comm, for twtrace's integration tests.
#[derive(Debug, PartialEq, Eq, Parser)]
// A repeated flag replaces the earlier value instead of being an error.
#[command(name = "tcpdrive", args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

/// The flags of each role are refused on the other rather than ignored: a test passing
/// --hold-ms to the server would otherwise silently test something else.
#[derive(Debug, PartialEq, Eq, Subcommand)]
enum Role {
    /// Listen, print `port <n>`, accept exactly N connections one after the other, then exit.
    Server {
        /// Address to listen on, e.g. 127.0.0.1:0 or [::1]:0.
        #[arg(long, value_name = "ADDR")]
        bind: SocketAddr,
        #[command(flatten)]
        common: Common,
    },
    /// Make N sequential connections, then exit.
    Client {
        /// Address to connect to, e.g. 127.0.0.1:8080 or [::1]:8080.
        #[arg(long, value_name = "ADDR")]
        connect: SocketAddr,
        #[command(flatten)]
        common: Common,
        /// In leak mode: how long to keep the sockets open after printing `holding`, in ms.
        #[arg(long, value_name = "T", default_value_t = 1000)]
        hold_ms: u64,
        /// Wait for one line on stdin before connecting.
        #[arg(long)]
        wait_stdin: bool,
    },
}

/// The flags both roles take.
#[derive(Debug, PartialEq, Eq, Args)]
struct Common {
    /// How many connections (at least 1).
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    count: usize,
    /// Which side closes first, and how.
    #[arg(long, value_enum, value_name = "MODE")]
    mode: Mode,
    /// The process name to take before any socket exists (1 to 15 bytes).
    #[arg(long, value_name = "NAME", value_parser = parse_comm, allow_hyphen_values = true)]
    comm: String,
}

impl Role {
    fn common(&self) -> &Common {
        match self {
            Self::Server { common, .. } | Self::Client { common, .. } => common,
        }
    }
}

fn parse_comm(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > MAX_COMM || value.contains('\0') {
        return Err(format!("needs 1 to {MAX_COMM} bytes and no NUL"));
    }
    Ok(value.to_owned())
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
    // `name` is a valid C string that outlives the call (parse_comm capped it at 15 bytes).
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

    if mode == Mode::Reuse {
        let (mut stream, _) = listener.accept().context("accept")?;
        let mut byte = [0u8; 1];
        for i in 0..count {
            stream
                .read_exact(&mut byte)
                .context(&format!("request #{i}"))?;
            stream.write_all(&byte).context(&format!("answer #{i}"))?;
        }
        return read_to_end_of_stream(&mut stream, false).context("read to EOF");
    }
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
            // Served on its one connection above.
            Mode::Reuse => {}
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

    if mode == Mode::Reuse {
        let mut stream = TcpStream::connect(connect).context(&format!("connect to {connect}"))?;
        let mut byte = [0u8; 1];
        for i in 0..count {
            stream.write_all(b"x").context(&format!("request #{i}"))?;
            stream
                .read_exact(&mut byte)
                .context(&format!("answer #{i}"))?;
        }
        return Ok(());
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
            // Done on its one connection above.
            Mode::Reuse => {}
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
    // A usage error prints the message and the usage to stderr and exits with status 2.
    let cli = Cli::parse();
    let Common { count, mode, comm } = cli.role.common();
    // Before any socket exists, so every transition carries the final comm.
    if let Err(e) = set_comm(comm) {
        eprintln!("tcpdrive: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.role {
        Role::Server { bind, .. } => run_server(bind, *count, *mode),
        Role::Client {
            connect,
            hold_ms,
            wait_stdin,
            ..
        } => run_client(
            connect,
            *count,
            *mode,
            Duration::from_millis(hold_ms),
            wait_stdin,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpdrive ({comm}): {e}");
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
        Cli::try_parse_from(std::iter::once("tcpdrive").chain(args.split_whitespace()))
    }

    /// Parses `args`, which must be refused as a usage error (exit status 2), and says how.
    fn refused(args: &str) -> ErrorKind {
        let err = parse(args).expect_err(args);
        assert_eq!(err.exit_code(), 2, "{args:?} is a usage error: {err}");
        err.kind()
    }

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_v6() {
        let cli = parse("server --bind [::1]:0 --count 3 --mode abort --comm tws-x").unwrap();
        assert_eq!(
            cli.role,
            Role::Server {
                bind: "[::1]:0".parse().unwrap(),
                common: Common {
                    count: 3,
                    mode: Mode::Abort,
                    comm: "tws-x".into(),
                },
            }
        );
    }

    #[test]
    fn client_defaults_and_flags() {
        let cli = parse("client --connect 127.0.0.1:80 --count 1 --mode leak --comm c").unwrap();
        assert_eq!(
            cli.role,
            Role::Client {
                connect: "127.0.0.1:80".parse().unwrap(),
                common: Common {
                    count: 1,
                    mode: Mode::Leak,
                    comm: "c".into(),
                },
                hold_ms: 1000,
                wait_stdin: false,
            }
        );
        let cli = parse(
            "client --wait-stdin --connect 127.0.0.1:80 --hold-ms 5 --count 2 --mode server-first --comm c",
        )
        .unwrap();
        assert_eq!(
            cli.role,
            Role::Client {
                connect: "127.0.0.1:80".parse().unwrap(),
                common: Common {
                    count: 2,
                    mode: Mode::ServerFirst,
                    comm: "c".into(),
                },
                hold_ms: 5,
                wait_stdin: true,
            }
        );
    }

    #[test]
    fn mode_spellings() {
        for (word, mode) in [
            ("client-first", Mode::ClientFirst),
            ("server-first", Mode::ServerFirst),
            ("abort", Mode::Abort),
            ("leak", Mode::Leak),
        ] {
            let cli = parse(&format!(
                "server --bind 127.0.0.1:0 --count 1 --mode {word} --comm s"
            ))
            .unwrap();
            assert_eq!(cli.role.common().mode, mode, "{word}");
        }
    }

    #[test]
    fn a_repeated_flag_keeps_the_last_value() {
        let cli =
            parse("server --bind 127.0.0.1:0 --count 1 --count 7 --mode leak --comm s").unwrap();
        assert_eq!(cli.role.common().count, 7);
    }

    #[test]
    fn rejects_bad_input() {
        let ok = "--count 1 --mode client-first --comm c";
        for (args, kind) in [
            // Role-specific flags on the wrong role.
            (
                format!("server --bind 127.0.0.1:0 --hold-ms 1 {ok}"),
                ErrorKind::UnknownArgument,
            ),
            (
                format!("server --bind 127.0.0.1:0 --wait-stdin {ok}"),
                ErrorKind::UnknownArgument,
            ),
            (
                format!("client --bind 127.0.0.1:0 {ok}"),
                ErrorKind::UnknownArgument,
            ),
            // Missing or malformed values.
            (format!("client {ok}"), ErrorKind::MissingRequiredArgument),
            (
                "client --connect 127.0.0.1:1 --mode abort --comm c".into(),
                ErrorKind::MissingRequiredArgument,
            ),
            (
                "client --connect 127.0.0.1:1 --count 0 --mode abort --comm c".into(),
                ErrorKind::ValueValidation,
            ),
            (
                "client --connect 127.0.0.1 --count 1 --mode abort --comm c".into(),
                ErrorKind::ValueValidation,
            ),
            (
                "client --connect 127.0.0.1:1 --count 1 --mode nope --comm c".into(),
                ErrorKind::InvalidValue,
            ),
            (
                "client --connect 127.0.0.1:1 --count 1 --mode abort --comm".into(),
                ErrorKind::InvalidValue,
            ),
            (
                "client --connect 127.0.0.1:1 --count 1 --mode abort --comm c --hold-ms -1".into(),
                ErrorKind::UnknownArgument,
            ),
            (
                String::new(),
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            ),
            (format!("proxy {ok}"), ErrorKind::InvalidSubcommand),
        ] {
            assert_eq!(refused(&args), kind, "{args:?}");
        }
    }

    #[test]
    fn comm_length_limit() {
        let base = "server --bind 127.0.0.1:0 --count 1 --mode leak --comm";
        assert!(parse(&format!("{base} {}", "a".repeat(15))).is_ok());
        assert_eq!(
            refused(&format!("{base} {}", "a".repeat(16))),
            ErrorKind::ValueValidation
        );
        let nul = Cli::try_parse_from([
            "tcpdrive",
            "server",
            "--bind",
            "127.0.0.1:0",
            "--count",
            "1",
            "--mode",
            "leak",
            "--comm",
            "a\0b",
        ]);
        assert_eq!(nul.unwrap_err().kind(), ErrorKind::ValueValidation);
    }
}
