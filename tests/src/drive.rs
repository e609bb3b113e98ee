//! Traffic from processes with known pids: tcpdrive servers and clients, and a `Traffic` set-up
//! that starts them in the right order.

use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::{
    DRIVER_TIMEOUT,
    proc::{ChildGuard, line_reader, wait_for_line},
};

/// What the tcpdrive peers do; see src/bin/tcpdrive.rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ClientFirst,
    ServerFirst,
    Abort,
    Leak,
    Reuse,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientFirst => "client-first",
            Self::ServerFirst => "server-first",
            Self::Abort => "abort",
            Self::Leak => "leak",
            Self::Reuse => "reuse",
        }
    }
}

/// A running `tcpdrive server`, whose port is known once it listens.
pub struct Server {
    pub guard: ChildGuard,
    pub port: u16,
    pub comm: String,
}

impl Server {
    pub fn start(driver: &Path, bind: &str, count: usize, mode: Mode, comm: &str) -> Self {
        let mut cmd = Command::new(driver);
        cmd.args(["server", "--bind", bind, "--count"])
            .arg(count.to_string())
            .args(["--mode", mode.as_str(), "--comm", comm])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn(&format!("server {comm}"), &mut cmd);
        let stdout = guard.child_mut().stdout.take().expect("piped stdout");
        let rx = line_reader(format!("{comm}-stdout"), stdout);
        let mut seen = Vec::new();
        let line = wait_for_line(
            &rx,
            &format!("`port N` from server {comm}"),
            Duration::from_secs(10),
            &mut seen,
            |l| l.starts_with("port "),
        );
        let port = line["port ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("server {comm} printed {line:?}: {e}"));
        Self {
            guard,
            port,
            comm: comm.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

/// Options for `tcpdrive client` beyond the common ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientOpts {
    pub hold_ms: Option<u64>,
    /// Start blocked until [`Client::go`], so the pid is known before any traffic.
    pub wait_stdin: bool,
}

/// A running `tcpdrive client`.
pub struct Client {
    pub guard: ChildGuard,
    pub comm: String,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stdout_seen: Vec<String>,
}

impl Client {
    pub fn start(
        driver: &Path,
        connect: &str,
        count: usize,
        mode: Mode,
        comm: &str,
        opts: ClientOpts,
    ) -> Self {
        let mut cmd = Command::new(driver);
        cmd.args(["client", "--connect", connect, "--count"])
            .arg(count.to_string())
            .args(["--mode", mode.as_str(), "--comm", comm]);
        if let Some(ms) = opts.hold_ms {
            cmd.arg("--hold-ms").arg(ms.to_string());
        }
        if opts.wait_stdin {
            cmd.arg("--wait-stdin").stdin(Stdio::piped());
        } else {
            cmd.stdin(Stdio::null());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn(&format!("client {comm}"), &mut cmd);
        let stdin = guard.child_mut().stdin.take();
        let stdout = guard.child_mut().stdout.take().expect("piped stdout");
        Self {
            guard,
            comm: comm.to_owned(),
            stdin,
            stdout: line_reader(format!("{comm}-stdout"), stdout),
            stdout_seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Releases a client started with `wait_stdin`.
    pub fn go(&mut self) {
        let mut stdin = self
            .stdin
            .take()
            .expect("go() needs a client started with wait_stdin");
        stdin
            .write_all(b"go\n")
            .unwrap_or_else(|e| panic!("writing to client {}: {e}", self.comm));
    }

    /// Waits for a line the client prints on stdout (e.g. `holding`).
    pub fn wait_for_stdout(&mut self, want: &str, timeout: Duration) {
        let what = format!("{want:?} from client {}", self.comm);
        wait_for_line(&self.stdout, &what, timeout, &mut self.stdout_seen, |l| {
            l == want
        });
    }
}

/// Which loopback address the tcpdrive peers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loopback {
    V4,
    V6,
}

impl Loopback {
    /// The server's bind address, on any free port.
    pub fn bind(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1:0",
            Self::V6 => "[::1]:0",
        }
    }

    /// The address the client connects to.
    pub fn connect(self, port: u16) -> String {
        match self {
            Self::V4 => format!("127.0.0.1:{port}"),
            Self::V6 => format!("[::1]:{port}"),
        }
    }
}

/// A `tcpdrive server` and a `tcpdrive client` making `count` connections over loopback.
#[derive(Debug, Clone, Copy)]
pub struct Traffic<'a> {
    pub driver: &'a Path,
    pub loopback: Loopback,
    pub count: usize,
    pub mode: Mode,
    pub server_comm: &'a str,
    pub client_comm: &'a str,
    pub client_opts: ClientOpts,
}

impl<'a> Traffic<'a> {
    /// Over 127.0.0.1, with the client's default options.
    pub fn new(
        driver: &'a Path,
        mode: Mode,
        count: usize,
        server_comm: &'a str,
        client_comm: &'a str,
    ) -> Self {
        Self {
            driver,
            loopback: Loopback::V4,
            count,
            mode,
            server_comm,
            client_comm,
            client_opts: ClientOpts::default(),
        }
    }

    /// The same over `loopback`.
    pub fn over(self, loopback: Loopback) -> Self {
        Self { loopback, ..self }
    }

    /// The same with the client holding its sockets `ms` after `holding` (leak mode).
    pub fn hold_ms(self, ms: u64) -> Self {
        let client_opts = ClientOpts {
            hold_ms: Some(ms),
            ..self.client_opts
        };
        Self {
            client_opts,
            ..self
        }
    }

    /// Starts the server; it listens (its port is known) when this returns.
    pub fn server(&self) -> Server {
        Server::start(
            self.driver,
            self.loopback.bind(),
            self.count,
            self.mode,
            self.server_comm,
        )
    }

    /// Starts the client toward `port`.
    pub fn client(&self, port: u16) -> Client {
        Client::start(
            self.driver,
            &self.loopback.connect(port),
            self.count,
            self.mode,
            self.client_comm,
            self.client_opts,
        )
    }

    /// Starts the server, then `watch` with the server's port (whatever must see every
    /// connection: a tracer filtered on that port, a recorder), then the client.
    pub fn start<W>(&self, watch: impl FnOnce(u16) -> W) -> (Peers, W) {
        let server = self.server();
        let watching = watch(server.port);
        let client = self.client(server.port);
        (Peers { server, client }, watching)
    }

    /// Starts the server, then the client, with nothing watching in between.
    pub fn start_unwatched(&self) -> Peers {
        self.start(|_| ()).0
    }
}

/// A running server and its client.
pub struct Peers {
    pub server: Server,
    pub client: Client,
}

impl Peers {
    /// The server's port.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Waits for the client, then the server, to finish; both must exit 0.
    pub fn wait(&mut self) {
        self.client.guard.wait_success(DRIVER_TIMEOUT);
        self.server.guard.wait_success(DRIVER_TIMEOUT);
    }
}
