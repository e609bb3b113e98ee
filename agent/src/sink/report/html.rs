//! `twtrace report FILE --html OUT.html`: the report as one self-contained page, opened on
//! machines without network: inline CSS and inline SVG, no script, no font, no image, nothing
//! fetched (a Content-Security-Policy of `default-src 'none'` says so to the browser too).
//!
//! Every text comes from the recording, and so from whoever named a process or wrote the file:
//! it goes through [`h`], which makes control characters visible (as the text report does) and
//! then escapes what HTML gives a meaning to.

use std::{fmt::Write as _, path::Path};

use super::{
    Run, TimelinePoint, chart, close_wait_peak, history::SERIES_MAX, history::SERIES_TOP, ranked,
    span, top_peers,
};
use crate::{
    diagnosis::{Finding, Severity, Thresholds, diagnose},
    model::snapshot::{Snapshot, WholeSeconds},
    recording::Header,
    text::escape_html as h,
};

/// Everything the page shows.
pub(super) struct Page<'a> {
    pub path: &'a Path,
    pub header: &'a Header,
    pub run: &'a Run<'a>,
    pub snap: &'a Snapshot,
    pub problems: &'a [String],
    /// Processes (per chart and table) and peers shown.
    pub top: usize,
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1100px;padding:16px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 12px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:0 0 6px}code,.mono{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:13px}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #eee}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}table.facts th{color:#555;font-weight:600;white-space:nowrap}
.finding{border-left:5px solid #999;background:#f7f7f7;padding:8px 12px;margin:10px 0}
.finding.critical{border-color:#c0392b;background:#fdecea}.finding.warning{border-color:#e67e22;background:#fff4e5}
.finding.info{border-color:#2980b9;background:#eaf3fb}.sev{text-transform:uppercase;font-size:11px;font-weight:700;letter-spacing:.05em;margin-right:6px}
.who{color:#555;margin:0 0 4px}.evidence{margin:4px 0 4px 18px;padding:0}.remedy{margin:4px 0 0}
figure{margin:14px 0}figcaption{font-weight:600;margin-bottom:4px}svg.chart{width:100%;height:auto;display:block;background:#fcfcfc}
svg .grid{stroke:#e6e6e6;stroke-width:1}svg .axis,svg .tick{stroke:#888;stroke-width:1}svg text{font-size:11px;fill:#555}
ul.legend{list-style:none;padding:0;margin:4px 0;display:flex;flex-wrap:wrap;gap:4px 16px}
.swatch{display:inline-block;width:18px;height:0;border-top:3px solid;vertical-align:middle;margin-right:5px}
.swatch.dashed{border-top-style:dashed}table.procs td{white-space:nowrap}.note{color:#666;font-size:13px}
";

impl Page<'_> {
    /// The whole page.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(64 * 1024);
        let title = format!("twtrace report: {}", self.header.hostname);
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
             <h1>twtrace report <span class=\"mono\">{}</span></h1>\n",
            h(&title),
            h(&self.path.display().to_string())
        );
        self.host(&mut s);
        self.findings(&mut s);
        self.timelines(&mut s);
        self.processes(&mut s);
        self.peers(&mut s);
        let _ = write!(
            s,
            "<p class=\"note\">Written by twtrace {} from a recording made by twtrace {}.</p>\n\
             </body>\n</html>\n",
            h(env!("CARGO_PKG_VERSION")),
            h(&self.header.twtrace)
        );
        s
    }

    fn host(&self, s: &mut String) {
        let hd = self.header;
        let (start, end, secs) = span(hd, self.run);
        let f = &hd.filters;
        let join = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        let mut filters = vec![
            format!(
                "pids: {}",
                join(f.pids.iter().map(ToString::to_string).collect())
            ),
            format!(
                "ports: {}",
                join(f.ports.iter().map(ToString::to_string).collect())
            ),
        ];
        if let Some(n) = f.netns {
            filters.push(format!("netns: {n}"));
        }
        if let Some(c) = &f.cgroup {
            filters.push(format!("cgroup: {c}"));
        }
        let t = &self.snap.totals;
        let mut rows: Vec<(&str, String)> = vec![
            ("host", h(&hd.hostname)),
            ("kernel", h(&hd.kernel)),
            (
                "recorded by",
                format!("twtrace {} (format {})", h(&hd.twtrace), hd.version),
            ),
            ("recording start", h(&hd.start_time)),
            (
                "shown",
                format!("{} .. {} ({secs:.1} s)", h(&start), h(&end)),
            ),
            (
                "command line",
                format!(
                    "<code>{}</code>",
                    hd.command_line
                        .iter()
                        .map(|a| h(a))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ),
            ("filters", h(&filters.join("; "))),
            (
                "events",
                h(self.run.tally.summary().trim_start_matches("twtrace: ")),
            ),
            (
                "at the end",
                format!(
                    "TIME_WAIT now {} (kernel {}), CLOSE_WAIT {}, ESTABLISHED {}; TIME_WAIT entered {}",
                    t.timewait_now,
                    t.timewait_kernel
                        .map_or_else(|| "?".to_owned(), |k| k.to_string()),
                    t.close_wait_now,
                    t.established_now,
                    t.timewait_entered
                ),
            ),
        ];
        if let Some(note) = &hd.note {
            rows.push(("note", h(note)));
        }
        for p in self.problems {
            rows.push(("problem", h(p)));
        }
        s.push_str("<section id=\"host\">\n<h2>Host</h2>\n<table class=\"facts\">\n");
        for (k, v) in rows {
            let _ = writeln!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
        }
        for (k, v) in &hd.sysctls {
            let _ = writeln!(
                s,
                "<tr><th>sysctl</th><td><code>{} = {}</code></td></tr>",
                h(k),
                h(v)
            );
        }
        s.push_str("</table>\n</section>\n");
    }

    /// The diagnosis of the final snapshot, and what only the whole recording shows: CLOSE_WAIT
    /// held for a while and closed before the end.
    fn all_findings(&self) -> Vec<Finding> {
        let mut findings = diagnose(self.snap, &Thresholds::default());
        for (pid, k) in self.run.history.peaks() {
            let now = self
                .snap
                .processes
                .iter()
                .find(|p| p.pid == pid)
                .map(|p| p.close_wait_now);
            // Still held at the end: the diagnosis speaks of it.
            if now.is_some_and(|n| n > 0) {
                continue;
            }
            findings.push(Finding {
                severity: Severity::Info,
                kind: "close_wait_held",
                pid: Some(pid),
                comm: Some(k.comm.clone()),
                peer: None,
                title: format!(
                    "{} (pid {pid}) held up to {} connection(s) its peer had closed, and closed \
                     them before the end",
                    k.comm, k.close_wait
                ),
                evidence: vec![
                    format!(
                        "CLOSE_WAIT peak: {} at {}",
                        k.close_wait,
                        WholeSeconds(k.time)
                    ),
                    match now {
                        Some(n) => format!("CLOSE_WAIT at the end: {n}"),
                        None => "at the end: gone (no sockets left)".to_owned(),
                    },
                ],
                remedy: "a slow close rather than a leak; if it recurs or grows, close the \
                         socket as soon as read returns 0"
                    .to_owned(),
            });
        }
        crate::diagnosis::sort(&mut findings);
        findings
    }

    fn findings(&self, s: &mut String) {
        let findings = self.all_findings();
        s.push_str("<section id=\"findings\">\n<h2>Findings</h2>\n");
        if findings.is_empty() {
            s.push_str("<p>Nothing found.</p>\n");
        }
        for (i, f) in findings.iter().enumerate() {
            let sev = f.severity.as_str();
            let _ = write!(
                s,
                "<article class=\"finding {sev}\" id=\"finding-{i}\" data-kind=\"{}\"{}>\n\
                 <h3><span class=\"sev\">{sev}</span>{}</h3>\n",
                h(f.kind),
                f.pid
                    .map(|p| format!(" data-pid=\"{p}\""))
                    .unwrap_or_default(),
                h(&f.title)
            );
            let mut who = Vec::new();
            if let Some(pid) = f.pid {
                who.push(format!("pid {pid}"));
            }
            if let Some(comm) = &f.comm {
                who.push(format!("comm {}", h(comm)));
            }
            if let Some(peer) = &f.peer {
                who.push(format!("peer {}", h(peer)));
            }
            if !who.is_empty() {
                let _ = writeln!(s, "<p class=\"who\">{}</p>", who.join(" · "));
            }
            if !f.evidence.is_empty() {
                s.push_str("<ul class=\"evidence\">");
                for e in &f.evidence {
                    let _ = write!(s, "<li>{}</li>", h(e));
                }
                s.push_str("</ul>\n");
            }
            let _ = write!(
                s,
                "<p class=\"remedy\"><b>Remedy:</b> {}</p>\n</article>\n",
                h(&f.remedy)
            );
        }
        s.push_str("</section>\n");
    }

    fn timelines(&self, s: &mut String) {
        let timeline = self.run.timeline;
        let history = self.run.history;
        s.push_str("<section id=\"timelines\">\n<h2>Timelines</h2>\n");
        let (Some(first), Some(last)) = (timeline.first(), timeline.last()) else {
            s.push_str("<p>No recorded seconds.</p>\n</section>\n");
            return;
        };
        let span_s = last.time.duration_since(first.time).as_secs_f64();
        let at = |i: usize| {
            timeline
                .get(i)
                .map_or(span_s, |p| p.time.duration_since(first.time).as_secs_f64())
        };
        type Value = fn(&super::history::Point) -> f64;
        type Total = fn(&TimelinePoint) -> f64;
        let charts: [(&str, &str, Value, Total); 3] = [
            (
                "tw-rate",
                "TIME_WAIT entered per second",
                |p| p.tw_per_s(),
                |t| t.timewait_per_s,
            ),
            (
                "tw-now",
                "TIME_WAIT now",
                |p| p.tw_now as f64,
                |t| t.timewait_now as f64,
            ),
            (
                "cw-now",
                "CLOSE_WAIT now",
                |p| p.cw_now as f64,
                |t| t.close_wait_now as f64,
            ),
        ];
        for (id, what, value, total) in charts {
            // The processes whose line rises highest, most first.
            // A process keeps its colour on every chart: the one of its place among the series.
            let mut series: Vec<(&super::history::Series, f64, usize)> = history
                .series
                .iter()
                .enumerate()
                .map(|(n, se)| (se, se.points.iter().map(value).fold(0.0, f64::max), n))
                .filter(|(_, peak, _)| *peak > 0.0)
                .collect();
            series.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.pid.cmp(&b.0.pid)));
            let mut lines = vec![chart::Line {
                id: format!("{id}-total"),
                class: "total".into(),
                title: format!("all processes: {what}"),
                color: "#333333",
                dashed: true,
                points: timeline
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (at(i), total(p)))
                    .collect(),
            }];
            for &(se, peak, n) in series.iter().take(self.top) {
                lines.push(chart::Line {
                    id: format!("{id}-pid-{}", se.pid),
                    class: format!("pid-{}", se.pid),
                    title: format!(
                        "pid {} {}: {what}, highest {}",
                        se.pid,
                        se.comm,
                        chart::label(peak)
                    ),
                    color: chart::PALETTE[n % chart::PALETTE.len()],
                    // Past the palette, colours come again, dashed.
                    dashed: (n / chart::PALETTE.len()) % 2 == 1,
                    points: se
                        .points
                        .iter()
                        .enumerate()
                        .map(|(j, p)| (at((se.start + j) * history.step), value(p)))
                        .collect(),
                });
            }
            let c = chart::Chart {
                id: id.to_owned(),
                title: what.to_owned(),
                start: first.time,
                span_s,
                lines,
            };
            let _ = write!(
                s,
                "<figure id=\"{id}-figure\">\n<figcaption>{what} (time of day, UTC)</figcaption>\n{}\n<ul class=\"legend\">",
                c.svg()
            );
            for l in &c.lines {
                let _ = write!(
                    s,
                    "<li><span class=\"swatch{}\" style=\"border-top-color:{}\"></span>{}</li>",
                    if l.dashed { " dashed" } else { "" },
                    l.color,
                    h(&l.title)
                );
            }
            s.push_str("</ul>\n");
            if series.len() > self.top {
                let _ = writeln!(
                    s,
                    "<p class=\"note\">{} more processes not drawn (--top {} shows more).</p>",
                    series.len() - self.top,
                    self.top
                );
            }
            s.push_str("</figure>\n");
        }
        let mut notes = vec![format!(
            "Processes get a line once they are among the {SERIES_TOP} with the highest \
             TIME_WAIT rate or CLOSE_WAIT count in some second; at most {SERIES_MAX} do."
        )];
        if history.refused() > 0 {
            notes.push(format!(
                "{} more processes reached that top after the first {SERIES_MAX}: they have no \
                 line (their counts are in the tables).",
                history.refused()
            ));
        }
        if history.step > 1 {
            notes.push(format!(
                "Each point of a process's line covers {} seconds: the mean TIME_WAIT rate and \
                 the highest counts.",
                history.step
            ));
        }
        let _ = writeln!(s, "<p class=\"note\">{}</p>\n</section>", notes.join(" "));
    }

    fn processes(&self, s: &mut String) {
        let history = self.run.history;
        s.push_str(
            "<section id=\"processes\">\n<h2>Top processes by TIME_WAIT entered or CLOSE_WAIT \
             peak</h2>\n<table class=\"procs\">\n<tr><th class=\"n\">pid</th><th>comm</th>\
             <th class=\"n\">TIME_WAIT entered</th><th class=\"n\">TIME_WAIT now</th>\
             <th class=\"n\">CLOSE_WAIT peak</th><th>peak at</th><th class=\"n\">CLOSE_WAIT now</th>\
             <th class=\"n\">ESTABLISHED now</th><th class=\"n\">opens</th>\
             <th class=\"n\">closes</th><th class=\"n\">resets</th></tr>\n",
        );
        let procs = ranked(self.snap, history);
        for (p, _) in procs.iter().take(self.top) {
            let (peak, at) = close_wait_peak(history, p);
            let _ = writeln!(
                s,
                "<tr id=\"proc-{pid}\"><td class=\"n\">{pid}</td><td>{}{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n cw-peak\">{peak}</td><td>{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                h(&p.comm),
                if p.exited { " (exited)" } else { "" },
                p.timewait_entered,
                p.timewait_now,
                at.map_or_else(|| "-".to_owned(), |t| WholeSeconds(t).to_string()),
                p.close_wait_now,
                p.established_now,
                p.opens,
                p.closes,
                p.resets,
                pid = p.pid,
            );
        }
        s.push_str("</table>\n");
        if procs.len() > self.top {
            let _ = writeln!(
                s,
                "<p class=\"note\">{} more processes (--top N shows more).</p>",
                procs.len() - self.top
            );
        }
        // Peaks, also of processes gone from the final snapshot.
        let peaks = history.peaks();
        if !peaks.is_empty() {
            s.push_str(
                "<h3 id=\"close-wait-peaks\">CLOSE_WAIT peaks</h3>\n<table>\n<tr>\
                 <th class=\"n\">pid</th><th>comm</th><th class=\"n\">CLOSE_WAIT peak</th>\
                 <th>at</th></tr>\n",
            );
            for (pid, k) in peaks.iter().take(self.top) {
                let _ = writeln!(
                    s,
                    "<tr id=\"cw-peak-{pid}\"><td class=\"n\">{pid}</td><td>{}</td>\
                     <td class=\"n\">{}</td><td>{}</td></tr>",
                    h(&k.comm),
                    k.close_wait,
                    WholeSeconds(k.time)
                );
            }
            s.push_str("</table>\n");
        }
        s.push_str("</section>\n");
    }

    fn peers(&self, s: &mut String) {
        s.push_str(
            "<section id=\"peers\">\n<h2>Top peers by TIME_WAIT entered</h2>\n<table>\n<tr>\
             <th>peer</th><th class=\"n\">TIME_WAIT entered</th><th class=\"n\">TIME_WAIT now</th>\
             <th class=\"n\">CLOSE_WAIT now</th><th class=\"n\">ESTABLISHED now</th>\
             <th>processes</th></tr>\n",
        );
        for (label, p) in top_peers(self.snap).iter().take(self.top) {
            let procs: Vec<String> = p
                .procs
                .iter()
                .map(|(pid, comm)| format!("{pid} {}", h(comm)))
                .collect();
            let _ = writeln!(
                s,
                "<tr><td class=\"mono\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                h(label),
                p.tw_entered,
                p.tw_now,
                p.cw_now,
                p.est_now,
                procs.join(", ")
            );
        }
        s.push_str("</table>\n</section>\n");
    }
}
