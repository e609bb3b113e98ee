//! Diagnosis: what the counts mean. Pure rules over a [`Snapshot`] (and, for `twtrace doctor`,
//! over values read from /proc), each turning evidence into a [`Finding`] an on-call engineer can
//! act on: who leaks, which destination's port pool runs out, who opens a connection per request.
//!
//! Every finding carries the values it rests on (`evidence`); a rule that has no value to show
//! says nothing.

use serde::Serialize;

use crate::model::{
    ports::{Destination, WARN_SHARE},
    snapshot::Snapshot,
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
    out.extend(
        snap.destinations
            .iter()
            .filter(|d| d.share.is_some_and(|s| s > WARN_SHARE))
            .map(port_exhaustion),
    );
    sort(&mut out);
    out
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
    // 2 reuses only toward loopback addresses; 1 everywhere; 0 nowhere.
    let reuse_helps = d.timewait > 0
        && match d.tcp_tw_reuse {
            Some(0) => true,
            Some(2) => !d.raddr.is_loopback(),
            _ => false,
        };
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
