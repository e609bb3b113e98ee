//! Diagnosis: what the counts mean. Pure rules over a [`Snapshot`] (and, for `twtrace doctor`,
//! over values read from /proc), each turning evidence into a [`Finding`] an on-call engineer can
//! act on: who leaks, which destination's port pool runs out, who opens a connection per request.
//!
//! Every finding carries the values it rests on (`evidence`); a rule that has no value to show
//! says nothing.

use serde::Serialize;

use crate::model::snapshot::Snapshot;

/// How urgent a finding is; findings are listed most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing (a setting that is fine, a correction of common advice).
    Info,
    /// Will hurt if it goes on.
    Warning,
    /// Failing now, or about to.
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// One thing the diagnosis found, with its evidence and a remedy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A stable machine name for the rule that fired: `close_wait_leak`, `established_growth`,
    /// `port_exhaustion`, `connect_failures`, `churn_without_reuse`, `nofile`, `sysctl`,
    /// `wrong_advice`, ...
    pub kind: &'static str,
    /// The process it is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The peer or destination it is about, as people read it (`10.0.0.5:8080`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// One sentence: what is wrong.
    pub title: String,
    /// The values it rests on, one per line, each as read.
    pub evidence: Vec<String>,
    /// What to do about it.
    pub remedy: String,
}

/// Thresholds of the rules over a snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// A CLOSE_WAIT socket older than this makes its process a leak suspect (`--min-age`).
    pub min_age_s: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { min_age_s: 30.0 }
    }
}

/// The findings a snapshot supports, most severe first (then by pid).
pub fn diagnose(snap: &Snapshot, _t: &Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &snap.processes {
        if p.pid != 0 && p.close_wait_now > 0 {
            out.push(Finding {
                severity: Severity::Warning,
                kind: "close_wait_leak",
                pid: Some(p.pid),
                comm: Some(p.comm.clone()),
                peer: p
                    .peers
                    .iter()
                    .find(|r| r.close_wait_now > 0)
                    .map(|r| r.peer.to_string()),
                title: format!(
                    "{} (pid {}) holds {} connection(s) its peer closed",
                    p.comm, p.pid, p.close_wait_now
                ),
                evidence: vec![format!("CLOSE_WAIT now: {}", p.close_wait_now)],
                remedy: "close the socket when the peer has closed (read returns 0); release \
                         pooled connections"
                    .to_owned(),
            });
        }
    }
    sort(&mut out);
    out
}

/// Most severe first, then by pid (findings without one last), then kind.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.pid.unwrap_or(u32::MAX).cmp(&b.pid.unwrap_or(u32::MAX)))
            .then(a.kind.cmp(b.kind))
    });
}
