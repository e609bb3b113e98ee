//! Harness for twtrace's privileged integration tests.
//!
//! The tests run the real `twtrace` binary (its eBPF program loaded into the running kernel) and
//! drive real loopback TCP traffic with `tcpdrive` child processes whose pids and comm names are
//! known, then check exact numbers in twtrace's JSON Lines output. Nothing is mocked, so they need
//! root; without it they skip loudly.
//!
//! Every wait has a timeout, and every child process is killed when its guard is dropped, so a
//! failing or panicking test never leaves a tracer or a driver behind.

pub mod live;
pub mod record;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long twtrace may take to load and attach before the test gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a driver may run. 3000 loopback connections take about a second.
pub const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long twtrace may take to drain and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between the traffic ending and SIGTERM, so the last softirq-driven transitions (the
/// final TIME_WAIT entries) have been submitted before twtrace drains.
pub const SETTLE: Duration = Duration::from_millis(300);

pub const TIME_WAIT: &str = "TIME_WAIT";
pub const CLOSE_WAIT: &str = "CLOSE_WAIT";

/// True when running as root; everything here needs it to load eBPF.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a loud skip line and returns true when not root, so a test can `return` early.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "SKIPPED: needs root: {test} loads twtrace's eBPF program into the kernel \
         (run `cargo xtask test` as root)"
    );
    true
}

/// The twtrace binary under test: $TWTRACE_BIN (set by xtask), else the workspace's debug build.
pub fn twtrace_bin() -> PathBuf {
    let path = match std::env::var_os("TWTRACE_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug")
            .join("twtrace"),
    };
    assert!(
        path.is_file(),
        "twtrace binary not found at {}: build it and run these tests with `cargo xtask test` \
         (or set TWTRACE_BIN to a built twtrace)",
        path.display()
    );
    path
}

/// A child process that is killed (SIGKILL) and reaped when dropped, unless it already exited.
pub struct ChildGuard {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Self {
            name: name.to_owned(),
            child,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the process to exit; on timeout kills it and panics.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    return status;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} (pid {}) still running after {timeout:?}",
                        self.name,
                        self.pid()
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }

    /// Waits for the process and panics unless it exited with status 0.
    pub fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait_timeout(timeout);
        assert!(
            status.success(),
            "{} (pid {}) failed: {status}",
            self.name,
            self.pid()
        );
    }

    /// Sends a signal to the process (not its group: twtrace's own handling is under test).
    pub fn signal(&self, signal: libc::c_int) {
        if self.exited.is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child,
        // so it cannot have been recycled for another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}) for {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // Errors mean it is already gone, which is what we want.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads lines from a pipe on a thread and hands them over a channel; the channel disconnects
/// at EOF, which tells the receiver the process closed that pipe (usually: exited).
pub(crate) fn line_reader<R: Read + Send + 'static>(name: String, pipe: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
        .expect("spawn reader thread");
    rx
}

/// Waits for a line satisfying `want`; returns it with everything received so far. Panics on
/// timeout or EOF with what was received, which is usually the explanation.
pub(crate) fn wait_for_line(
    rx: &Receiver<String>,
    what: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if want(&line) {
                    return line;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; output so far:\n{}",
                    seen.join("\n")
                )
            }
            Err(RecvTimeoutError::Disconnected) => panic!(
                "{what}: the process closed its output first; output so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// What the tcpdrive peers do; see src/bin/tcpdrive.rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ClientFirst,
    ServerFirst,
    Abort,
    Leak,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientFirst => "client-first",
            Self::ServerFirst => "server-first",
            Self::Abort => "abort",
            Self::Leak => "leak",
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

/// One JSON object of `twtrace trace --json`. Required fields are not `Option`, so a missing
/// one fails the parse and the test shows the offending line.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub time: String,
    pub pid: u32,
    pub comm: String,
    pub family: String,
    pub laddr: String,
    pub lport: u16,
    pub raddr: String,
    pub rport: u16,
    pub old: String,
    pub new: String,
    pub attribution: String,
    #[serde(default)]
    pub cookie: Option<u64>,
    #[serde(default)]
    pub reset: Option<String>,
    pub current_pid: u32,
    /// The line as twtrace printed it, for evidence in failure messages.
    #[serde(skip)]
    pub raw: String,
}

pub const STATES: &[&str] = &[
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

impl Event {
    pub fn transition(&self) -> String {
        format!("{}->{}", self.old, self.new)
    }

    /// Checks the values against the documented output contract.
    pub fn contract_violations(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if !is_rfc3339_utc(&self.time) {
            bad.push(format!("time {:?} is not RFC 3339 UTC", self.time));
        }
        for (field, state) in [("old", &self.old), ("new", &self.new)] {
            if !STATES.contains(&state.as_str()) {
                bad.push(format!("{field} {state:?} is not a known state name"));
            }
        }
        if !["ipv4", "ipv6"].contains(&self.family.as_str()) {
            bad.push(format!("family {:?}", self.family));
        }
        if !["owner", "listener", "unknown", "inherited"].contains(&self.attribution.as_str()) {
            bad.push(format!("attribution {:?}", self.attribution));
        }
        if let Some(reset) = &self.reset
            && !["received", "sent"].contains(&reset.as_str())
        {
            bad.push(format!("reset {reset:?}"));
        }
        for (field, addr) in [("laddr", &self.laddr), ("raddr", &self.raddr)] {
            match addr.parse::<std::net::IpAddr>() {
                Err(_) => bad.push(format!("{field} {addr:?} is not an IP address")),
                // v4-mapped addresses must be shown as plain IPv4.
                Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => {
                    bad.push(format!("{field} {addr:?} is v4-mapped"))
                }
                Ok(_) => {}
            }
        }
        bad
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)`: RFC 3339 with a UTC offset.
pub fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.len() - frac.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    matches!(rest, "Z" | "z" | "+00:00")
}

/// The counters of twtrace's final stderr line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub unattributed: u64,
}

/// Parses `twtrace: N events, N lost, N unattributed[anything]`.
pub fn parse_summary(line: &str) -> Option<Summary> {
    fn number_then<'a>(s: &'a str, word: &str) -> Option<(u64, &'a str)> {
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = s.get(..digits).filter(|d| !d.is_empty())?.parse().ok()?;
        Some((n, s[digits..].strip_prefix(word)?))
    }
    let rest = line.strip_prefix("twtrace: ")?;
    let (events, rest) = number_then(rest, " events, ")?;
    let (lost, rest) = number_then(rest, " lost, ")?;
    let (unattributed, _) = number_then(rest, " unattributed")?;
    Some(Summary {
        events,
        lost,
        unattributed,
    })
}

/// A running twtrace that said it is attached, its stdout collected in the background (a full
/// pipe would block its output and turn into lost events that are the harness's fault).
pub struct Attached {
    guard: ChildGuard,
    stdout: JoinHandle<Vec<String>>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What a stopped twtrace printed.
pub struct Stopped {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub status: ExitStatus,
}

impl Attached {
    /// Starts `twtrace <args>` and returns once it prints a stderr line starting with
    /// `twtrace: tracing`.
    pub fn start(args: &[String]) -> Self {
        Self::start_via(&[], &twtrace_bin(), args)
    }

    /// [`Attached::start`] for `<prefix...> <bin> <args>`: another binary, run through a
    /// command such as `setpriv` that execs it (so the pid is twtrace's).
    pub fn start_via(prefix: &[String], bin: &Path, args: &[String]) -> Self {
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!(
            "starting {}{} {}",
            prefix.iter().map(|p| format!("{p} ")).collect::<String>(),
            bin.display(),
            args.join(" ")
        );
        let mut guard = ChildGuard::spawn("twtrace", &mut cmd);
        let stdout = guard.child_mut().stdout.take().expect("piped stdout");
        let stderr = guard.child_mut().stderr.take().expect("piped stderr");
        let stdout = thread::Builder::new()
            .name("twtrace-stdout".into())
            .spawn(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .collect()
            })
            .expect("spawn reader thread");
        let stderr = line_reader("twtrace-stderr".into(), stderr);
        let mut stderr_seen = Vec::new();
        wait_for_line(
            &stderr,
            "`twtrace: tracing` on twtrace's stderr",
            READY_TIMEOUT,
            &mut stderr_seen,
            |l| l.starts_with("twtrace: tracing"),
        );
        Self {
            guard,
            stdout,
            stderr,
            stderr_seen,
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Waits `settle`, sends SIGTERM, waits for the exit and collects everything printed.
    pub fn stop_after(mut self, settle: Duration) -> Stopped {
        thread::sleep(settle);
        self.guard.signal(libc::SIGTERM);
        let status = self.guard.wait_timeout(STOP_TIMEOUT);
        let stdout = self.stdout.join().expect("stdout reader thread panicked");
        // The process is gone, so the stderr channel disconnects once drained.
        let mut stderr = self.stderr_seen;
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            stderr.push(line);
        }
        Stopped {
            stdout,
            stderr,
            status,
        }
    }
}

/// A running `twtrace trace --json`.
pub struct Twtrace(Attached);

impl Twtrace {
    /// Starts twtrace with `trace --json` plus `args`, and returns once it says it is attached.
    pub fn start(args: &[String]) -> Self {
        let mut all = vec!["trace".to_owned(), "--json".to_owned()];
        all.extend_from_slice(args);
        Self(Attached::start(&all))
    }

    /// [`Twtrace::start`] for `bin` run through `prefix` (see [`Attached::start_via`]).
    pub fn start_via(prefix: &[String], bin: &Path, args: &[String]) -> Self {
        let mut all = vec!["trace".to_owned(), "--json".to_owned()];
        all.extend_from_slice(args);
        Self(Attached::start_via(prefix, bin, &all))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Waits [`SETTLE`], sends SIGTERM, waits for exit and parses everything twtrace printed.
    pub fn stop(self) -> Trace {
        let Stopped {
            stdout: lines,
            stderr,
            status,
        } = self.0.stop_after(SETTLE);
        let mut events = Vec::with_capacity(lines.len());
        let mut violations = Vec::new();
        for line in lines {
            let mut event: Event = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("twtrace printed a line that is not an event ({e}):\n{line}")
            });
            for v in event.contract_violations() {
                violations.push(format!("{v}: {line}"));
            }
            event.raw = line;
            events.push(event);
        }
        let summary = stderr.iter().find_map(|l| parse_summary(l));
        let trace = Trace {
            events,
            stderr,
            summary,
            status,
        };
        assert!(
            violations.is_empty(),
            "{} events break the output contract, e.g.:\n{}",
            violations.len(),
            violations[..violations.len().min(10)].join("\n")
        );
        trace
    }
}

/// Everything a stopped twtrace produced.
pub struct Trace {
    pub events: Vec<Event>,
    pub stderr: Vec<String>,
    pub summary: Option<Summary>,
    pub status: ExitStatus,
}

impl Trace {
    /// Checks what every run must satisfy: exit 0 and a final summary line.
    pub fn summary(&self) -> Summary {
        assert!(
            self.status.success(),
            "twtrace exited with {} after SIGTERM; stderr:\n{}",
            self.status,
            self.stderr.join("\n")
        );
        self.summary.unwrap_or_else(|| {
            panic!(
                "no `twtrace: N events, N lost, N unattributed` line on stderr:\n{}",
                self.stderr.join("\n")
            )
        })
    }

    /// The events of one test's connections: the listener and accepted sockets have the server
    /// port as lport, the client sockets have it as rport (their lport is 0 at SYN_SENT).
    pub fn on_port(&self, port: u16) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| e.lport == port || e.rport == port)
            .collect()
    }
}

/// Filters events; the result stays a Vec<&Event> so it can be filtered again.
pub fn select<'a>(events: &[&'a Event], pred: impl Fn(&Event) -> bool) -> Vec<&'a Event> {
    events.iter().copied().filter(|e| pred(e)).collect()
}

/// Accumulates failed checks with evidence so one run reports every problem, not just the first.
pub struct Checks {
    test: String,
    failures: Vec<String>,
}

/// How many offending lines a failure quotes.
const EVIDENCE: usize = 8;

fn evidence(events: &[&Event]) -> String {
    let mut out: Vec<&str> = events
        .iter()
        .take(EVIDENCE)
        .map(|e| e.raw.as_str())
        .collect();
    let more = events.len().saturating_sub(EVIDENCE);
    let tail = if more > 0 {
        format!("\n    ... and {more} more")
    } else {
        String::new()
    };
    if out.is_empty() {
        out.push("(none)");
    }
    format!("    {}{tail}", out.join("\n    "))
}

impl Checks {
    pub fn new(test: &str) -> Self {
        Self {
            test: test.to_owned(),
            failures: Vec::new(),
        }
    }

    /// Exactly `want` events match; quotes the matching ones when the count is wrong.
    pub fn count(&mut self, what: &str, matching: &[&Event], want: usize) {
        let got = matching.len();
        eprintln!("[{}] {what}: {got} (want {want})", self.test);
        if got != want {
            self.failures.push(format!(
                "{what}: got {got}, want {want}; matching events:\n{}",
                evidence(matching)
            ));
        }
    }

    /// At least `want` events match.
    pub fn at_least(&mut self, what: &str, matching: &[&Event], want: usize) {
        let got = matching.len();
        eprintln!("[{}] {what}: {got} (want >= {want})", self.test);
        if got < want {
            self.failures
                .push(format!("{what}: got {got}, want at least {want}"));
        }
    }

    /// Every event satisfies `pred`; quotes the ones that do not.
    pub fn all(&mut self, what: &str, events: &[&Event], pred: impl Fn(&Event) -> bool) {
        let bad = select(events, |e| !pred(e));
        eprintln!(
            "[{}] {what}: {} of {} events comply",
            self.test,
            events.len() - bad.len(),
            events.len()
        );
        if !bad.is_empty() {
            self.failures.push(format!(
                "{what}: {} of {} events do not:\n{}",
                bad.len(),
                events.len(),
                evidence(&bad)
            ));
        }
    }

    pub fn value<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        eprintln!("[{}] {what}: {got:?} (want {want:?})", self.test);
        if got != want {
            self.failures
                .push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Panics with every failure collected.
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} check(s) failed:\n- {}",
            self.test,
            self.failures.len(),
            self.failures.join("\n- ")
        );
    }
}

/// Prints a per-test breakdown: transitions per side and owner, how often the current task was
/// not the owner (the reason twtrace exists), and twtrace's own summary line.
pub fn print_breakdown(
    test: &str,
    trace: &Trace,
    events: &[&Event],
    port: u16,
    pids: &[(&str, u32)],
) {
    let who = |pid: u32| {
        pids.iter()
            .find(|(_, p)| *p == pid)
            .map(|(name, _)| (*name).to_owned())
            .unwrap_or_else(|| format!("pid{pid}"))
    };
    let mut hist: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        let side = if e.lport == port {
            "server-side"
        } else {
            "client-side"
        };
        let mut key = format!(
            "{side} {:<24} pid={} {}",
            e.transition(),
            who(e.pid),
            e.attribution
        );
        if let Some(reset) = &e.reset {
            key.push_str(&format!(" reset={reset}"));
        }
        *hist.entry(key).or_default() += 1;
    }
    eprintln!(
        "[{test}] {} events on port {port} ({} in total); twtrace stderr tail: {:?}",
        events.len(),
        trace.events.len(),
        trace.stderr.last()
    );
    for (key, n) in &hist {
        eprintln!("[{test}]   {n:>6}  {key}");
    }
    let differs = events.iter().filter(|e| e.current_pid != e.pid).count();
    eprintln!(
        "[{test}] current_pid != attributed pid in {differs} of {} events (softirq ran in another task)",
        events.len()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        assert_eq!(
            parse_summary("twtrace: 12 events, 0 lost, 3 unattributed"),
            Some(Summary {
                events: 12,
                lost: 0,
                unattributed: 3
            })
        );
        assert_eq!(
            parse_summary("twtrace: 1 events, 2 lost, 3 unattributed (pid filter)").map(|s| s.lost),
            Some(2)
        );
        assert_eq!(parse_summary("twtrace: tracing"), None);
        assert_eq!(
            parse_summary("twtrace: x events, 0 lost, 0 unattributed"),
            None
        );
        assert_eq!(
            parse_summary("warn twtrace: 1 events, 0 lost, 0 unattributed"),
            None
        );
    }

    #[test]
    fn rfc3339() {
        assert!(is_rfc3339_utc("2025-11-25T16:01:02Z"));
        assert!(is_rfc3339_utc("2025-11-25T16:01:02.123456789Z"));
        assert!(is_rfc3339_utc("2025-11-25T16:01:02.5+00:00"));
        assert!(!is_rfc3339_utc("2025-11-25 16:01:02Z"));
        assert!(!is_rfc3339_utc("2025-11-25T16:01:02"));
        assert!(!is_rfc3339_utc("2025-11-25T16:01:02.Z"));
        assert!(!is_rfc3339_utc("2025-11-25T16:01:02+01:00"));
        assert!(!is_rfc3339_utc("1764086462"));
    }

    #[test]
    fn event_contract() {
        let line = r#"{"time":"2025-11-25T16:01:02.000001Z","pid":7,"comm":"c","family":"ipv4",
            "laddr":"127.0.0.1","lport":1,"raddr":"127.0.0.1","rport":2,"old":"FIN_WAIT2",
            "new":"TIME_WAIT","attribution":"owner","cookie":5,"current_pid":0}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert!(
            e.contract_violations().is_empty(),
            "{:?}",
            e.contract_violations()
        );
        let bad = line
            .replace("\"TIME_WAIT\"", "\"TCP_TIME_WAIT\"")
            .replace("\"127.0.0.1\",\"lport\"", "\"::ffff:127.0.0.1\",\"lport\"");
        let e: Event = serde_json::from_str(&bad).unwrap();
        assert_eq!(
            e.contract_violations().len(),
            2,
            "{:?}",
            e.contract_violations()
        );
        // A missing required field is a parse error, not a default.
        assert!(
            serde_json::from_str::<Event>(&line.replace("\"current_pid\":0", "\"x\":0")).is_err()
        );
    }
}
