//! The flight recorder's memory: `twtrace record --ring SECS -o DIR` (no trigger, so it never
//! writes a capture) while one generator churns long enough to fill the ring, then its peak RSS
//! and what the ring held at the end, from its own progress line.

use std::{
    fs,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::Result;

use super::{
    children::{ChildGuard, Scratch, StderrLines, dev_null},
    host::read_vm_hwm,
    measure::{Attach, Bins, DRAIN, Load, SETTLE, run_generators, wait_attached},
    parse::{RingProgress, Summary},
};

/// The generator runs this much longer than the ring's span, so the ring is full (its oldest
/// chunks dropped for a while) when RSS is read.
pub const RING_FILL_EXTRA: Duration = Duration::from_secs(15);

/// One run of the flight recorder.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RingSample {
    pub ring_secs: u64,
    pub churn_secs: u64,
    /// Generator connections per second.
    pub rate: f64,
    /// From twtrace's summary line.
    pub received: Option<u64>,
    pub lost: Option<u64>,
    /// VmHWM just before the stop signal.
    pub peak_rss_kib: Option<u64>,
    /// Its last progress line: the bytes the ring held and the span they covered.
    pub held: Option<RingProgress>,
}

/// The command, as the results show it.
pub fn shown_command(ring_secs: u64) -> String {
    format!("twtrace record --ring {ring_secs}s -o DIR")
}

/// Runs the flight recorder for a ring of `ring_secs` under one generator running `ring_secs`
/// plus [`RING_FILL_EXTRA`]. Err(why) when it did not attach or did not survive the run.
pub fn measure_ring(
    bins: &Bins,
    scratch: &Scratch,
    ring_secs: u64,
) -> Result<Result<RingSample, String>> {
    // As every measurement (see there): from an empty TIME_WAIT table.
    super::host::clear_loopback_timewait();
    let dir = scratch.file("ring");
    let mut cmd = Command::new(&bins.twtrace);
    cmd.args(["record", "--ring", &format!("{ring_secs}s"), "-o"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(dev_null()?)
        .stderr(Stdio::piped());
    let result = run(cmd, bins, scratch, ring_secs);
    // Nothing triggers a capture, but a SIGUSR1 from elsewhere could have.
    let _ = fs::remove_dir_all(&dir);
    result
}

fn run(
    mut cmd: Command,
    bins: &Bins,
    scratch: &Scratch,
    ring_secs: u64,
) -> Result<Result<RingSample, String>> {
    let shown = shown_command(ring_secs);
    let mut tracer = ChildGuard::spawn("twtrace", &mut cmd)?;
    let mut stderr = StderrLines::follow(&mut tracer)?;
    match wait_attached(&mut tracer, &mut stderr, "twtrace: tracing", None)? {
        Attach::Ready => {}
        Attach::Exited(status) => {
            stderr.finish(Duration::from_secs(2));
            return Ok(Err(format!(
                "`{shown}` exited ({status}) before attaching: {}",
                stderr.reason()
            )));
        }
        Attach::TimedOut => return Ok(Err(format!("`{shown}` did not report being attached"))),
    }
    thread::sleep(SETTLE);
    let churn = Duration::from_secs(ring_secs) + RING_FILL_EXTRA;
    let runs = run_generators(bins, scratch, Load::Single, churn)?;
    thread::sleep(DRAIN);
    let pid = tracer.pid();
    let peak_rss_kib = read_vm_hwm(pid);
    if let Some(status) = tracer.try_wait()? {
        stderr.finish(Duration::from_secs(2));
        return Ok(Err(format!(
            "`{shown}` exited during the run ({status}): {}",
            stderr.reason()
        )));
    }
    let _ = tracer.stop()?;
    stderr.finish(Duration::from_secs(5));
    let summary = stderr.seen.iter().rev().find_map(|l| Summary::parse(l));
    Ok(Ok(RingSample {
        ring_secs,
        churn_secs: churn.as_secs(),
        rate: runs.iter().map(|(_, r)| r.rate).sum(),
        received: summary.as_ref().map(|s| s.events),
        lost: summary.as_ref().map(|s| s.lost),
        peak_rss_kib,
        held: stderr
            .seen
            .iter()
            .rev()
            .find_map(|l| RingProgress::parse(l)),
    }))
}
