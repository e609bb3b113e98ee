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
//! Then (unless `--ring 0`) the flight recorder: `twtrace record --ring 60s -o DIR` while one
//! generator runs long enough to fill the ring, and its peak RSS (module `ring`).
//!
//! `--peak` adds the machine's highest churn: four generator processes at once (one client and
//! one server thread each), the same modes interleaved in rounds of their own, the leaderboard's
//! per-pid TIME_WAIT counts checked against each generator's connections, and then what each
//! of twtrace's kernel programs costs per hit, next to an empty program on the same tracepoint
//! (module `progcost`).
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
mod progcost;
mod report;
mod ring;

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
    bpftrace::{ensure_bpftool, ensure_bpftrace, tool_version},
    calibrate::calibrate,
    children::Scratch,
    host::{Machine, load_average, other_tracers},
    measure::{Bins, Load, Outcome, PEAK_GENERATORS, measure},
    progcost::measure_kernel_cost,
    report::{
        Peak, Report, git_revision, progress_line, render, shown_invocation, utc_timestamp,
        workspace_root,
    },
};
use crate::{
    cargo::{self, Ebpf},
    setup, shell,
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
    /// d = `twtrace record -o FILE`, e = bpftrace one-liner, f = empty bpftrace programs on
    /// twtrace's tracepoints (the floor of any tracer of them).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e,f")]
    pub modes: Vec<Mode>,
    /// Leave out bpftrace (modes e and f, and the empty program of the kernel-cost floor), and do not
    /// install it.
    #[arg(long)]
    pub no_bpftrace: bool,
    /// Also measure the machine's highest churn: 4 generator processes at once (1 client + 1
    /// server thread each), the same modes in rounds after the default ones, with the
    /// leaderboard's per-pid
    /// TIME_WAIT counts checked against each generator; then the kernel programs' cost per hit
    /// (installs bpftool when missing).
    #[arg(long)]
    pub peak: bool,
    /// Also measure the flight recorder's memory: `twtrace record --ring SECSs -o DIR` (no
    /// trigger) while one generator runs SECS + 15 s, so the ring is full; its peak RSS and what
    /// the ring held. 0 leaves it out.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub ring: u64,
    /// Where to write the markdown results; a relative path is relative to the workspace root.
    #[arg(long, value_name = "FILE", default_value = "bench/results.md")]
    pub out: PathBuf,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if !shell::is_root() {
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
    // --peak needs it for the floor of the kernel-cost table, also when mode e is not measured.
    if modes.iter().any(|m| m.is_bpftrace()) || (args.peak && !args.no_bpftrace) {
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

    // bpftool only reads counters: without it the peak table still comes, with the reason in
    // place of the kernel-cost table.
    let bpftool = if args.peak {
        Some(ensure_bpftool().map_err(|err| format!("bpftool could not be installed: {err:#}")))
    } else {
        None
    };

    // `ss` clears the TIME_WAIT sockets between measurements (`host::clear_loopback_timewait`,
    // which says so when it cannot).
    if let Err(err) = crate::apt::ensure("bench", "ss", "iproute2") {
        eprintln!("bench: ss could not be installed: {err:#}");
    }

    let loads: &[Load] = if args.peak {
        &[Load::Single, Load::Peak]
    } else {
        &[Load::Single]
    };
    let load_at_start = load_average();
    let mut disturbances = Vec::new();
    let mut measurements = 0;
    let started = SystemTime::now();
    let duration = Duration::from_secs(args.duration);
    let mut results: BTreeMap<(Load, Mode), Vec<Outcome>> = BTreeMap::new();
    let mut ring = None;
    // One load's rounds after the other's. Every measurement starts from an empty TIME_WAIT
    // table (`host::clear_loopback_timewait`): a full one makes connections cheaper.
    for &load in loads {
        for round in 1..=args.rounds {
            let mut reference = None;
            for &mode in &modes {
                let set = match load {
                    Load::Single => String::new(),
                    Load::Peak => "peak ".to_owned(),
                };
                let earlier = results
                    .get(&(load, mode))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let outcome = if let (true, Some(why)) = (mode.is_bpftrace(), &bpftrace_missing) {
                    Outcome::Unavailable(why.clone())
                } else if let Some(why) = earlier.iter().find_map(Outcome::unavailable) {
                    // Not attaching is a property of the build, not of the round: do not wait
                    // for it again.
                    Outcome::Unavailable(why.to_owned())
                } else {
                    note_others(
                        &format!("round {round} {set}({})", mode.letter()),
                        &mut disturbances,
                    );
                    measurements += 1;
                    measure(mode, load, &bins, &scratch, duration)?
                };
                if let (Mode::None, Outcome::Measured(sample)) = (mode, &outcome) {
                    reference = Some(sample.rate);
                }
                eprintln!(
                    "bench: round {round}/{} {set}{}",
                    args.rounds,
                    progress_line(mode, &outcome, reference, &calibration)
                );
                results.entry((load, mode)).or_default().push(outcome);
            }
        }
        // After the single-generator rounds and before the peak ones, which would leave it a
        // full TIME_WAIT table.
        if load == Load::Single && args.ring > 0 {
            note_others("flight recorder", &mut disturbances);
            measurements += 1;
            eprintln!(
                "bench: flight recorder: {} while churn runs {} s",
                ring::shown_command(args.ring),
                args.ring + ring::RING_FILL_EXTRA.as_secs()
            );
            let outcome = ring::measure_ring(&bins, &scratch, args.ring)?;
            eprintln!("bench: flight recorder: {}", report::ring_line(&outcome));
            ring = Some(outcome);
        }
    }

    let peak = args.peak.then(|| {
        let kernel = match &bpftool {
            Some(Ok(bpftool)) => {
                note_others("kernel cost", &mut disturbances);
                measurements += 1;
                eprintln!(
                    "bench: kernel cost: twtrace and an empty bpftrace program attached, \
                     {PEAK_GENERATORS} generators for {}s, BPF run-time statistics on",
                    args.duration
                );
                let no_floor = bpftrace_missing
                    .as_deref()
                    .unwrap_or("bpftrace left out (--no-bpftrace)");
                measure_kernel_cost(&bins, &scratch, bpftool, duration, no_floor)
                    .map_err(|e| format!("{e:#}"))
            }
            Some(Err(why)) => Err(why.clone()),
            None => Err("bpftool was not looked for".to_owned()),
        };
        match &kernel {
            Ok(cost) => eprintln!("bench: kernel cost: {}", report::kernel_cost_line(cost)),
            Err(why) => eprintln!("bench: kernel cost not measured: {why}"),
        }
        Peak {
            generators: PEAK_GENERATORS,
            rows: rows_of(Load::Peak, &modes, &results, &calibration),
            kernel,
        }
    });

    let report = Report {
        machine: Machine::probe(),
        date: utc_timestamp(started),
        command: shown_invocation(),
        revision: git_revision(),
        rounds: args.rounds,
        duration_secs: args.duration,
        calibration,
        rows: rows_of(Load::Single, &modes, &results, &calibration),
        bpftrace_version: bins.bpftrace.as_deref().and_then(tool_version),
        load_at_start,
        disturbances,
        measurements,
        peak,
        ring,
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

/// Warns about tracers and compilers running now, and keeps a note for the results.
fn note_others(when: &str, disturbances: &mut Vec<String>) {
    let others = other_tracers();
    if !others.is_empty() {
        let note = format!(
            "{when}: other tracers or compilers were running: {}",
            others.join(", ")
        );
        eprintln!("bench: warning: {note}; the numbers are skewed");
        disturbances.push(note);
    }
}

/// One load's table rows.
fn rows_of(
    load: Load,
    modes: &[Mode],
    results: &BTreeMap<(Load, Mode), Vec<Outcome>>,
    calibration: &calibrate::Calibration,
) -> Vec<Row> {
    let of_load: BTreeMap<Mode, Vec<Outcome>> = results
        .iter()
        .filter(|((l, _), _)| *l == load)
        .map(|(&(_, mode), outcomes)| (mode, outcomes.clone()))
        .collect();
    modes
        .iter()
        .map(|&mode| Row::aggregate(mode, &of_load, calibration))
        .collect()
}

/// The modes in a..e order, each once, always with the reference (a), without bpftrace when
/// asked.
fn selected_modes(requested: &[Mode], no_bpftrace: bool) -> Vec<Mode> {
    let mut modes: Vec<Mode> = requested
        .iter()
        .copied()
        .filter(|&m| !(no_bpftrace && m.is_bpftrace()))
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
