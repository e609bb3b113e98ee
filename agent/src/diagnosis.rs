//! Diagnosis: what the counts mean. Pure rules over a [`Snapshot`] (and, for `twtrace doctor`,
//! over values read from /proc), each turning evidence into a [`Finding`] an on-call engineer can
//! act on: who leaks, which destination's port pool runs out, who opens a connection per request.
//!
//! Every finding carries the values it rests on (`evidence`); a rule that has no value to show
//! says nothing.

use serde::Serialize;

use crate::{
    event::{Call, Errno},
    model::snapshot::{ProcessRow, Snapshot},
};

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
    /// `port_exhaustion`, `connect_failures`, `bind_failures`, `churn_without_reuse`, `nofile`,
    /// `sysctl`, `wrong_advice`, ...
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
        out.extend(connect_failures(p));
        out.extend(bind_failures(p));
    }
    sort(&mut out);
    out
}

/// How many of `p`'s failures were `call` with `errno`.
fn failed_with(p: &ProcessRow, call: Call, errno: Errno) -> u64 {
    p.failures
        .iter()
        .filter(|f| f.call == call && f.errno == errno)
        .map(|f| f.count)
        .sum()
}

/// The values a failure finding rests on: each (call, errno) count of `call`.
fn failure_evidence(p: &ProcessRow, call: Call) -> Vec<String> {
    p.failures
        .iter()
        .filter(|f| f.call == call)
        .map(|f| format!("{}() {}: {}", call.name(), f.errno, f.count))
        .collect()
}

/// `connect_failures`: a process whose connect() calls fail. EADDRNOTAVAIL means no local port
/// was free toward the destination (critical: connections are being refused now); EAGAIN and
/// ENOBUFS are the kernel running out of room for them.
fn connect_failures(p: &ProcessRow) -> Option<Finding> {
    if p.connect_failures == 0 {
        return None;
    }
    let exhausted = failed_with(p, Call::Connect, Errno::EADDRNOTAVAIL) > 0;
    // The destination that failed most, with its TIME_WAIT sockets: what holds the ports.
    let top = p
        .peers
        .iter()
        .filter(|r| r.connect_failures > 0)
        .max_by_key(|r| (r.connect_failures, std::cmp::Reverse(r.peer.text_order())));
    let mut evidence = failure_evidence(p, Call::Connect);
    if let Some(r) = top {
        evidence.push(format!(
            "toward {}: {} failed, {} in TIME_WAIT now, {} ESTABLISHED now",
            r.peer, r.connect_failures, r.timewait_now, r.established_now
        ));
    }
    evidence.push(format!(
        "TIME_WAIT entered since start: {}, opens: {}",
        p.timewait_entered, p.opens
    ));
    let toward = top.map_or_else(String::new, |r| format!(" toward {}", r.peer));
    let title = if exhausted {
        format!(
            "{} (pid {}) ran out of local ports{toward}: {} connect() call(s) failed",
            p.comm, p.pid, p.connect_failures
        )
    } else {
        format!(
            "{} (pid {}): {} connect() call(s) failed{toward}",
            p.comm, p.pid, p.connect_failures
        )
    };
    Some(Finding {
        severity: if exhausted {
            Severity::Critical
        } else {
            Severity::Warning
        },
        kind: "connect_failures",
        pid: Some(p.pid),
        comm: Some(p.comm.clone()),
        peer: top.map(|r| r.peer.to_string()),
        title,
        evidence,
        remedy: "the ephemeral ports toward one destination (address and port) are used up, \
                 mostly by TIME_WAIT sockets of closed connections: reuse connections (a \
                 connection pool, HTTP keep-alive) instead of one per request; widen \
                 net.ipv4.ip_local_port_range; set net.ipv4.tcp_tw_reuse=1 so connect() may \
                 take a TIME_WAIT port when TCP timestamps make it safe; spread the load over \
                 more destination addresses or ports, each of which has a pool of its own"
            .to_owned(),
    })
}

/// `bind_failures`: a process whose bind() calls fail (EADDRINUSE: the port is taken, or held
/// by TIME_WAIT sockets without SO_REUSEADDR; EADDRNOTAVAIL: not an address of this host).
fn bind_failures(p: &ProcessRow) -> Option<Finding> {
    if p.bind_failures == 0 {
        return None;
    }
    Some(Finding {
        severity: Severity::Warning,
        kind: "bind_failures",
        pid: Some(p.pid),
        comm: Some(p.comm.clone()),
        peer: None,
        title: format!(
            "{} (pid {}): {} bind() call(s) failed",
            p.comm, p.pid, p.bind_failures
        ),
        evidence: failure_evidence(p, Call::Bind),
        remedy: "EADDRINUSE: set SO_REUSEADDR before bind() (TIME_WAIT sockets on the port block \
                 a bind without it) and check that no other process holds the port; \
                 EADDRNOTAVAIL: bind to an address this host has; a client that binds before \
                 connect() should set IP_BIND_ADDRESS_NO_PORT or not bind at all"
            .to_owned(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{FailureRow, PeerKey, PeerRow};

    fn client(failures: &[(Call, Errno, u64)]) -> ProcessRow {
        let dest = |a: &str| PeerKey::Out {
            raddr: a.parse().expect("addr"),
            rport: 8080,
        };
        ProcessRow {
            pid: 4242,
            comm: "loadgen".into(),
            connect_failures: failures
                .iter()
                .filter(|f| f.0 == Call::Connect)
                .map(|f| f.2)
                .sum(),
            bind_failures: failures
                .iter()
                .filter(|f| f.0 == Call::Bind)
                .map(|f| f.2)
                .sum(),
            failures: failures
                .iter()
                .map(|&(call, errno, count)| FailureRow { call, errno, count })
                .collect(),
            timewait_entered: 28_000,
            opens: 28_100,
            peers: vec![
                PeerRow {
                    timewait_now: 10,
                    connect_failures: 2,
                    ..PeerRow::new(dest("10.0.0.6"))
                },
                PeerRow {
                    timewait_now: 28_000,
                    connect_failures: 40,
                    ..PeerRow::new(dest("10.0.0.5"))
                },
            ],
            ..ProcessRow::default()
        }
    }

    fn findings(p: ProcessRow) -> Vec<Finding> {
        let snap = Snapshot {
            processes: vec![p],
            ..Snapshot::default()
        };
        diagnose(&snap, &Thresholds::default())
    }

    #[test]
    fn exhausted_ports_are_critical_and_name_the_destination() {
        let f = findings(client(&[
            (Call::Connect, Errno::EADDRNOTAVAIL, 41),
            (Call::Connect, Errno::EAGAIN, 1),
        ]));
        assert_eq!(f.len(), 1, "{f:#?}");
        let f = &f[0];
        assert_eq!(
            (f.kind, f.severity),
            ("connect_failures", Severity::Critical)
        );
        assert_eq!(f.pid, Some(4242));
        assert_eq!(f.peer.as_deref(), Some("10.0.0.5:8080"));
        assert!(
            f.title
                .contains("ran out of local ports toward 10.0.0.5:8080"),
            "{}",
            f.title
        );
        assert!(
            f.title.contains("42 connect() call(s) failed"),
            "{}",
            f.title
        );
        assert_eq!(
            f.evidence[0],
            "connect() EADDRNOTAVAIL (Cannot assign requested address): 41"
        );
        assert!(
            f.evidence.iter().any(|e| e
                == "toward 10.0.0.5:8080: 40 failed, 28000 in TIME_WAIT now, 0 ESTABLISHED now"),
            "{:?}",
            f.evidence
        );
        for remedy in [
            "keep-alive",
            "ip_local_port_range",
            "tcp_tw_reuse",
            "more destination addresses",
        ] {
            assert!(f.remedy.contains(remedy), "{remedy}: {}", f.remedy);
        }
        let json = serde_json::to_value(f).expect("json");
        assert_eq!(json["kind"], "connect_failures");
        assert_eq!(json["severity"], "critical");
    }

    #[test]
    fn other_connect_failures_are_a_warning_and_bind_failures_their_own() {
        let f = findings(client(&[
            (Call::Connect, Errno::ENOBUFS, 3),
            (Call::Bind, Errno::EADDRINUSE, 2),
        ]));
        let kinds: Vec<(&str, Severity)> = f.iter().map(|f| (f.kind, f.severity)).collect();
        assert_eq!(
            kinds,
            [
                ("bind_failures", Severity::Warning),
                ("connect_failures", Severity::Warning)
            ]
        );
        assert!(!f[1].title.contains("ran out"), "{}", f[1].title);
        assert_eq!(
            f[0].evidence,
            ["bind() EADDRINUSE (Address already in use): 2"]
        );
        assert!(f[0].remedy.contains("SO_REUSEADDR"), "{}", f[0].remedy);
        // No failures, no finding.
        assert!(findings(client(&[])).is_empty());
    }
}
