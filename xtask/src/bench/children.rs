//! Child processes: a guard that kills a child when the bench fails or panics (and makes the
//! kernel kill it if xtask dies), its stderr followed line by line, where its stdout goes, and the
//! scratch directory for the files the tracers write.

use std::{
    env,
    fs::{self, File},
    io::{self, BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::shell;

/// How long a tracer may take to exit after SIGINT before it is killed (and that is reported).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A per-run directory for tracer output files, removed at the end (also on errors).
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    const PREFIX: &str = "twtrace-bench-";

    pub fn create() -> Result<Self> {
        Self::remove_stale();
        let dir = env::temp_dir().join(format!("{}{}", Self::PREFIX, std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// A bench killed by a signal runs no destructors; its directory is removed by the next run
    /// once its pid is gone.
    fn remove_stale() {
        let Ok(entries) = fs::read_dir(env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(Self::PREFIX))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Recordings of a 10 s run are tens of MB: never leave them behind.
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("bench: warning: removing {}: {err}", self.dir.display());
        }
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped, unless it already exited:
/// whatever error ends the bench, no tracer stays attached and no generator keeps running.
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let die_with_parent = || -> io::Result<()> {
            // SAFETY: prctl(2) is a plain system call, async-signal-safe, and so allowed between
            // fork and exec; PR_SET_PDEATHSIG takes a signal number and ignores the rest.
            let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child before exec; it only calls prctl(2),
        // which neither allocates nor takes locks.
        unsafe { cmd.pre_exec(die_with_parent) };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: `{}`", shell::display(cmd)))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is our own child and has
        // not been reaped (no status recorded), so it cannot have been reused by another process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("sending signal {signal} to {}", self.name));
        }
        Ok(())
    }

    /// SIGINT (what Ctrl-C sends, so the tracer prints its summary), then SIGKILL if it does not
    /// exit in time. Returns the exit status and whether it had to be killed.
    pub fn stop(&mut self) -> Result<(ExitStatus, bool)> {
        self.signal(libc::SIGINT)?;
        if let Some(status) = self.wait_timeout(STOP_TIMEOUT)? {
            return Ok((status, false));
        }
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.name))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.status = Some(status);
        Ok((status, true))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Errors are ignored: it may have exited on its own since, which is what we want.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lines a child writes to stderr, collected by a thread so the bench can wait for one with
/// a timeout (and never blocks on a full pipe).
pub struct StderrLines {
    rx: Receiver<String>,
    pub seen: Vec<String>,
    closed: bool,
}

pub enum Next {
    Line(String),
    Timeout,
    Closed,
}

impl StderrLines {
    pub fn follow(child: &mut ChildGuard) -> Result<Self> {
        let stderr = child
            .child
            .stderr
            .take()
            .context("the child's stderr is not piped")?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("{}-stderr", child.name))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    // A non-UTF-8 line ends the stream; the send fails only when nobody reads.
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("starting the stderr reader thread")?;
        Ok(Self {
            rx,
            seen: Vec::new(),
            closed: false,
        })
    }

    pub fn next(&mut self, timeout: Duration) -> Next {
        if self.closed {
            return Next::Closed;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Next::Line(line)
            }
            Err(RecvTimeoutError::Timeout) => Next::Timeout,
            Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                Next::Closed
            }
        }
    }

    /// Collects what is left after the child exited (the pipe then closes promptly).
    pub fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Next::Closed = self.next(left) {
                break;
            }
        }
    }

    /// Why a child failed, in one line: its first `error` line (clap's `error: unexpected
    /// argument ...`, anyhow's `Error: ...`) if it printed one, else its last few lines (a usage
    /// text's tail says nothing).
    pub fn reason(&self) -> String {
        if let Some(line) = self
            .seen
            .iter()
            .find(|l| l.to_ascii_lowercase().contains("error"))
        {
            return line.trim().to_owned();
        }
        let start = self.seen.len().saturating_sub(3);
        let tail: Vec<&str> = self.seen[start..]
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        if tail.is_empty() {
            "(nothing on stderr)".to_owned()
        } else {
            tail.join(" | ")
        }
    }
}

pub fn file_stdout(path: &Path) -> Result<Stdio> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Stdio::from(file))
}

pub fn dev_null() -> Result<Stdio> {
    let file = File::options()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    Ok(Stdio::from(file))
}
