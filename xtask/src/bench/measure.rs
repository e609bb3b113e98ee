//! One measurement: start a tracer (or none), wait until it is attached, run the generator, then
//! stop the tracer and collect what it and the kernel report.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    children::{ChildGuard, Next, Scratch, StderrLines, dev_null, file_stdout},
    host::{clear_loopback_timewait, clock_ticks, read_cpu_ticks, read_tw_overflow, read_vm_hwm},
    mode::{BPFTRACE_PROGRAM, Mode, floor_hooks_program},
    parse::{GeneratorRun, Summary, bpftrace_lost, closes_by_pid, count_bpftrace_output},
};
use crate::shell;

/// How long a tracer may take to load and attach. bpftrace compiles its program with LLVM
/// first, which takes seconds on a busy 2-core machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// After the attach message: let the attachment settle before the traffic starts.
pub const SETTLE: Duration = Duration::from_millis(300);
/// Between the generator's end and the stop signal, so the tracer can drain what the last
/// connections queued.
pub const DRAIN: Duration = Duration::from_secs(1);
/// The generator gets this much longer than its own --duration before it counts as hung.
const GENERATOR_SLACK: Duration = Duration::from_secs(60);

/// Generator processes of the peak load.
pub const PEAK_GENERATORS: usize = 4;

/// How the connections are made: one generator with 2 client and 2 server threads (the
/// default set), or [`PEAK_GENERATORS`] generators at once with 1 of each, every one on its own
/// listener (port 0: the kernel picks a free one each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    Single,
    Peak,
}

impl Load {
    pub fn generators(self) -> usize {
        match self {
            Load::Single => 1,
            Load::Peak => PEAK_GENERATORS,
        }
    }

    /// churn's arguments besides --duration.
    fn generator_args(self) -> &'static [&'static str] {
        match self {
            Load::Single => &[],
            Load::Peak => &["--clients", "1", "--servers", "1"],
        }
    }

    /// How the generators are run, for the results.
    pub fn shown_generators(self, duration_secs: u64) -> String {
        match self {
            Load::Single => format!("churn --duration {duration_secs}"),
            Load::Peak => format!(
                "{PEAK_GENERATORS} × churn --clients 1 --servers 1 --duration {duration_secs}, \
                 started together"
            ),
        }
    }
}

pub struct Bins {
    pub twtrace: PathBuf,
    pub churn: PathBuf,
    pub bpftrace: Option<PathBuf>,
}

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
    /// Where the leaderboard's JSON snapshots go when the bench checks them against the
    /// generators' own counts.
    snapshots: Option<PathBuf>,
}

/// Scratch files a measurement may leave, removed after each one.
const SCRATCH_FILES: [&str; 4] = [
    "record.out",
    "bpftrace.out",
    "floor.out",
    "leaderboard.jsonl",
];

fn tracer_spec(
    mode: Mode,
    load: Load,
    bins: &Bins,
    scratch: &Scratch,
) -> Result<Option<TracerSpec>> {
    let spec = match mode {
        Mode::None => return Ok(None),
        Mode::Trace | Mode::Leaderboard | Mode::Record => {
            let mut cmd = Command::new(&bins.twtrace);
            let (mut written, mut snapshots) = (None, None);
            match mode {
                Mode::Trace => {
                    cmd.args(["trace", "--json"]);
                }
                Mode::Leaderboard => {
                    cmd.args(["--json", "--interval", "1"]);
                    // At peak the final snapshot's per-pid counts are checked; one line per
                    // second is nothing next to the events.
                    if load == Load::Peak {
                        snapshots = Some(scratch.file("leaderboard.jsonl"));
                    }
                }
                _ => {
                    let file = scratch.file("record.out");
                    cmd.args(["record", "-o"]).arg(&file);
                    written = Some(file);
                }
            }
            match &snapshots {
                Some(file) => cmd.stdout(file_stdout(file)?),
                None => cmd.stdout(dev_null()?),
            };
            TracerSpec {
                name: "twtrace",
                cmd,
                attached: "twtrace: tracing",
                output: None,
                written,
                snapshots,
            }
        }
        // The floor's output file only because this bpftrace says it attached there; nothing
        // else comes.
        Mode::Floor => bpftrace_spec(bins, scratch, &floor_hooks_program(), "floor.out")?,
        Mode::Bpftrace => bpftrace_spec(bins, scratch, BPFTRACE_PROGRAM, "bpftrace.out")?,
    };
    Ok(Some(spec))
}

/// bpftrace running `program`, its stdout in the scratch file `file`.
fn bpftrace_spec(bins: &Bins, scratch: &Scratch, program: &str, file: &str) -> Result<TracerSpec> {
    let path = bins
        .bpftrace
        .as_ref()
        .context("bpftrace was not found or installed")?;
    let output = scratch.file(file);
    let mut cmd = Command::new(path);
    cmd.args(["-e", program]).stdout(file_stdout(&output)?);
    Ok(TracerSpec {
        name: "bpftrace",
        cmd,
        attached: "Attaching ",
        output: Some(output),
        written: None,
        snapshots: None,
    })
}

/// What one measurement of one mode gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Measured(Sample),
    /// The tracer never attached (it rejected its flags, exited, or could not be installed).
    Unavailable(String),
    /// It attached but did not survive the run.
    Failed(String),
}

impl Outcome {
    pub fn unavailable(&self) -> Option<&str> {
        match self {
            Outcome::Unavailable(why) => Some(why),
            _ => None,
        }
    }

    pub fn sample(&self) -> Option<&Sample> {
        match self {
            Outcome::Measured(sample) => Some(sample),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Generator connections per second, summed over the generators.
    pub rate: f64,
    /// Summed over the generators.
    pub connections: u64,
    /// Generator processes (each opens and closes one listener).
    pub generators: usize,
    /// connect() calls that failed with EADDRNOTAVAIL, and other generator errors.
    pub addr_unavailable: u64,
    pub generator_errors: u64,
    /// TIME_WAIT sockets the kernel did not make while the generators ran, its table being full
    /// (TCPTimeWaitOverflow); connections are much cheaper then.
    pub tw_overflow: Option<u64>,
    /// Boxed: most of a sample, and absent for the reference.
    pub tracer: Option<Box<TracerSample>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TracerSample {
    /// Events the tracer reported receiving (twtrace's summary; bpftrace's output lines).
    pub received: Option<u64>,
    /// Events the tracer says it lost.
    pub lost: Option<u64>,
    /// Of those, skipped by the kernel (another BPF program was running on that CPU).
    pub skipped: Option<u64>,
    /// Anything else the summary line mentions (sockets not tracked, ...).
    pub summary_extra: String,
    /// utime+stime between attaching and just before the stop signal, in seconds.
    pub cpu_secs: Option<f64>,
    /// The same from process start to attaching (loading and verifying the program).
    pub startup_cpu_secs: Option<f64>,
    /// VmHWM just before the stop signal.
    pub peak_rss_kib: Option<u64>,
    /// Needed SIGKILL after SIGINT.
    pub killed: bool,
    /// The leaderboard's final per-pid TIME_WAIT count against each generator's connections.
    pub exactness: Option<Exactness>,
    /// The size of the recording it wrote (`record -o FILE`), once it stopped.
    pub file_bytes: Option<u64>,
}

/// Client closes first, so each connection a generator made is one timewait entry by its pid
/// (TIME_WAIT, or an orphan's FIN_WAIT2 if its server thread was slow to close) or, rarely, a
/// client connection ended by a reset: the leaderboard's final count of those for that pid
/// (`closes_by_pid`) must equal it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exactness {
    /// Generators compared.
    pub checked: usize,
    pub mismatches: Vec<Mismatch>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub pid: u32,
    pub connections: u64,
    /// None: the pid is not in the final snapshot at all.
    pub timewait_entered: Option<u64>,
}

impl Exactness {
    pub fn check(generators: &[(u32, GeneratorRun)], closes: &BTreeMap<u32, u64>) -> Self {
        let mismatches = generators
            .iter()
            .filter_map(|&(pid, run)| {
                let counted = closes.get(&pid).copied();
                (counted != Some(run.connections)).then_some(Mismatch {
                    pid,
                    connections: run.connections,
                    timewait_entered: counted,
                })
            })
            .collect();
        Self {
            checked: generators.len(),
            mismatches,
        }
    }
}

/// The generators' runs summed into one sample, without a tracer.
fn generators_sample(runs: &[(u32, GeneratorRun)], tw_overflow: Option<u64>) -> Sample {
    Sample {
        rate: runs.iter().map(|(_, r)| r.rate).sum(),
        connections: runs.iter().map(|(_, r)| r.connections).sum(),
        generators: runs.len(),
        addr_unavailable: runs.iter().map(|(_, r)| r.addr_unavailable).sum(),
        generator_errors: runs.iter().map(|(_, r)| r.errors).sum(),
        tw_overflow,
        tracer: None,
    }
}

/// Each generator's pid and result line.
pub type Runs = Vec<(u32, GeneratorRun)>;

/// [`run_generators`], and how many TIME_WAIT sockets the kernel skipped meanwhile.
fn run_observed(
    bins: &Bins,
    scratch: &Scratch,
    load: Load,
    duration: Duration,
) -> Result<(Runs, Option<u64>)> {
    let before = read_tw_overflow();
    let runs = run_generators(bins, scratch, load, duration)?;
    let overflow = match (before, read_tw_overflow()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    Ok((runs, overflow))
}

pub fn measure(
    mode: Mode,
    load: Load,
    bins: &Bins,
    scratch: &Scratch,
    duration: Duration,
) -> Result<Outcome> {
    // Before the tracer starts, so it never sees them go.
    clear_loopback_timewait();
    let Some(spec) = tracer_spec(mode, load, bins, scratch)? else {
        let (runs, overflow) = run_observed(bins, scratch, load, duration)?;
        return Ok(Outcome::Measured(generators_sample(&runs, overflow)));
    };
    let result = measure_tracer(mode, load, spec, bins, scratch, duration);
    // The files are large and each measurement starts a new one.
    for name in SCRATCH_FILES {
        let _ = fs::remove_file(scratch.file(name));
    }
    result
}

fn measure_tracer(
    mode: Mode,
    load: Load,
    mut spec: TracerSpec,
    bins: &Bins,
    scratch: &Scratch,
    duration: Duration,
) -> Result<Outcome> {
    spec.cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut tracer = ChildGuard::spawn(spec.name, &mut spec.cmd)?;
    let mut stderr = StderrLines::follow(&mut tracer)?;
    let ticks = clock_ticks();
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

    let (runs, overflow) = run_observed(bins, scratch, load, duration)?;
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
            sample.skipped = Some(summary.skipped);
            sample.summary_extra = summary.extra;
        }
    } else if let Some(output) = spec.output.as_ref().filter(|_| mode == Mode::Bpftrace) {
        let (lines, lost_in_output) = count_bpftrace_output(output)?;
        let lost_on_stderr: u64 = stderr.seen.iter().filter_map(|l| bpftrace_lost(l)).sum();
        sample.received = Some(lines);
        sample.lost = Some(lost_in_output + lost_on_stderr);
    }
    if let Some(snapshots) = &spec.snapshots {
        let text = fs::read_to_string(snapshots)
            .with_context(|| format!("reading {}", snapshots.display()))?;
        match closes_by_pid(&text) {
            Ok(closes) => sample.exactness = Some(Exactness::check(&runs, &closes)),
            Err(err) => {
                return Ok(Outcome::Failed(format!(
                    "its final JSON snapshot could not be read: {err:#}"
                )));
            }
        }
    }
    if let Some(written) = &spec.written {
        sample.file_bytes = fs::metadata(written).ok().map(|m| m.len());
        let _ = fs::remove_file(written);
    }
    Ok(Outcome::Measured(Sample {
        tracer: Some(Box::new(sample)),
        ..generators_sample(&runs, overflow)
    }))
}

pub enum Attach {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

pub fn wait_attached(
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

/// A running `churn`, its stdout and stderr going to files.
struct Generator {
    child: ChildGuard,
    shown: String,
    out: PathBuf,
    err: PathBuf,
    /// How long it may take before it counts as hung.
    limit: Duration,
}

impl Generator {
    fn spawn(bins: &Bins, scratch: &Scratch, tag: &str, args: &[&str]) -> Result<Self> {
        let out = scratch.file(&format!("{tag}.out"));
        let err = scratch.file(&format!("{tag}.err"));
        let mut cmd = Command::new(&bins.churn);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file_stdout(&out)?)
            .stderr(file_stdout(&err)?);
        let shown = shell::display(&cmd);
        let child = ChildGuard::spawn("churn", &mut cmd)?;
        // The generator stops by itself; --duration or --count bound it, this only catches a
        // hang.
        let limit = args
            .iter()
            .position(|&a| a == "--duration")
            .and_then(|i| args.get(i + 1))
            .and_then(|secs| secs.parse::<f64>().ok())
            .map_or(GENERATOR_SLACK, |secs| {
                Duration::from_secs_f64(secs) + GENERATOR_SLACK
            });
        Ok(Self {
            child,
            shown,
            out,
            err,
            limit,
        })
    }

    /// Waits until `deadline` at the latest and returns its pid and result line.
    fn finish(mut self, deadline: Instant) -> Result<(u32, GeneratorRun)> {
        let shown = &self.shown;
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(status) = self.child.wait_timeout(left)? else {
            bail!("`{shown}` did not finish within {}s", self.limit.as_secs());
        };
        let stdout = fs::read_to_string(&self.out).unwrap_or_default();
        let stderr = fs::read_to_string(&self.err).unwrap_or_default();
        if !status.success() {
            bail!("`{shown}` failed ({status}): {}", stderr.trim());
        }
        let line = stdout.lines().last().unwrap_or_default();
        let run = GeneratorRun::parse(line).with_context(|| {
            format!("`{shown}` printed no result line (stdout {stdout:?}, stderr {stderr:?})")
        })?;
        Ok((self.child.pid(), run))
    }
}

/// Runs `churn` (2 client and 2 server threads, client closes first, unless `args` say
/// otherwise) and returns its result line.
pub fn run_generator(bins: &Bins, scratch: &Scratch, args: &[&str]) -> Result<GeneratorRun> {
    let generator = Generator::spawn(bins, scratch, "churn", args)?;
    let deadline = Instant::now() + generator.limit;
    Ok(generator.finish(deadline)?.1)
}

/// Runs the load's generators for `duration`, all started before any is awaited, and returns
/// each one's pid and result line.
pub fn run_generators(
    bins: &Bins,
    scratch: &Scratch,
    load: Load,
    duration: Duration,
) -> Result<Runs> {
    let secs = duration.as_secs().to_string();
    let args: Vec<&str> = load
        .generator_args()
        .iter()
        .copied()
        .chain(["--duration", secs.as_str()])
        .collect();
    // All spawned first: a failure to start one drops (kills) those already running.
    let generators = (0..load.generators())
        .map(|i| Generator::spawn(bins, scratch, &format!("churn-{i}"), &args))
        .collect::<Result<Vec<_>>>()?;
    let deadline = Instant::now() + duration + GENERATOR_SLACK;
    generators.into_iter().map(|g| g.finish(deadline)).collect()
}

/// Outcomes for the aggregation and report tests.
#[cfg(test)]
pub mod fixtures {
    use super::*;

    pub fn sample(rate: f64, connections: u64, received: u64, lost: u64, cpu: f64) -> Outcome {
        Outcome::Measured(Sample {
            rate,
            connections,
            generators: 1,
            tracer: Some(Box::new(TracerSample {
                received: Some(received),
                lost: Some(lost),
                cpu_secs: Some(cpu),
                startup_cpu_secs: Some(0.1),
                peak_rss_kib: Some(20 * 1024),
                ..TracerSample::default()
            })),
            ..Sample::default()
        })
    }

    pub fn reference(rate: f64) -> Outcome {
        Outcome::Measured(Sample {
            rate,
            connections: 1000,
            generators: 1,
            ..Sample::default()
        })
    }
}
