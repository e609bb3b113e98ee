//! The kernel's TCP counters: /proc/net/netstat (`TcpExt:`, the MIB `nstat` prints as
//! `TcpExt...`) and /proc/net/snmp (`Tcp:`). Both are per network namespace, counted since it
//! was made (the host's: since boot), and readable by anyone.
//!
//! Each file holds pairs of lines with the same prefix, names then values:
//!
//! ```text
//! TcpExt: SyncookiesSent SyncookiesRecv ... ListenOverflows ListenDrops ...
//! TcpExt: 0 0 ... 12 12 ...
//! ```

use std::{collections::BTreeMap, fs, io};

/// Counters by group (`TcpExt`, `Tcp`, ...) and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<String, BTreeMap<String, i64>>);

impl Counters {
    /// Parses the pairs of lines of /proc/net/netstat or /proc/net/snmp into `self`. A pair
    /// whose lengths differ, or a value that is no number, is left out (only that pair, or that
    /// value); signed values are kept (`Tcp: MaxConn` is -1).
    pub fn parse_into(&mut self, text: &str) {
        let mut lines = text.lines().peekable();
        while let Some(names) = lines.next() {
            let Some((group, names)) = names.split_once(':') else {
                continue;
            };
            let Some(values) = lines
                .peek()
                .and_then(|l| l.strip_prefix(group)?.strip_prefix(':'))
            else {
                continue;
            };
            lines.next();
            let names: Vec<&str> = names.split_whitespace().collect();
            let values: Vec<&str> = values.split_whitespace().collect();
            if names.len() != values.len() {
                continue;
            }
            let entry = self.0.entry(group.trim().to_owned()).or_default();
            for (name, value) in names.into_iter().zip(values) {
                if let Ok(v) = value.parse() {
                    entry.insert(name.to_owned(), v);
                }
            }
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut c = Self::default();
        c.parse_into(text);
        c
    }

    /// /proc/net/netstat and /proc/net/snmp of this process's network namespace.
    pub fn read() -> io::Result<Self> {
        let mut c = Self::default();
        for path in [NETSTAT, SNMP] {
            c.parse_into(&fs::read_to_string(path)?);
        }
        Ok(c)
    }

    /// `group.name`, e.g. ("TcpExt", "ListenOverflows"); None when the kernel has no such
    /// counter.
    pub fn get(&self, group: &str, name: &str) -> Option<i64> {
        self.0.get(group)?.get(name).copied()
    }

    /// How much each counter rose from `before` to `self` (counters missing from either, or
    /// that went down, are left out).
    pub fn since(&self, before: &Self) -> Self {
        let mut out = Self::default();
        for (group, names) in &self.0 {
            for (name, &v) in names {
                if let Some(b) = before.get(group, name)
                    && v >= b
                {
                    out.0
                        .entry(group.clone())
                        .or_default()
                        .insert(name.clone(), v - b);
                }
            }
        }
        out
    }

    /// Only the counters in `wanted` ((group, name) pairs) that the kernel has.
    pub fn only(&self, wanted: &[(&str, &str)]) -> Self {
        let mut out = Self::default();
        for &(group, name) in wanted {
            if let Some(v) = self.get(group, name) {
                out.0
                    .entry(group.to_owned())
                    .or_default()
                    .insert(name.to_owned(), v);
            }
        }
        out
    }
}

pub const NETSTAT: &str = "/proc/net/netstat";
pub const SNMP: &str = "/proc/net/snmp";

/// Which file a group's counters come from, for evidence lines.
pub fn source(group: &str) -> &'static str {
    match group {
        "TcpExt" | "IpExt" | "MPTcpExt" => NETSTAT,
        _ => SNMP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETSTAT_TEXT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv TW ListenOverflows ListenDrops TCPAbortOnData TCPTimeWaitOverflow
TcpExt: 0 0 4120 12 15 3 0
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
";

    const SNMP_TEXT: &str = "\
Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 3000 2900 4 17 9 100 100 0 0 21 0
Udp: InDatagrams NoPorts
Udp: 5 0
";

    #[test]
    fn both_files() {
        let mut c = Counters::parse(NETSTAT_TEXT);
        c.parse_into(SNMP_TEXT);
        assert_eq!(c.get("TcpExt", "ListenOverflows"), Some(12));
        assert_eq!(c.get("TcpExt", "TCPTimeWaitOverflow"), Some(0));
        assert_eq!(c.get("Tcp", "EstabResets"), Some(17));
        assert_eq!(c.get("Tcp", "OutRsts"), Some(21));
        assert_eq!(c.get("Tcp", "MaxConn"), Some(-1));
        assert_eq!(c.get("Udp", "NoPorts"), Some(0));
        assert_eq!(
            c.get("TcpExt", "TCPAbortOnMemory"),
            None,
            "not in this text"
        );
        assert_eq!(source("TcpExt"), NETSTAT);
        assert_eq!(source("Tcp"), SNMP);
    }

    #[test]
    fn broken_pairs_are_left_out() {
        let c = Counters::parse(
            "TcpExt: A B\nTcpExt: 1\nTcp: X Y\nTcp: 5 x\nLonely: Q\nIp: F\nIp: 1\nIp: G\n",
        );
        assert_eq!(c.get("TcpExt", "A"), None, "lengths differ");
        assert_eq!(c.get("Tcp", "X"), Some(5));
        assert_eq!(c.get("Tcp", "Y"), None, "not a number");
        assert_eq!(c.get("Lonely", "Q"), None);
        assert_eq!(c.get("Ip", "F"), Some(1));
        assert_eq!(Counters::parse(""), Counters::default());
        assert_eq!(Counters::parse("\u{0}garbage\n:\n"), Counters::default());
    }

    #[test]
    fn differences_and_selection() {
        let before = Counters::parse("TcpExt: A B C\nTcpExt: 1 5 9\n");
        let after = Counters::parse("TcpExt: A B D\nTcpExt: 4 5 1\n");
        let d = after.since(&before);
        assert_eq!(d.get("TcpExt", "A"), Some(3));
        assert_eq!(d.get("TcpExt", "B"), Some(0));
        assert_eq!(d.get("TcpExt", "D"), None, "not counted before");
        let only = after.only(&[("TcpExt", "A"), ("TcpExt", "Z"), ("Tcp", "A")]);
        assert_eq!(only.0.len(), 1);
        assert_eq!(only.0["TcpExt"].len(), 1);
    }

    #[test]
    fn reads_this_kernel() {
        let c = Counters::read().expect("readable by anyone");
        assert!(c.get("TcpExt", "ListenOverflows").is_some());
        assert!(c.get("Tcp", "ActiveOpens").is_some());
    }
}
