//! Child processes for the tests: root check, the binary under test, guards that kill what
//! they started, and line readers with timeouts.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

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
pub fn line_reader<R: Read + Send + 'static>(name: String, pipe: R) -> Receiver<String> {
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
