//! `twtrace doctor`: what is true on this host about ports, TIME_WAIT, listeners and open
//! files, from evidence. [`facts`] reads the settings, counters, socket table and processes
//! (no privileges needed, except to count other users' open files); [`rules`] turns them into
//! findings, each with the values it rests on and a remedy; this module prints them, as text
//! or as one JSON document. With `--watch`, the live view's last snapshot (`crate::run` runs
//! it) adds the processes that churn and leak.
//!
//! It exits 0 whatever it finds: findings are its output, not a failure.

pub mod facts;
pub mod rules;

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::Serialize;
use serde_json::json;

use crate::{
    diagnosis::{Finding, Severity},
    kernel::{nofile::FdUse, sysctl},
    model::snapshot::WholeSeconds,
    text::{escape, write_json},
};
pub use facts::{Facts, Skipped, Watched};

/// The processes nearest their open-file limits listed (in the JSON, and with `--explain`).
pub const NOFILE_SHOWN: usize = 10;

/// The version of the JSON document's layout.
pub const SCHEMA: u32 = crate::model::snapshot::SCHEMA;

/// Reads this host, applies the rules and prints the result to `out`.
pub fn run(
    out: &mut impl Write,
    json: bool,
    explain: bool,
    watch: Option<Watched>,
) -> io::Result<()> {
    let facts = Facts::gather(watch);
    let findings = rules::findings(&facts, explain);
    if json {
        write_json(&mut *out, &document(&facts, &findings))?;
        writeln!(out)?;
    } else {
        write_text(out, &facts, &findings, explain)?;
    }
    out.flush()
}

#[derive(Serialize)]
struct Document<'a> {
    schema: u32,
    time: String,
    host: &'a str,
    kernel: &'a str,
    netns: Option<u64>,
    uptime_s: Option<f64>,
    /// Name -> value as `sysctl -n` prints it (whitespace made single spaces); null: this
    /// kernel has no such setting.
    sysctls: BTreeMap<&'a str, Option<&'a str>>,
    ports: serde_json::Value,
    counters: &'a BTreeMap<String, BTreeMap<String, i64>>,
    sockstat: serde_json::Value,
    sockets: Option<&'a facts::SocketFacts>,
    nofile: &'a [FdUse],
    settings: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watch: Option<serde_json::Value>,
    findings: &'a [Finding],
    skipped: &'a [Skipped],
}

fn document<'a>(f: &'a Facts, findings: &'a [Finding]) -> Document<'a> {
    Document {
        schema: SCHEMA,
        time: WholeSeconds(f.time).to_string(),
        host: &f.host,
        kernel: &f.kernel,
        netns: f.netns,
        uptime_s: f.uptime_s,
        sysctls: f.sysctls.iter().map(|(n, v)| (*n, v.as_deref())).collect(),
        ports: f.ports.as_ref().map_or(serde_json::Value::Null, |p| {
            let r = &p.range;
            json!({"low": r.low, "high": r.high, "reserved": r.reserved, "usable": r.usable})
        }),
        counters: &f.counters.0,
        sockstat: f.sockstat.map_or(serde_json::Value::Null, |s| {
            json!({"inuse": s.inuse, "orphan": s.orphan, "tw": s.tw, "alloc": s.alloc})
        }),
        sockets: f.sockets.as_ref(),
        nofile: &f.nofile.uses[..f.nofile.uses.len().min(NOFILE_SHOWN)],
        settings: f
            .settings
            .iter()
            .map(|s| {
                json!({"file": s.file.display().to_string(), "line": s.line, "key": s.key, "value": s.value})
            })
            .collect(),
        watch: f.watch.as_ref().map(|w| {
            let delta = w
                .counters_before
                .as_ref()
                .map(|b| f.counters.since(b).0);
            json!({
                "seconds": w.seconds,
                "counters": delta,
                "processes": w.snapshot.as_ref().map_or(0, |s| s.processes.len()),
            })
        }),
        findings,
        skipped: &f.skipped,
    }
}

/// Width text is wrapped to.
const WIDTH: usize = 100;
/// Where a finding's text starts (after the severity).
const INDENT: usize = 10;
/// Characters of a command line in `--explain`'s open-files table.
const COMMAND_W: usize = 50;

/// `text` wrapped at spaces to `WIDTH`: the first line after `first`, the others after `rest`
/// (both as wide). A word longer than a line stays whole.
fn wrap(out: &mut impl Write, first: &str, rest: &str, text: &str) -> io::Result<()> {
    let room = WIDTH.saturating_sub(first.chars().count()).max(20);
    let mut line = String::new();
    let mut prefix = first;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > room {
            writeln!(out, "{prefix}{line}")?;
            line.clear();
            prefix = rest;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    writeln!(out, "{prefix}{line}")
}

fn label(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRITICAL",
        Severity::Warning => "WARNING",
        Severity::Info => "INFO",
    }
}

/// The findings as text: most severe first, each with its evidence and remedy, everything
/// from outside escaped.
pub fn write_text(
    out: &mut impl Write,
    f: &Facts,
    findings: &[Finding],
    explain: bool,
) -> io::Result<()> {
    writeln!(
        out,
        "twtrace doctor: {}, Linux {}, {}",
        escape(&f.host),
        escape(&f.kernel),
        WholeSeconds(f.time)
    )?;
    if let Some(ns) = f.netns {
        writeln!(
            out,
            "Network namespace {ns}: the settings, counters and sockets read are this one's."
        )?;
    }
    if let Some(w) = &f.watch {
        writeln!(
            out,
            "Watched TCP state changes for {:.1} s: {} processes with sockets.",
            w.seconds,
            w.snapshot.as_ref().map_or(0, |s| s.processes.len())
        )?;
    }
    let pad = " ".repeat(INDENT);
    let ev_first = format!("{pad}evidence  ");
    let ev_rest = " ".repeat(INDENT + 10);
    let remedy_first = format!("{pad}remedy    ");
    for x in findings {
        writeln!(out)?;
        let head = format!("{:<INDENT$}", label(x.severity));
        wrap(
            out,
            &head,
            &pad,
            &format!("{}: {}", x.kind, escape(&x.title)),
        )?;
        for (i, e) in x.evidence.iter().enumerate() {
            let first = if i == 0 {
                ev_first.as_str()
            } else {
                ev_rest.as_str()
            };
            wrap(out, first, &ev_rest, &escape(e))?;
        }
        if !x.remedy.is_empty() {
            wrap(out, &remedy_first, &ev_rest, &escape(&x.remedy))?;
        }
    }
    writeln!(out)?;
    let count = |s| findings.iter().filter(|x| x.severity == s).count();
    if findings.is_empty() {
        writeln!(
            out,
            "No findings: nothing read here points at a problem. --explain shows what was read \
             and corrects common advice that does not apply."
        )?;
    } else {
        writeln!(
            out,
            "{} findings: {} critical, {} warning, {} info.",
            findings.len(),
            count(Severity::Critical),
            count(Severity::Warning),
            count(Severity::Info)
        )?;
    }
    if !f.skipped.is_empty() {
        writeln!(out, "Skipped:")?;
        for s in &f.skipped {
            wrap(
                out,
                "  ",
                "    ",
                &escape(&format!("{}: {}", s.check, s.why)),
            )?;
        }
    }
    if explain {
        write_read(out, f)?;
    }
    Ok(())
}

/// `--explain`: everything read, as tables.
fn write_read(out: &mut impl Write, f: &Facts) -> io::Result<()> {
    writeln!(out, "\nSettings (/proc/sys):")?;
    for (name, value) in &f.sysctls {
        let v = value.as_deref().map_or_else(
            || format!("(not in this kernel: no {})", sysctl::path(name).display()),
            |v| escape(v).into_owned(),
        );
        writeln!(out, "  {name:<34} {v}")?;
    }
    if let Some(r) = f.ports.as_ref().map(|p| &p.range) {
        writeln!(
            out,
            "  {:<34} {} ports, {} reserved, {} usable",
            "(local port range)",
            r.size(),
            r.reserved,
            r.usable
        )?;
    }
    if !f.settings.is_empty() {
        writeln!(out, "Settings files (in the order applied at boot):")?;
        for s in &f.settings {
            writeln!(
                out,
                "  {}:{}: {} = {}",
                escape(&s.file.display().to_string()),
                s.line,
                escape(&s.key),
                escape(&s.value)
            )?;
        }
    }
    writeln!(
        out,
        "Counters (/proc/net/netstat, /proc/net/snmp; totals so far):"
    )?;
    for (group, names) in &f.counters.0 {
        for (name, v) in names {
            writeln!(out, "  {:<34} {v}", format!("{group} {name}"))?;
        }
    }
    if let Some(s) = f.sockstat {
        writeln!(
            out,
            "Sockets (/proc/net/sockstat): inuse {}, orphan {}, tw {}, alloc {}",
            s.inuse, s.orphan, s.tw, s.alloc
        )?;
    }
    if let Some(s) = &f.sockets {
        writeln!(
            out,
            "Socket table (sock_diag): {} TIME_WAIT ({} of accepted connections), {} orphaned \
             FIN_WAIT2, {} listening ports",
            s.timewait,
            s.timewait_incoming,
            s.fin_wait2_orphans,
            s.listening_ports.len()
        )?;
        for d in &s.destinations {
            writeln!(
                out,
                "  {:<34} {} TIME_WAIT, {} other, from {}{}",
                d.peer().to_string(),
                d.timewait,
                d.other,
                d.laddr,
                if d.reuse {
                    " (tcp_tw_reuse applies)"
                } else {
                    ""
                }
            )?;
        }
    }
    let shown = &f.nofile.uses[..f.nofile.uses.len().min(NOFILE_SHOWN)];
    if !shown.is_empty() {
        writeln!(
            out,
            "Open files, nearest their soft limit ({} of {} processes counted):",
            f.nofile.seen - f.nofile.refused,
            f.nofile.seen
        )?;
        writeln!(
            out,
            "  {:>7} {:<16} {:>7} {:>8} {:>10}  COMMAND",
            "PID", "COMM", "OPEN", "SOFT", "HARD"
        )?;
        for u in shown {
            let comm: String = escape(&u.comm).chars().take(16).collect();
            let hard = u
                .hard
                .map_or_else(|| "unlimited".to_owned(), |h| h.to_string());
            // Cut to keep the row on a line; the JSON has it whole (up to its cap).
            let cmd = escape(u.cmdline.as_deref().unwrap_or("-")).into_owned();
            let cmd = if cmd.chars().count() > COMMAND_W {
                let mut cut: String = cmd.chars().take(COMMAND_W - 1).collect();
                cut.push('…');
                cut
            } else {
                cmd
            };
            writeln!(
                out,
                "  {:>7} {comm:<16} {:>7} {:>8} {hard:>10}  {cmd}",
                u.pid, u.open, u.soft,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_words_and_indents() {
        let mut out = Vec::new();
        let text = "word ".repeat(40);
        wrap(&mut out, "INFO      ", "          ", &text).expect("write");
        let s = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.len() <= WIDTH), "{s}");
        assert!(lines[0].starts_with("INFO      word"));
        assert!(lines[1].starts_with("          word"));
        let long = "x".repeat(150);
        let mut out = Vec::new();
        wrap(&mut out, "a ", "  ", &long).expect("write");
        assert_eq!(String::from_utf8(out).expect("utf8"), format!("a {long}\n"));
    }
}
