//! Diagnosis: what the counts mean. Pure rules over a [`Snapshot`] (and, for `twtrace doctor`,
//! over values read from /proc), each turning evidence into a [`Finding`] an on-call engineer can
//! act on: who leaks, which destination's port pool runs out, who opens a connection per request.
//!
//! Every finding carries the values it rests on (`evidence`); a rule that has no value to show
//! says nothing.

use std::{io, time::Duration};

use serde::Serialize;

use crate::{
    event::{Call, Errno},
    kernel::sysctl::TwReuse,
    model::{
        ports::{Destination, WARN_SHARE},
        snapshot::{PeerKey, PeerRow, ProcessRow, Snapshot},
    },
    text::escape,
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

/// Thresholds of the rules over a snapshot. (How old a CLOSE_WAIT socket must be to make a leak
/// suspect is the model's, `Limits::leak_min_age_ns`: it counts `close_wait_old`.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Connections per second to one peer, ended in the last minute, above which short-lived
    /// ones are "a new connection per request" (`--churn-rate`).
    pub churn_per_s: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { churn_per_s: 2.0 }
    }
}

/// The findings a snapshot supports, most severe first (then by pid).
pub fn diagnose(snap: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in snap.processes.iter().filter(|p| p.pid != 0) {
        if p.leak_suspect {
            out.push(close_wait_leak(p));
        }
        if p.established_growing {
            out.push(established_growth(p));
        }
        for peer in &p.peers {
            if let Some(f) = churn_without_reuse(p, peer, t) {
                out.push(f);
            }
        }
        out.extend(connect_failures(p));
        out.extend(bind_failures(p));
    }
    out.extend(
        snap.destinations
            .iter()
            .filter(|d| d.share.is_some_and(|s| s > WARN_SHARE))
            .map(port_exhaustion),
    );
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
            "{} ran out of local ports{toward}: {} connect() call(s) failed",
            who(p),
            p.connect_failures
        )
    } else {
        format!(
            "{}: {} connect() call(s) failed{toward}",
            who(p),
            p.connect_failures
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
        title: format!("{}: {} bind() call(s) failed", who(p), p.bind_failures),
        evidence: failure_evidence(p, Call::Bind),
        remedy: "EADDRINUSE: set SO_REUSEADDR before bind() (TIME_WAIT sockets on the port block \
                 a bind without it) and check that no other process holds the port; \
                 EADDRNOTAVAIL: bind to an address this host has; a client that binds before \
                 connect() should set IP_BIND_ADDRESS_NO_PORT or not bind at all"
            .to_owned(),
    })
}

/// `312.5` seconds as people read an age: `5m 12s`.
pub fn age(seconds: f64) -> String {
    let whole = Duration::from_secs(seconds.max(0.0).round() as u64);
    humantime::format_duration(whole).to_string()
}

/// An age in at most 7 cells, for tables: `42s`, `5m12s`, `3h07m`, `≥5m12s` for a lower bound;
/// `-` for none.
pub fn short_age(seconds: f64, at_least: bool) -> String {
    if seconds <= 0.0 {
        return "-".to_owned();
    }
    let s = seconds.round() as u64;
    let text = match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    };
    if at_least { format!("≥{text}") } else { text }
}

/// A process's identity in a sentence.
fn who(p: &ProcessRow) -> String {
    format!("{} (pid {})", p.comm, p.pid)
}

fn close_wait_leak(p: &ProcessRow) -> Finding {
    let at_least = if p.close_wait_oldest_at_least {
        "at least "
    } else {
        ""
    };
    let mut evidence = vec![
        format!(
            "CLOSE_WAIT now {}, peak {}; {} older than the threshold",
            p.close_wait_now, p.close_wait_peak, p.close_wait_old
        ),
        format!(
            "oldest {at_least}{}{}",
            age(p.close_wait_oldest_s),
            if p.close_wait_oldest_at_least {
                " (already in CLOSE_WAIT when twtrace started)"
            } else {
                ""
            }
        ),
        format!("ages: {}", p.close_wait_ages),
        format!(
            "growth over the last minute: {:+} per minute",
            p.close_wait_growth_per_min
        ),
    ];
    let peers: Vec<String> = p
        .peers
        .iter()
        .filter(|r| r.close_wait_now > 0)
        .take(5)
        .map(|r| {
            format!(
                "{} ({}, oldest {})",
                r.peer,
                r.close_wait_now,
                age(r.close_wait_oldest_s)
            )
        })
        .collect();
    if !peers.is_empty() {
        evidence.push(format!("peers: {}", peers.join(", ")));
    }
    let growing = p.close_wait_growth_per_min > 0.0;
    Finding {
        severity: if growing {
            Severity::Critical
        } else {
            Severity::Warning
        },
        kind: "close_wait_leak",
        pid: Some(p.pid),
        comm: Some(p.comm.clone()),
        peer: p
            .peers
            .iter()
            .find(|r| r.close_wait_now > 0)
            .map(|r| r.peer.to_string()),
        title: format!(
            "{} leaks connections: {} CLOSE_WAIT socket(s) whose peer closed long ago{}",
            who(p),
            p.close_wait_old,
            if growing { ", and growing" } else { "" }
        ),
        evidence,
        remedy: format!(
            "{} never calls close() on connections its peer has closed: close a socket when a \
             read returns end of stream, release pooled connections (close response bodies), \
             and give the pool an idle timeout",
            p.comm
        ),
    }
}

fn established_growth(p: &ProcessRow) -> Finding {
    Finding {
        severity: Severity::Warning,
        kind: "established_growth",
        pid: Some(p.pid),
        comm: Some(p.comm.clone()),
        peer: p
            .peers
            .iter()
            .max_by_key(|r| r.established_now)
            .map(|r| r.peer.to_string()),
        title: format!(
            "{} only opens connections: ESTABLISHED grew without ever falling",
            who(p)
        ),
        evidence: vec![
            format!("ESTABLISHED now {}", p.established_now),
            format!(
                "growth over the last minute: {:+} per minute, never falling",
                p.established_growth_per_min
            ),
        ],
        remedy: "bound the connection pool (a maximum size and an idle timeout) and make sure \
                 every connection is returned to it or closed"
            .to_owned(),
    }
}

/// A process that opens many short connections to one peer: no keep-alive, no pooling.
fn churn_without_reuse(p: &ProcessRow, r: &PeerRow, t: &Thresholds) -> Option<Finding> {
    let life = r.lifetimes?;
    // `median_le_s` is the upper edge of the median's bucket, and 1 s is an edge: at most 1
    // means the median lived under a second.
    let short = life.median_le_s.is_some_and(|m| m <= 1.0);
    if !short || life.ended_per_s < t.churn_per_s || matches!(r.peer, PeerKey::Other) {
        return None;
    }
    let median = life.median_le_s.map_or(String::new(), |m| {
        if m < 1.0 {
            format!("{} ms", (m * 1000.0).round())
        } else {
            "1 s".to_owned()
        }
    });
    let evidence = vec![
        format!(
            "{} connection(s) ended in the last minute, {} per second",
            life.ended, life.ended_per_s
        ),
        format!(
            "median lifetime under {median}; {:.0}% lived under a second",
            life.short_share * 100.0
        ),
        format!(
            "TIME_WAIT entered toward this peer: {} since start, {} now",
            r.timewait_entered, r.timewait_now
        ),
    ];
    let (severity, title, remedy) = match r.peer {
        PeerKey::In { raddr, lport } => (
            Severity::Info,
            format!(
                "clients at {raddr} open a new connection per request to :{lport} ({})",
                who(p)
            ),
            format!(
                "make the clients at {raddr} keep connections alive (HTTP keep-alive, a \
                 connection pool); {} can allow it (keep-alive timeouts, no `Connection: \
                 close`)",
                p.comm
            ),
        ),
        _ => (
            Severity::Warning,
            format!(
                "{} opens a new connection per request to {}",
                who(p),
                r.peer
            ),
            format!(
                "reuse connections in {}: enable keep-alive or a connection pool; each short \
                 connection leaves a TIME_WAIT socket on the side that closes first, holding \
                 an ephemeral port toward {} for 60 s",
                p.comm, r.peer
            ),
        ),
    };
    Some(Finding {
        severity,
        kind: "churn_without_reuse",
        pid: Some(p.pid),
        comm: Some(p.comm.clone()),
        peer: Some(r.peer.to_string()),
        title,
        evidence,
        remedy,
    })
}

/// `port_exhaustion`: a destination whose pool of local ports is more than half used. Critical
/// above 90% or when the growth of the last 10 s empties it within a minute.
fn port_exhaustion(d: &Destination) -> Finding {
    use crate::sink::ports::{eta, is_critical, openers, percent};
    let usable = d.range.map(|r| r.usable);
    let target = d.target();
    let mut evidence = vec![
        format!(
            "in use: {} of {} usable local ports toward {target} from {} ({})",
            d.in_use,
            usable.map_or_else(|| "?".to_owned(), |u| u.to_string()),
            d.laddr,
            percent(d.share)
        ),
        format!(
            "TIME_WAIT: {} of them ({:.1}%)",
            d.timewait,
            100.0 * d.timewait as f64 / d.in_use.max(1) as f64
        ),
        format!("opens: {:.1}/s toward it", d.opens_per_s),
        match d.exhaustion_eta_s {
            Some(s) => format!(
                "runs out in: {} at the growth of the last 10 s",
                eta(Some(s))
            ),
            None => "runs out in: - (in use not growing over the last 10 s)".to_owned(),
        },
    ];
    if let Some(r) = d.range {
        evidence.push(format!(
            "net.ipv4.ip_local_port_range = {} {} ({} reserved by ip_local_reserved_ports) in \
             netns {}",
            r.low, r.high, r.reserved, d.netns
        ));
    }
    let flag = |v: Option<u8>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    evidence.push(format!(
        "net.ipv4.tcp_tw_reuse = {}, net.ipv4.tcp_timestamps = {}",
        flag(d.tcp_tw_reuse),
        flag(d.tcp_timestamps)
    ));
    if d.connect_failures > 0 {
        evidence.push(format!(
            "connect() failures toward it: {}",
            d.connect_failures
        ));
    }
    evidence.push(format!("opened by: {}", openers(d, 5)));

    let who = match d.pids.first() {
        Some(p) => format!("{} (pid {})", p.comm, p.pid),
        None => "the processes that open them".to_owned(),
    };
    let mut remedies = vec![format!(
        "reuse connections to {target} in {who}: HTTP keep-alive or a connection pool, not a \
         connection per request (each one its side closes keeps its port in TIME_WAIT for 60 s)"
    )];
    // Advised where the setting is known and does not apply to this destination's addresses
    // (0; or 2, loopback only, toward another address).
    let reuse_helps = d.timewait > 0
        && d.tcp_tw_reuse
            .and_then(TwReuse::of)
            .is_some_and(|r| !r.applies(d.laddr, d.raddr));
    if reuse_helps {
        let ts = if d.tcp_timestamps == Some(0) {
            " after turning net.ipv4.tcp_timestamps on (it is 0, and reuse needs it)"
        } else {
            " (it needs net.ipv4.tcp_timestamps, which is on)"
        };
        remedies.push(format!(
            "set net.ipv4.tcp_tw_reuse=1 in netns {}{ts}: connect() may then take over a \
             TIME_WAIT port toward {target} that is more than 1 s old",
            d.netns
        ));
    }
    if let Some(r) = d.range {
        remedies.push(format!(
            "widen net.ipv4.ip_local_port_range (now {} {}, {} usable)",
            r.low, r.high, r.usable
        ));
    }
    remedies.push(format!(
        "spread the connections over more destination addresses or ports: each (address, port) \
         has a pool of its own, so a load balancer with more addresses or listener ports in front \
         of the same backends gives {who} more ports toward it"
    ));
    let title = match d.exhaustion_eta_s {
        Some(s) => format!(
            "the local ports toward {target} are {} used and run out in about {}",
            percent(d.share),
            eta(Some(s))
        ),
        None => format!(
            "the local ports toward {target} are {} used",
            percent(d.share)
        ),
    };
    Finding {
        severity: if is_critical(d) {
            Severity::Critical
        } else {
            Severity::Warning
        },
        kind: "port_exhaustion",
        pid: d.pids.first().map(|p| p.pid),
        comm: d.pids.first().map(|p| p.comm.to_string()),
        peer: Some(target),
        title,
        evidence,
        remedy: remedies.join("; "),
    }
}

/// One finding as text, its texts escaped (names come from other users):
///
/// ```text
/// WARNING  curl (pid 42) opens a new connection per request to 10.0.0.5:80
///          - 3000 connection(s) ended in the last minute, 50 per second
///          fix: reuse connections in curl: ...
/// ```
pub fn write_finding(out: &mut impl io::Write, f: &Finding) -> io::Result<()> {
    let label = f.severity.as_str().to_uppercase();
    writeln!(out, "{label:<8} {}", escape(&f.title))?;
    for e in &f.evidence {
        writeln!(out, "         - {}", escape(e))?;
    }
    writeln!(out, "         fix: {}", escape(&f.remedy))
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
mod failure_tests {
    use super::*;
    use crate::model::snapshot::FailureRow;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::Lifetimes;

    fn out_peer(port: u16) -> PeerKey {
        PeerKey::Out {
            raddr: "10.0.0.5".parse().expect("address"),
            rport: port,
        }
    }

    fn process(pid: u32, comm: &str) -> ProcessRow {
        ProcessRow {
            pid,
            comm: comm.to_owned(),
            ..ProcessRow::default()
        }
    }

    fn lives(per_s: f64, median: f64) -> Option<Lifetimes> {
        Some(Lifetimes {
            ended: (per_s * 60.0) as u64,
            ended_per_s: per_s,
            short_share: if median <= 1.0 { 1.0 } else { 0.0 },
            median_le_s: Some(median),
        })
    }

    fn snapshot(processes: Vec<ProcessRow>) -> Snapshot {
        Snapshot {
            processes,
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_process_with_old_close_wait_sockets_is_a_leak_suspect() {
        let mut leaky = process(10, "leaky");
        leaky.close_wait_now = 12;
        leaky.close_wait_peak = 30;
        leaky.close_wait_old = 12;
        leaky.close_wait_oldest_s = 312.4;
        leaky.leak_suspect = true;
        leaky.peers = vec![PeerRow {
            close_wait_now: 12,
            close_wait_oldest_s: 312.4,
            ..PeerRow::new(out_peer(8080))
        }];
        // Young CLOSE_WAIT only: not a suspect.
        let mut reader = process(11, "reader");
        reader.close_wait_now = 3;
        let f = diagnose(
            &snapshot(vec![reader, leaky.clone()]),
            &Thresholds::default(),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind, f[0].severity, f[0].pid),
            ("close_wait_leak", Severity::Warning, Some(10))
        );
        assert_eq!(f[0].peer.as_deref(), Some("10.0.0.5:8080"));
        assert!(f[0].evidence.iter().any(|e| e.contains("oldest 5m 12s")));
        assert!(f[0].evidence.iter().any(|e| e.contains("peak 30")));
        // Growing makes it critical.
        leaky.close_wait_growth_per_min = 6.0;
        let f = diagnose(&snapshot(vec![leaky]), &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
    }

    #[test]
    fn short_connections_at_a_high_rate_to_one_peer_are_churn_without_reuse() {
        let mut churner = process(20, "curl-loop");
        churner.peers = vec![
            PeerRow {
                lifetimes: lives(50.0, 0.004),
                ..PeerRow::new(out_peer(80))
            },
            // Long-lived connections: pooled.
            PeerRow {
                lifetimes: lives(50.0, 16.0),
                ..PeerRow::new(out_peer(5432))
            },
            // Short but rare: a health check.
            PeerRow {
                lifetimes: lives(0.5, 0.004),
                ..PeerRow::new(out_peer(9090))
            },
        ];
        let mut server = process(30, "nginx");
        server.peers = vec![PeerRow {
            lifetimes: lives(50.0, 0.064),
            ..PeerRow::new(PeerKey::In {
                raddr: "10.0.0.9".parse().expect("address"),
                lport: 80,
            })
        }];
        let f = diagnose(&snapshot(vec![server, churner]), &Thresholds::default());
        let kinds: Vec<_> = f
            .iter()
            .map(|f| (f.kind, f.severity, f.pid, f.peer.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    "churn_without_reuse",
                    Severity::Warning,
                    Some(20),
                    Some("10.0.0.5:80".to_owned())
                ),
                (
                    "churn_without_reuse",
                    Severity::Info,
                    Some(30),
                    Some("10.0.0.9 -> :80".to_owned())
                ),
            ]
        );
        assert!(f[0].remedy.contains("keep-alive"));
        assert!(
            f[0].evidence[1].contains("under 4 ms"),
            "{:?}",
            f[0].evidence
        );
    }

    #[test]
    fn established_that_only_grows_is_reported() {
        let mut p = process(40, "pool");
        p.established_growing = true;
        p.established_now = 120;
        p.established_growth_per_min = 100.0;
        let f = diagnose(&snapshot(vec![p]), &Thresholds::default());
        assert_eq!(f[0].kind, "established_growth");
        assert!(f[0].evidence[1].contains("+100 per minute"));
    }

    #[test]
    fn ages_read_as_durations() {
        assert_eq!(age(312.4), "5m 12s");
        assert_eq!(age(0.2), "0s");
        assert_eq!(short_age(0.0, false), "-");
        assert_eq!(short_age(42.4, false), "42s");
        assert_eq!(short_age(312.0, true), "≥5m12s");
        assert_eq!(short_age(3.0 * 3600.0 + 420.0, false), "3h07m");
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;
    use crate::{event::Comm, kernel::sysctl::PortRange, model::ports::PidOpens};

    fn dest(share: f64, eta_s: Option<f64>, tw_reuse: u8, raddr: &str) -> Destination {
        Destination {
            netns: 4_026_531_840,
            laddr: "10.0.0.1".parse().expect("addr"),
            raddr: raddr.parse().expect("addr"),
            rport: 8080,
            in_use: 261,
            timewait: 250,
            share: Some(share),
            timewait_reusable: false,
            opens_per_s: 6.5,
            exhaustion_eta_s: eta_s,
            connect_failures: 3,
            range: PortRange::parse("40000 40299", ""),
            tcp_tw_reuse: Some(tw_reuse),
            tcp_timestamps: Some(1),
            pids: vec![PidOpens {
                pid: 4242,
                comm: Comm::from("client"),
                opens: 300,
            }],
            other_pids_opens: 0,
        }
    }

    fn findings(d: Destination) -> Vec<Finding> {
        let snap = Snapshot {
            destinations: vec![d],
            ..Snapshot::default()
        };
        diagnose(&snap, &Thresholds::default())
    }

    #[test]
    fn port_exhaustion_is_a_warning_above_half_and_critical_near_the_end() {
        assert!(findings(dest(0.5, None, 0, "10.0.0.5")).is_empty());
        let f = &findings(dest(0.87, None, 0, "10.0.0.5"))[0];
        assert_eq!((f.kind, f.severity), ("port_exhaustion", Severity::Warning));
        assert_eq!((f.pid, f.comm.as_deref()), (Some(4242), Some("client")));
        assert_eq!(f.peer.as_deref(), Some("10.0.0.5:8080"));
        assert_eq!(
            f.title,
            "the local ports toward 10.0.0.5:8080 are 87.0% used"
        );
        assert_eq!(
            f.evidence,
            vec![
                "in use: 261 of 300 usable local ports toward 10.0.0.5:8080 from 10.0.0.1 (87.0%)",
                "TIME_WAIT: 250 of them (95.8%)",
                "opens: 6.5/s toward it",
                "runs out in: - (in use not growing over the last 10 s)",
                "net.ipv4.ip_local_port_range = 40000 40299 (0 reserved by \
                 ip_local_reserved_ports) in netns 4026531840",
                "net.ipv4.tcp_tw_reuse = 0, net.ipv4.tcp_timestamps = 1",
                "connect() failures toward it: 3",
                "opened by: 4242 client (300)",
            ]
        );
        assert!(
            f.remedy
                .starts_with("reuse connections to 10.0.0.5:8080 in client (pid 4242)")
        );
        assert!(
            f.remedy
                .contains("set net.ipv4.tcp_tw_reuse=1 in netns 4026531840")
        );
        assert!(
            f.remedy
                .contains("widen net.ipv4.ip_local_port_range (now 40000 40299")
        );
        assert!(f.remedy.contains("more destination addresses or ports"));
        for critical in [
            dest(0.95, None, 0, "10.0.0.5"),
            dest(0.6, Some(59.0), 0, "10.0.0.5"),
        ] {
            let f = &findings(critical)[0];
            assert_eq!(f.severity, Severity::Critical, "{f:?}");
        }
        assert!(
            findings(dest(0.6, Some(40.0), 0, "10.0.0.5"))[0]
                .title
                .ends_with("run out in about 40s")
        );
    }

    #[test]
    fn tw_reuse_is_advised_only_where_it_is_off_for_that_destination() {
        let advised = |d: Destination| findings(d)[0].remedy.contains("tcp_tw_reuse=1");
        assert!(advised(dest(0.9, None, 0, "127.0.0.1")));
        // 2: loopback only, which this destination is not; or is.
        assert!(advised(dest(0.9, None, 2, "10.0.0.5")));
        assert!(!advised(dest(0.9, None, 2, "127.0.0.1")));
        assert!(!advised(dest(0.9, None, 1, "10.0.0.5")));
        let mut no_ts = dest(0.9, None, 0, "10.0.0.5");
        no_ts.tcp_timestamps = Some(0);
        assert!(
            findings(no_ts)[0]
                .remedy
                .contains("after turning net.ipv4.tcp_timestamps on")
        );
        // Nothing in TIME_WAIT: reuse would not free a port.
        let mut busy = dest(0.9, None, 0, "10.0.0.5");
        busy.timewait = 0;
        assert!(!advised(busy));
    }
}
