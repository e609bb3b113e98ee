//! `cargo xtask bench`: what twtrace costs a host that churns connections as fast as it can.
//!
//! The `churn` generator (tests/src/bin/churn.rs) makes loopback connections at the machine's
//! limit, once with nothing attached (mode a, the reference) and once under each tracer: (b)
//! `twtrace trace --json`, (c) the leaderboard in JSON mode, (d) `twtrace record`, (e) a
//! bpftrace one-liner printing every transition. Modes are interleaved within each round, so a
//! slow drift of the machine (the lead compiling, thermal limits) hits every mode alike, and
//! every tracer is compared with the (a) of its own round.
//!
//! Per tracer it reports the generator's throughput relative to (a), the events the tracer
//! should have seen (connections x transitions per connection, calibrated at start-up rather
//! than assumed), what it received and what it says it lost, its user+system CPU time per
//! event and its peak RSS. The result is a markdown document, printed on stdout and written to
//! `bench/results.md`; progress goes to stderr.
//!
//! Every child process runs under a guard that kills it when the bench fails or panics, and
//! also gets PR_SET_PDEATHSIG, so not even a killed xtask leaves a tracer attached. All traffic
//! stays on loopback.

use std::{
    collections::BTreeMap,
    env,
    ffi::OsString,
    fs::{self, File},
    io::{self, BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, TcpListener},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

use crate::{
    cargo::{self, Ebpf},
    run, setup, shell,
};

/// Transitions the bpftrace one-liner prints: the same tracepoint twtrace hooks, one line each,
/// so its cost is what the usual "just use bpftrace" answer costs.
const BPFTRACE_PROGRAM: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%d %s %d %d %d %d\n", pid, comm, args->oldstate, args->newstate, args->sport, args->dport); }"#;

/// How long a tracer may take to load and attach. bpftrace compiles its program with LLVM
/// first, which takes seconds on a busy 2-core machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// After the attach message: let the attachment settle before the traffic starts.
const SETTLE: Duration = Duration::from_millis(300);
/// Between the generator's end and the stop signal, so the tracer can drain what the last
/// connections queued.
const DRAIN: Duration = Duration::from_secs(1);
/// How long a tracer may take to exit after SIGINT before it is killed (and that is reported).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The generator gets this much longer than its own --duration before it counts as hung.
const GENERATOR_SLACK: Duration = Duration::from_secs(60);
/// Connections of the calibration run: enough to average out, few enough to take well under a
/// second with one client thread.
const CALIBRATION_CONNECTIONS: u64 = 300;

#[derive(Args)]
pub struct BenchArgs {
    /// Measurements per mode (interleaved: a, b, c, ... then again); min, median and max are
    /// reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Seconds of generator traffic per measurement.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Modes to measure, comma-separated: a = nothing attached (always measured: it is the
    /// reference), b = `twtrace trace --json`, c = leaderboard `twtrace --json --interval 1`,
    /// d = `twtrace record -o FILE`, e = bpftrace one-liner.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
    pub modes: Vec<Mode>,
    /// Leave out bpftrace (mode e), and do not install it.
    #[arg(long)]
    pub no_bpftrace: bool,
    /// Where to write the markdown results; a relative path is relative to the workspace root.
    #[arg(long, value_name = "FILE", default_value = "bench/results.md")]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Mode {
    /// Nothing attached: the reference.
    #[value(name = "a")]
    None,
    /// `twtrace trace --json > /dev/null`.
    #[value(name = "b")]
    Trace,
    /// `twtrace --json --interval 1 > /dev/null`.
    #[value(name = "c")]
    Leaderboard,
    /// `twtrace record -o FILE`.
    #[value(name = "d")]
    Record,
    /// The bpftrace one-liner, output to a file so its lines can be counted.
    #[value(name = "e")]
    Bpftrace,
}

impl Mode {
    fn letter(self) -> char {
        match self {
            Mode::None => 'a',
            Mode::Trace => 'b',
            Mode::Leaderboard => 'c',
            Mode::Record => 'd',
            Mode::Bpftrace => 'e',
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::None => "nothing attached",
            Mode::Trace => "trace --json",
            Mode::Leaderboard => "leaderboard --json",
            Mode::Record => "record -o FILE",
            Mode::Bpftrace => "bpftrace one-liner",
        }
    }

    /// The command as documented in the results (the binary's real path is in the header).
    fn shown_command(self) -> String {
        match self {
            Mode::None => "churn alone".to_owned(),
            Mode::Trace => "twtrace trace --json > /dev/null".to_owned(),
            Mode::Leaderboard => "twtrace --json --interval 1 > /dev/null".to_owned(),
            Mode::Record => "twtrace record -o FILE".to_owned(),
            Mode::Bpftrace => format!("bpftrace -e '{BPFTRACE_PROGRAM}' > FILE"),
        }
    }

    fn is_twtrace(self) -> bool {
        matches!(self, Mode::Trace | Mode::Leaderboard | Mode::Record)
    }
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if !run::is_root() {
        bail!("the bench loads eBPF programs (twtrace, bpftrace): run it as root");
    }
    let modes = selected_modes(&args.modes, args.no_bpftrace);
    let tools = setup::setup()?;
    let build = [
        "build",
        "--release",
        "-p",
        "twtrace",
        "-p",
        "twtrace-tests",
        "--bins",
    ];
    shell::run("build", &mut cargo::cargo(&tools, Ebpf::Require, build)?)?;
    let release = cargo::target_dir(&tools)?.join("release");
    let mut bins = Bins {
        twtrace: release.join("twtrace"),
        churn: release.join("churn"),
        bpftrace: None,
    };
    for bin in [&bins.twtrace, &bins.churn] {
        if !bin.is_file() {
            bail!("{} is missing after the build", bin.display());
        }
    }
    // Installing is part of the bench (mode e compares with what people use instead), but a
    // machine without apt or network still gets the twtrace rows, with the reason in row e.
    let mut bpftrace_missing = None;
    if modes.contains(&Mode::Bpftrace) {
        match ensure_bpftrace() {
            Ok(path) => bins.bpftrace = Some(path),
            Err(err) => {
                eprintln!("bench: bpftrace unavailable: {err:#}");
                bpftrace_missing = Some(format!("bpftrace could not be installed: {err:#}"));
            }
        }
    }

    let scratch = Scratch::create()?;
    let calibration = calibrate(&bins, &scratch)?;
    eprintln!(
        "bench: calibration: {} lines for {} connections = {:.2} transitions per connection \
         (plus {} of the listener)",
        calibration.connection_lines,
        calibration.connections,
        calibration.per_connection(),
        calibration.listener_lines
    );

    let netstat_before = read_tw_overflow();
    let load_at_start = fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let mut disturbances = Vec::new();
    let started = SystemTime::now();
    let duration = Duration::from_secs(args.duration);
    let mut results: BTreeMap<Mode, Vec<Outcome>> = BTreeMap::new();
    for round in 1..=args.rounds {
        let mut reference = None;
        for &mode in &modes {
            let earlier = results.get(&mode).map(Vec::as_slice).unwrap_or_default();
            let outcome = if let (Mode::Bpftrace, Some(why)) = (mode, &bpftrace_missing) {
                Outcome::Unavailable(why.clone())
            } else if let Some(why) = earlier.iter().find_map(Outcome::unavailable) {
                // Not attaching is a property of the build, not of the round: do not wait for
                // it again.
                Outcome::Unavailable(why.to_owned())
            } else {
                let others = other_tracers();
                if !others.is_empty() {
                    let note = format!(
                        "round {round} ({}): other tracers or compilers were running: {}",
                        mode.letter(),
                        others.join(", ")
                    );
                    eprintln!("bench: warning: {note}; the numbers are skewed");
                    disturbances.push(note);
                }
                measure(mode, &bins, &scratch, duration)?
            };
            if let (Mode::None, Outcome::Measured(sample)) = (mode, &outcome) {
                reference = Some(sample.rate);
            }
            eprintln!(
                "bench: round {round}/{} {}",
                args.rounds,
                progress_line(mode, &outcome, reference, &calibration)
            );
            results.entry(mode).or_default().push(outcome);
        }
    }
    let tw_overflow = match (netstat_before, read_tw_overflow()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };

    let report = Report {
        machine: Machine::probe(),
        date: utc_timestamp(started),
        command: shown_invocation(),
        revision: git_revision(),
        rounds: args.rounds,
        duration_secs: args.duration,
        calibration,
        rows: modes
            .iter()
            .map(|&mode| Row::aggregate(mode, &results, &calibration))
            .collect(),
        bpftrace_version: bins.bpftrace.as_deref().and_then(bpftrace_version),
        tw_overflow,
        load_at_start,
        disturbances,
    };
    let markdown = render(&report);
    print!("{markdown}");
    let out = workspace_root().join(&args.out);
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: results written to {}", out.display());
    Ok(())
}

/// The modes in a..e order, each once, always with the reference (a), without bpftrace when
/// asked.
fn selected_modes(requested: &[Mode], no_bpftrace: bool) -> Vec<Mode> {
    let mut modes: Vec<Mode> = requested
        .iter()
        .copied()
        .filter(|&m| !(no_bpftrace && m == Mode::Bpftrace))
        .chain([Mode::None])
        .collect();
    modes.sort();
    modes.dedup();
    modes
}

struct Bins {
    twtrace: PathBuf,
    churn: PathBuf,
    bpftrace: Option<PathBuf>,
}

/// A per-run directory for tracer output files, removed at the end (also on errors).
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    const PREFIX: &str = "twtrace-bench-";

    fn create() -> Result<Self> {
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

    fn file(&self, name: &str) -> PathBuf {
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

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process that is killed (SIGKILL) and reaped when dropped, unless it already exited:
/// whatever error ends the bench, no tracer stays attached and no generator keeps running.
struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
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
    fn stop(&mut self) -> Result<(ExitStatus, bool)> {
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
struct StderrLines {
    rx: Receiver<String>,
    seen: Vec<String>,
    closed: bool,
}

enum Next {
    Line(String),
    Timeout,
    Closed,
}

impl StderrLines {
    fn follow(child: &mut ChildGuard) -> Result<Self> {
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

    fn next(&mut self, timeout: Duration) -> Next {
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
    fn finish(&mut self, timeout: Duration) {
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
    fn reason(&self) -> String {
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

fn file_stdout(path: &Path) -> Result<Stdio> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Stdio::from(file))
}

fn dev_null() -> Result<Stdio> {
    let file = File::options()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    Ok(Stdio::from(file))
}

/// Our own stderr for a child's stdout: apt-get's progress must not end up in the results
/// stream on stdout.
fn to_stderr() -> Result<Stdio> {
    let fd = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stderr")?;
    Ok(Stdio::from(fd))
}

// ---------------------------------------------------------------------------------------------
// bpftrace

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Debian's bpftrace, installed with apt-get when missing.
fn ensure_bpftrace() -> Result<PathBuf> {
    if let Some(path) = find_on_path("bpftrace") {
        eprintln!("bench: bpftrace ok ({})", path.display());
        return Ok(path);
    }
    eprintln!("bench: bpftrace is missing: installing Debian's package with apt-get");
    for args in [&["update"][..], &["install", "-y", "bpftrace"][..]] {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(to_stderr()?);
        shell::run("install bpftrace", &mut cmd)?;
    }
    find_on_path("bpftrace").context("apt-get installed bpftrace, but it is not on PATH")
}

fn bpftrace_version(path: &Path) -> Option<String> {
    let out = Command::new(path)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One tracer: how to start it and how to tell that it is attached.
struct TracerSpec {
    name: &'static str,
    cmd: Command,
    /// Prefix of the stderr (or output file) line that says the probes are attached.
    attached: &'static str,
    /// Where its stdout goes when the bench reads it (bpftrace: to count lines).
    output: Option<PathBuf>,
    /// A file the tracer writes itself (the recording), removed after the measurement.
    written: Option<PathBuf>,
}

fn tracer_spec(mode: Mode, bins: &Bins, scratch: &Scratch) -> Result<Option<TracerSpec>> {
    let spec = match mode {
        Mode::None => return Ok(None),
        Mode::Trace | Mode::Leaderboard | Mode::Record => {
            let mut cmd = Command::new(&bins.twtrace);
            let mut written = None;
            match mode {
                Mode::Trace => {
                    cmd.args(["trace", "--json"]);
                }
                Mode::Leaderboard => {
                    cmd.args(["--json", "--interval", "1"]);
                }
                _ => {
                    let file = scratch.file("record.out");
                    cmd.args(["record", "-o"]).arg(&file);
                    written = Some(file);
                }
            }
            cmd.stdout(dev_null()?);
            TracerSpec {
                name: "twtrace",
                cmd,
                attached: "twtrace: tracing",
                output: None,
                written,
            }
        }
        Mode::Bpftrace => {
            let path = bins
                .bpftrace
                .as_ref()
                .context("bpftrace was not found or installed")?;
            let output = scratch.file("bpftrace.out");
            let mut cmd = Command::new(path);
            cmd.args(["-e", BPFTRACE_PROGRAM])
                .stdout(file_stdout(&output)?);
            TracerSpec {
                name: "bpftrace",
                cmd,
                attached: "Attaching ",
                output: Some(output),
                written: None,
            }
        }
    };
    Ok(Some(spec))
}

/// What one measurement of one mode gave.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Measured(Sample),
    /// The tracer never attached (it rejected its flags, exited, or could not be installed).
    Unavailable(String),
    /// It attached but did not survive the run.
    Failed(String),
}

impl Outcome {
    fn unavailable(&self) -> Option<&str> {
        match self {
            Outcome::Unavailable(why) => Some(why),
            _ => None,
        }
    }

    fn sample(&self) -> Option<&Sample> {
        match self {
            Outcome::Measured(sample) => Some(sample),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Sample {
    /// Generator connections per second.
    rate: f64,
    connections: u64,
    /// connect() calls that failed with EADDRNOTAVAIL, and other generator errors.
    addr_unavailable: u64,
    generator_errors: u64,
    tracer: Option<TracerSample>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct TracerSample {
    /// Events the tracer reported receiving (twtrace's summary; bpftrace's output lines).
    received: Option<u64>,
    /// Events the tracer says it lost.
    lost: Option<u64>,
    /// Anything else the summary line mentions (sockets not tracked, ...).
    summary_extra: String,
    /// utime+stime between attaching and just before the stop signal, in seconds.
    cpu_secs: Option<f64>,
    /// The same from process start to attaching (loading and verifying the program).
    startup_cpu_secs: Option<f64>,
    /// VmHWM just before the stop signal.
    peak_rss_kib: Option<u64>,
    /// Needed SIGKILL after SIGINT.
    killed: bool,
}

fn measure(mode: Mode, bins: &Bins, scratch: &Scratch, duration: Duration) -> Result<Outcome> {
    let Some(spec) = tracer_spec(mode, bins, scratch)? else {
        let run = run_generator(
            bins,
            scratch,
            &["--duration", &duration.as_secs().to_string()],
        )?;
        return Ok(Outcome::Measured(Sample {
            rate: run.rate,
            connections: run.connections,
            addr_unavailable: run.addr_unavailable,
            generator_errors: run.errors,
            tracer: None,
        }));
    };
    let result = measure_tracer(mode, spec, bins, scratch, duration);
    // The files are large and each measurement starts a new one.
    for name in ["record.out", "bpftrace.out"] {
        let _ = fs::remove_file(scratch.file(name));
    }
    result
}

fn measure_tracer(
    mode: Mode,
    mut spec: TracerSpec,
    bins: &Bins,
    scratch: &Scratch,
    duration: Duration,
) -> Result<Outcome> {
    spec.cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut tracer = ChildGuard::spawn(spec.name, &mut spec.cmd)?;
    let mut stderr = StderrLines::follow(&mut tracer)?;
    let ticks = clock_ticks()?;
    match wait_attached(
        &mut tracer,
        &mut stderr,
        spec.attached,
        spec.output.as_deref(),
    )? {
        Attach::Ready => {}
        Attach::Exited(status) => {
            stderr.finish(Duration::from_secs(2));
            return Ok(Outcome::Unavailable(format!(
                "not available in this build: `{}` exited ({status}) before attaching: {}",
                mode.shown_command(),
                stderr.reason()
            )));
        }
        Attach::TimedOut => {
            return Ok(Outcome::Unavailable(format!(
                "`{}` did not report being attached (`{}`) within {}s",
                mode.shown_command(),
                spec.attached,
                ATTACH_TIMEOUT.as_secs()
            )));
        }
    }
    thread::sleep(SETTLE);
    let pid = tracer.pid();
    let cpu_at_attach = read_cpu_ticks(pid);

    let run = run_generator(
        bins,
        scratch,
        &["--duration", &duration.as_secs().to_string()],
    )?;
    thread::sleep(DRAIN);
    // Read before the stop signal: afterwards the process is gone.
    let cpu_at_end = read_cpu_ticks(pid);
    let peak_rss_kib = read_vm_hwm(pid);
    if let Some(status) = tracer.try_wait()? {
        stderr.finish(Duration::from_secs(2));
        return Ok(Outcome::Failed(format!(
            "{} exited during the run ({status}): {}",
            spec.name,
            stderr.reason()
        )));
    }
    let (status, killed) = tracer.stop()?;
    stderr.finish(Duration::from_secs(5));
    if !killed && !status.success() {
        // twtrace and bpftrace both exit 0 on SIGINT; anything else means the numbers are
        // suspect, but they are still worth showing.
        eprintln!(
            "bench: warning: {} exited with {status} on SIGINT",
            spec.name
        );
    }

    let mut sample = TracerSample {
        cpu_secs: match (cpu_at_attach, cpu_at_end) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start) as f64 / ticks),
            _ => None,
        },
        startup_cpu_secs: cpu_at_attach.map(|t| t as f64 / ticks),
        peak_rss_kib,
        killed,
        ..TracerSample::default()
    };
    if mode.is_twtrace() {
        if let Some(summary) = stderr.seen.iter().rev().find_map(|l| Summary::parse(l)) {
            sample.received = Some(summary.events);
            sample.lost = Some(summary.lost);
            sample.summary_extra = summary.extra;
        }
    } else if let Some(output) = &spec.output {
        let (lines, lost_in_output) = count_bpftrace_output(output)?;
        let lost_on_stderr: u64 = stderr.seen.iter().filter_map(|l| bpftrace_lost(l)).sum();
        sample.received = Some(lines);
        sample.lost = Some(lost_in_output + lost_on_stderr);
    }
    if let Some(written) = &spec.written {
        let _ = fs::remove_file(written);
    }
    Ok(Outcome::Measured(Sample {
        rate: run.rate,
        connections: run.connections,
        addr_unavailable: run.addr_unavailable,
        generator_errors: run.errors,
        tracer: Some(sample),
    }))
}

enum Attach {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

fn wait_attached(
    tracer: &mut ChildGuard,
    stderr: &mut StderrLines,
    marker: &str,
    output: Option<&Path>,
) -> Result<Attach> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        match stderr.next(Duration::from_millis(100)) {
            Next::Line(line) if line.starts_with(marker) => return Ok(Attach::Ready),
            Next::Line(_) | Next::Timeout => {}
            // stderr closed: the process is exiting; its status comes below.
            Next::Closed => thread::sleep(Duration::from_millis(20)),
        }
        // Some bpftrace versions print "Attaching N probes..." on stdout, which goes to a file.
        if let Some(output) = output
            && file_starts_with(output, marker)
        {
            return Ok(Attach::Ready);
        }
        if let Some(status) = tracer.try_wait()? {
            return Ok(Attach::Exited(status));
        }
        if Instant::now() >= deadline {
            return Ok(Attach::TimedOut);
        }
    }
}

fn file_starts_with(path: &Path, prefix: &str) -> bool {
    let mut head = vec![0; prefix.len()];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == prefix.as_bytes())
}

/// The generator's final line.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct GeneratorRun {
    connections: u64,
    rate: f64,
    addr_unavailable: u64,
    errors: u64,
}

impl GeneratorRun {
    /// Parses `connections=<n> seconds=<f> rate=<f> [addr_unavailable=<n>] [errors=<n>]`.
    fn parse(line: &str) -> Option<Self> {
        let mut run = Self::default();
        let (mut connections, mut rate) = (None, None);
        for field in line.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            match key {
                "connections" => connections = Some(value.parse().ok()?),
                "rate" => rate = Some(value.parse().ok()?),
                "addr_unavailable" => run.addr_unavailable = value.parse().ok()?,
                "errors" => run.errors = value.parse().ok()?,
                // seconds and anything added later.
                _ => {}
            }
        }
        run.connections = connections?;
        run.rate = rate?;
        Some(run)
    }
}

/// Runs `churn` (2 client and 2 server threads, client closes first, unless `args` say
/// otherwise) and returns its result line.
fn run_generator(bins: &Bins, scratch: &Scratch, args: &[&str]) -> Result<GeneratorRun> {
    let out_path = scratch.file("churn.out");
    let err_path = scratch.file("churn.err");
    let mut cmd = Command::new(&bins.churn);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(file_stdout(&out_path)?)
        .stderr(file_stdout(&err_path)?);
    let shown = shell::display(&cmd);
    let mut child = ChildGuard::spawn("churn", &mut cmd)?;
    // The generator stops by itself; --duration or --count bound it, this only catches a hang.
    let limit = args
        .iter()
        .position(|&a| a == "--duration")
        .and_then(|i| args.get(i + 1))
        .and_then(|secs| secs.parse::<f64>().ok())
        .map_or(GENERATOR_SLACK, |secs| {
            Duration::from_secs_f64(secs) + GENERATOR_SLACK
        });
    let Some(status) = child.wait_timeout(limit)? else {
        bail!("`{shown}` did not finish within {}s", limit.as_secs());
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        bail!("`{shown}` failed ({status}): {}", stderr.trim());
    }
    let line = stdout.lines().last().unwrap_or_default();
    GeneratorRun::parse(line).with_context(|| {
        format!("`{shown}` printed no result line (stdout {stdout:?}, stderr {stderr:?})")
    })
}

// ---------------------------------------------------------------------------------------------
// Calibration: how many transitions one generator connection makes

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Calibration {
    connections: u64,
    /// Lines about the generator's connections.
    connection_lines: u64,
    /// Lines about the listener itself (CLOSE -> LISTEN, LISTEN -> CLOSE).
    listener_lines: u64,
}

impl Calibration {
    fn per_connection(&self) -> f64 {
        if self.connections == 0 {
            return 0.0;
        }
        self.connection_lines as f64 / self.connections as f64
    }

    /// Events a run of `connections` should produce: each run of the generator also opens and
    /// closes its own listener.
    fn expected(&self, connections: u64) -> u64 {
        (connections as f64 * self.per_connection()).round() as u64 + self.listener_lines
    }
}

/// Counts `twtrace trace --json --port PORT` lines: those of the listener (local port PORT, no
/// remote port) and those of connections (everything else, including `CLOSE -> SYN_SENT`,
/// which has local port 0).
fn count_calibration_lines(jsonl: &str, port: u16) -> Result<(u64, u64)> {
    let (mut connection, mut listener) = (0, 0);
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        let field = |name: &str| value.get(name).and_then(serde_json::Value::as_u64);
        let (Some(lport), Some(rport)) = (field("lport"), field("rport")) else {
            bail!("no lport/rport in {line:?}");
        };
        if lport == u64::from(port) && rport == 0 {
            listener += 1;
        } else {
            connection += 1;
        }
    }
    Ok((connection, listener))
}

/// A port nobody listens on right now, for the calibration run's port filter.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 for a port")?;
    Ok(listener.local_addr().context("local address")?.port())
}

fn calibrate(bins: &Bins, scratch: &Scratch) -> Result<Calibration> {
    let port = free_port()?;
    let output = scratch.file("calibration.jsonl");
    let mut cmd = Command::new(&bins.twtrace);
    cmd.args(["trace", "--json", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(file_stdout(&output)?)
        .stderr(Stdio::piped());
    let shown = shell::display(&cmd);
    eprintln!(
        "bench: calibrating: `{shown}` during {CALIBRATION_CONNECTIONS} connections of 1 client \
         and 1 server thread"
    );
    let mut tracer = ChildGuard::spawn("twtrace", &mut cmd)?;
    let mut stderr = StderrLines::follow(&mut tracer)?;
    match wait_attached(&mut tracer, &mut stderr, "twtrace: tracing", None)? {
        Attach::Ready => {}
        Attach::Exited(status) => {
            stderr.finish(Duration::from_secs(2));
            bail!(
                "calibration: `{shown}` exited ({status}): {}",
                stderr.reason()
            );
        }
        Attach::TimedOut => bail!("calibration: `{shown}` did not attach"),
    }
    thread::sleep(SETTLE);
    let port_arg = port.to_string();
    let count = CALIBRATION_CONNECTIONS.to_string();
    let run = run_generator(
        bins,
        scratch,
        &[
            "--port",
            &port_arg,
            "--count",
            &count,
            "--clients",
            "1",
            "--servers",
            "1",
            "--duration",
            "30",
        ],
    )?;
    thread::sleep(DRAIN);
    let (status, killed) = tracer.stop()?;
    stderr.finish(Duration::from_secs(5));
    if killed || !status.success() {
        bail!(
            "calibration: `{shown}` did not stop cleanly ({status}): {}",
            stderr.reason()
        );
    }
    let summary = stderr.seen.iter().rev().find_map(|l| Summary::parse(l));
    if let Some(summary) = &summary
        && summary.lost > 0
    {
        bail!("calibration: twtrace lost {} events", summary.lost);
    }
    let text =
        fs::read_to_string(&output).with_context(|| format!("reading {}", output.display()))?;
    let (connection_lines, listener_lines) = count_calibration_lines(&text, port)?;
    let calibration = Calibration {
        connections: run.connections,
        connection_lines,
        listener_lines,
    };
    if run.connections != CALIBRATION_CONNECTIONS
        || !(1.0..=30.0).contains(&calibration.per_connection())
    {
        bail!(
            "calibration: implausible: {connection_lines} lines for {} connections (wanted {})",
            run.connections,
            CALIBRATION_CONNECTIONS
        );
    }
    Ok(calibration)
}

// ---------------------------------------------------------------------------------------------
// Parsing what the tracers and the kernel report

/// twtrace's final stderr line: `twtrace: <n> events, <n> lost, <n> unattributed[, more]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Summary {
    events: u64,
    lost: u64,
    unattributed: u64,
    /// Whatever follows (e.g. `4 not tracked (socket table full)`), without the leading comma.
    extra: String,
}

impl Summary {
    fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("twtrace: ")?;
        let mut parts = rest.splitn(4, ", ");
        let mut number = |unit: &str| -> Option<u64> {
            let (n, word) = parts.next()?.split_once(' ')?;
            (word == unit).then_some(())?;
            n.parse().ok()
        };
        let events = number("events")?;
        let lost = number("lost")?;
        let unattributed = number("unattributed")?;
        let extra = parts.next().unwrap_or_default().to_owned();
        Some(Self {
            events,
            lost,
            unattributed,
            extra,
        })
    }
}

/// bpftrace's `Lost N events` warning (the perf buffer was full), anywhere in the line.
fn bpftrace_lost(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("Lost ")?;
    let (n, rest) = rest.split_once(' ')?;
    rest.starts_with("events").then_some(())?;
    n.parse().ok()
}

/// Output lines of the one-liner, and `Lost N events` found among them (bpftrace prints its
/// warnings on stdout in some versions).
fn count_bpftrace_output(path: &Path) -> Result<(u64, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut lines, mut lost) = (0, 0);
    for line in BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8_lossy(&line);
        if let Some(n) = bpftrace_lost(&text) {
            lost += n;
        } else if !text.trim().is_empty() && !text.starts_with("Attaching ") {
            lines += 1;
        }
    }
    Ok((lines, lost))
}

/// utime + stime (clock ticks) from the text of /proc/<pid>/stat: fields 14 and 15, counted
/// after the `(comm)` field, which may itself contain spaces and parentheses.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    let mut fields = after_comm.split_whitespace();
    // after_comm starts with field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmHWM (peak resident set) in KiB from the text of /proc/<pid>/status.
fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let kib = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib)
}

fn read_cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn read_vm_hwm(pid: u32) -> Option<u64> {
    parse_vm_hwm_kib(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn clock_ticks() -> Result<f64> {
    // SAFETY: sysconf(3) only reads a configuration value; _SC_CLK_TCK is a valid name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks as f64)
}

/// `TcpExt: TCPTimeWaitOverflow` from the text of /proc/net/netstat (a line of names followed
/// by a line of values, per protocol).
fn parse_tw_overflow(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        let (Some(names), Some(values)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) else {
            continue;
        };
        let index = names
            .split_whitespace()
            .position(|n| n == "TCPTimeWaitOverflow")?;
        return values.split_whitespace().nth(index)?.parse().ok();
    }
    None
}

/// twtrace and bpftrace processes running now (none of ours is running when this is called):
/// their kernel programs run on every transition too and would be billed to the mode measured.
/// Also rustc: on a small machine a build next door takes the CPU the generator needs.
fn other_tracers() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        // A zombie has no programs attached any more.
        let zombie = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(')')?.1.trim_start().starts_with('Z')))
            .unwrap_or(true);
        if matches!(comm, "twtrace" | "bpftrace" | "rustc") && !zombie {
            found.push(format!("pid {pid} ({comm})"));
        }
    }
    found
}

fn read_tw_overflow() -> Option<u64> {
    parse_tw_overflow(&fs::read_to_string("/proc/net/netstat").ok()?)
}

// ---------------------------------------------------------------------------------------------
// Aggregation

/// Minimum, median and maximum of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }
}

/// One table row: a mode over all rounds.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    mode: Mode,
    result: RowResult,
}

#[derive(Clone, Debug, PartialEq)]
enum RowResult {
    Unavailable(String),
    Measured(Stats),
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Stats {
    /// Rounds measured.
    rounds: usize,
    rate: Option<Spread>,
    /// Rate over the same round's (a).
    ratio: Option<Spread>,
    /// Summed over rounds.
    expected: u64,
    received: Option<u64>,
    lost: Option<u64>,
    cpu_us_per_event: Option<Spread>,
    startup_cpu_secs: Option<Spread>,
    peak_rss_kib: Option<u64>,
    /// Problems worth a note under the table.
    notes: Vec<String>,
}

impl Row {
    fn aggregate(mode: Mode, results: &BTreeMap<Mode, Vec<Outcome>>, cal: &Calibration) -> Self {
        let outcomes = results.get(&mode).map(Vec::as_slice).unwrap_or_default();
        let references = results
            .get(&Mode::None)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let measured: Vec<(usize, &Sample)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(round, o)| Some((round, o.sample()?)))
            .collect();
        if measured.is_empty() {
            let why = outcomes
                .iter()
                .find_map(|o| match o {
                    Outcome::Unavailable(why) | Outcome::Failed(why) => Some(why.clone()),
                    Outcome::Measured(_) => None,
                })
                .unwrap_or_else(|| "not measured".to_owned());
            return Self {
                mode,
                result: RowResult::Unavailable(why),
            };
        }

        let mut stats = Stats {
            rounds: measured.len(),
            ..Stats::default()
        };
        let rates: Vec<f64> = measured.iter().map(|(_, s)| s.rate).collect();
        stats.rate = Spread::of(&rates);
        let ratios: Vec<f64> = measured
            .iter()
            .filter_map(|&(round, s)| {
                let reference = references.get(round)?.sample()?.rate;
                (reference > 0.0).then(|| s.rate / reference)
            })
            .collect();
        stats.ratio = Spread::of(&ratios);
        let tracers: Vec<(u64, &TracerSample)> = measured
            .iter()
            .filter_map(|(_, s)| Some((s.connections, s.tracer.as_ref()?)))
            .collect();
        if !tracers.is_empty() {
            stats.expected = tracers.iter().map(|&(c, _)| cal.expected(c)).sum();
            stats.received = tracers.iter().map(|(_, t)| t.received).sum();
            stats.lost = tracers.iter().map(|(_, t)| t.lost).sum();
            let per_event: Vec<f64> = tracers
                .iter()
                .filter_map(|&(c, t)| {
                    // Per event received; when the tracer did not say, per event expected.
                    let events = t.received.unwrap_or_else(|| cal.expected(c));
                    (events > 0).then_some(t.cpu_secs? * 1e6 / events as f64)
                })
                .collect();
            stats.cpu_us_per_event = Spread::of(&per_event);
            let startup: Vec<f64> = tracers
                .iter()
                .filter_map(|(_, t)| t.startup_cpu_secs)
                .collect();
            stats.startup_cpu_secs = Spread::of(&startup);
            stats.peak_rss_kib = tracers.iter().filter_map(|(_, t)| t.peak_rss_kib).max();
            if tracers.iter().any(|(_, t)| t.received.is_none()) {
                stats.notes.push(
                    "no event count from the tracer in some rounds: CPU per event uses the \
                     expected count there"
                        .to_owned(),
                );
            }
            let killed = tracers.iter().filter(|(_, t)| t.killed).count();
            if killed > 0 {
                stats.notes.push(format!(
                    "did not exit within {}s of SIGINT in {killed} round(s) and was killed",
                    STOP_TIMEOUT.as_secs()
                ));
            }
            let mut extras: Vec<&str> = tracers
                .iter()
                .map(|(_, t)| t.summary_extra.as_str())
                .filter(|e| !e.is_empty())
                .collect();
            extras.dedup();
            for extra in extras {
                stats.notes.push(format!("summary also said: {extra}"));
            }
        }
        let unavailable: u64 = measured.iter().map(|(_, s)| s.addr_unavailable).sum();
        let errors: u64 = measured.iter().map(|(_, s)| s.generator_errors).sum();
        if unavailable > 0 || errors > 0 {
            stats.notes.push(format!(
                "generator: {unavailable} connect() EADDRNOTAVAIL, {errors} other errors"
            ));
        }
        for outcome in outcomes {
            if let Outcome::Failed(why) = outcome {
                stats.notes.push(format!("a round failed: {why}"));
            }
        }
        Self {
            mode,
            result: RowResult::Measured(stats),
        }
    }
}

fn progress_line(
    mode: Mode,
    outcome: &Outcome,
    reference: Option<f64>,
    cal: &Calibration,
) -> String {
    let head = format!("({}) {}", mode.letter(), mode.label());
    let sample = match outcome {
        Outcome::Measured(sample) => sample,
        Outcome::Unavailable(why) | Outcome::Failed(why) => return format!("{head}: {why}"),
    };
    let mut line = format!("{head}: {} conn/s", fmt_int(sample.rate.round() as u64));
    if let (Some(reference), Some(_)) = (reference, &sample.tracer)
        && reference > 0.0
    {
        line.push_str(&format!(" ({:.3} of (a))", sample.rate / reference));
    }
    if let Some(t) = &sample.tracer {
        line.push_str(&format!(
            ", {} events expected, {} received, {} lost",
            fmt_int(cal.expected(sample.connections)),
            t.received.map_or("?".to_owned(), fmt_int),
            t.lost.map_or("?".to_owned(), fmt_int)
        ));
        if let (Some(cpu), Some(received)) = (t.cpu_secs, t.received.filter(|&r| r > 0)) {
            line.push_str(&format!(
                ", CPU {:.2} µs/event ({cpu:.2} s)",
                cpu * 1e6 / received as f64
            ));
        }
        if let Some(kib) = t.peak_rss_kib {
            line.push_str(&format!(", RSS {:.1} MiB", kib as f64 / 1024.0));
        }
    }
    if sample.addr_unavailable > 0 || sample.generator_errors > 0 {
        line.push_str(&format!(
            ", generator: {} EADDRNOTAVAIL, {} errors",
            sample.addr_unavailable, sample.generator_errors
        ));
    }
    line
}

// ---------------------------------------------------------------------------------------------
// The report

#[derive(Clone, Debug, Default, PartialEq)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    mem_kib: Option<u64>,
    kernel: String,
}

impl Machine {
    fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    (key.trim() == "model name").then(|| value.trim().to_owned())
                })
                .unwrap_or_else(|| "unknown CPU".to_owned()),
            mem_kib: meminfo.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            }),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Report {
    machine: Machine,
    date: String,
    command: String,
    revision: Option<String>,
    rounds: u32,
    duration_secs: u64,
    calibration: Calibration,
    rows: Vec<Row>,
    bpftrace_version: Option<String>,
    tw_overflow: Option<u64>,
    /// /proc/loadavg's 1, 5 and 15 minute figures when the measurements began.
    load_at_start: Option<String>,
    /// Other tracers seen running before measurements.
    disturbances: Vec<String>,
}

fn render(report: &Report) -> String {
    let mut md = String::new();
    let m = &report.machine;
    let push = |md: &mut String, line: &str| {
        md.push_str(line);
        md.push('\n');
    };
    push(&mut md, "# twtrace overhead benchmark");
    push(&mut md, "");
    push(
        &mut md,
        &format!(
            "Measured {} with `{}`{}.",
            report.date,
            report.command,
            report
                .revision
                .as_ref()
                .map(|r| format!(" at {r}"))
                .unwrap_or_default()
        ),
    );
    push(&mut md, "");
    let mem = m
        .mem_kib
        .map(|k| format!("{:.1} GiB RAM", k as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown RAM".to_owned());
    push(
        &mut md,
        &format!(
            "- Machine: {} CPUs ({}), {mem}, Linux {}",
            m.cpus, m.cpu_model, m.kernel
        ),
    );
    push(
        &mut md,
        &format!(
            "- Workload: `churn` (tests/src/bin/churn.rs), 2 client + 2 server threads on \
             127.0.0.1, client closes first; {} s per measurement, {} round(s), modes \
             interleaved within each round",
            report.duration_secs, report.rounds
        ),
    );
    let cal = &report.calibration;
    push(
        &mut md,
        &format!(
            "- Transitions per connection: {:.2} (calibrated: `twtrace trace --json --port P` \
             printed {} lines for {} connections, plus {} for the listener)",
            cal.per_connection(),
            cal.connection_lines,
            cal.connections,
            cal.listener_lines
        ),
    );
    if let Some(v) = &report.bpftrace_version {
        push(&mut md, &format!("- bpftrace: {v}"));
    }
    if let Some(load) = &report.load_at_start {
        push(
            &mut md,
            &format!("- Load average when the measurements began: {load}"),
        );
    }
    push(&mut md, "");
    push(
        &mut md,
        "| mode | tracer | conn/s median (min–max) | vs (a) median (min–max) | events expected \
         | received | lost | tracer CPU µs/event median (min–max) | peak RSS |",
    );
    push(&mut md, "|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for row in &report.rows {
        let head = format!("({})", row.mode.letter());
        let label = row.mode.label();
        match &row.result {
            RowResult::Unavailable(why) => {
                push(
                    &mut md,
                    &format!("| {head} | {label} | not available | – | – | – | – | – | – |"),
                );
                notes.push(format!("({}) {}", row.mode.letter(), why));
            }
            RowResult::Measured(s) => {
                let rate = s.rate.map_or("–".to_owned(), |r| {
                    format!(
                        "{} ({}–{})",
                        fmt_int(r.median.round() as u64),
                        fmt_int(r.min.round() as u64),
                        fmt_int(r.max.round() as u64)
                    )
                });
                let is_reference = row.mode == Mode::None;
                let ratio = if is_reference {
                    "1 (reference)".to_owned()
                } else {
                    s.ratio.map_or("–".to_owned(), |r| {
                        format!("{:.3} ({:.3}–{:.3})", r.median, r.min, r.max)
                    })
                };
                let (expected, received, lost) = if is_reference {
                    ("–".to_owned(), "–".to_owned(), "–".to_owned())
                } else {
                    let received = s.received.map_or("?".to_owned(), |r| {
                        if s.expected > 0 {
                            format!(
                                "{} ({:.1}%)",
                                fmt_int(r),
                                r as f64 * 100.0 / s.expected as f64
                            )
                        } else {
                            fmt_int(r)
                        }
                    });
                    (
                        fmt_int(s.expected),
                        received,
                        s.lost.map_or("?".to_owned(), fmt_int),
                    )
                };
                let cpu = s.cpu_us_per_event.map_or("–".to_owned(), |c| {
                    format!("{:.2} ({:.2}–{:.2})", c.median, c.min, c.max)
                });
                let rss = s.peak_rss_kib.map_or("–".to_owned(), |k| {
                    format!("{:.1} MiB", k as f64 / 1024.0)
                });
                push(
                    &mut md,
                    &format!(
                        "| {head} | {label} | {rate} | {ratio} | {expected} | {received} | {lost} \
                         | {cpu} | {rss} |"
                    ),
                );
                if s.rounds < report.rounds as usize {
                    notes.push(format!(
                        "({}) measured in {} of {} rounds",
                        row.mode.letter(),
                        s.rounds,
                        report.rounds
                    ));
                }
                if let Some(startup) = s.startup_cpu_secs {
                    notes.push(format!(
                        "({}) start-up CPU (before attaching, not in the per-event figure): \
                         {:.2} s median",
                        row.mode.letter(),
                        startup.median
                    ));
                }
                for note in &s.notes {
                    notes.push(format!("({}) {note}", row.mode.letter()));
                }
            }
        }
    }
    notes.extend(report.disturbances.iter().cloned());
    if let Some(n) = report.tw_overflow.filter(|&n| n > 0) {
        notes.push(format!(
            "the kernel skipped {} TIME_WAIT entries during the bench \
             (TCPTimeWaitOverflow: net.ipv4.tcp_max_tw_buckets reached); the transitions are \
             the same either way",
            fmt_int(n)
        ));
    }
    push(&mut md, "");
    if !notes.is_empty() {
        push(&mut md, "Notes:");
        push(&mut md, "");
        for note in &notes {
            push(&mut md, &format!("- {note}"));
        }
        push(&mut md, "");
    }
    push(
        &mut md,
        &format!(
            "Commands (binaries from `target/release`; each tracer is started, awaited until \
             attached, then `churn --duration {}` runs, and the tracer gets SIGINT {} s after \
             the generator ends):",
            report.duration_secs,
            DRAIN.as_secs()
        ),
    );
    push(&mut md, "");
    for row in &report.rows {
        let shown = match row.mode {
            Mode::None => format!("churn --duration {}", report.duration_secs),
            mode => mode.shown_command(),
        };
        push(&mut md, &format!("- ({}) `{shown}`", row.mode.letter()));
    }
    push(&mut md, "");
    push(
        &mut md,
        "How to read it: *vs (a)* is the generator's rate under the tracer divided by its rate \
         with nothing attached in the same round. *Events expected* is connections × \
         transitions per connection (plus the generator's listener), summed over rounds; *received* and *lost* are the \
         tracer's own counts (twtrace: its `N events, N lost` summary line; bpftrace: its output \
         lines and `Lost N events` warnings). *Tracer CPU* is the tracer process's utime+stime \
         from attaching until just before the stop signal, per event received (µs per event = \
         s per million events); the eBPF program itself runs in the generator's context and \
         shows up as lost throughput instead. *Peak RSS* is VmHWM, the largest over rounds.",
    );
    push(&mut md, "");
    push(
        &mut md,
        "Targets (issue 5): vs (a) ≥ 0.97 for (b) and (c); no lost events at the generator's \
         maximum rate; ≤ 1.5 µs CPU per event for (c); peak RSS ≤ 64 MiB.",
    );
    md
}

/// `14102` -> `14,102`.
fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `YYYY-MM-DD HH:MM UTC`, without a date crate (days to civil date, after Howard Hinnant).
fn utc_timestamp(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// The command line as typed, `cargo xtask bench ...`.
fn shown_invocation() -> String {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    let mut cmd = Command::new("cargo");
    cmd.arg("xtask").args(args);
    shell::display(&cmd)
}

fn workspace_root() -> PathBuf {
    // xtask lives in <root>/xtask.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `commit abc1234` (plus a remark when the working tree has changes), for the header.
fn git_revision() -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["describe", "--always", "--dirty"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    if !out.status.success() || text.is_empty() {
        return None;
    }
    Some(match text.strip_suffix("-dirty") {
        Some(commit) => format!("commit {commit} with uncommitted changes"),
        None => format!("commit {text}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        assert_eq!(
            Summary::parse("twtrace: 20 events, 0 lost, 0 unattributed"),
            Some(Summary {
                events: 20,
                lost: 0,
                unattributed: 0,
                extra: String::new(),
            })
        );
        assert_eq!(
            Summary::parse(
                "twtrace: 10 events, 3 lost, 2 unattributed, 4 not tracked (socket table full), \
                 6 undecodable"
            ),
            Some(Summary {
                events: 10,
                lost: 3,
                unattributed: 2,
                extra: "4 not tracked (socket table full), 6 undecodable".to_owned(),
            })
        );
        // The running loss announcement and other messages are not the summary.
        for line in [
            "twtrace: 1234 events lost so far (ring buffer full: ...)",
            "twtrace: tracing TCP state changes; Ctrl-C to stop",
            "twtrace: x events, 0 lost, 0 unattributed",
            "10 events, 0 lost, 0 unattributed",
            "",
        ] {
            assert_eq!(Summary::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn parses_bpftrace_losses() {
        assert_eq!(bpftrace_lost("Lost 2583 events"), Some(2583));
        assert_eq!(bpftrace_lost("WARNING: Lost 7 events"), Some(7));
        assert_eq!(bpftrace_lost("Lost track of things"), None);
        assert_eq!(bpftrace_lost("1234 ddd 7 8 1 2"), None);
    }

    #[test]
    fn counts_bpftrace_output() {
        let path = env::temp_dir().join(format!("xtask-bench-count-{}", std::process::id()));
        fs::write(
            &path,
            "Attaching 1 probe...\n1 a 7 2 0 80\n2 b 2 1 5 80\nLost 12 events\n\n3 c 1 4 5 80\n",
        )
        .expect("temp file");
        let counted = count_bpftrace_output(&path);
        fs::remove_file(&path).expect("cleanup");
        assert_eq!(counted.expect("readable"), (3, 12));
    }

    #[test]
    fn parses_proc_stat_cpu() {
        // A comm with spaces and a parenthesis must not shift the fields.
        let stat = "4242 (tw (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 123 45 0 0 20 0 3 0 \
                    1000 200000000 3000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(168));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\ttwtrace\nVmPeak:\t  100000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(12345));
        assert_eq!(parse_vm_hwm_kib("Name:\tx\n"), None);
        assert_eq!(parse_vm_hwm_kib("VmHWM:\t 12 MB\n"), None);
    }

    #[test]
    fn parses_tw_overflow() {
        let netstat = "TcpExt: SyncookiesSent TCPTimeWaitOverflow TWRecycled\n\
                       TcpExt: 0 4321 9\n\
                       IpExt: InNoRoutes\n\
                       IpExt: 0\n";
        assert_eq!(parse_tw_overflow(netstat), Some(4321));
        assert_eq!(parse_tw_overflow("IpExt: A\nIpExt: 1\n"), None);
    }

    #[test]
    fn parses_the_generator_line() {
        assert_eq!(
            GeneratorRun::parse(
                "connections=1500 seconds=0.500 rate=3000.0 addr_unavailable=2 errors=1"
            ),
            Some(GeneratorRun {
                connections: 1500,
                rate: 3000.0,
                addr_unavailable: 2,
                errors: 1,
            })
        );
        // Only connections and rate are required.
        assert!(GeneratorRun::parse("connections=1 seconds=1 rate=1").is_some());
        assert_eq!(GeneratorRun::parse("connections=1 seconds=1"), None);
        assert_eq!(GeneratorRun::parse("1500 conns"), None);
        assert_eq!(GeneratorRun::parse(""), None);
    }

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(
            Spread::of(&[4.0, 1.0, 3.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.5,
                max: 4.0
            })
        );
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).map(|s| s.median), Some(5.0));
    }

    #[test]
    fn calibration_lines_split_listener_and_connections() {
        let port = 4000;
        let jsonl = r#"{"lport":4000,"rport":0,"old":"CLOSE","new":"LISTEN"}
{"lport":0,"rport":4000,"old":"CLOSE","new":"SYN_SENT"}
{"lport":50000,"rport":4000,"old":"SYN_SENT","new":"ESTABLISHED"}
{"lport":4000,"rport":50000,"old":"LISTEN","new":"SYN_RECV"}

{"lport":4000,"rport":0,"old":"LISTEN","new":"CLOSE"}
"#;
        assert_eq!(count_calibration_lines(jsonl, port).expect("valid"), (3, 2));
        assert!(count_calibration_lines("not json\n", port).is_err());
        assert!(count_calibration_lines("{\"pid\":1}\n", port).is_err());
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        assert_eq!(cal.per_connection(), 10.0);
        assert_eq!(cal.expected(14_000), 140_002);
        assert_eq!(Calibration::default().per_connection(), 0.0);
    }

    #[test]
    fn formats_numbers_and_dates() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(14_102), "14,102");
        assert_eq!(fmt_int(1_410_200), "1,410,200");
        assert_eq!(
            utc_timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00 UTC"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_087_000);
        assert_eq!(utc_timestamp(t), "2025-11-25 16:10 UTC");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn modes_are_ordered_with_the_reference_and_without_bpftrace_when_asked() {
        assert_eq!(
            selected_modes(&[Mode::Bpftrace, Mode::Trace, Mode::Trace], false),
            [Mode::None, Mode::Trace, Mode::Bpftrace]
        );
        assert_eq!(
            selected_modes(&[Mode::Bpftrace, Mode::Record], true),
            [Mode::None, Mode::Record]
        );
    }

    fn sample(rate: f64, connections: u64, received: u64, lost: u64, cpu: f64) -> Outcome {
        Outcome::Measured(Sample {
            rate,
            connections,
            tracer: Some(TracerSample {
                received: Some(received),
                lost: Some(lost),
                cpu_secs: Some(cpu),
                startup_cpu_secs: Some(0.1),
                peak_rss_kib: Some(20 * 1024),
                ..TracerSample::default()
            }),
            ..Sample::default()
        })
    }

    fn reference(rate: f64) -> Outcome {
        Outcome::Measured(Sample {
            rate,
            connections: 1000,
            ..Sample::default()
        })
    }

    #[test]
    fn aggregates_against_the_same_rounds_reference() {
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        let mut results = BTreeMap::new();
        results.insert(Mode::None, vec![reference(100.0), reference(200.0)]);
        results.insert(
            Mode::Trace,
            vec![
                sample(99.0, 1000, 10_000, 0, 0.01),
                sample(190.0, 1000, 9_000, 1000, 0.009),
            ],
        );
        results.insert(
            Mode::Leaderboard,
            vec![Outcome::Unavailable("rejected --interval".to_owned())],
        );
        let row = Row::aggregate(Mode::Trace, &results, &cal);
        let RowResult::Measured(stats) = row.result else {
            panic!("measured expected");
        };
        let ratio = stats.ratio.expect("ratio");
        assert!((ratio.min - 0.95).abs() < 1e-9);
        assert!((ratio.max - 0.99).abs() < 1e-9);
        assert_eq!(stats.expected, 20_004);
        assert_eq!(stats.received, Some(19_000));
        assert_eq!(stats.lost, Some(1000));
        let cpu = stats.cpu_us_per_event.expect("cpu");
        assert!((cpu.median - 1.0).abs() < 1e-9);
        assert_eq!(stats.peak_rss_kib, Some(20 * 1024));
        assert_eq!(
            Row::aggregate(Mode::Leaderboard, &results, &cal).result,
            RowResult::Unavailable("rejected --interval".to_owned())
        );
    }

    #[test]
    fn renders_the_markdown_table() {
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        let mut results = BTreeMap::new();
        results.insert(Mode::None, vec![reference(14_000.0)]);
        results.insert(
            Mode::Trace,
            vec![sample(13_720.0, 13_720, 137_200, 0, 0.0686)],
        );
        results.insert(
            Mode::Record,
            vec![Outcome::Unavailable(
                "not available in this build".to_owned(),
            )],
        );
        let report = Report {
            machine: Machine {
                cpus: 2,
                cpu_model: "Test CPU".to_owned(),
                mem_kib: Some(24 * 1024 * 1024),
                kernel: "6.18.0".to_owned(),
            },
            date: "2025-11-25 16:10 UTC".to_owned(),
            command: "cargo xtask bench --rounds 1".to_owned(),
            revision: Some("commit abc1234".to_owned()),
            rounds: 1,
            duration_secs: 10,
            calibration: cal,
            rows: [Mode::None, Mode::Trace, Mode::Record]
                .iter()
                .map(|&m| Row::aggregate(m, &results, &cal))
                .collect(),
            bpftrace_version: None,
            tw_overflow: Some(5),
            load_at_start: Some("0.50 0.40 0.30".to_owned()),
            disturbances: vec![
                "round 1 (b): other tracers or compilers were running: pid 7 (twtrace)".to_owned(),
            ],
        };
        let md = render(&report);
        assert!(md.starts_with("# twtrace overhead benchmark\n"));
        assert!(md.contains(
            "Measured 2025-11-25 16:10 UTC with `cargo xtask bench --rounds 1` at commit abc1234."
        ));
        assert!(md.contains("- Machine: 2 CPUs (Test CPU), 24.0 GiB RAM, Linux 6.18.0"));
        assert!(md.contains("- Transitions per connection: 10.00"));
        assert!(md.contains(
            "| (a) | nothing attached | 14,000 (14,000–14,000) | 1 (reference) | – | – | – | – | – |"
        ));
        assert!(md.contains(
            "| (b) | trace --json | 13,720 (13,720–13,720) | 0.980 (0.980–0.980) | 137,202 \
             | 137,200 (100.0%) | 0 | 0.50 (0.50–0.50) | 20.0 MiB |"
        ));
        assert!(md.contains("| (d) | record -o FILE | not available | – | – | – | – | – | – |"));
        assert!(md.contains("- (d) not available in this build"));
        assert!(md.contains("skipped 5 TIME_WAIT entries"));
        assert!(md.contains("- Load average when the measurements began: 0.50 0.40 0.30"));
        assert!(
            md.contains("- round 1 (b): other tracers or compilers were running: pid 7 (twtrace)")
        );
        assert!(md.contains("- (a) `churn --duration 10`"));
        assert!(md.contains("- (b) `twtrace trace --json > /dev/null`"));
        // Every table line has the same number of columns.
        let widths: Vec<usize> = md
            .lines()
            .filter(|l| l.starts_with("| "))
            .map(|l| l.matches(" | ").count())
            .collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{widths:?}");
    }
}
