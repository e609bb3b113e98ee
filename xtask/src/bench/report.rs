//! The report: the progress line per measurement, and the markdown document with the table, the
//! notes and how to read it.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::SystemTime,
};

use jiff::Timestamp;

use super::{
    aggregate::{Row, RowResult, fmt_int},
    calibrate::Calibration,
    host::Machine,
    measure::{DRAIN, Load, Outcome},
    mode::Mode,
    progcost::{FLOOR_PROGRAM, KernelCost, ProgramCost, TWTRACE_ARGS},
    ring::{RING_FILL_EXTRA, RingSample, shown_command as shown_ring},
};
use crate::shell;

pub fn progress_line(
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
            fmt_int(cal.expected(sample.connections, sample.generators)),
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
        if let (Some(bytes), Some(received)) = (t.file_bytes, t.received.filter(|&r| r > 0)) {
            line.push_str(&format!(
                ", file {:.1} bytes/event",
                bytes as f64 / received as f64
            ));
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

/// The flight recorder's run in one progress line.
pub fn ring_line(ring: &Result<RingSample, String>) -> String {
    match ring {
        Err(why) => why.clone(),
        Ok(r) => format!(
            "{} conn/s, {} events, {} lost, ring {}, RSS {}",
            fmt_int(r.rate.round() as u64),
            r.received.map_or("?".to_owned(), fmt_int),
            r.lost.map_or("?".to_owned(), fmt_int),
            r.held.as_ref().map_or("?".to_owned(), |h| format!(
                "{} ({} s)",
                h.size, h.span_secs
            )),
            r.peak_rss_kib
                .map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        ),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub machine: Machine,
    pub date: String,
    pub command: String,
    pub revision: Option<String>,
    pub rounds: u32,
    pub duration_secs: u64,
    pub calibration: Calibration,
    pub rows: Vec<Row>,
    pub bpftrace_version: Option<String>,
    /// /proc/loadavg's 1, 5 and 15 minute figures when the measurements began.
    pub load_at_start: Option<String>,
    /// Other tracers seen running before measurements.
    pub disturbances: Vec<String>,
    /// Measurements made (tracers started, generators run), for the share disturbed.
    pub measurements: usize,
    /// With `--peak`.
    pub peak: Option<Peak>,
    /// The flight recorder's run (`--ring SECS`, unless 0), or why it has no numbers.
    pub ring: Option<Result<RingSample, String>>,
}

/// The peak load's rows and the kernel programs' cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    pub generators: usize,
    pub rows: Vec<Row>,
    /// Or why it was not measured.
    pub kernel: Result<KernelCost, String>,
}

pub fn render(report: &Report) -> String {
    let mut md = String::new();
    let m = &report.machine;
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
    if !report.disturbances.is_empty() {
        push(
            &mut md,
            &format!(
                "- **Noisy**: other tracers or compilers were running when {} of {} measurements \
                 began (listed in the notes): the machine was shared, so compare a tracer with \
                 the (a) of its own round rather than across runs. Someone else's twtrace or \
                 bpftrace also runs its programs on every transition, and their tests' \
                 connections count in a tracer's received and lost.",
                report.disturbances.len(),
                report.measurements
            ),
        );
    }
    push(&mut md, "");
    let mut notes = table(&mut md, &report.rows, report.rounds, false);
    notes.extend(report.disturbances.iter().cloned());
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
            Mode::None => Load::Single.shown_generators(report.duration_secs),
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
         tracer's own counts (twtrace: its `N events, N lost` summary line, where lost includes the \
         events the kernel skipped because another BPF program was running on that CPU, shown \
         in brackets; bpftrace: its output lines and `Lost N events` warnings). *Tracer CPU* is the tracer process's utime+stime \
         from attaching until just before the stop signal, per event received (µs per event = \
         s per million events); the eBPF program itself runs in the generator's context and \
         shows up as lost throughput instead. *Peak RSS* is VmHWM, the largest over rounds. \
         (f) receives nothing: its programs are empty, so its *vs (a)* is the floor, what \
         attaching to twtrace's tracepoints costs before a program does any work; no tracer of \
         them can keep the generators above it.",
    );
    push(&mut md, "");
    push(
        &mut md,
        "Targets (issue 5): vs (a) ≥ 0.97 for (b) and (c); no lost events at the generator's \
         maximum rate; ≤ 1.5 µs CPU per event for (c); peak RSS ≤ 64 MiB.",
    );
    if let Some(ring) = &report.ring {
        render_ring(&mut md, ring);
    }
    if let Some(peak) = &report.peak {
        render_peak(&mut md, report, peak);
    }
    md
}

/// The flight recorder's section: its peak RSS with a full ring, and what the ring held.
fn render_ring(md: &mut String, ring: &Result<RingSample, String>) {
    push(md, "");
    let r = match ring {
        Ok(r) => r,
        Err(why) => {
            push(md, "## Flight recorder");
            push(md, "");
            push(md, &format!("Not measured: {why}"));
            return;
        }
    };
    push(md, &format!("## Flight recorder: a {} s ring", r.ring_secs));
    push(md, "");
    push(
        md,
        &format!(
            "`{}` (no trigger, so it never writes a capture; `--ring-max` at its default) while \
             `churn --duration {}` runs, {} s longer than the ring's span so that it has been \
             dropping its oldest chunks for a while; peak RSS is VmHWM just before the stop \
             signal, {} s after the generator ends, and *ring at the end* is the flight \
             recorder's last progress line (bytes of chunks held, and the span they cover).",
            shown_ring(r.ring_secs),
            r.churn_secs,
            RING_FILL_EXTRA.as_secs(),
            DRAIN.as_secs()
        ),
    );
    push(md, "");
    push(
        md,
        "| ring | conn/s | events received | lost | ring at the end | peak RSS |",
    );
    push(md, "|---|---|---|---|---|---|");
    let count = |v: Option<u64>| v.map_or("?".to_owned(), fmt_int);
    let held = r
        .held
        .as_ref()
        .map_or("?".to_owned(), |h| format!("{}, {} s", h.size, h.span_secs));
    let rss = r
        .peak_rss_kib
        .map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    push(
        md,
        &format!(
            "| {} s | {} | {} | {} | {held} | {rss} |",
            r.ring_secs,
            fmt_int(r.rate.round() as u64),
            count(r.received),
            count(r.lost)
        ),
    );
    if let Some(h) = r.held.as_ref().filter(|h| h.span_secs > 0) {
        let per_sec = h.bytes / h.span_secs as f64;
        let need = per_sec * r.ring_secs as f64 / (1024.0 * 1024.0);
        push(md, "");
        if h.span_secs + 1 < r.ring_secs {
            push(
                md,
                &format!(
                    "At this rate the ring takes {:.1} MiB per second of churn: {} s would need \
                     about {need:.0} MiB, so `--ring-max` bounded it to {} s.",
                    per_sec / (1024.0 * 1024.0),
                    r.ring_secs,
                    h.span_secs
                ),
            );
        } else {
            push(
                md,
                &format!(
                    "At this rate the ring takes {:.1} MiB per second of churn: its {} s fit \
                     in {need:.0} MiB.",
                    per_sec / (1024.0 * 1024.0),
                    r.ring_secs
                ),
            );
        }
    }
}

fn push(md: &mut String, line: &str) {
    md.push_str(line);
    md.push('\n');
}

/// The table of one load's rows; returns the notes for under it. `exactness` adds the column of
/// the leaderboard's per-pid check.
fn table(md: &mut String, rows: &[Row], rounds: u32, exactness: bool) -> Vec<String> {
    let (extra_head, extra_rule) = if exactness {
        (" TIME_WAIT per pid = connections |", "---|")
    } else {
        ("", "")
    };
    push(
        md,
        &format!(
            "| mode | tracer | conn/s median (min–max) | vs (a) median (min–max) | events \
             expected | received | lost | tracer CPU µs/event median (min–max) | peak RSS |\
             {extra_head}"
        ),
    );
    push(
        md,
        &format!("|---|---|---|---|---|---|---|---|---|{extra_rule}"),
    );
    let mut notes = Vec::new();
    for row in rows {
        let head = format!("({})", row.mode.letter());
        let label = row.mode.label();
        let extra_none = if exactness { " – |" } else { "" };
        match &row.result {
            RowResult::Unavailable(why) => {
                push(
                    md,
                    &format!(
                        "| {head} | {label} | not available | – | – | – | – | – | – |{extra_none}"
                    ),
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
                // (f)'s empty programs send nothing: no count to ask for, unlike a tracer that
                // did not say.
                let unsaid = if row.mode == Mode::Floor { "–" } else { "?" };
                let (expected, received, lost) = if is_reference {
                    ("–".to_owned(), "–".to_owned(), "–".to_owned())
                } else {
                    let received = s.received.map_or(unsaid.to_owned(), |r| {
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
                    let lost = s.lost.map_or(unsaid.to_owned(), |lost| {
                        if s.skipped > 0 {
                            format!("{} (kernel skipped {})", fmt_int(lost), fmt_int(s.skipped))
                        } else {
                            fmt_int(lost)
                        }
                    });
                    (fmt_int(s.expected), received, lost)
                };
                let cpu = s.cpu_us_per_event.map_or("–".to_owned(), |c| {
                    format!("{:.2} ({:.2}–{:.2})", c.median, c.min, c.max)
                });
                let rss = s.peak_rss_kib.map_or("–".to_owned(), |k| {
                    format!("{:.1} MiB", k as f64 / 1024.0)
                });
                let extra = match (exactness, s.exactness) {
                    (false, _) => String::new(),
                    (true, None) => " – |".to_owned(),
                    (true, Some(e)) if e.mismatched == 0 => {
                        format!(" all {} exact |", e.checked)
                    }
                    (true, Some(e)) => format!(" **{} of {} wrong** |", e.mismatched, e.checked),
                };
                push(
                    md,
                    &format!(
                        "| {head} | {label} | {rate} | {ratio} | {expected} | {received} | {lost} \
                         | {cpu} | {rss} |{extra}"
                    ),
                );
                if s.rounds < rounds as usize {
                    notes.push(format!(
                        "({}) measured in {} of {} rounds",
                        row.mode.letter(),
                        s.rounds,
                        rounds
                    ));
                }
                if let Some(b) = s.file_bytes_per_event {
                    notes.push(format!(
                        "({}) the recording: {:.1} bytes per event received, median ({:.1}–{:.1}): \
                         the file's size over the events of twtrace's summary line",
                        row.mode.letter(),
                        b.median,
                        b.min,
                        b.max
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
    notes
}

/// The peak section: its table, then the kernel programs' cost per hit.
fn render_peak(md: &mut String, report: &Report, peak: &Peak) {
    push(md, "");
    push(
        md,
        &format!("## Peak: {} generators at once", peak.generators),
    );
    push(md, "");
    push(
        md,
        &format!(
            "- Workload: {} `churn` processes started together, each 1 client + 1 server thread \
             on its own listener (127.0.0.1, a port the kernel picks), client closes first; {} \
             round(s) of {} s, modes interleaved within each round, after the rounds above. \
             Rates are summed over the generators; events expected count one listener per \
             generator.",
            peak.generators, report.rounds, report.duration_secs
        ),
    );
    push(md, "");
    let notes = table(md, &peak.rows, report.rounds, true);
    push(md, "");
    if !notes.is_empty() {
        push(md, "Notes:");
        push(md, "");
        for note in &notes {
            push(md, &format!("- {note}"));
        }
        push(md, "");
    }
    push(
        md,
        &format!(
            "Commands: as above, with `{}`; (c) writes its snapshots to a file: `{}`.",
            Load::Peak.shown_generators(report.duration_secs),
            Mode::Leaderboard
                .shown_command()
                .replace("> /dev/null", "> FILE")
        ),
    );
    push(md, "");
    push(
        md,
        "*TIME_WAIT per pid = connections*: the client closes first, so every connection a \
         generator reports (churn's `connections=N`) is one timewait entry by its pid \
         (`timewait_entered` + `fin_wait2_entered`) or, rarely, a client connection ended by a \
         reset (its outgoing peer's `resets`: with the timewait table full a client's port \
         comes back at once, and a new SYN can meet the server's socket of the port's last \
         connection); the leaderboard's final JSON snapshot (printed when it stops) must add up \
         to exactly that for each generator's pid. *Lost* is twtrace's own count, which \
         includes events the kernel skipped (the programs' recursion_misses), in brackets.",
    );
    push(md, "");
    push(
        md,
        "Every measurement, at either load, starts with no TIME_WAIT sockets toward \
         127.0.0.1 (`ss -K state time-wait dst 127.0.0.1` before it): they live 60 s, and with \
         three peak measurements' worth alive the kernel's table (net.ipv4.tcp_max_tw_buckets) \
         is full, it makes no more TIME_WAIT sockets (TCPTimeWaitOverflow), and the generators \
         run 3-5% faster. A measurement's own generators cannot fill it (each talks to one \
         server port, with 28,232 ephemeral ports for it), so no mode gets that advantage; the \
         overflow notes above would show it if one did.",
    );
    push(md, "");
    push(md, "## Kernel programs: cost per hit");
    push(md, "");
    match &peak.kernel {
        Err(why) => push(md, &format!("Not measured: {why}")),
        Ok(cost) => render_kernel_cost(md, cost),
    }
}

fn render_kernel_cost(md: &mut String, cost: &KernelCost) {
    push(
        md,
        &format!(
            "`twtrace {}` and `bpftrace -e '{FLOOR_PROGRAM}'` attached together, {} generators \
             as above for {} s ({} conn/s summed, {} connections), with the kernel's BPF \
             run-time statistics on (BPF_ENABLE_STATS, what `kernel.bpf_stats_enabled=1` does, \
             held by a file descriptor for this measurement only). Counters from `bpftool prog \
             show --json`{}, read just before the generators started and just after they \
             ended; programs found through each process's `/proc/PID/fdinfo`.{}",
            TWTRACE_ARGS.join(" "),
            cost.generators,
            cost.duration_secs,
            fmt_int(cost.rate.round() as u64),
            fmt_int(cost.connections),
            cost.bpftool_version
                .as_ref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default(),
            cost.summary
                .as_ref()
                .map(|s| format!(
                    " twtrace's summary: {} events, {} lost.",
                    fmt_int(s.events),
                    fmt_int(s.lost)
                ))
                .unwrap_or_default()
        ),
    );
    push(md, "");
    push(
        md,
        "| program | tracepoint | hits | ns per hit | total ms | recursion_misses |",
    );
    push(md, "|---|---|---|---|---|---|");
    let row = |md: &mut String, label: &str, c: &ProgramCost| {
        let s = &c.stats;
        push(
            md,
            &format!(
                "| {label} | {} | {} | {} | {:.1} | {} |",
                c.tracepoint.as_deref().unwrap_or("?"),
                fmt_int(s.run_cnt),
                s.ns_per_run()
                    .map_or("–".to_owned(), |ns| format!("{ns:.0}")),
                s.run_time_ns as f64 / 1e6,
                fmt_int(s.recursion_misses)
            ),
        );
    };
    for c in &cost.twtrace {
        row(md, &format!("twtrace `{}`", c.stats.name), c);
    }
    match &cost.floor {
        Ok(floor) => {
            // bpftrace's probe has no link fd; its tracepoint is the one it was given.
            let floor = ProgramCost {
                tracepoint: floor
                    .tracepoint
                    .clone()
                    .or_else(|| Some("inet_sock_set_state".to_owned())),
                ..floor.clone()
            };
            row(md, "floor: empty bpftrace program", &floor);
        }
        Err(why) => push(
            md,
            &format!("| floor | – | – | – | – | – |\n\nFloor not measured: {why}"),
        ),
    }
    push(md, "");
    if let Some(per) = per_transition_ns(cost) {
        push(
            md,
            &format!(
                "All of twtrace's programs together: {per:.0} ns of kernel time per \
                 `inet_sock_set_state` hit (per transition){}.",
                cost.floor
                    .as_ref()
                    .ok()
                    .and_then(|f| f.stats.ns_per_run())
                    .map(|f| format!(", against a floor of {f:.0} ns"))
                    .unwrap_or_default()
            ),
        );
        push(md, "");
    }
    push(
        md,
        "*ns per hit* is run_time_ns / run_cnt over the traffic: the program's own time, measured \
         by the kernel around each run (the statistics' clock reads are in it, and in the floor). \
         The programs see every transition on the machine, the neighbours' traffic included. \
         *recursion_misses*: runs the kernel skipped because another BPF program was running on \
         that CPU; twtrace counts them as lost.",
    );
}

/// Kernel time of all twtrace's programs per hit of its main one (one hit per transition).
fn per_transition_ns(cost: &KernelCost) -> Option<f64> {
    let main = cost.twtrace.iter().find(|c| {
        c.stats.name == "inet_sock_set_state"
            || c.tracepoint.as_deref() == Some("inet_sock_set_state")
    })?;
    let total: u64 = cost.twtrace.iter().map(|c| c.stats.run_time_ns).sum();
    (main.stats.run_cnt > 0).then(|| total as f64 / main.stats.run_cnt as f64)
}

/// The progress line of the kernel-cost measurement.
pub fn kernel_cost_line(cost: &KernelCost) -> String {
    let mut parts: Vec<String> = cost
        .twtrace
        .iter()
        .map(|c| {
            format!(
                "{} {} ns/hit × {}",
                c.stats.name,
                c.stats
                    .ns_per_run()
                    .map_or("–".to_owned(), |ns| format!("{ns:.0}")),
                fmt_int(c.stats.run_cnt)
            )
        })
        .collect();
    match &cost.floor {
        Ok(f) => parts.push(format!(
            "floor {} ns/hit × {}",
            f.stats
                .ns_per_run()
                .map_or("–".to_owned(), |ns| format!("{ns:.0}")),
            fmt_int(f.stats.run_cnt)
        )),
        Err(why) => parts.push(format!("floor: {why}")),
    }
    let misses: u64 = cost.twtrace.iter().map(|c| c.stats.recursion_misses).sum();
    parts.push(format!("{misses} recursion misses"));
    parts.join(", ")
}

/// `YYYY-MM-DD HH:MM UTC`.
pub fn utc_timestamp(time: SystemTime) -> String {
    // Out of range only for a clock centuries off; the epoch then shows that something is wrong.
    let time = Timestamp::try_from(time).unwrap_or(Timestamp::UNIX_EPOCH);
    time.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// The command line as typed, `cargo xtask bench ...`.
pub fn shown_invocation() -> String {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    let mut cmd = Command::new("cargo");
    cmd.arg("xtask").args(args);
    shell::display(&cmd)
}

pub fn workspace_root() -> PathBuf {
    // xtask lives in <root>/xtask.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `commit abc1234` (plus a remark when the working tree has changes), for the header.
pub fn git_revision() -> Option<String> {
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
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::bench::measure::fixtures::{reference, sample};

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
    fn renders_the_markdown_table() {
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        let mut results = BTreeMap::new();
        results.insert(Mode::None, vec![reference(14_000.0)]);
        let mut trace = sample(13_720.0, 13_720, 137_200, 0, 0.0686);
        if let Outcome::Measured(s) = &mut trace {
            s.tw_overflow = Some(5);
        }
        results.insert(Mode::Trace, vec![trace]);
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
            load_at_start: Some("0.50 0.40 0.30".to_owned()),
            disturbances: vec![
                "round 1 (b): other tracers or compilers were running: pid 7 (twtrace)".to_owned(),
            ],
            measurements: 3,
            peak: None,
            ring: None,
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
        assert!(md.contains(
            "- (b) the kernel's TIME_WAIT table was full (net.ipv4.tcp_max_tw_buckets) in 1 of 1 \
             rounds: it skipped 5 TIME_WAIT sockets"
        ));
        assert!(md.contains("- Load average when the measurements began: 0.50 0.40 0.30"));
        assert!(md.contains(
            "- **Noisy**: other tracers or compilers were running when 1 of 3 measurements began"
        ));
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

    #[test]
    fn renders_the_recordings_size_and_the_flight_recorder() {
        use crate::bench::{parse::RingProgress, ring::RingSample};
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        let mut results = BTreeMap::new();
        results.insert(Mode::None, vec![reference(14_000.0); 2]);
        let record = |bytes: u64| {
            let mut o = sample(13_900.0, 13_900, 139_000, 0, 0.1);
            if let Outcome::Measured(s) = &mut o
                && let Some(t) = &mut s.tracer
            {
                t.file_bytes = Some(bytes);
            }
            o
        };
        results.insert(Mode::Record, vec![record(11_398_000), record(11_537_000)]);
        let ring = RingSample {
            ring_secs: 60,
            churn_secs: 75,
            rate: 14_100.0,
            received: Some(10_575_000),
            lost: Some(0),
            peak_rss_kib: Some(290 * 1024),
            held: RingProgress::parse(
                "twtrace: flight recorder: 10575000 events, ring 256.0 MiB (22 s), 0 lost",
            ),
        };
        let report = |ring| Report {
            machine: Machine::default(),
            date: "2026-11-29 10:00 UTC".to_owned(),
            command: "cargo xtask bench --modes d".to_owned(),
            revision: None,
            rounds: 2,
            duration_secs: 5,
            calibration: cal,
            rows: [Mode::None, Mode::Record]
                .iter()
                .map(|&m| Row::aggregate(m, &results, &cal))
                .collect(),
            bpftrace_version: None,
            load_at_start: None,
            disturbances: vec![],
            measurements: 5,
            peak: None,
            ring,
        };
        let md = render(&report(Some(Ok(ring.clone()))));
        // 11,398,000 and 11,537,000 bytes over 139,000 events each.
        assert!(md.contains(
            "- (d) the recording: 82.5 bytes per event received, median (82.0–83.0): the file's \
             size over the events of twtrace's summary line"
        ));
        assert!(md.contains("## Flight recorder: a 60 s ring"));
        assert!(md.contains("`twtrace record --ring 60s -o DIR` (no trigger"));
        assert!(md.contains("`churn --duration 75` runs, 15 s longer"));
        assert!(md.contains("| 60 s | 14,100 | 10,575,000 | 0 | 256.0 MiB, 22 s | 290.0 MiB |"));
        // 256 MiB over 22 s, times 60.
        assert!(md.contains(
            "At this rate the ring takes 11.6 MiB per second of churn: 60 s would need about \
             698 MiB, so `--ring-max` bounded it to 22 s."
        ));
        assert_eq!(
            ring_line(&Ok(ring)),
            "14,100 conn/s, 10,575,000 events, 0 lost, ring 256.0 MiB (22 s), RSS 290.0 MiB"
        );
        let missing = render(&report(Some(Err("`x` did not attach".to_owned()))));
        assert!(missing.contains("## Flight recorder\n\nNot measured: `x` did not attach"));
        assert!(!render(&report(None)).contains("Flight recorder"));
    }

    #[test]
    fn renders_the_peak_table_and_the_kernel_cost() {
        use crate::bench::{
            measure::{Exactness, Mismatch, Sample, TracerSample},
            parse::Summary,
            progcost::ProgStats,
        };
        let cal = Calibration {
            connections: 300,
            connection_lines: 3000,
            listener_lines: 2,
        };
        let peak_sample = |mismatches: Vec<Mismatch>| {
            Outcome::Measured(Sample {
                rate: 36_000.0,
                connections: 72_000,
                generators: 4,
                tracer: Some(Box::new(TracerSample {
                    received: Some(700_000),
                    lost: Some(20_008),
                    skipped: Some(8),
                    cpu_secs: Some(0.35),
                    peak_rss_kib: Some(70 * 1024),
                    exactness: Some(Exactness {
                        checked: 4,
                        mismatches,
                    }),
                    ..TracerSample::default()
                })),
                ..Sample::default()
            })
        };
        let mut peak_results = BTreeMap::new();
        peak_results.insert(Mode::None, vec![reference(48_000.0)]);
        peak_results.insert(
            Mode::Leaderboard,
            vec![peak_sample(vec![Mismatch {
                pid: 7,
                connections: 18_000,
                timewait_entered: Some(17_000),
            }])],
        );
        let mut exact_results = peak_results.clone();
        exact_results.insert(Mode::Leaderboard, vec![peak_sample(vec![])]);
        let program = |id, name: &str, cnt, ns| ProgramCost {
            stats: ProgStats {
                id,
                kind: "tracepoint".to_owned(),
                name: name.to_owned(),
                run_time_ns: ns,
                run_cnt: cnt,
                recursion_misses: if id == 1 { 1004 } else { 0 },
            },
            tracepoint: Some(name.to_owned()),
        };
        let kernel = KernelCost {
            duration_secs: 5,
            generators: 4,
            rate: 18_457.4,
            connections: 37_372,
            summary: Summary::parse("twtrace: 372724 events, 1506 lost, 0 unattributed"),
            twtrace: vec![
                program(1, "inet_sock_set_state", 372_724, 328_600_000),
                program(2, "tcp_destroy_sock", 74_246, 34_100_000),
                program(3, "tcp_receive_reset", 0, 0),
            ],
            floor: Ok(ProgramCost {
                tracepoint: None,
                ..program(9, "inet_sock_set_s", 372_724, 22_363_440)
            }),
            bpftool_version: Some("bpftool v7.1.0".to_owned()),
        };
        let report = |results: &BTreeMap<Mode, Vec<Outcome>>,
                      kernel: Result<KernelCost, String>| Report {
            machine: Machine::default(),
            date: "2026-11-29 10:00 UTC".to_owned(),
            command: "cargo xtask bench --peak".to_owned(),
            revision: None,
            rounds: 1,
            duration_secs: 5,
            calibration: cal,
            rows: vec![],
            bpftrace_version: None,
            load_at_start: None,
            disturbances: vec![],
            measurements: 3,
            peak: Some(Peak {
                generators: 4,
                rows: [Mode::None, Mode::Leaderboard]
                    .iter()
                    .map(|&m| Row::aggregate(m, results, &cal))
                    .collect(),
                kernel,
            }),
            ring: None,
        };
        let md = render(&report(&peak_results, Ok(kernel.clone())));
        assert!(md.contains("## Peak: 4 generators at once"));
        assert!(!md.contains("**Noisy**"));
        assert!(md.contains(
            "| (a) | nothing attached | 48,000 (48,000–48,000) | 1 (reference) | – | – | – | – \
             | – | – |"
        ));
        // 72,000 x 10 + 4 listeners x 2.
        assert!(md.contains(
            "| (c) | leaderboard --json | 36,000 (36,000–36,000) | 0.750 (0.750–0.750) | 720,008 \
             | 700,000 (97.2%) | 20,008 (kernel skipped 8) | 0.50 (0.50–0.50) | 70.0 MiB \
             | **1 of 4 wrong** |"
        ));
        assert!(md.contains(
            "- (c) round 1: connections vs the final snapshot's TIME_WAIT entered, per \
             generator: pid 7 18,000 vs 17,000 (5.6% short)"
        ));
        assert!(md.contains("`4 × churn --clients 1 --servers 1 --duration 5, started together`"));
        assert!(md.contains("## Kernel programs: cost per hit"));
        assert!(md.contains("(18,457 conn/s summed, 37,372 connections)"));
        assert!(md.contains("(bpftool v7.1.0)"));
        assert!(md.contains("twtrace's summary: 372,724 events, 1,506 lost."));
        assert!(md.contains(
            "| twtrace `inet_sock_set_state` | inet_sock_set_state | 372,724 | 882 | 328.6 | 1,004 |"
        ));
        assert!(
            md.contains("| twtrace `tcp_receive_reset` | tcp_receive_reset | 0 | – | 0.0 | 0 |")
        );
        assert!(md.contains(
            "| floor: empty bpftrace program | inet_sock_set_state | 372,724 | 60 | 22.4 | 0 |"
        ));
        // (328.6 + 34.1) ms over 372,724 transitions.
        assert!(md.contains(
            "All of twtrace's programs together: 973 ns of kernel time per \
             `inet_sock_set_state` hit (per transition), against a floor of 60 ns."
        ));
        // Every line of each table has its header's number of columns.
        let mut widths: Vec<usize> = Vec::new();
        for line in md.lines() {
            if line.starts_with("| mode") || line.starts_with("| program") {
                widths.clear();
            }
            if line.starts_with("| ") {
                widths.push(line.matches(" | ").count());
                assert!(widths.iter().all(|&w| w == widths[0]), "{line}");
            }
        }

        let exact = render(&report(
            &exact_results,
            Err("bpftool is missing".to_owned()),
        ));
        assert!(exact.contains("| 70.0 MiB | all 4 exact |"));
        assert!(exact.contains("Not measured: bpftool is missing"));
        assert_eq!(
            kernel_cost_line(&kernel),
            "inet_sock_set_state 882 ns/hit × 372,724, tcp_destroy_sock 459 ns/hit × 74,246, \
             tcp_receive_reset – ns/hit × 0, floor 60 ns/hit × 372,724, 1004 recursion misses"
        );
    }
}
