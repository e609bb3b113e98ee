//! The leaderboard printed: one JSON object or one table per snapshot, for pipes and logs.

use std::{
    io::{self, Write},
    sync::Arc,
};

use super::{
    End, Sink,
    detached::{self, Detached},
};
use crate::{
    container::short_id,
    diagnosis::short_age,
    model::snapshot::{ProcessRow, Snapshot, WholeSeconds},
    text::{escape, write_json},
};

/// How snapshots are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Table {
        /// Processes shown.
        top: usize,
    },
    Json,
}

/// Prints each snapshot to `out`, flushed at once (a log or `jq` sees each as it comes), from a
/// thread of its own so a reader that stops reading never stalls the tracing (`Detached`).
pub struct SnapshotPrinter {
    out: Detached,
    style: Style,
}

impl SnapshotPrinter {
    pub fn new(out: Detached, style: Style) -> Self {
        Self { out, style }
    }
}

impl Sink for SnapshotPrinter {
    fn wants_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        match self.style {
            Style::Json => print_json(&mut self.out, snap)?,
            Style::Table { top } => print_table(&mut self.out, snap, top)?,
        }
        Ok(())
    }

    fn end(&mut self, _end: &End) -> anyhow::Result<()> {
        detached::finish(&mut self.out, "snapshot")
    }
}

fn print_json(out: &mut impl Write, snap: &Snapshot) -> io::Result<()> {
    write_json(&mut *out, snap)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Cells of the CONTAINER column: a short id.
const CONTAINER_W: usize = 12;

/// A plain table for pipes and logs: header line, then the top processes. A CONTAINER column
/// (short id, or `-`) follows COMM when one of the rows shown runs in a container; without any,
/// the table is as it always was, so scripts reading a host without containers see no change.
pub fn print_table(out: &mut impl Write, snap: &Snapshot, top: usize) -> io::Result<()> {
    let t = &snap.totals;
    let mut kernel = t
        .timewait_kernel
        .map_or_else(|| "?".to_owned(), |k| k.to_string());
    // The kernel's count covers this many network namespaces (the host's and every pod's).
    if let Some(n) = t.namespaces {
        kernel.push_str(&format!(" in {n} netns"));
    }
    // Failed calls, said only when there are some (a table without them is as it always was).
    let mut failed = String::new();
    if t.connect_failures > 0 {
        failed.push_str(&format!("  connect() failed {}", t.connect_failures));
    }
    if t.bind_failures > 0 {
        failed.push_str(&format!("  bind() failed {}", t.bind_failures));
    }
    // The kernel's `tw` counts both substates of a timewait socket: TIME_WAIT and the orphaned
    // FIN_WAIT2 ones, which are shown beside it so the two add up to it.
    writeln!(
        out,
        "{}  TIME_WAIT now {} (+{} orphaned FIN_WAIT2), kernel tw {}  CLOSE_WAIT {}  ESTABLISHED {}  TIME_WAIT/s {:.1}  lost {}{}  unattributed {}{failed}",
        WholeSeconds(snap.time),
        t.timewait_now,
        t.fin_wait2_now,
        kernel,
        t.close_wait_now,
        t.established_now,
        t.timewait_per_s,
        snap.lost_events,
        // Entries whose skipped event a reconciliation found; said only when there are some.
        match t.timewait_recovered {
            0 => String::new(),
            n => format!(" ({n} timewait entries recovered)"),
        },
        snap.unattributed_events
    )?;
    // A destination running out of local ports: said before the processes, as it is what makes
    // connect() fail next.
    if let Some((text, _)) = super::ports::warning(snap) {
        writeln!(out, "WARNING: {text}")?;
    }
    let shown = &snap.processes[..top.min(snap.processes.len())];
    let containers = shown.iter().any(|p| p.container.is_some());
    // Columns of failed calls, each only when a row shown has some (as CONTAINER).
    let connect_col = shown.iter().any(|p| p.connect_failures > 0);
    let bind_col = shown.iter().any(|p| p.bind_failures > 0);
    write!(out, "{:>7} {:<16} ", "PID", "COMM")?;
    if containers {
        write!(out, "{:<CONTAINER_W$} ", "CONTAINER")?;
    }
    write!(
        out,
        "{:>8} {:>9} {:>7} {:>8} {:>7} {:>7} {:>7} {:>8} {:>6}",
        "TW/s", "TW_TOTAL", "TW_NOW", "FW2_NOW", "CW_NOW", "EST_NOW", "OPEN/s", "CLOSE/s", "RESETS"
    )?;
    if connect_col {
        write!(out, " {:>9}", "CONN_FAIL")?;
    }
    if bind_col {
        write!(out, " {:>9}", "BIND_FAIL")?;
    }
    writeln!(out, " {:>8}  TOP PEER", "CW_AGE")?;
    for p in shown {
        let peer = p
            .peers
            .first()
            .map_or_else(String::new, |r| r.peer.to_string());
        // Escaped before it is cut to the column, so the width counts what is printed.
        let comm: String = escape(&p.comm).chars().take(16).collect();
        write!(out, "{:>7} {:<16} ", p.pid, comm)?;
        if containers {
            // Hex as parsed from the cgroup path; escaped and cut all the same, as the row's
            // fields are anyone's to fill and the columns after it must stay aligned.
            let id = p.container.as_deref().map_or("-", short_id);
            let id: String = escape(id).chars().take(CONTAINER_W).collect();
            write!(out, "{id:<CONTAINER_W$} ")?;
        }
        write!(
            out,
            "{:>8.1} {:>9} {:>7} {:>8} {:>7} {:>7} {:>7.1} {:>8.1} {:>6}",
            p.timewait_per_s,
            p.timewait_entered,
            p.timewait_now,
            // Orphaned FIN_WAIT2 timewait sockets: a server closing clients that have not
            // closed yet.
            p.fin_wait2_now,
            p.close_wait_now,
            p.established_now,
            p.opens_per_s,
            p.closes_per_s,
            p.resets,
        )?;
        if connect_col {
            write!(out, " {:>9}", p.connect_failures)?;
        }
        if bind_col {
            write!(out, " {:>9}", p.bind_failures)?;
        }
        writeln!(
            out,
            " {:>8}  {exited}{peer}",
            cw_age(p),
            // Before the peer, which is the free-length last column.
            exited = if p.exited { "[exited] " } else { "" },
        )?;
    }
    if snap.processes.len() > top {
        writeln!(
            out,
            "({} more processes; --top N shows more)",
            snap.processes.len() - top
        )?;
    }
    writeln!(out)?;
    out.flush()
}

/// The CW_AGE cell: the oldest CLOSE_WAIT's age, with `!` for a leak suspect (older than
/// the threshold).
fn cw_age(p: &ProcessRow) -> String {
    let age = short_age(p.close_wait_oldest_s, p.close_wait_oldest_at_least);
    let mark = if p.leak_suspect { "!" } else { "" };
    format!("{age}{mark}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{PeerKey, PeerRow, ProcessRow, Totals};

    fn sample() -> Snapshot {
        Snapshot {
            schema: crate::model::snapshot::Schema,
            time: "2026-11-25T16:00:00Z".parse().expect("time"),
            interval_s: 1.0,
            uptime_s: 10.0,
            lost_events: 0,
            unattributed_events: 2,
            totals: Totals {
                namespaces: None,
                timewait_now: 5,
                fin_wait2_now: 1,
                timewait_kernel: Some(6),
                close_wait_now: 1,
                established_now: 2,
                timewait_entered: 9,
                fin_wait2_entered: 1,
                timewait_per_s: 3.0,
                timewait_recovered: 0,
                connect_failures: 0,
                bind_failures: 0,
            },
            processes: vec![ProcessRow {
                pid: 42,
                comm: "a-very-long-command-name".into(),
                timewait_entered: 9,
                timewait_per_s: 3.0,
                timewait_now: 5,
                peers: vec![PeerRow {
                    timewait_entered: 9,
                    ..PeerRow::new(PeerKey::Out {
                        raddr: "::1".parse().expect("addr"),
                        rport: 443,
                    })
                }],
                ..ProcessRow::default()
            }],
            destinations: Vec::new(),
            port_settings: Vec::new(),
        }
    }

    #[test]
    fn table_has_totals_header_and_rows() {
        let mut out = Vec::new();
        print_table(&mut out, &sample(), 20).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("TIME_WAIT now 5 (+1 orphaned FIN_WAIT2), kernel tw 6  "),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].starts_with("2026-11-25T16:00:00Z  TIME_WAIT"),
            "{}",
            lines[0]
        );
        assert!(lines[1].trim_start().starts_with("PID COMM"));
        assert!(
            lines[2].contains("     42 a-very-long-comm "),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with("[::1]:443"), "{}", lines[2]);
    }

    #[test]
    fn a_leak_suspect_is_marked_with_the_age_of_its_oldest_close_wait() {
        let mut snap = sample();
        snap.processes[0].close_wait_oldest_s = 312.0;
        snap.processes[0].close_wait_oldest_at_least = true;
        snap.processes[0].leak_suspect = true;
        let mut out = Vec::new();
        print_table(&mut out, &snap, 20).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("RESETS   CW_AGE  TOP PEER"),
            "{}",
            lines[1]
        );
        // The age ends where the header's CW_AGE ends.
        let end = lines[1].find("CW_AGE").expect("CW_AGE") + "CW_AGE".len();
        let cell: String = lines[2].chars().take(end).collect();
        assert!(cell.ends_with(" ≥5m12s!"), "{}", lines[2]);
    }

    #[test]
    fn table_says_how_many_rows_it_left_out() {
        let mut snap = sample();
        snap.processes.push(ProcessRow {
            pid: 7,
            comm: "x".into(),
            ..ProcessRow::default()
        });
        let mut out = Vec::new();
        print_table(&mut out, &snap, 1).expect("print");
        assert!(
            String::from_utf8(out)
                .expect("utf8")
                .contains("(1 more processes")
        );
    }

    #[test]
    fn table_escapes_a_hostile_name_within_its_column() {
        let mut snap = sample();
        snap.processes[0].comm = "\x1b[2J\x1b[H\nFAKE\r".into();
        let mut out = Vec::new();
        print_table(&mut out, &snap, 20).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            !text.contains(|c: char| c.is_control() && c != '\n'),
            "{text:?}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        // Cut to the column's 16 characters like any long name: the numbers stay aligned.
        assert!(
            lines[2].starts_with(r"     42 \x1b[2J\x1b[H\nF      3.0 "),
            "{}",
            lines[2]
        );
        assert_eq!(lines[2].len(), sample_row_len(), "{}", lines[2]);

        // JSON: exact, and still no raw control character (C1 included).
        snap.processes[0].comm = "\u{9b}2J\x1b\n".into();
        let mut out = Vec::new();
        print_json(&mut out, &snap).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.trim_end().contains(char::is_control), "{text:?}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["processes"][0]["comm"], "\u{9b}2J\x1b\n");
    }

    fn table(snap: &Snapshot, top: usize) -> String {
        let mut out = Vec::new();
        print_table(&mut out, snap, top).expect("print");
        String::from_utf8(out).expect("utf8")
    }

    const ID: &str = "3f9a8b7c6d5e4f30a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";

    #[test]
    fn container_column_only_when_a_shown_row_has_a_container() {
        // None: the table as it always was (a namespace alone does not add the column).
        let mut snap = sample();
        snap.processes[0].netns = 4_026_532_417;
        let plain = table(&snap, 20);
        assert!(!plain.contains("CONTAINER"), "{plain}");
        assert_eq!(plain, table(&sample(), 20));

        // One row in a container, one not: short id and "-", the columns after it aligned.
        snap.processes[0].container = Some(ID.to_owned());
        snap.processes[0].runtime = Some("docker");
        snap.processes.push(ProcessRow {
            pid: 7,
            comm: "sshd".into(),
            peers: vec![PeerRow::new(PeerKey::Out {
                raddr: "10.0.0.2".parse().expect("addr"),
                rport: 22,
            })],
            ..ProcessRow::default()
        });
        let text = table(&snap, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("    PID COMM             CONTAINER        TW/s  TW_TOTAL"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("     42 a-very-long-comm 3f9a8b7c6d5e      3.0 "),
            "{}",
            lines[2]
        );
        assert!(!text.contains(&ID[..13]), "{text}");
        assert!(
            lines[3].starts_with("      7 sshd             -                 0.0 "),
            "{}",
            lines[3]
        );
        // The free-length TOP PEER column starts at the same place on every line.
        let at = lines[1].find("TOP PEER").expect("title");
        assert_eq!(lines[2].find("[::1]:443"), Some(at), "{text}");
        assert_eq!(lines[3].find("10.0.0.2:22"), Some(at), "{text}");
        // Exactly the width of the column and its separator more than without it.
        assert_eq!(lines[2].len(), sample_row_len() + 13, "{text}");

        // Only the rows shown count: a container beyond --top adds nothing.
        snap.processes.swap(0, 1);
        let text = table(&snap, 1);
        assert!(!text.contains("CONTAINER"), "{text}");
        assert!(text.contains("(1 more processes"), "{text}");
    }

    #[test]
    fn container_column_escapes_and_cuts_what_it_is_given() {
        // Ids come from cgroup paths as lowercase hex, but the row's fields are public.
        let mut snap = sample();
        snap.processes[0].container = Some("\x1b[2J\nabcdef".into());
        let text = table(&snap, 20);
        assert!(
            !text.contains(|c: char| c.is_control() && c != '\n'),
            "{text:?}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        assert!(
            lines[2].contains(r" a-very-long-comm \x1b[2J\nabc      3.0 "),
            "{}",
            lines[2]
        );
        assert_eq!(lines[2].len(), sample_row_len() + 13, "{}", lines[2]);
        // Cut after escaping, so the width counts what is printed.
        assert!(!lines[2].contains("abcd"), "{}", lines[2]);
        // A cut inside a character gives the whole (short) text rather than a panic.
        assert_eq!(short_id("ééééééé"), "ééééééé".get(..12).expect("boundary"));
        assert_eq!(short_id("aé"), "aé");
        assert_eq!(short_id("aaaaaaaaaaaé"), "aaaaaaaaaaaé");
    }

    /// The length of the row of [`sample`], whose name fills its column.
    fn sample_row_len() -> usize {
        let mut out = Vec::new();
        print_table(&mut out, &sample(), 20).expect("print");
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .nth(2)
            .expect("row")
            .len()
    }

    #[test]
    fn failure_columns_only_when_a_shown_row_has_failures() {
        let mut snap = sample();
        let plain = table(&snap, 20);
        assert!(!plain.contains("FAIL"), "{plain}");
        assert!(!plain.contains("failed"), "{plain}");

        snap.totals.connect_failures = 12;
        snap.processes[0].connect_failures = 12;
        snap.processes.push(ProcessRow {
            pid: 7,
            comm: "x".into(),
            ..ProcessRow::default()
        });
        let text = table(&snap, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with("unattributed 2  connect() failed 12"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with("RESETS CONN_FAIL   CW_AGE  TOP PEER"),
            "{}",
            lines[1]
        );
        assert!(!lines[1].contains("BIND_FAIL"), "{}", lines[1]);
        assert!(
            lines[2].ends_with("0        12        -  [::1]:443"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].ends_with("0         0        -  "),
            "{:?}",
            lines[3]
        );
        // The free-length TOP PEER column starts at the same place on every line.
        let at = lines[1].find("TOP PEER").expect("title");
        assert_eq!(lines[2].find("[::1]:443"), Some(at), "{text}");
        assert_eq!(lines[2].len(), sample_row_len() + 10, "{text}");

        snap.totals.bind_failures = 1;
        snap.processes[1].bind_failures = 1;
        let text = table(&snap, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with("connect() failed 12  bind() failed 1"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with("CONN_FAIL BIND_FAIL   CW_AGE  TOP PEER"),
            "{}",
            lines[1]
        );
        assert!(
            lines[3].ends_with("0         0         1        -  "),
            "{:?}",
            lines[3]
        );

        // Only the rows shown count.
        let text = table(&snap, 1);
        assert!(!text.contains("BIND_FAIL"), "{text}");
        assert!(text.contains("CONN_FAIL"), "{text}");
    }

    #[test]
    fn a_destination_over_half_its_ports_gets_a_warning_line() {
        use crate::{event::Comm, kernel::sysctl::PortRange, model::ports};
        let mut snap = sample();
        let d = ports::Destination {
            netns: 0,
            laddr: "10.0.0.1".parse().expect("addr"),
            raddr: "10.0.0.5".parse().expect("addr"),
            rport: 8080,
            in_use: 261,
            timewait: 250,
            share: Some(0.87),
            timewait_reusable: false,
            opens_per_s: 6.5,
            exhaustion_eta_s: Some(40.0),
            connect_failures: 0,
            range: PortRange::parse("40000 40299", ""),
            tcp_tw_reuse: Some(0),
            tcp_timestamps: Some(1),
            pids: vec![ports::PidOpens {
                pid: 42,
                comm: Comm::from("client"),
                opens: 300,
            }],
            other_pids_opens: 0,
        };
        snap.destinations = vec![d.clone()];
        let text = table(&snap, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "WARNING: local ports toward 10.0.0.5:8080 (from 10.0.0.1) 87.0% used (261 of 300, \
             250 in TIME_WAIT), none left in 40s; top opener 42 client (twtrace ports)"
        );
        assert!(lines[2].trim_start().starts_with("PID COMM"));
        // Half or less: no line, the table as before.
        snap.destinations[0].share = Some(0.5);
        assert_eq!(table(&snap, 20), table(&sample(), 20));
    }

    #[test]
    fn json_is_one_line_with_the_schema() {
        let mut out = Vec::new();
        print_json(&mut out, &sample()).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["totals"]["timewait_kernel"], 6);
        assert_eq!(v["processes"][0]["pid"], 42);
        assert_eq!(v["processes"][0]["peers"][0]["rport"], 443);
        assert!(v["processes"][0]["peers"][0].get("lport").is_none());
        assert!(v["processes"][0].get("timewait_history").is_none());
        assert_eq!(v["lost_events"], 0);
        assert_eq!(v["schema"], 1);
        assert!(text.starts_with(r#"{"schema":1,"#), "{text}");
    }

    #[test]
    fn json_rates_have_three_decimals_and_counts_stay_exact() {
        let mut snap = sample();
        snap.totals.timewait_per_s = 48.002_440_588_086_82;
        snap.uptime_s = 10.000_499_9;
        snap.totals.timewait_entered = 123_456_789_012;
        snap.processes[0].opens_per_s = 2.0 / 3.0;
        snap.processes[0].close_wait_oldest_s = 75.5;
        let mut out = Vec::new();
        print_json(&mut out, &snap).expect("print");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["totals"]["timewait_per_s"], 48.002);
        assert_eq!(v["uptime_s"], 10.0);
        assert_eq!(v["totals"]["timewait_entered"], 123_456_789_012u64);
        assert_eq!(v["processes"][0]["opens_per_s"], 0.667);
        assert_eq!(v["processes"][0]["close_wait_oldest_s"], 75.5);
        // The model keeps the full value for the views and the triggers.
        assert_eq!(snap.totals.timewait_per_s, 48.002_440_588_086_82);
    }
}
