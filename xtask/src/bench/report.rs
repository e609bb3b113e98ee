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
    aggregate::{Row, RowResult},
    calibrate::Calibration,
    host::Machine,
    measure::{DRAIN, Outcome},
    mode::Mode,
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
    pub tw_overflow: Option<u64>,
    /// /proc/loadavg's 1, 5 and 15 minute figures when the measurements began.
    pub load_at_start: Option<String>,
    /// Other tracers seen running before measurements.
    pub disturbances: Vec<String>,
}

pub fn render(report: &Report) -> String {
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
