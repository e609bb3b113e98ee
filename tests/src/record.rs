//! Harness for recordings: `twtrace record -o FILE ...` as a child process, and the no-root
//! commands that read a recording (`report`, `trace --from`), optionally run as another user.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    sync::mpsc::Receiver,
    time::Duration,
};

use crate::{ChildGuard, READY_TIMEOUT, STOP_TIMEOUT, line_reader, twtrace_bin, wait_for_line};

/// A running `twtrace record`.
pub struct Recording {
    pub guard: ChildGuard,
    pub path: PathBuf,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What a stopped recorder printed.
pub struct Recorded {
    pub status: ExitStatus,
    pub stderr: Vec<String>,
}

impl Recording {
    /// Starts `twtrace record -o PATH <args>` and returns once it is attached.
    pub fn start(path: &Path, args: &[String]) -> Self {
        let bin = twtrace_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("record")
            .arg("-o")
            .arg(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        eprintln!(
            "starting {} record -o {} {}",
            bin.display(),
            path.display(),
            args.join(" ")
        );
        let mut guard = ChildGuard::spawn("twtrace record", &mut cmd);
        let stderr = guard.child_mut().stderr.take().expect("piped stderr");
        let stderr = line_reader("record-stderr".into(), stderr);
        let mut stderr_seen = Vec::new();
        wait_for_line(
            &stderr,
            "`twtrace: tracing` on stderr",
            READY_TIMEOUT,
            &mut stderr_seen,
            |l| l.starts_with("twtrace: tracing"),
        );
        assert!(
            stderr_seen.iter().any(|l| {
                l == &format!("twtrace: recording to {}", path.display())
                    || l.starts_with("twtrace: flight recorder: keeping the last")
            }),
            "no `twtrace: recording to` line: {stderr_seen:#?}"
        );
        Self {
            guard,
            path: path.to_owned(),
            stderr,
            stderr_seen,
        }
    }

    /// Waits for a stderr line starting with `prefix` and returns it.
    pub fn wait_for_stderr(&mut self, prefix: &str, timeout: Duration) -> String {
        wait_for_line(
            &self.stderr,
            &format!("`{prefix}` on stderr"),
            timeout,
            &mut self.stderr_seen,
            |l| l.starts_with(prefix),
        )
    }

    /// Sends `signal` and waits for the recorder to exit (or waits for it to exit on its own
    /// with `signal` 0).
    pub fn stop(mut self, signal: libc::c_int) -> Recorded {
        if signal != 0 {
            self.guard.signal(signal);
        }
        let status = self.guard.wait_timeout(STOP_TIMEOUT);
        let mut stderr = self.stderr_seen;
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            stderr.push(line);
        }
        for line in &stderr {
            eprintln!("  record stderr: {line}");
        }
        Recorded { status, stderr }
    }
}

/// Runs `twtrace <args>` to completion; with `as_nobody`, as uid/gid 65534 through setpriv, to
/// prove reading a recording needs no privileges.
pub fn twtrace_output(args: &[&str], as_nobody: bool) -> Output {
    let bin = twtrace_bin();
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(args).stdin(Stdio::null());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", bin.display()));
    eprintln!(
        "twtrace {} -> {}; stderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    out
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("twtrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
