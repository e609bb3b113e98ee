//! `twtrace report FILE`: a recording summarised: host facts, the final leaderboard, top peers,
//! a per-second TIME_WAIT and CLOSE_WAIT timeline and each process's CLOSE_WAIT peak; as text,
//! JSON or one self-contained HTML page. A sink like any other, fed by the recording's replay.

mod chart;
pub mod history;
mod html;

use std::{
    borrow::Cow,
    collections::BTreeMap,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};

use self::history::History;
use super::{End, Sink};
use crate::{
    diagnosis::short_age,
    model::snapshot::{PeerKey, ProcessRow, Snapshot, WholeSeconds, whole_seconds},
    recording::Header,
    stream::Tally,
    text::{escape, write_json},
};

/// One second of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelinePoint {
    /// Written as snapshots write theirs.
    #[serde(serialize_with = "whole_seconds")]
    pub time: Timestamp,
    #[serde(serialize_with = "crate::model::snapshot::three_decimals")]
    pub timewait_per_s: f64,
    pub timewait_now: u64,
    /// Orphaned FIN_WAIT2 timewait sockets: with `timewait_now`, what `timewait_kernel` counts.
    pub fin_wait2_now: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timewait_kernel: Option<u64>,
    pub close_wait_now: u64,
}

/// How the report is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Text {
        top: usize,
    },
    Json,
    /// One self-contained page (see `html`).
    Html {
        top: usize,
    },
}

/// Collects the timeline from every snapshot, and writes the report at the end.
pub struct Report<W: Write> {
    out: W,
    style: Style,
    path: PathBuf,
    header: Header,
    /// Damage the reader found, named in the report.
    problems: Vec<String>,
    pub timeline: Vec<TimelinePoint>,
    /// Per-process series and CLOSE_WAIT peaks.
    pub history: History,
}

impl<W: Write> Report<W> {
    pub fn new(out: W, style: Style, path: &Path, header: Header) -> Self {
        Self {
            out,
            style,
            path: path.to_owned(),
            header,
            problems: Vec::new(),
            timeline: Vec::new(),
            history: History::default(),
        }
    }
}

impl<W: Write> Sink for Report<W> {
    fn wants_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        self.timeline.push(TimelinePoint {
            time: snap.time,
            timewait_per_s: snap.totals.timewait_per_s,
            timewait_now: snap.totals.timewait_now,
            fin_wait2_now: snap.totals.fin_wait2_now,
            timewait_kernel: snap.totals.timewait_kernel,
            close_wait_now: snap.totals.close_wait_now,
        });
        self.history.push(snap);
        Ok(())
    }

    fn end(&mut self, end: &End) -> anyhow::Result<()> {
        self.problems.clone_from(&end.problems);
        let empty = Snapshot::default();
        let snap = end.snapshot.as_deref().unwrap_or(&empty);
        let run = Run {
            tally: &end.tally,
            first_ns: end.first_ns,
            last_ns: end.last_ns,
            timeline: &self.timeline,
            history: &self.history,
        };
        match self.style {
            Style::Json => {
                let mut v = json_report(&self.header, &run, snap, &self.problems);
                // No snapshot at all: an empty leaderboard, timed at the recording's start.
                if end.snapshot.is_none()
                    && let Some(obj) = v.as_object_mut()
                {
                    obj.insert("time".into(), self.header.start_time.clone().into());
                }
                write_json(&mut self.out, &v)?;
                writeln!(self.out)?;
            }
            Style::Text { top } => {
                text_report(&mut self.out, &self.path, &self.header, &run, snap, top)?;
            }
            Style::Html { top } => {
                let page = html::Page {
                    path: &self.path,
                    header: &self.header,
                    run: &run,
                    snap,
                    problems: &self.problems,
                    top,
                };
                self.out.write_all(page.render().as_bytes())?;
            }
        }
        self.out.flush()?;
        Ok(())
    }
}

/// What the report says about the replayed stretch.
struct Run<'a> {
    tally: &'a Tally,
    first_ns: Option<u64>,
    last_ns: Option<u64>,
    timeline: &'a [TimelinePoint],
    history: &'a History,
}

/// A process's CLOSE_WAIT peak: the highest any snapshot saw, at least its count at the end.
/// The oldest `p`'s CLOSE_WAIT sockets got over the replay, in seconds, and whether that is a
/// lower bound (a socket from before the recording).
fn close_wait_oldest(history: &History, p: &ProcessRow) -> (f64, bool) {
    match history.peak_of(p.pid) {
        Some(k) if k.oldest_s >= p.close_wait_oldest_s => (k.oldest_s, k.oldest_at_least),
        _ => (p.close_wait_oldest_s, p.close_wait_oldest_at_least),
    }
}

fn close_wait_peak(history: &History, p: &ProcessRow) -> (u64, Option<Timestamp>) {
    match history.peak_of(p.pid) {
        Some(k) if k.close_wait >= p.close_wait_now => (k.close_wait, Some(k.time)),
        _ if p.close_wait_now > 0 => (p.close_wait_now, None),
        _ => (0, None),
    }
}

/// The processes in the report's order: by the larger of TIME_WAIT entered and CLOSE_WAIT peak
/// (a process that held 30 connections in CLOSE_WAIT and closed them before the end ranks with
/// one that made 30 TIME_WAIT), then TIME_WAIT entered, CLOSE_WAIT peak, CLOSE_WAIT now,
/// resets, pid.
fn ranked<'a>(snap: &'a Snapshot, history: &History) -> Vec<(&'a ProcessRow, u64)> {
    let mut procs: Vec<(&ProcessRow, u64)> = snap
        .processes
        .iter()
        .map(|p| (p, close_wait_peak(history, p).0))
        .collect();
    procs.sort_by(|(a, ap), (b, bp)| {
        b.timewait_entered
            .max(*bp)
            .cmp(&a.timewait_entered.max(*ap))
            .then(b.timewait_entered.cmp(&a.timewait_entered))
            .then(bp.cmp(ap))
            .then(b.close_wait_now.cmp(&a.close_wait_now))
            .then(b.resets.cmp(&a.resets))
            .then(a.pid.cmp(&b.pid))
    });
    procs
}

fn span(header: &Header, replay: &Run<'_>) -> (String, String, f64) {
    let fmt = |ns: u64| humantime::format_rfc3339_seconds(header.wall_time(ns)).to_string();
    match (replay.first_ns, replay.last_ns) {
        (Some(a), Some(b)) => (fmt(a), fmt(b), b.saturating_sub(a) as f64 / 1e9),
        _ => (header.start_time.clone(), header.start_time.clone(), 0.0),
    }
}

fn json_report(header: &Header, replay: &Run<'_>, snap: &Snapshot, problems: &[String]) -> Value {
    let mut v = serde_json::to_value(snap).unwrap_or_else(|_| json!({}));
    let (start, end, secs) = span(header, replay);
    let sysctls: BTreeMap<&str, &str> = header
        .sysctls
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(obj) = v.as_object_mut() {
        // In the report's order, each with its CLOSE_WAIT peak.
        let processes: Vec<Value> = ranked(snap, replay.history)
            .into_iter()
            .map(|(p, _)| {
                let mut row = serde_json::to_value(p).unwrap_or_else(|_| json!({}));
                let (peak, at) = close_wait_peak(replay.history, p);
                let (oldest, at_least) = close_wait_oldest(replay.history, p);
                if let Some(r) = row.as_object_mut() {
                    r.insert("close_wait_peak".into(), peak.into());
                    r.insert("close_wait_oldest_max_s".into(), oldest.into());
                    r.insert("close_wait_oldest_max_at_least".into(), at_least.into());
                    r.insert(
                        "close_wait_peak_time".into(),
                        at.map(|t| WholeSeconds(t).to_string()).into(),
                    );
                }
                row
            })
            .collect();
        obj.insert("processes".into(), processes.into());
        let peaks: Vec<Value> = replay
            .history
            .peaks()
            .into_iter()
            .map(|(pid, k)| {
                json!({
                    "pid": pid,
                    "comm": k.comm,
                    "close_wait_peak": k.close_wait,
                    "time": WholeSeconds(k.time).to_string(),
                    "oldest_age_s": k.oldest_s,
                    "oldest_age_at_least": k.oldest_at_least,
                })
            })
            .collect();
        obj.insert("close_wait_peaks".into(), peaks.into());
        obj.insert(
            "timeline".into(),
            serde_json::to_value(replay.timeline).unwrap_or_default(),
        );
        obj.insert(
            "host".into(),
            json!({
                "hostname": header.hostname,
                "kernel": header.kernel,
                "twtrace": header.twtrace,
                "format_version": header.version,
                "recording_start": header.start_time,
                "start": start,
                "end": end,
                "duration_s": crate::model::leaks::round(secs, 3),
                "sysctls": sysctls,
                "command_line": header.command_line,
                "filters": {"pids": header.filters.pids, "ports": header.filters.ports},
                "events": replay.tally.received,
                "note": header.note,
                "problems": problems,
            }),
        );
    }
    v
}

/// A peer across processes.
#[derive(Default)]
struct PeerSum {
    tw_entered: u64,
    tw_now: u64,
    cw_now: u64,
    est_now: u64,
    /// (pid, comm) of the processes talking to it, unescaped.
    procs: Vec<(u32, String)>,
}

/// The peers across processes, most TIME_WAIT entered first (then CLOSE_WAIT now, label).
fn top_peers(snap: &Snapshot) -> Vec<(String, PeerSum)> {
    let mut peers: BTreeMap<String, PeerSum> = BTreeMap::new();
    for p in &snap.processes {
        for r in &p.peers {
            // The capped rest is one process's: it stays apart from the others'.
            let label = match r.peer {
                PeerKey::Other => format!("other (pid {})", p.pid),
                peer => peer.to_string(),
            };
            let e = peers.entry(label).or_default();
            e.tw_entered += r.timewait_entered;
            e.tw_now += r.timewait_now;
            e.cw_now += r.close_wait_now;
            e.est_now += r.established_now;
            e.procs.push((p.pid, p.comm.clone()));
        }
    }
    let mut peers: Vec<_> = peers.into_iter().collect();
    peers.sort_by(|a, b| {
        b.1.tw_entered
            .cmp(&a.1.tw_entered)
            .then(b.1.cw_now.cmp(&a.1.cw_now))
            .then(a.0.cmp(&b.0))
    });
    peers
}

/// A time of day as the text report shows it.
fn clock(t: Timestamp) -> String {
    t.strftime("%H:%M:%S").to_string()
}

fn text_report(
    out: &mut impl Write,
    path: &Path,
    header: &Header,
    replay: &Run<'_>,
    snap: &Snapshot,
    top: usize,
) -> io::Result<()> {
    let (start, end, secs) = span(header, replay);
    // Everything from the header is whatever the file says, and the file may come from anyone:
    // escaped, like the names below (the span falls back on the header's start time).
    writeln!(
        out,
        "twtrace recording {}",
        escape(&path.display().to_string())
    )?;
    writeln!(
        out,
        "  host      {}, kernel {} (twtrace {}, format {})",
        escape(&header.hostname),
        escape(&header.kernel),
        escape(&header.twtrace),
        header.version
    )?;
    writeln!(
        out,
        "  span      {} .. {} ({secs:.1} s)",
        escape(&start),
        escape(&end)
    )?;
    if let Some(note) = &header.note {
        writeln!(out, "  note      {}", escape(note))?;
    }
    // Each argument escaped on its own: an argument holding a newline stays on the line.
    let command: Vec<Cow<'_, str>> = header.command_line.iter().map(|a| escape(a)).collect();
    writeln!(out, "  command   {}", command.join(" "))?;
    for (k, v) in &header.sysctls {
        writeln!(out, "  sysctl    {} = {}", escape(k), escape(v))?;
    }
    writeln!(
        out,
        "  {}",
        replay.tally.summary().trim_start_matches("twtrace: ")
    )?;
    let t = &snap.totals;
    writeln!(
        out,
        "  at the end: TIME_WAIT now {} (+{} orphaned FIN_WAIT2, kernel tw {}), CLOSE_WAIT {}, ESTABLISHED {}; TIME_WAIT entered {} (orphaned FIN_WAIT2 {})",
        t.timewait_now,
        t.fin_wait2_now,
        t.timewait_kernel
            .map_or_else(|| "?".to_owned(), |k| k.to_string()),
        t.close_wait_now,
        t.established_now,
        t.timewait_entered,
        t.fin_wait2_entered
    )?;

    writeln!(out)?;
    writeln!(out, "Top processes by TIME_WAIT entered or CLOSE_WAIT peak")?;
    writeln!(
        out,
        "{:>7} {:<16} {:>10} {:>7} {:>7} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "PID",
        "COMM",
        "TW_ENTERED",
        "TW_NOW",
        "CW_PEAK",
        "PEAK_AT",
        "CW_OLDEST",
        "CW_NOW",
        "EST_NOW",
        "OPENS",
        "CLOSES",
        "RESETS"
    )?;
    let procs = ranked(snap, replay.history);
    for (p, _) in procs.iter().take(top) {
        // Escaped before it is cut to the column, so the width counts what is printed.
        let comm: String = escape(&p.comm).chars().take(16).collect();
        let (peak, at) = close_wait_peak(replay.history, p);
        let (oldest, at_least) = close_wait_oldest(replay.history, p);
        writeln!(
            out,
            "{:>7} {:<16} {:>10} {:>7} {:>7} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>6}",
            p.pid,
            comm,
            p.timewait_entered,
            p.timewait_now,
            peak,
            at.map_or_else(|| "-".to_owned(), clock),
            short_age(oldest, at_least),
            p.close_wait_now,
            p.established_now,
            p.opens,
            p.closes,
            p.resets
        )?;
    }
    if procs.len() > top {
        writeln!(
            out,
            "({} more processes; --top N shows more)",
            procs.len() - top
        )?;
    }
    let mut cw: Vec<_> = procs.iter().filter(|p| p.0.close_wait_now > 0).collect();
    if !cw.is_empty() {
        cw.sort_by_key(|p| std::cmp::Reverse(p.0.close_wait_now));
        let list: Vec<String> = cw
            .iter()
            .take(top)
            .map(|(p, _)| format!("{} {} ({})", p.pid, escape(&p.comm), p.close_wait_now))
            .collect();
        writeln!(out, "CLOSE_WAIT at the end: {}", list.join(", "))?;
    }
    // Failed connect()/bind() calls, by call and errno: said only when there are some.
    let mut failing: Vec<&ProcessRow> = procs
        .iter()
        .map(|&(p, _)| p)
        .filter(|p| p.connect_failures + p.bind_failures > 0)
        .collect();
    if !failing.is_empty() {
        failing.sort_by_key(|p| std::cmp::Reverse(p.connect_failures + p.bind_failures));
        let list: Vec<String> = failing
            .iter()
            .take(top)
            .map(|p| {
                let what: Vec<String> = p
                    .failures
                    .iter()
                    .map(|f| format!("{}() {} {}", f.call.name(), f.errno.name(), f.count))
                    .collect();
                format!("{} {} ({})", p.pid, escape(&p.comm), what.join(", "))
            })
            .collect();
        writeln!(out, "Failed calls: {}", list.join("; "))?;
    }

    // Peaks include the processes that have left the final snapshot.
    let peaks = replay.history.peaks();
    if !peaks.is_empty() {
        let list: Vec<String> = peaks
            .iter()
            .take(top)
            .map(|(pid, k)| {
                format!(
                    "{pid} {} ({} at {})",
                    escape(&k.comm),
                    k.close_wait,
                    clock(k.time)
                )
            })
            .collect();
        writeln!(out, "CLOSE_WAIT peaks: {}", list.join(", "))?;
    }

    let peers = top_peers(snap);
    writeln!(out)?;
    writeln!(out, "Top peers by TIME_WAIT entered")?;
    writeln!(
        out,
        "{:<45} {:>10} {:>7} {:>7} {:>7}  PROCESSES",
        "PEER", "TW_ENTERED", "TW_NOW", "CW_NOW", "EST_NOW"
    )?;
    for (label, p) in peers.iter().take(top) {
        let procs: Vec<String> = p
            .procs
            .iter()
            .map(|(pid, comm)| format!("{pid} {}", escape(comm)))
            .collect();
        writeln!(
            out,
            "{label:<45} {:>10} {:>7} {:>7} {:>7}  {}",
            p.tw_entered,
            p.tw_now,
            p.cw_now,
            p.est_now,
            procs.join(", ")
        )?;
    }

    writeln!(out)?;
    writeln!(
        out,
        "TIME_WAIT entered per second (now: TIME_WAIT and CLOSE_WAIT now)"
    )?;
    timeline_chart(out, replay.timeline)
}

/// One bar per second (or per group of seconds, at most 60 rows), scaled to the peak.
fn timeline_chart(out: &mut impl Write, points: &[TimelinePoint]) -> io::Result<()> {
    const ROWS: usize = 60;
    const WIDTH: f64 = 50.0;
    if points.is_empty() {
        return writeln!(out, "  (no recorded seconds)");
    }
    let per_row = points.len().div_ceil(ROWS);
    let rows: Vec<(Timestamp, f64, u64, u64)> = points
        .chunks(per_row)
        .map(|c| {
            let rate = c.iter().map(|p| p.timewait_per_s).sum::<f64>() / c.len() as f64;
            let now = c.last().map_or(0, |p| p.timewait_now);
            // The highest of the group: a CLOSE_WAIT pile-up must not average away.
            let cw = c.iter().map(|p| p.close_wait_now).max().unwrap_or(0);
            (c[0].time, rate, now, cw)
        })
        .collect();
    let peak = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    if per_row > 1 {
        writeln!(out, "  (each row averages {per_row} seconds)")?;
    }
    for (time, rate, now, cw) in rows {
        let len = if peak > 0.0 {
            (rate / peak * WIDTH).round() as usize
        } else {
            0
        };
        writeln!(
            out,
            "  {} {:>9.1}/s {:<50} now {now} CLOSE_WAIT {cw}",
            clock(time),
            rate,
            "#".repeat(len)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::tests::header;

    fn end(snapshot: Option<Arc<Snapshot>>) -> End {
        End {
            mono_ns: 0,
            first_ns: None,
            last_ns: None,
            tally: Tally::default(),
            snapshot,
            problems: Vec::new(),
        }
    }

    fn at(time: &str, per_s: f64) -> Arc<Snapshot> {
        let mut snap = Snapshot {
            time: time.parse().expect("time"),
            ..Snapshot::default()
        };
        snap.totals.timewait_per_s = per_s;
        Arc::new(snap)
    }

    fn report(style: Style, snaps: &[Arc<Snapshot>]) -> String {
        let mut r = Report::new(Vec::new(), style, Path::new("x.twr"), header());
        for s in snaps {
            r.snapshot(s).expect("snapshot");
        }
        r.end(&end(snaps.last().cloned())).expect("end");
        String::from_utf8(r.out).expect("utf8")
    }

    #[test]
    fn failed_calls_are_listed_when_there_are_some() {
        use crate::{
            event::{Call, Errno},
            model::snapshot::{FailureRow, ProcessRow},
        };
        let plain = report(Style::Text { top: 10 }, &[at("2026-11-25T16:00:01Z", 1.0)]);
        assert!(!plain.contains("Failed calls"), "{plain}");
        let mut snap = Snapshot {
            time: "2026-11-25T16:00:01Z".parse().expect("time"),
            ..Snapshot::default()
        };
        snap.processes.push(ProcessRow {
            pid: 42,
            comm: "loadgen".into(),
            connect_failures: 41,
            bind_failures: 2,
            failures: vec![
                FailureRow {
                    call: Call::Connect,
                    errno: Errno::EADDRNOTAVAIL,
                    count: 41,
                },
                FailureRow {
                    call: Call::Bind,
                    errno: Errno::EADDRINUSE,
                    count: 2,
                },
            ],
            ..ProcessRow::default()
        });
        let text = report(Style::Text { top: 10 }, &[Arc::new(snap)]);
        assert!(
            text.contains(
                "Failed calls: 42 loadgen (connect() EADDRNOTAVAIL 41, bind() EADDRINUSE 2)"
            ),
            "{text}"
        );
    }

    #[test]
    fn times_are_whole_seconds_and_the_chart_shows_the_time_of_day() {
        let snaps = [
            at("2026-11-25T16:00:01.5Z", 2.0),
            at("2026-11-25T16:00:02.999Z", 4.0),
        ];
        let v: Value = serde_json::from_str(&report(Style::Json, &snaps)).expect("json");
        assert_eq!(v["time"], "2026-11-25T16:00:02Z");
        assert_eq!(v["timeline"][0]["time"], "2026-11-25T16:00:01Z");
        assert_eq!(v["timeline"][1]["time"], "2026-11-25T16:00:02Z");
        let text = report(Style::Text { top: 10 }, &snaps);
        let chart: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("TIME_WAIT entered per second"))
            .skip(1)
            .collect();
        assert!(chart[0].starts_with("  16:00:01       2.0/s #"), "{text}");
        assert!(chart[1].starts_with("  16:00:02       4.0/s #"), "{text}");
    }

    const HOSTILE: &str = "\x1b[2J\x1b[H\nFAKE\r";

    #[test]
    fn text_escapes_everything_the_file_and_the_processes_named() {
        use crate::model::snapshot::{PeerRow, ProcessRow};
        let mut h = header();
        h.hostname = HOSTILE.into();
        h.kernel = "6.18\x07".into();
        h.twtrace = "0.1\u{9b}".into();
        h.start_time = "2026\r".into();
        h.note = Some("note\nFAKE".into());
        h.command_line = vec!["twtrace".into(), "-o".into(), "a\nb".into()];
        h.sysctls = vec![("k\x1b".into(), "v\x7f".into())];
        let row = ProcessRow {
            pid: 42,
            comm: HOSTILE.into(),
            timewait_entered: 3,
            close_wait_now: 1,
            peers: vec![PeerRow {
                timewait_entered: 3,
                ..PeerRow::new(PeerKey::Out {
                    raddr: "10.0.0.1".parse().expect("addr"),
                    rport: 80,
                })
            }],
            ..ProcessRow::default()
        };
        let snap = Arc::new(Snapshot {
            processes: vec![row],
            ..Snapshot::default()
        });
        let mut r = Report::new(
            Vec::new(),
            Style::Text { top: 10 },
            Path::new("x\ty.twr"),
            h,
        );
        r.end(&end(Some(snap))).expect("end");
        let text = String::from_utf8(r.out).expect("utf8");
        assert!(
            !text.contains(|c: char| c.is_control() && c != '\n'),
            "{text:?}"
        );
        let esc = r"\x1b[2J\x1b[H\nFAKE\r";
        for want in [
            r"twtrace recording x\ty.twr".to_owned(),
            format!(
                r"  host      {esc}, kernel 6.18\x07 (twtrace 0.1\u{{9b}}, format {})",
                crate::recording::format::VERSION
            ),
            r"  span      2026\r .. 2026\r (0.0 s)".to_owned(),
            r"  note      note\nFAKE".to_owned(),
            r"  command   twtrace -o a\nb".to_owned(),
            r"  sysctl    k\x1b = v\x7f".to_owned(),
            format!(r"CLOSE_WAIT at the end: 42 {esc} (1)"),
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "no line {want:?} in:\n{text}"
            );
        }
        // In the process table, cut to the column like any long name.
        assert!(
            text.lines()
                .any(|l| l.starts_with(r"     42 \x1b[2J\x1b[H\nF          3 ")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("10.0.0.1:80") && l.ends_with(&format!("  42 {esc}"))),
            "{text}"
        );
    }

    fn proc_row(pid: u32, comm: &str, tw: u64, cw: u64) -> crate::model::snapshot::ProcessRow {
        crate::model::snapshot::ProcessRow {
            pid,
            comm: comm.into(),
            timewait_entered: tw,
            timewait_per_s: tw as f64,
            close_wait_now: cw,
            ..crate::model::snapshot::ProcessRow::default()
        }
    }

    /// A leaker that held 30 CLOSE_WAIT and closed them, a churner, an idle process.
    fn leak_snaps() -> Vec<Arc<Snapshot>> {
        (0..4)
            .map(|i| {
                let cw = if i == 1 || i == 2 { 30 } else { 0 };
                let mut snap = Snapshot {
                    time: Timestamp::from_second(1_795_564_800 + i).expect("time"),
                    processes: vec![
                        proc_row(10, "churn", 100 * i as u64, 0),
                        proc_row(20, "idle", 0, 0),
                        proc_row(30, "leaker", 0, cw),
                    ],
                    ..Snapshot::default()
                };
                snap.totals.close_wait_now = cw;
                Arc::new(snap)
            })
            .collect()
    }

    #[test]
    fn a_closed_leak_shows_its_peak_and_is_not_ranked_last() {
        let snaps = leak_snaps();
        let text = report(Style::Text { top: 10 }, &snaps);
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Top processes"))
            .skip(2)
            .take(3)
            .collect();
        assert!(rows[0].starts_with("     10 churn "), "{text}");
        assert!(rows[1].starts_with("     30 leaker "), "{text}");
        assert!(
            rows[1].contains("     30 00:00:01         -       0 "),
            "{text}"
        );
        assert!(rows[2].starts_with("     20 idle "), "{text}");
        assert!(
            text.lines()
                .any(|l| l == "CLOSE_WAIT peaks: 30 leaker (30 at 00:00:01)"),
            "{text}"
        );
        assert!(text.contains("now 0 CLOSE_WAIT 30"), "{text}");

        let v: Value = serde_json::from_str(&report(Style::Json, &snaps)).expect("json");
        let pids: Vec<u64> = v["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .filter_map(|p| p["pid"].as_u64())
            .collect();
        assert_eq!(pids, [10, 30, 20]);
        assert_eq!(v["processes"][1]["close_wait_peak"], 30);
        assert_eq!(
            v["processes"][1]["close_wait_peak_time"],
            "2026-11-25T00:00:01Z"
        );
        assert_eq!(v["processes"][1]["close_wait_now"], 0);
        assert_eq!(v["processes"][2]["close_wait_peak"], 0);
        assert_eq!(v["processes"][2]["close_wait_peak_time"], Value::Null);
        assert_eq!(v["close_wait_peaks"][0]["pid"], 30);
        assert_eq!(v["timeline"][1]["close_wait_now"], 30);
    }

    #[test]
    fn the_html_page_is_self_contained_escaped_and_names_every_series() {
        let mut snaps = leak_snaps();
        let mut last = (*snaps[3]).clone();
        last.processes[1].comm = format!("<img src=x onerror=alert(1)>{HOSTILE}");
        last.processes[1].timewait_per_s = 1.0;
        snaps[3] = Arc::new(last);
        let mut h = header();
        h.hostname = "host\"><script>alert(1)</script>".into();
        h.command_line = vec!["twtrace".into(), "record".into(), "-o".into(), "a&b".into()];
        let mut r = Report::new(Vec::new(), Style::Html { top: 10 }, Path::new("x.twr"), h);
        for s in &snaps {
            r.snapshot(s).expect("snapshot");
        }
        r.end(&end(snaps.last().cloned())).expect("end");
        let page = String::from_utf8(r.out).expect("utf8");
        // Every `<` of the text was escaped: what is left are the page's own tags.
        for tag in page
            .split('<')
            .skip(1)
            .map(|t| t.split('>').next().unwrap_or(""))
        {
            let name = tag.split_whitespace().next().unwrap_or("");
            let fetching = [
                "script", "img", "image", "link", "iframe", "object", "embed", "use",
            ];
            assert!(!fetching.contains(&name), "<{tag}>");
            for bad in ["src=", "href=", "url("] {
                assert!(!tag.contains(bad), "{bad} in <{tag}>");
            }
        }
        for bad in ["url(", "@import", "http:", "https:", "//"] {
            assert!(!page.contains(bad), "{bad} in:\n{page}");
        }
        assert!(!page.contains(|c: char| c.is_control() && c != '\n'));
        assert!(page.contains("host&quot;&gt;&lt;script&gt;"), "{page}");
        assert!(
            page.contains("<code>twtrace record -o a&amp;b</code>"),
            "{page}"
        );
        assert!(
            page.contains(r"&lt;img src=x onerror=alert(1)&gt;\x1b[2J"),
            "{page}"
        );
        for id in [
            "tw-rate-pid-10",
            "tw-rate-pid-20",
            "cw-now-pid-30",
            "cw-now-total",
        ] {
            assert!(page.contains(&format!(r#"id="{id}""#)), "{id} in:\n{page}");
        }
        assert!(
            page.contains("<title>pid 30 leaker: CLOSE_WAIT now, highest 30</title>"),
            "{page}"
        );
        assert!(
            page.contains(r#"data-kind="close_wait_held" data-pid="30""#),
            "{page}"
        );
        assert!(
            page.contains("CLOSE_WAIT peak: 30 at 2026-11-25T00:00:01Z"),
            "{page}"
        );
        assert!(
            page.contains(r#"<td class="n cw-peak">30</td><td>2026-11-25T00:00:01Z</td>"#),
            "{page}"
        );
        assert!(page.ends_with("</html>\n"));
    }

    #[test]
    fn json_keeps_hostile_names_exact() {
        let hostile = format!("{HOSTILE}\u{9b}");
        let mut h = header();
        h.hostname.clone_from(&hostile);
        let mut r = Report::new(Vec::new(), Style::Json, Path::new("x.twr"), h);
        r.end(&end(None)).expect("end");
        let text = String::from_utf8(r.out).expect("utf8");
        assert!(!text.trim_end().contains(char::is_control), "{text:?}");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["host"]["hostname"], hostile.as_str());
    }

    #[test]
    fn without_a_snapshot_the_time_is_the_recordings_start() {
        let mut r = Report::new(Vec::new(), Style::Json, Path::new("x.twr"), header());
        r.end(&end(None)).expect("end");
        let v: Value = serde_json::from_slice(&r.out).expect("json");
        assert_eq!(v["time"], "2026-11-25T16:00:00.000000Z");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["processes"], json!([]));
    }
}
