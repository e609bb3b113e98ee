//! twtrace's output as the tests read it: trace events, the summary line, and checks that
//! collect every failure with evidence.

use std::collections::BTreeMap;
use std::process::ExitStatus;

use serde::Deserialize;

/// One JSON object of `twtrace trace --json`. Required fields are not `Option`, so a missing
/// one fails the parse and the test shows the offending line.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub time: String,
    pub pid: u32,
    pub comm: String,
    pub family: String,
    pub laddr: String,
    pub lport: u16,
    pub raddr: String,
    pub rport: u16,
    pub old: String,
    pub new: String,
    pub attribution: String,
    #[serde(default)]
    pub cookie: Option<u64>,
    #[serde(default)]
    pub reset: Option<String>,
    pub current_pid: u32,
    /// The socket's network namespace (nsfs inode), 0 when twtrace could not tell.
    #[serde(default)]
    pub netns: u32,
    /// Not a transition: the process accept()ed the socket (`old == new`).
    #[serde(default)]
    pub accept: bool,
    /// Not a transition either: a connect() or bind() of the process failed.
    #[serde(default)]
    pub failure: Option<Failure>,
    /// `FIN_WAIT2 -> FIN_WAIT2`: a timewait entry in the FIN_WAIT2 substate (the socket's
    /// process had closed it and the peer had not closed yet).
    #[serde(default)]
    pub orphan: bool,
    /// The owner's container (full id), runtime and pod UID, when its cgroup names them.
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// The version of the JSON layout: 1 on every line.
    #[serde(default)]
    pub schema: u32,
    /// The line as twtrace printed it, for evidence in failure messages.
    #[serde(skip)]
    pub raw: String,
}

/// `"failure": {"call": "connect", "errno": "EADDRNOTAVAIL"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Failure {
    pub call: String,
    pub errno: String,
}

pub const STATES: &[&str] = &[
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

impl Event {
    pub fn transition(&self) -> String {
        format!("{}->{}", self.old, self.new)
    }

    /// A timewait entry: TIME_WAIT, or FIN_WAIT2 for an orphan whose peer had not closed (which
    /// of the two depends on whether the peer closed before our FIN was acknowledged).
    pub fn timewait_entry(&self) -> bool {
        self.new == "TIME_WAIT" || self.orphan
    }

    /// Checks the values against the documented output contract.
    pub fn contract_violations(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.schema != 1 {
            bad.push(format!("schema {} is not 1", self.schema));
        }
        if !is_rfc3339_utc(&self.time) {
            bad.push(format!("time {:?} is not RFC 3339 UTC", self.time));
        }
        for (field, state) in [("old", &self.old), ("new", &self.new)] {
            if !STATES.contains(&state.as_str()) {
                bad.push(format!("{field} {state:?} is not a known state name"));
            }
        }
        if !["ipv4", "ipv6"].contains(&self.family.as_str()) {
            bad.push(format!("family {:?}", self.family));
        }
        if !["owner", "listener", "accepted", "unknown", "inherited"]
            .contains(&self.attribution.as_str())
        {
            bad.push(format!("attribution {:?}", self.attribution));
        }
        if self.accept != (self.old == self.new && self.failure.is_none() && !self.orphan) {
            bad.push(format!(
                "accept {} but {} -> {}",
                self.accept, self.old, self.new
            ));
        }
        if let Some(f) = &self.failure {
            let errnos: &[&str] = match f.call.as_str() {
                "connect" => &["EADDRNOTAVAIL", "EAGAIN", "ENOBUFS"],
                "bind" => &["EADDRINUSE", "EADDRNOTAVAIL"],
                _ => &[],
            };
            if !errnos.contains(&f.errno.as_str()) {
                bad.push(format!("failure {f:?}"));
            }
            if (self.old.as_str(), self.new.as_str()) != ("CLOSE", "CLOSE") || self.accept {
                bad.push(format!("a failure in {} -> {}", self.old, self.new));
            }
            if self.attribution != "owner" || self.current_pid != self.pid {
                bad.push(format!(
                    "a failure attributed to {} (pid {}, current {})",
                    self.attribution, self.pid, self.current_pid
                ));
            }
        }
        if self.orphan && (self.old != "FIN_WAIT2" || self.new != "FIN_WAIT2" || self.accept) {
            bad.push(format!(
                "orphan but {} -> {} (accept {})",
                self.old, self.new, self.accept
            ));
        }
        if self.accept && self.attribution != "accepted" {
            bad.push(format!("accept attributed to {:?}", self.attribution));
        }
        if let Some(reset) = &self.reset
            && !["received", "sent"].contains(&reset.as_str())
        {
            bad.push(format!("reset {reset:?}"));
        }
        for (field, addr) in [("laddr", &self.laddr), ("raddr", &self.raddr)] {
            match addr.parse::<std::net::IpAddr>() {
                Err(_) => bad.push(format!("{field} {addr:?} is not an IP address")),
                // v4-mapped addresses must be shown as plain IPv4.
                Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => {
                    bad.push(format!("{field} {addr:?} is v4-mapped"))
                }
                Ok(_) => {}
            }
        }
        bad
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)`: RFC 3339 with a UTC offset.
pub fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.len() - frac.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    matches!(rest, "Z" | "z" | "+00:00")
}

/// The counters of twtrace's final stderr line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub unattributed: u64,
    /// Of `lost`, the events the kernel skipped (`, N of the lost skipped by the kernel`; 0 when
    /// the line does not say).
    pub skipped: u64,
}

/// Parses `twtrace: N events, N lost, N unattributed[, N of the lost skipped ...][anything]`.
pub fn parse_summary(line: &str) -> Option<Summary> {
    fn number_then<'a>(s: &'a str, word: &str) -> Option<(u64, &'a str)> {
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = s.get(..digits).filter(|d| !d.is_empty())?.parse().ok()?;
        Some((n, s[digits..].strip_prefix(word)?))
    }
    let rest = line.strip_prefix("twtrace: ")?;
    let (events, rest) = number_then(rest, " events, ")?;
    let (lost, rest) = number_then(rest, " lost, ")?;
    let (unattributed, rest) = number_then(rest, " unattributed")?;
    let skipped = rest
        .strip_prefix(", ")
        .and_then(|r| number_then(r, " of the lost skipped"))
        .map_or(0, |(n, _)| n);
    Some(Summary {
        events,
        lost,
        unattributed,
        skipped,
    })
}

/// Filters events; the result stays a Vec<&Event> so it can be filtered again.
pub fn select<'a>(events: &[&'a Event], pred: impl Fn(&Event) -> bool) -> Vec<&'a Event> {
    events.iter().copied().filter(|e| pred(e)).collect()
}

/// Accumulates failed checks with evidence so one run reports every problem, not just the first.
pub struct Checks {
    test: String,
    failures: Vec<String>,
}

/// How many offending lines a failure quotes.
const EVIDENCE: usize = 8;

fn evidence(events: &[&Event]) -> String {
    let mut out: Vec<&str> = events
        .iter()
        .take(EVIDENCE)
        .map(|e| e.raw.as_str())
        .collect();
    let more = events.len().saturating_sub(EVIDENCE);
    let tail = if more > 0 {
        format!("\n    ... and {more} more")
    } else {
        String::new()
    };
    if out.is_empty() {
        out.push("(none)");
    }
    format!("    {}{tail}", out.join("\n    "))
}

impl Checks {
    pub fn new(test: &str) -> Self {
        Self {
            test: test.to_owned(),
            failures: Vec::new(),
        }
    }

    /// Exactly `want` events match; quotes the matching ones when the count is wrong.
    pub fn count(&mut self, what: &str, matching: &[&Event], want: usize) {
        let got = matching.len();
        eprintln!("[{}] {what}: {got} (want {want})", self.test);
        if got != want {
            self.failures.push(format!(
                "{what}: got {got}, want {want}; matching events:\n{}",
                evidence(matching)
            ));
        }
    }

    /// At least `want` events match.
    pub fn at_least(&mut self, what: &str, matching: &[&Event], want: usize) {
        let got = matching.len();
        eprintln!("[{}] {what}: {got} (want >= {want})", self.test);
        if got < want {
            self.failures
                .push(format!("{what}: got {got}, want at least {want}"));
        }
    }

    /// Every event satisfies `pred`; quotes the ones that do not.
    pub fn all(&mut self, what: &str, events: &[&Event], pred: impl Fn(&Event) -> bool) {
        let bad = select(events, |e| !pred(e));
        eprintln!(
            "[{}] {what}: {} of {} events comply",
            self.test,
            events.len() - bad.len(),
            events.len()
        );
        if !bad.is_empty() {
            self.failures.push(format!(
                "{what}: {} of {} events do not:\n{}",
                bad.len(),
                events.len(),
                evidence(&bad)
            ));
        }
    }

    pub fn value<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        eprintln!("[{}] {what}: {got:?} (want {want:?})", self.test);
        if got != want {
            self.failures
                .push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Panics with every failure collected.
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} check(s) failed:\n- {}",
            self.test,
            self.failures.len(),
            self.failures.join("\n- ")
        );
    }
}

/// Prints a per-test breakdown: transitions per side and owner, how often the current task was
/// not the owner (the reason twtrace exists), and twtrace's own summary line.
pub fn print_breakdown(
    test: &str,
    trace: &Trace,
    events: &[&Event],
    port: u16,
    pids: &[(&str, u32)],
) {
    let who = |pid: u32| {
        pids.iter()
            .find(|(_, p)| *p == pid)
            .map(|(name, _)| (*name).to_owned())
            .unwrap_or_else(|| format!("pid{pid}"))
    };
    let mut hist: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        let side = if e.lport == port {
            "server-side"
        } else {
            "client-side"
        };
        let mut key = format!(
            "{side} {:<24} pid={} {}",
            e.transition(),
            who(e.pid),
            e.attribution
        );
        if let Some(reset) = &e.reset {
            key.push_str(&format!(" reset={reset}"));
        }
        *hist.entry(key).or_default() += 1;
    }
    eprintln!(
        "[{test}] {} events on port {port} ({} in total); twtrace stderr tail: {:?}",
        events.len(),
        trace.events.len(),
        trace.stderr.last()
    );
    for (key, n) in &hist {
        eprintln!("[{test}]   {n:>6}  {key}");
    }
    let differs = events.iter().filter(|e| e.current_pid != e.pid).count();
    eprintln!(
        "[{test}] current_pid != attributed pid in {differs} of {} events (softirq ran in another task)",
        events.len()
    );
}

/// Everything a stopped twtrace produced.
pub struct Trace {
    pub events: Vec<Event>,
    pub stderr: Vec<String>,
    pub summary: Option<Summary>,
    pub status: ExitStatus,
}

impl Trace {
    /// Checks what every run must satisfy: exit 0 and a final summary line.
    pub fn summary(&self) -> Summary {
        assert!(
            self.status.success(),
            "twtrace exited with {} after SIGTERM; stderr:\n{}",
            self.status,
            self.stderr.join("\n")
        );
        self.summary.unwrap_or_else(|| {
            panic!(
                "no `twtrace: N events, N lost, N unattributed` line on stderr:\n{}",
                self.stderr.join("\n")
            )
        })
    }

    /// The events of one test's connections: the listener and accepted sockets have the server
    /// port as lport, the client sockets have it as rport (their lport is 0 at SYN_SENT).
    pub fn on_port(&self, port: u16) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| e.lport == port || e.rport == port)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        assert_eq!(
            parse_summary("twtrace: 12 events, 0 lost, 3 unattributed"),
            Some(Summary {
                events: 12,
                lost: 0,
                unattributed: 3,
                skipped: 0,
            })
        );
        assert_eq!(
            parse_summary(
                "twtrace: 9 events, 7 lost, 0 unattributed, 5 of the lost skipped by the kernel \
                 (another BPF program was running on that CPU)"
            )
            .map(|s| (s.lost, s.skipped)),
            Some((7, 5))
        );
        assert_eq!(
            parse_summary("twtrace: 1 events, 2 lost, 3 unattributed (pid filter)").map(|s| s.lost),
            Some(2)
        );
        assert_eq!(parse_summary("twtrace: tracing"), None);
        assert_eq!(
            parse_summary("twtrace: x events, 0 lost, 0 unattributed"),
            None
        );
        assert_eq!(
            parse_summary("warn twtrace: 1 events, 0 lost, 0 unattributed"),
            None
        );
    }

    #[test]
    fn rfc3339() {
        assert!(is_rfc3339_utc("2025-11-25T16:01:02Z"));
        assert!(is_rfc3339_utc("2025-11-25T16:01:02.123456789Z"));
        assert!(is_rfc3339_utc("2025-11-25T16:01:02.5+00:00"));
        assert!(!is_rfc3339_utc("2025-11-25 16:01:02Z"));
        assert!(!is_rfc3339_utc("2025-11-25T16:01:02"));
        assert!(!is_rfc3339_utc("2025-11-25T16:01:02.Z"));
        assert!(!is_rfc3339_utc("2025-11-25T16:01:02+01:00"));
        assert!(!is_rfc3339_utc("1764086462"));
    }

    #[test]
    fn event_contract() {
        let line = r#"{"schema":1,"time":"2025-11-25T16:01:02.000001Z","pid":7,"comm":"c","family":"ipv4",
            "laddr":"127.0.0.1","lport":1,"raddr":"127.0.0.1","rport":2,"old":"FIN_WAIT2",
            "new":"TIME_WAIT","attribution":"owner","cookie":5,"current_pid":0}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert!(
            e.contract_violations().is_empty(),
            "{:?}",
            e.contract_violations()
        );
        let bad = line
            .replace("\"TIME_WAIT\"", "\"TCP_TIME_WAIT\"")
            .replace("\"127.0.0.1\",\"lport\"", "\"::ffff:127.0.0.1\",\"lport\"");
        let e: Event = serde_json::from_str(&bad).unwrap();
        assert_eq!(
            e.contract_violations().len(),
            2,
            "{:?}",
            e.contract_violations()
        );
        // An orphan's timewait entry is the one FIN_WAIT2 -> FIN_WAIT2 that is no accept.
        let orphan = line
            .replace("\"TIME_WAIT\"", "\"FIN_WAIT2\"")
            .replace("\"current_pid\"", "\"orphan\":true,\"current_pid\"");
        let e: Event = serde_json::from_str(&orphan).unwrap();
        assert!(e.contract_violations().is_empty() && e.timewait_entry());
        let not_orphan = line.replace("\"TIME_WAIT\"", "\"FIN_WAIT2\"");
        let e: Event = serde_json::from_str(&not_orphan).unwrap();
        assert_eq!(e.contract_violations().len(), 1, "accept missing");
        // A missing required field is a parse error, not a default.
        assert!(
            serde_json::from_str::<Event>(&line.replace("\"current_pid\":0", "\"x\":0")).is_err()
        );
    }
}
