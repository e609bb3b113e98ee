//! `twtrace ports`: the snapshots' destinations printed, most used share of the local port pool
//! first, as one JSON document or one table per snapshot.

use std::{
    io::{self, Write},
    sync::Arc,
};

use serde::Serialize;

use super::{
    End, Sink,
    detached::{self, Detached},
};
use crate::{
    kernel::sysctl::{PortRange, PortSettings},
    model::{
        ports::{CRITICAL_ETA_S, CRITICAL_SHARE, Destination, WARN_SHARE},
        snapshot::{Snapshot, WholeSeconds},
    },
    text::{escape, write_json},
};

/// How the destinations are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Table,
    Json,
}

/// Prints each snapshot's destinations to `out`, flushed at once, from a thread of its own
/// (`Detached`, as the leaderboard's).
pub struct PortsPrinter {
    out: Detached,
    style: Style,
    top: usize,
    /// The namespace whose settings head the output: `--netns`, else twtrace's own.
    netns: Option<u32>,
}

impl PortsPrinter {
    pub fn new(out: Detached, style: Style, top: usize, netns: Option<u32>) -> Self {
        Self {
            out,
            style,
            top,
            netns,
        }
    }
}

impl Sink for PortsPrinter {
    fn wants_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        let doc = Doc::of(snap, self.netns, self.top);
        match self.style {
            Style::Json => {
                write_json(&mut self.out, &doc)?;
                self.out.write_all(b"\n")?;
            }
            Style::Table => print_table(&mut self.out, &doc)?,
        }
        self.out.flush()?;
        Ok(())
    }

    fn end(&mut self, _end: &End) -> anyhow::Result<()> {
        detached::finish(&mut self.out, "printout")
    }
}

/// One printout: `{"schema", "time", "range", "tcp_tw_reuse", "destinations"}`.
#[derive(Debug, Serialize)]
pub struct Doc<'a> {
    pub schema: crate::model::snapshot::Schema,
    #[serde(serialize_with = "crate::model::snapshot::whole_seconds")]
    pub time: jiff::Timestamp,
    /// The settings of the namespace asked about (`--netns`), else of twtrace's own.
    pub range: Option<PortRange>,
    pub tcp_tw_reuse: Option<u8>,
    pub destinations: &'a [Destination],
}

impl<'a> Doc<'a> {
    pub fn of(snap: &'a Snapshot, netns: Option<u32>, top: usize) -> Self {
        let settings = head_settings(&snap.port_settings, netns);
        Self {
            schema: crate::model::snapshot::Schema,
            time: snap.time,
            range: settings.and_then(|s| s.range),
            tcp_tw_reuse: settings.and_then(|s| s.tw_reuse),
            destinations: &snap.destinations[..top.min(snap.destinations.len())],
        }
    }
}

/// The settings of `netns`; without them, those of namespace 0 (the only one when namespaces
/// are not known), or the only namespace read.
fn head_settings(all: &[(u32, PortSettings)], netns: Option<u32>) -> Option<PortSettings> {
    let of = |id: u32| all.iter().find(|(n, _)| *n == id).map(|&(_, s)| s);
    netns
        .and_then(of)
        .or_else(|| of(0))
        .or_else(|| (all.len() == 1).then(|| all[0].1))
}

/// `40000-40299 (300 usable, 0 reserved)`.
fn describe_range(r: Option<PortRange>) -> String {
    r.map_or_else(
        || "?".to_owned(),
        |r| {
            format!(
                "{}-{} ({} usable, {} reserved)",
                r.low, r.high, r.usable, r.reserved
            )
        },
    )
}

fn or_unknown<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// `87.0%`, or `?` without a range.
pub fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "?".to_owned(), |s| format!("{:.1}%", s * 100.0))
}

/// `40s`, `12m`, `-` when not growing.
pub fn eta(eta_s: Option<f64>) -> String {
    match eta_s {
        None => "-".to_owned(),
        Some(s) if s < 600.0 => format!("{s:.0}s"),
        Some(s) => format!("{:.0}m", s / 60.0),
    }
}

/// `4242 curl (120), 4243 curl (7)`, escaped: names are anyone's.
pub fn openers(d: &Destination, max: usize) -> String {
    let mut parts: Vec<String> = d
        .pids
        .iter()
        .take(max)
        .map(|p| format!("{} {} ({})", p.pid, escape(&p.comm.to_str()), p.opens))
        .collect();
    let more = d.pids.len().saturating_sub(max);
    if more > 0 || d.other_pids_opens > 0 {
        parts.push(format!(
            "+{} more",
            more as u64 + u64::from(d.other_pids_opens > 0)
        ));
    }
    if parts.is_empty() {
        // Opened before twtrace started, or by pids a filter left out.
        return "-".to_owned();
    }
    parts.join(", ")
}

/// The leaderboard's warning about the destination whose port pool is the most used, when that
/// is above [`WARN_SHARE`]: its text (escaped) and whether it is critical (above 90%, or out of
/// ports within a minute). Destinations are sorted by share already.
pub fn warning(snap: &Snapshot) -> Option<(String, bool)> {
    let above: Vec<&Destination> = snap
        .destinations
        .iter()
        .filter(|d| d.share.is_some_and(|s| s > WARN_SHARE))
        .collect();
    let d = above.first()?;
    let usable = d
        .range
        .map_or_else(|| "?".to_owned(), |r| r.usable.to_string());
    let mut text = format!(
        "local ports toward {} (from {}) {} used ({} of {}, {} in TIME_WAIT)",
        d.target(),
        d.laddr,
        percent(d.share),
        d.in_use,
        usable,
        d.timewait
    );
    if let Some(s) = d.exhaustion_eta_s {
        text.push_str(&format!(", none left in {}", eta(Some(s))));
    }
    if let Some(p) = d.pids.first() {
        text.push_str(&format!(
            "; top opener {} {}",
            p.pid,
            escape(&p.comm.to_str())
        ));
    }
    if above.len() > 1 {
        text.push_str(&format!(
            "; {} more destinations above 50%",
            above.len() - 1
        ));
    }
    text.push_str(" (twtrace ports)");
    Some((text, is_critical(d)))
}

/// Above 90% used, or out of ports within a minute.
pub fn is_critical(d: &Destination) -> bool {
    d.share.is_some_and(|s| s > CRITICAL_SHARE)
        || d.exhaustion_eta_s.is_some_and(|s| s < CRITICAL_ETA_S)
}

/// An aligned table: the header's settings, then a row per destination.
pub fn print_table(out: &mut impl Write, doc: &Doc<'_>) -> io::Result<()> {
    writeln!(
        out,
        "{}  local ports {}  tcp_tw_reuse {}",
        WholeSeconds(doc.time),
        describe_range(doc.range),
        or_unknown(doc.tcp_tw_reuse)
    )?;
    if doc.destinations.is_empty() {
        writeln!(out, "(no outgoing connection holds a local port)")?;
        return writeln!(out);
    }
    let local_w = doc
        .destinations
        .iter()
        .map(|d| d.laddr.to_string().len())
        .max()
        .unwrap_or(0)
        .max(5);
    let dest_w = doc
        .destinations
        .iter()
        .map(|d| d.target().len())
        .max()
        .unwrap_or(0)
        .max(11);
    writeln!(
        out,
        "{:>10} {:<local_w$} {:<dest_w$} {:>6} {:>9} {:>6} {:>8} {:>5} {:>5}  OPENED BY",
        "NETNS", "LOCAL", "DESTINATION", "IN_USE", "TIME_WAIT", "SHARE", "OPENS/s", "ETA", "FAILS"
    )?;
    for d in doc.destinations {
        // Said where a namespace's settings differ from the header's.
        let own = if d.range != doc.range || d.tcp_tw_reuse != doc.tcp_tw_reuse {
            format!(
                "  [ports {}, tcp_tw_reuse {}]",
                describe_range(d.range),
                or_unknown(d.tcp_tw_reuse)
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:>10} {:<local_w$} {:<dest_w$} {:>6} {:>9} {:>6} {:>8.1} {:>5} {:>5}  {}{own}",
            d.netns,
            d.laddr.to_string(),
            d.target(),
            d.in_use,
            d.timewait,
            percent(d.share),
            d.opens_per_s,
            eta(d.exhaustion_eta_s),
            d.connect_failures,
            openers(d, 3),
        )?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Comm, model::ports::PidOpens};

    fn range() -> Option<PortRange> {
        PortRange::parse("40000 40299", "")
    }

    fn dest(comm: &str) -> Destination {
        Destination {
            netns: 4_026_532_281,
            laddr: "127.0.0.1".parse().expect("addr"),
            raddr: "127.0.0.1".parse().expect("addr"),
            rport: 8080,
            in_use: 280,
            timewait: 279,
            share: Some(0.933),
            timewait_reusable: false,
            opens_per_s: 48.002,
            exhaustion_eta_s: Some(39.5),
            connect_failures: 0,
            range: range(),
            tcp_tw_reuse: Some(0),
            tcp_timestamps: Some(1),
            pids: vec![PidOpens {
                pid: 4242,
                comm: Comm::from(comm),
                opens: 280,
            }],
            other_pids_opens: 0,
        }
    }

    fn snap(dests: Vec<Destination>) -> Snapshot {
        Snapshot {
            time: "2026-11-29T16:00:00Z".parse().expect("time"),
            destinations: dests,
            port_settings: vec![(
                4_026_532_281,
                PortSettings {
                    range: range(),
                    tw_reuse: Some(0),
                    timestamps: Some(1),
                },
            )],
            ..Snapshot::default()
        }
    }

    #[test]
    fn json_is_one_document_with_the_schema() {
        let s = snap(vec![dest("client")]);
        let mut out = Vec::new();
        write_json(&mut out, &Doc::of(&s, Some(4_026_532_281), 10)).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("parses");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["time"], "2026-11-29T16:00:00Z");
        assert_eq!(
            v["range"],
            serde_json::json!({"low": 40000, "high": 40299, "reserved": 0, "usable": 300})
        );
        assert_eq!(v["tcp_tw_reuse"], 0);
        let d = &v["destinations"][0];
        for (k, want) in [
            ("netns", serde_json::json!(4_026_532_281u32)),
            ("laddr", "127.0.0.1".into()),
            ("raddr", "127.0.0.1".into()),
            ("rport", 8080.into()),
            ("in_use", 280.into()),
            ("timewait", 279.into()),
            ("share", 0.933.into()),
            ("opens_per_s", 48.002.into()),
            ("exhaustion_eta_s", 39.5.into()),
            ("connect_failures", 0.into()),
            ("tcp_tw_reuse", 0.into()),
            (
                "pids",
                serde_json::json!([{"pid": 4242, "comm": "client", "opens": 280}]),
            ),
        ] {
            assert_eq!(d[k], want, "{k}");
        }
        assert!(d.get("tcp_timestamps").is_none() && d.get("other_pids_opens").is_none());
        // The exact text of the numbers, not 48.00244058808682.
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains(r#""opens_per_s":48.002,"#), "{text}");
    }

    #[test]
    fn top_cuts_and_an_unknown_namespace_falls_back_to_the_only_one() {
        let s = snap(vec![dest("a"), dest("b")]);
        let doc = Doc::of(&s, None, 1);
        assert_eq!(doc.destinations.len(), 1);
        assert_eq!(doc.range, range());
    }

    #[test]
    fn table_is_aligned_and_escaped() {
        let mut other = dest("\x1b[2Jx");
        other.rport = 443;
        other.raddr = "2001:db8::1".parse().expect("addr");
        other.share = None;
        other.exhaustion_eta_s = None;
        other.range = None;
        let s = snap(vec![dest("client"), other]);
        let mut out = Vec::new();
        print_table(&mut out, &Doc::of(&s, Some(4_026_532_281), 10)).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains('\x1b'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "2026-11-29T16:00:00Z  local ports 40000-40299 (300 usable, 0 reserved)  tcp_tw_reuse 0"
        );
        let at = lines[1].find("OPENED BY").expect("title");
        assert_eq!(lines[2].find("4242 client (280)"), Some(at), "{text}");
        assert_eq!(lines[3].find(r"4242 \x1b[2Jx (280)"), Some(at), "{text}");
        assert!(lines[2].contains(" 93.3% "), "{}", lines[2]);
        assert!(lines[2].contains(" 40s "), "{}", lines[2]);
        assert!(lines[3].contains("[2001:db8::1]:443"), "{}", lines[3]);
        assert!(
            lines[3].ends_with("[ports ?, tcp_tw_reuse 0]"),
            "{}",
            lines[3]
        );
        assert!(lines[3].contains("      ? "), "{}", lines[3]);
    }

    #[test]
    fn an_empty_view_says_so() {
        let mut out = Vec::new();
        print_table(&mut out, &Doc::of(&snap(vec![]), None, 10)).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("(no outgoing connection holds a local port)"));
    }

    #[test]
    fn the_leaderboard_warns_above_half_and_names_the_top_opener() {
        let mut d = dest("client\n");
        d.share = Some(0.5);
        assert_eq!(
            warning(&snap(vec![d.clone()])),
            None,
            "50% is not above 50%"
        );
        d.share = Some(0.6);
        d.exhaustion_eta_s = None;
        let (text, critical) = warning(&snap(vec![d.clone()])).expect("warns");
        assert_eq!(
            text,
            "local ports toward 127.0.0.1:8080 (from 127.0.0.1) 60.0% used (280 of 300, 279 in \
             TIME_WAIT); top opener 4242 client\\n (twtrace ports)"
        );
        assert!(!critical);
        d.exhaustion_eta_s = Some(30.0);
        let (text, critical) = warning(&snap(vec![d.clone(), d.clone()])).expect("warns");
        assert!(text.contains(", none left in 30s;"), "{text}");
        assert!(text.contains("; 1 more destinations above 50%"), "{text}");
        assert!(critical);
    }

    #[test]
    fn helpers_format_eta_and_openers() {
        assert_eq!(eta(Some(1234.0)), "21m");
        assert_eq!(eta(Some(0.0)), "0s");
        let mut d = dest("c");
        d.pids.clear();
        assert_eq!(openers(&d, 3), "-");
        d.other_pids_opens = 5;
        assert_eq!(openers(&d, 3), "+1 more");
    }
}
