//! `twtrace report FILE`: replays a recording and summarises it. Needs no privileges.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::Path,
    time::UNIX_EPOCH,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Header, Reader, Record,
    replay::{Replay, Selection, TimelinePoint},
};
use crate::{
    cli::ReportArgs,
    run::{is_broken_pipe, summary},
    snapshot::Snapshot,
    trace::{Format, Printer},
};

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    match report_inner(&args) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn report_inner(args: &ReportArgs) -> anyhow::Result<()> {
    let mut reader = Reader::open(&args.file)?;
    let header = reader.header().clone();
    let sel = Selection {
        pids: args.pid.clone(),
        ports: args.port.clone(),
        since_ns: args
            .since
            .as_deref()
            .map(|s| parse_time(s, &header))
            .transpose()
            .context("--since")?,
        until_ns: args
            .until
            .as_deref()
            .map(|s| parse_time(s, &header))
            .transpose()
            .context("--until")?,
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    if args.export.is_some() {
        let mut printer = Printer::new(&mut out, Format::Json, header.clock());
        let n = for_each(&mut reader, &args.file, |r| {
            if let Record::Event(t) = r {
                match sel.when(t.mono_ns) {
                    super::replay::Window::In if sel.event(t) => printer.print(t),
                    super::replay::Window::After => return false,
                    _ => {}
                }
            }
            true
        })?;
        printer.flush()?;
        log::debug!("{n} records read");
        return Ok(());
    }
    let mut replay = Replay::new(header.clone(), sel);
    for_each(&mut reader, &args.file, |r| replay.feed(r))?;
    let snap = replay.finish().unwrap_or_else(|| Snapshot {
        time: header.start_time.clone(),
        ..Snapshot::default()
    });
    let problems: Vec<String> = reader.problems().iter().map(ToString::to_string).collect();
    if args.json {
        let v = json_report(&header, &replay, &snap, &problems);
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else {
        text_report(&mut out, &args.file, &header, &replay, &snap, args.top)?;
    }
    out.flush()?;
    Ok(())
}

/// Reads every record, warning about damage as it is found. Fails when nothing could be read
/// because of damage (a recording with no records and no damage is merely empty).
fn for_each(
    reader: &mut Reader<impl io::Read>,
    path: &Path,
    mut f: impl FnMut(&Record) -> bool,
) -> anyhow::Result<u64> {
    let mut more = true;
    while more {
        let next = reader
            .next_record()
            .with_context(|| format!("reading {}", path.display()))?;
        for p in reader.take_problems() {
            eprintln!("twtrace: warning: {}: {p}", path.display());
        }
        match next {
            Some(r) => more = f(&r),
            None => break,
        }
    }
    if reader.records_read() == 0
        && let Some(p) = reader.problems().first()
    {
        bail!("{}: nothing could be read: {p}", path.display());
    }
    Ok(reader.records_read())
}

/// An RFC 3339 time, or a duration from the recording's start: monotonic ns.
pub fn parse_time(s: &str, header: &Header) -> anyhow::Result<u64> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(header
            .start_mono_ns
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
        anyhow::anyhow!("`{s}` is neither an RFC 3339 time nor a duration such as 30s")
    })?;
    let wall = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let mono = wall - i128::from(header.mono_to_wall_ns);
    Ok(u64::try_from(mono.max(0)).unwrap_or(u64::MAX))
}

fn span(header: &Header, replay: &Replay) -> (String, String, f64) {
    let fmt = |ns: u64| humantime::format_rfc3339_seconds(header.wall_time(ns)).to_string();
    match (replay.first_ns, replay.last_ns) {
        (Some(a), Some(b)) => (fmt(a), fmt(b), b.saturating_sub(a) as f64 / 1e9),
        _ => (header.start_time.clone(), header.start_time.clone(), 0.0),
    }
}

fn json_report(header: &Header, replay: &Replay, snap: &Snapshot, problems: &[String]) -> Value {
    let mut v = serde_json::to_value(snap).unwrap_or_else(|_| json!({}));
    let (start, end, secs) = span(header, replay);
    let sysctls: BTreeMap<&str, &str> = header
        .sysctls
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "timeline".into(),
            serde_json::to_value(&replay.timeline).unwrap_or_default(),
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
                "duration_s": secs,
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
    procs: Vec<String>,
}

fn text_report(
    out: &mut impl Write,
    path: &Path,
    header: &Header,
    replay: &Replay,
    snap: &Snapshot,
    top: usize,
) -> io::Result<()> {
    let (start, end, secs) = span(header, replay);
    writeln!(out, "twtrace recording {}", path.display())?;
    writeln!(
        out,
        "  host      {}, kernel {} (twtrace {}, format {})",
        header.hostname, header.kernel, header.twtrace, header.version
    )?;
    writeln!(out, "  span      {start} .. {end} ({secs:.1} s)")?;
    if let Some(note) = &header.note {
        writeln!(out, "  note      {note}")?;
    }
    writeln!(out, "  command   {}", header.command_line.join(" "))?;
    for (k, v) in &header.sysctls {
        writeln!(out, "  sysctl    {k} = {v}")?;
    }
    writeln!(
        out,
        "  {}",
        summary(&replay.tally, &replay.stats, 0).trim_start_matches("twtrace: ")
    )?;
    let t = &snap.totals;
    writeln!(
        out,
        "  at the end: TIME_WAIT now {} (kernel {}), CLOSE_WAIT {}, ESTABLISHED {}; TIME_WAIT entered {}",
        t.timewait_now,
        t.timewait_kernel
            .map_or_else(|| "?".to_owned(), |k| k.to_string()),
        t.close_wait_now,
        t.established_now,
        t.timewait_entered
    )?;

    writeln!(out)?;
    writeln!(out, "Top processes by TIME_WAIT entered")?;
    writeln!(
        out,
        "{:>7} {:<16} {:>10} {:>7} {:>10} {:>7} {:>7} {:>7} {:>6}",
        "PID",
        "COMM",
        "TW_ENTERED",
        "TW_NOW",
        "CW_NOW(end)",
        "EST_NOW",
        "OPENS",
        "CLOSES",
        "RESETS"
    )?;
    let mut procs: Vec<_> = snap.processes.iter().collect();
    procs.sort_by(|a, b| {
        b.timewait_entered
            .cmp(&a.timewait_entered)
            .then(b.close_wait_now.cmp(&a.close_wait_now))
            .then(b.resets.cmp(&a.resets))
            .then(a.pid.cmp(&b.pid))
    });
    for p in procs.iter().take(top) {
        let comm: String = p.comm.chars().take(16).collect();
        writeln!(
            out,
            "{:>7} {:<16} {:>10} {:>7} {:>11} {:>7} {:>7} {:>7} {:>6}",
            p.pid,
            comm,
            p.timewait_entered,
            p.timewait_now,
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
    let mut cw: Vec<_> = procs.iter().filter(|p| p.close_wait_now > 0).collect();
    if !cw.is_empty() {
        cw.sort_by_key(|p| std::cmp::Reverse(p.close_wait_now));
        let list: Vec<String> = cw
            .iter()
            .take(top)
            .map(|p| format!("{} {} ({})", p.pid, p.comm, p.close_wait_now))
            .collect();
        writeln!(out, "CLOSE_WAIT at the end: {}", list.join(", "))?;
    }

    let mut peers: BTreeMap<String, PeerSum> = BTreeMap::new();
    for p in &snap.processes {
        for r in &p.peers {
            let label = match r.lport {
                Some(lport) => format!("{} -> :{lport}", r.raddr),
                None if r.raddr == "other" => format!("other (pid {})", p.pid),
                None if r.raddr.contains(':') => format!("[{}]:{}", r.raddr, r.rport),
                None => format!("{}:{}", r.raddr, r.rport),
            };
            let e = peers.entry(label).or_default();
            e.tw_entered += r.timewait_entered;
            e.tw_now += r.timewait_now;
            e.cw_now += r.close_wait_now;
            e.est_now += r.established_now;
            e.procs.push(format!("{} {}", p.pid, p.comm));
        }
    }
    let mut peers: Vec<_> = peers.into_iter().collect();
    peers.sort_by(|a, b| {
        b.1.tw_entered
            .cmp(&a.1.tw_entered)
            .then(b.1.cw_now.cmp(&a.1.cw_now))
            .then(a.0.cmp(&b.0))
    });
    writeln!(out)?;
    writeln!(out, "Top peers by TIME_WAIT entered")?;
    writeln!(
        out,
        "{:<45} {:>10} {:>7} {:>7} {:>7}  PROCESSES",
        "PEER", "TW_ENTERED", "TW_NOW", "CW_NOW", "EST_NOW"
    )?;
    for (label, p) in peers.iter().take(top) {
        writeln!(
            out,
            "{label:<45} {:>10} {:>7} {:>7} {:>7}  {}",
            p.tw_entered,
            p.tw_now,
            p.cw_now,
            p.est_now,
            p.procs.join(", ")
        )?;
    }

    writeln!(out)?;
    writeln!(out, "TIME_WAIT entered per second")?;
    timeline_chart(out, &replay.timeline)
}

/// One bar per second (or per group of seconds, at most 60 rows), scaled to the peak.
fn timeline_chart(out: &mut impl Write, points: &[TimelinePoint]) -> io::Result<()> {
    const ROWS: usize = 60;
    const WIDTH: f64 = 50.0;
    if points.is_empty() {
        return writeln!(out, "  (no recorded seconds)");
    }
    let per_row = points.len().div_ceil(ROWS);
    let rows: Vec<(&str, f64, u64)> = points
        .chunks(per_row)
        .map(|c| {
            let rate = c.iter().map(|p| p.timewait_per_s).sum::<f64>() / c.len() as f64;
            let now = c.last().map_or(0, |p| p.timewait_now);
            (c[0].time.as_str(), rate, now)
        })
        .collect();
    let peak = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    if per_row > 1 {
        writeln!(out, "  (each row averages {per_row} seconds)")?;
    }
    for (time, rate, now) in rows {
        let len = if peak > 0.0 {
            (rate / peak * WIDTH).round() as usize
        } else {
            0
        };
        let clock = time.get(11..19).unwrap_or(time);
        writeln!(
            out,
            "  {clock} {:>9.1}/s {:<50} now {now}",
            rate,
            "#".repeat(len)
        )?;
    }
    Ok(())
}
