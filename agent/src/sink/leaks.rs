//! `twtrace leaks`: watches, then names the processes that leak connections or open one per
//! request, with their evidence. A sink like any other: it keeps nothing but the pipeline's last
//! snapshot, and diagnoses it at the end.

use std::{
    io::{self, IsTerminal as _, Write},
    sync::Arc,
};

use serde_json::{Value, json};

use super::{End, Sink};
use crate::{
    diagnosis::{self, Finding, Thresholds},
    model::{
        leaks::round,
        snapshot::{PeerKey, PeerRow, ProcessRow, SCHEMA, Snapshot},
    },
    text::write_json,
};

/// The kinds of finding `leaks` reports.
const KINDS: [&str; 3] = [
    "close_wait_leak",
    "established_growth",
    "churn_without_reuse",
];

pub struct LeaksReport<W: Write> {
    out: W,
    json: bool,
    thresholds: Thresholds,
    /// What is watched for how long, for the progress line (None: no progress line).
    progress: Option<f64>,
}

impl<W: Write> LeaksReport<W> {
    /// `watch_s`: how long a live run watches (progress on a terminal); None for a recording.
    pub fn new(out: W, json: bool, thresholds: Thresholds, watch_s: Option<f64>) -> Self {
        Self {
            out,
            json,
            thresholds,
            progress: watch_s.filter(|_| io::stderr().is_terminal()),
        }
    }
}

/// The findings `leaks` shows for `snap`.
pub fn findings(snap: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    diagnosis::diagnose(snap, t)
        .into_iter()
        .filter(|f| KINDS.contains(&f.kind))
        .collect()
}

impl<W: Write> Sink for LeaksReport<W> {
    fn wants_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        let Some(watch_s) = self.progress else {
            return Ok(());
        };
        let watched = snap.uptime_s;
        let suspects = findings(snap, &self.thresholds).len();
        // In place, on the terminal only: a pipe gets no progress lines.
        let _ = write!(
            io::stderr(),
            "\r\x1b[2Ktwtrace: watched {:.0} s of {watch_s:.0} s, {suspects} suspect(s) so far",
            watched.min(watch_s)
        );
        Ok(())
    }

    fn end(&mut self, end: &End) -> anyhow::Result<()> {
        if self.progress.is_some() {
            let _ = write!(io::stderr(), "\r\x1b[2K");
        }
        let empty = Snapshot::default();
        let snap = end.snapshot.as_deref().unwrap_or(&empty);
        let found = findings(snap, &self.thresholds);
        if self.json {
            for f in &found {
                write_json(&mut self.out, &suspect_json(f, snap))?;
                writeln!(self.out)?;
            }
        } else {
            write_text(&mut self.out, &found, snap)?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// One suspect as JSON: the finding, and the figures of its process (and peer) by name.
pub fn suspect_json(f: &Finding, snap: &Snapshot) -> Value {
    let mut v = json!({
        "schema": SCHEMA,
        "kind": f.kind,
        "severity": f.severity,
        "pid": f.pid,
        "comm": f.comm,
    });
    let row = f
        .pid
        .and_then(|pid| snap.processes.iter().find(|p| p.pid == pid));
    if let (Some(p), Some(obj)) = (row, v.as_object_mut()) {
        let extra = match f.kind {
            "close_wait_leak" => close_wait_json(p),
            "established_growth" => json!({
                "established_now": p.established_now,
                "growth_per_min": round(p.established_growth_per_min, 3),
            }),
            _ => f
                .peer
                .as_deref()
                .and_then(|peer| p.peers.iter().find(|r| r.peer.to_string() == peer))
                .map_or(Value::Null, churn_json),
        };
        if let Value::Object(extra) = extra {
            obj.extend(extra);
        }
        obj.insert("title".into(), json!(f.title));
        obj.insert("evidence".into(), json!(f.evidence));
        obj.insert("remedy".into(), json!(f.remedy));
    }
    v
}

fn close_wait_json(p: &ProcessRow) -> Value {
    let peers: Vec<Value> = p
        .peers
        .iter()
        .filter(|r| r.close_wait_now > 0)
        .map(|r| {
            let mut v = peer_json(&r.peer);
            if let Value::Object(obj) = &mut v {
                obj.insert("close_wait_now".into(), json!(r.close_wait_now));
                obj.insert(
                    "oldest_age_s".into(),
                    json!(round(r.close_wait_oldest_s, 3)),
                );
            }
            v
        })
        .collect();
    json!({
        "close_wait_now": p.close_wait_now,
        "close_wait_peak": p.close_wait_peak,
        "close_wait_old": p.close_wait_old,
        "oldest_age_s": round(p.close_wait_oldest_s, 3),
        "oldest_age_at_least": p.close_wait_oldest_at_least,
        "growth_per_min": round(p.close_wait_growth_per_min, 3),
        "ages": p.close_wait_ages,
        "peers": peers,
    })
}

fn churn_json(r: &PeerRow) -> Value {
    let mut v = peer_json(&r.peer);
    if let Value::Object(obj) = &mut v {
        obj.insert("lifetimes".into(), json!(r.lifetimes));
        obj.insert("timewait_entered".into(), json!(r.timewait_entered));
        obj.insert("timewait_now".into(), json!(r.timewait_now));
    }
    v
}

/// A peer spelt out as the leaderboard's JSON does (`raddr`, `rport`, `lport`).
fn peer_json(peer: &PeerKey) -> Value {
    serde_json::to_value(peer).unwrap_or(Value::Null)
}

/// The findings as text: one block each, most severe first.
pub fn write_text(out: &mut impl Write, found: &[Finding], snap: &Snapshot) -> io::Result<()> {
    let watched = snap.uptime_s;
    if found.is_empty() {
        let n = snap.processes.iter().filter(|p| p.pid != 0).count();
        return writeln!(
            out,
            "No leak suspects and no connection churn without reuse in {watched:.0} s \
             ({n} process(es) with TCP activity watched)."
        );
    }
    writeln!(
        out,
        "{} finding(s) after {watched:.0} s, most severe first:",
        found.len()
    )?;
    for f in found {
        writeln!(out)?;
        diagnosis::write_finding(out, f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::leaks::CloseWaitAges;

    fn snapshot() -> Snapshot {
        let peer = PeerKey::Out {
            raddr: "10.0.0.5".parse().expect("address"),
            rport: 8080,
        };
        Snapshot {
            uptime_s: 60.0,
            processes: vec![ProcessRow {
                pid: 42,
                comm: "le\x1bky".to_owned(),
                close_wait_now: 3,
                close_wait_peak: 5,
                close_wait_old: 3,
                close_wait_oldest_s: 75.5,
                close_wait_oldest_at_least: true,
                close_wait_ages: CloseWaitAges([0, 0, 0, 0, 3, 0, 0]),
                leak_suspect: true,
                peers: vec![PeerRow {
                    close_wait_now: 3,
                    close_wait_oldest_s: 75.5,
                    ..PeerRow::new(peer)
                }],
                ..ProcessRow::default()
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_suspect_in_json_has_its_figures_by_name() {
        let snap = snapshot();
        let found = findings(&snap, &Thresholds::default());
        let v = suspect_json(&found[0], &snap);
        assert_eq!(v["schema"], 1);
        assert_eq!(v["kind"], "close_wait_leak");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["close_wait_now"], 3);
        assert_eq!(v["close_wait_peak"], 5);
        assert_eq!(v["oldest_age_s"], 75.5);
        assert_eq!(v["oldest_age_at_least"], true);
        assert_eq!(v["growth_per_min"], 0.0);
        assert_eq!(v["ages"], json!({"lt_5m": 3}));
        assert_eq!(
            v["peers"],
            json!([{"raddr": "10.0.0.5", "rport": 8080, "close_wait_now": 3, "oldest_age_s": 75.5}])
        );
    }

    #[test]
    fn text_names_the_suspect_escaped() {
        let snap = snapshot();
        let mut out = Vec::new();
        write_text(&mut out, &findings(&snap, &Thresholds::default()), &snap).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("le\\x1bky (pid 42) leaks connections"),
            "{text}"
        );
        assert!(text.contains("oldest at least 1m 16s"), "{text}");
        assert!(!text.contains('\x1b'));
        let mut out = Vec::new();
        write_text(&mut out, &[], &Snapshot::default()).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("No leak suspects")
        );
    }
}
