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

mod aggregate;
mod bpftrace;
mod calibrate;
mod children;
mod host;
mod measure;
mod mode;
mod parse;
mod report;

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use self::mode::Mode;
use self::{
    aggregate::Row,
    bpftrace::{bpftrace_version, ensure_bpftrace},
    calibrate::calibrate,
    children::Scratch,
    host::{Machine, load_average, other_tracers, read_tw_overflow},
    measure::{Bins, Outcome, measure},
    report::{
        Report, git_revision, progress_line, render, shown_invocation, utc_timestamp,
        workspace_root,
    },
};
use crate::{
    cargo::{self, Ebpf},
    run, setup, shell,
};

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
    let load_at_start = load_average();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
