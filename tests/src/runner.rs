//! twtrace itself, started and stopped by the tests: `Attached` (any command that says it is
//! tracing), `Twtrace` (`trace --json`) and what they printed.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::{
    READY_TIMEOUT, SETTLE, STOP_TIMEOUT,
    events::{Event, Trace, parse_summary},
    proc::{ChildGuard, line_reader, twtrace_bin, wait_for_line},
};

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
        Self::spawn(prefix, bin, args, None)
    }

    /// [`Attached::start`] with a reader of stdout that stopped reading: nothing is read from
    /// the pipe, cut to its smallest size (a page), until the returned sender is dropped.
    pub fn start_unread(args: &[String]) -> (Self, Sender<()>) {
        let (release, held) = mpsc::channel();
        (Self::spawn(&[], &twtrace_bin(), args, Some(held)), release)
    }

    fn spawn(prefix: &[String], bin: &Path, args: &[String], held: Option<Receiver<()>>) -> Self {
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
        if held.is_some() {
            // SAFETY: fcntl on a pipe descriptor this process owns (the child's stdout, open
            // until `stdout` drops); F_SETPIPE_SZ takes an int and changes only the buffer size.
            let r = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
            assert!(r >= 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
        }
        let stderr = guard.child_mut().stderr.take().expect("piped stderr");
        let stdout = thread::Builder::new()
            .name("twtrace-stdout".into())
            .spawn(move || {
                if let Some(held) = held {
                    // Returns when the sender is dropped.
                    let _ = held.recv();
                }
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
    pub fn stop_after(self, settle: Duration) -> Stopped {
        thread::sleep(settle);
        self.guard.signal(libc::SIGTERM);
        self.collect(STOP_TIMEOUT)
    }

    /// Waits up to `timeout` for twtrace to end by itself (`--watch`, `--duration`) and
    /// collects everything printed.
    pub fn wait_exit(self, timeout: Duration) -> Stopped {
        self.collect(timeout)
    }

    fn collect(mut self, timeout: Duration) -> Stopped {
        let status = self.guard.wait_timeout(timeout);
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
