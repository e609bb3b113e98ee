//! The rules of `twtrace doctor`: pure functions from [`Facts`] to [`Finding`]s. Each finding
//! names the values it rests on, as read and where from; a rule without such a value says
//! nothing (or, with `--explain`, says what it read).

use std::fmt::Write as _;

use super::facts::{Facts, NOFILE_WARN, SocketFacts};
use crate::{
    diagnosis::{self, Finding, Severity, Thresholds},
    kernel::{
        netstat,
        sysctl::{self, PortPool, Setting, TwReuse},
    },
    // A share of a pool above which it is a warning, and critical (as `twtrace ports` says);
    // also the fill of the TIME_WAIT table and the orphans' that warns.
    model::{
        ports::{CRITICAL_SHARE, WARN_SHARE},
        snapshot::PeerKey,
    },
};

/// How long a TIME_WAIT socket lives: TCP_TIMEWAIT_LEN (include/net/tcp.h), fixed when the
/// kernel is built.
pub const TIME_WAIT_S: u64 = 60;
/// `tcp_fin_timeout`'s default.
const FIN_TIMEOUT_DEFAULT: i64 = 60;
/// The share of a process's soft `nofile` limit in use that makes a critical finding (a warning
/// from `NOFILE_WARN`).
const NOFILE_CRITICAL: f64 = 0.95;
/// Processes of the watch shown as churners.
const CHURNERS: usize = 3;

const FIN_TIMEOUT: &str = "net.ipv4.tcp_fin_timeout";
const TW_RECYCLE: &str = "net.ipv4.tcp_tw_recycle";
const TIMESTAMPS: &str = "net.ipv4.tcp_timestamps";
const MAX_TW: &str = "net.ipv4.tcp_max_tw_buckets";
const MAX_ORPHANS: &str = "net.ipv4.tcp_max_orphans";
const SOMAXCONN: &str = "net.core.somaxconn";
const SYN_BACKLOG: &str = "net.ipv4.tcp_max_syn_backlog";
const SYNCOOKIES: &str = "net.ipv4.tcp_syncookies";

/// Every rule's findings, most severe first.
pub fn findings(f: &Facts, explain: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    watched(f, &mut out);
    // A destination the watch's diagnosis named already (from its dumps, with the growth and
    // the openers) is not named again from this one dump.
    let named: Vec<String> = out
        .iter()
        .filter(|x| x.kind == "port_exhaustion")
        .filter_map(|x| x.peer.clone())
        .collect();
    port_exhaustion(f, explain, &named, &mut out);
    timewait_overflow(f, explain, &mut out);
    listen_overflow(f, explain, &mut out);
    orphans(f, explain, &mut out);
    resets(f, explain, &mut out);
    nofile(f, explain, &mut out);
    reuse_needs_timestamps(f, &mut out);
    tw_recycle(f, explain, &mut out);
    fin_timeout(f, explain, &mut out);
    tw_reuse_incoming(f, explain, &mut out);
    diagnosis::sort(&mut out);
    out
}

fn finding(severity: Severity, kind: &'static str, title: String) -> Finding {
    Finding {
        severity,
        kind,
        pid: None,
        comm: None,
        peer: None,
        title,
        evidence: Vec::new(),
        remedy: String::new(),
    }
}

/// `name = value (path)`, or that this kernel has no such setting.
fn sysctl_ev(f: &Facts, name: &str) -> String {
    let path = sysctl::path(name);
    match f.sysctl(name) {
        Some(v) => format!("{name} = {v} ({})", path.display()),
        None if f.sysctl_read(name) => format!(
            "{name}: not in this kernel ({} does not exist; Linux {})",
            path.display(),
            f.kernel
        ),
        None => format!("{name}: not read"),
    }
}

/// `Group Name = value (file, total so far)`, with the rise during the watch.
fn counter_ev(f: &Facts, group: &str, name: &str) -> Option<String> {
    let v = f.counter(group, name)?;
    let mut s = format!(
        "{group} {name} = {v} ({}, total so far)",
        netstat::source(group)
    );
    if let (Some(d), Some(w)) = (f.counter_delta(group, name), &f.watch) {
        let _ = write!(s, "; +{d} in the {:.0} s watched", w.seconds);
    }
    Some(s)
}

/// `file:line: key = value`.
fn setting_ev(s: &Setting) -> String {
    format!("{}:{}: {} = {}", s.file.display(), s.line, s.key, s.value)
}

fn positive(v: Option<i64>) -> i64 {
    v.unwrap_or(0).max(0)
}

fn pct(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

// ---- ports ---------------------------------------------------------------------------------

/// The destination holding most of the local ports connect() picks from.
fn port_exhaustion(f: &Facts, explain: bool, named: &[String], out: &mut Vec<Finding>) {
    let (Some(pool), Some(sockets)) = (&f.ports, &f.sockets) else {
        return;
    };
    let range = &pool.range;
    let Some(d) = sockets.destinations.first() else {
        return;
    };
    if named.contains(&d.peer().to_string()) {
        return;
    }
    let share = d.blocked() as f64 / f64::from(range.usable.max(1));
    // The thresholds of `twtrace ports` and the leaderboard's warning.
    let severity = if share > CRITICAL_SHARE {
        Severity::Critical
    } else if share > WARN_SHARE {
        Severity::Warning
    } else if explain && d.blocked() > 0 {
        Severity::Info
    } else {
        return;
    };
    let mut x = finding(
        severity,
        "port_exhaustion",
        format!(
            "connections from {} to {} hold {} of the {} local ports connect() can pick ({})",
            d.laddr,
            d.peer(),
            d.blocked(),
            range.usable,
            pct(share)
        ),
    );
    x.peer = Some(d.peer().to_string());
    x.evidence.push(format!(
        "{}: {} ports, {} of them reserved",
        sysctl_ev(f, PortPool::RANGE),
        range.size(),
        range.reserved
    ));
    if range.reserved > 0 {
        x.evidence.push(sysctl_ev(f, PortPool::RESERVED));
    }
    x.evidence.push(format!(
        "toward {} from {}: {} TIME_WAIT, {} in other states (sock_diag, this network namespace)",
        d.peer(),
        d.laddr,
        d.timewait,
        d.other
    ));
    x.evidence.push(format!(
        "{}: {}",
        sysctl_ev(f, TwReuse::NAME),
        if d.reuse {
            "connect() may take its TIME_WAIT sockets' ports"
        } else {
            "its TIME_WAIT sockets' ports are not reused"
        }
    ));
    let mut remedy = format!(
        "Reuse connections (HTTP keep-alive, a connection pool) instead of opening one per \
         request: each one closed keeps its port toward this destination for {TIME_WAIT_S} s in \
         TIME_WAIT."
    );
    if d.other > d.timewait {
        remedy.push_str(
            " Most are open connections, not TIME_WAIT: a pool larger than needed, or sockets \
             never closed (CLOSE_WAIT; `sudo twtrace` names the process).",
        );
    }
    if !d.reuse && d.timewait > 0 {
        let _ = write!(
            remedy,
            " Set net.ipv4.tcp_tw_reuse = 1 (now {}; the default 2 covers loopback only): \
             connect() may then take the port of a TIME_WAIT socket toward the same destination \
             once it is a second old, with tcp_timestamps on at both ends (here {}).",
            f.sysctl(TwReuse::NAME).unwrap_or("?"),
            f.sysctl(TIMESTAMPS).unwrap_or("?")
        );
    }
    if range.low > 1024 || range.high < 65535 {
        let _ = write!(
            remedy,
            " Widen net.ipv4.ip_local_port_range (now {} {}: {} usable; 1024 65535 gives up to \
             64512)",
            range.low, range.high, range.usable
        );
        let outside: Vec<String> = sockets
            .listening_ports
            .iter()
            .filter(|&&p| p >= 1024 && !(range.low..=range.high).contains(&p))
            .take(10)
            .map(u16::to_string)
            .collect();
        if outside.is_empty() {
            remedy.push('.');
        } else {
            let _ = write!(
                remedy,
                ", after adding the ports this host listens on in the new span to \
                 net.ipv4.ip_local_reserved_ports (listening now: {}).",
                outside.join(",")
            );
        }
    }
    remedy.push_str(
        " Or spread the connections over more destination addresses or ports, or more source \
         addresses: each (source address, destination address, destination port) has its own \
         pool of local ports.",
    );
    x.remedy = remedy;
    out.push(x);
}

// ---- TIME_WAIT table -----------------------------------------------------------------------

fn timewait_overflow(f: &Facts, explain: bool, out: &mut Vec<Finding>) {
    let overflow = positive(f.counter("TcpExt", "TCPTimeWaitOverflow"));
    let max = f.sysctl_num(MAX_TW).filter(|&m| m > 0);
    let tw = f.sockstat.map(|s| s.tw);
    let fill = match (tw, max) {
        (Some(tw), Some(max)) => Some(tw as f64 / max as f64),
        _ => None,
    };
    let near = fill.is_some_and(|s| s >= CRITICAL_SHARE);
    let title = if overflow > 0 {
        format!(
            "the kernel skipped TIME_WAIT for {overflow} closed connections: its TIME_WAIT \
             table (tcp_max_tw_buckets) was full"
        )
    } else if near {
        format!(
            "TIME_WAIT sockets fill {} of the kernel's table (tcp_max_tw_buckets)",
            pct(fill.unwrap_or(0.0))
        )
    } else if explain && f.counter("TcpExt", "TCPTimeWaitOverflow").is_some() {
        "the kernel's TIME_WAIT table never overflowed".to_owned()
    } else {
        return;
    };
    let severity = if overflow > 0 || near {
        Severity::Warning
    } else {
        Severity::Info
    };
    let mut x = finding(severity, "timewait_overflow", title);
    x.evidence
        .extend(counter_ev(f, "TcpExt", "TCPTimeWaitOverflow"));
    x.evidence.push(sysctl_ev(f, MAX_TW));
    if let Some(tw) = tw {
        x.evidence.push(format!(
            "timewait sockets now: tw {tw} (/proc/net/sockstat)"
        ));
    }
    x.remedy = "A connection closed while the table is full skips TIME_WAIT: a late packet of it \
                can then reach a new connection with the same ports. Open fewer connections \
                (reuse them); if the churn is expected, raise net.ipv4.tcp_max_tw_buckets (each \
                TIME_WAIT socket costs kernel memory, no file descriptor)."
        .to_owned();
    out.push(x);
}

// ---- listeners -----------------------------------------------------------------------------

fn listen_overflow(f: &Facts, explain: bool, out: &mut Vec<Finding>) {
    let overflows = positive(f.counter("TcpExt", "ListenOverflows"));
    let drops = positive(f.counter("TcpExt", "ListenDrops"));
    let now = positive(f.counter_delta("TcpExt", "ListenOverflows"));
    let (severity, title) = if overflows > 0 || drops > 0 {
        (
            if now > 0 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            format!(
                "{} incoming connections found a listener's accept queue full{}",
                overflows.max(drops),
                if now > 0 {
                    format!(", {now} of them while watched")
                } else {
                    String::new()
                }
            ),
        )
    } else if explain && f.counter("TcpExt", "ListenOverflows").is_some() {
        (
            Severity::Info,
            "no listener's accept queue overflowed".to_owned(),
        )
    } else {
        return;
    };
    let mut x = finding(severity, "listen_overflow", title);
    for name in ["ListenOverflows", "ListenDrops"] {
        x.evidence.extend(counter_ev(f, "TcpExt", name));
    }
    let qfull = positive(f.counter("TcpExt", "TCPReqQFullDrop"));
    for name in ["TCPReqQFullDrop", "SyncookiesSent"] {
        if positive(f.counter("TcpExt", name)) > 0 {
            x.evidence.extend(counter_ev(f, "TcpExt", name));
        }
    }
    for name in [SOMAXCONN, SYN_BACKLOG, SYNCOOKIES] {
        x.evidence.push(sysctl_ev(f, name));
    }
    let mut remedy = format!(
        "A listener's accept queue holds min(the backlog its listen() asked for, \
         net.core.somaxconn = {}) connections; past it the kernel drops the completing \
         handshake and the client's connection stalls until a retransmission gets through. \
         Accept faster (more workers, no blocking work in the accept loop), or ask listen() for \
         a larger backlog (nginx `listen ... backlog=N`, Java `new ServerSocket(port, N)`), \
         raising net.core.somaxconn if it is lower. `ss -ltn` shows each listener's queue now \
         (Recv-Q) and its size (Send-Q).",
        f.sysctl(SOMAXCONN).unwrap_or("?")
    );
    if qfull > 0 && f.sysctl_num(SYNCOOKIES) == Some(0) {
        let _ = write!(
            remedy,
            " SYNs were dropped with the SYN queue full and syncookies off: \
             net.ipv4.tcp_syncookies = 1 answers them instead, and a larger \
             net.ipv4.tcp_max_syn_backlog (now {}) lengthens the queue.",
            f.sysctl(SYN_BACKLOG).unwrap_or("?")
        );
    }
    x.remedy = remedy;
    out.push(x);
}

// ---- orphans and memory --------------------------------------------------------------------

fn orphans(f: &Facts, explain: bool, out: &mut Vec<Finding>) {
    let aborted = positive(f.counter("TcpExt", "TCPAbortOnMemory"));
    let orphan = f.sockstat.map(|s| s.orphan);
    let max = f.sysctl_num(MAX_ORPHANS).filter(|&m| m > 0);
    let fill = match (orphan, max) {
        (Some(o), Some(m)) => Some(o as f64 / m as f64),
        _ => None,
    };
    let near = fill.is_some_and(|s| s >= WARN_SHARE);
    let title = if aborted > 0 {
        format!(
            "the kernel reset {aborted} connections for lack of memory or too many orphaned \
             sockets"
        )
    } else if near {
        format!(
            "orphaned sockets fill {} of net.ipv4.tcp_max_orphans",
            pct(fill.unwrap_or(0.0))
        )
    } else if explain && f.counter("TcpExt", "TCPAbortOnMemory").is_some() {
        "no connection was reset for lack of memory".to_owned()
    } else {
        return;
    };
    let severity = if aborted > 0 || near {
        Severity::Warning
    } else {
        Severity::Info
    };
    let mut x = finding(severity, "orphans", title);
    x.evidence
        .extend(counter_ev(f, "TcpExt", "TCPAbortOnMemory"));
    if positive(f.counter("TcpExt", "TCPMemoryPressures")) > 0 {
        x.evidence
            .extend(counter_ev(f, "TcpExt", "TCPMemoryPressures"));
    }
    if let Some(o) = orphan {
        x.evidence.push(format!(
            "orphaned sockets now: orphan {o} (/proc/net/sockstat)"
        ));
    }
    x.evidence.push(sysctl_ev(f, MAX_ORPHANS));
    if let Some(s) = &f.sockets {
        x.evidence.push(format!(
            "orphaned FIN_WAIT2 sockets now: {} (sock_diag)",
            s.fin_wait2_orphans
        ));
    }
    x.evidence.push(sysctl_ev(f, FIN_TIMEOUT));
    x.remedy = format!(
        "Orphans are connections their process closed that the kernel still finishes (unsent \
         data, FIN_WAIT1, FIN_WAIT2, LAST_ACK). Past net.ipv4.tcp_max_orphans, or under TCP \
         memory pressure (net.ipv4.tcp_mem), it resets them instead (\"too many orphaned \
         sockets\" or \"out of memory\" in the kernel log). net.ipv4.tcp_fin_timeout (now {} s) \
         bounds how long an orphan waits in FIN_WAIT2 for its peer's FIN: lowering it is what \
         that setting is for. Raise tcp_max_orphans if memory allows, and look for peers that \
         stop reading.",
        f.sysctl(FIN_TIMEOUT).unwrap_or("?")
    );
    out.push(x);
}

// ---- resets --------------------------------------------------------------------------------

const RESET_COUNTERS: [(&str, &str); 5] = [
    ("Tcp", "EstabResets"),
    ("Tcp", "OutRsts"),
    ("TcpExt", "TCPAbortOnClose"),
    ("TcpExt", "TCPAbortOnData"),
    ("TcpExt", "TCPAbortOnTimeout"),
];

/// Resets: counted since boot on any host, so said only when they rose during the watch, or
/// with `--explain`.
fn resets(f: &Facts, explain: bool, out: &mut Vec<Finding>) {
    let rose: i64 = RESET_COUNTERS
        .iter()
        .map(|&(g, n)| positive(f.counter_delta(g, n)))
        .sum();
    let total: i64 = RESET_COUNTERS
        .iter()
        .map(|&(g, n)| positive(f.counter(g, n)))
        .sum();
    if total == 0 || !(rose > 0 || explain) {
        return;
    }
    let title = if rose > 0 {
        let sent = positive(f.counter_delta("Tcp", "OutRsts"));
        let reset = positive(f.counter_delta("Tcp", "EstabResets"));
        format!("while watched, {reset} established connections were reset and {sent} resets sent")
    } else {
        format!(
            "{} established connections were reset and {} resets sent so far",
            positive(f.counter("Tcp", "EstabResets")),
            positive(f.counter("Tcp", "OutRsts"))
        )
    };
    let mut x = finding(Severity::Info, "resets", title);
    x.evidence.extend(
        RESET_COUNTERS
            .iter()
            .filter(|&&(g, n)| positive(f.counter(g, n)) > 0)
            .filter_map(|&(g, n)| counter_ev(f, g, n)),
    );
    x.remedy = "TCPAbortOnClose: a process closed a connection with unread data (clients that \
                close before reading the whole response). TCPAbortOnData: a process closed with \
                SO_LINGER 0 (a reset on purpose, sometimes advised to avoid TIME_WAIT: it loses \
                data in flight and the peer sees ECONNRESET), or data arrived after it had \
                closed. TCPAbortOnTimeout: retransmissions gave up (peer unreachable). \
                `sudo twtrace trace` shows whose connections end in a reset (`reset`)."
        .to_owned();
    out.push(x);
}

// ---- open files ----------------------------------------------------------------------------

fn nofile(f: &Facts, explain: bool, out: &mut Vec<Finding>) {
    let mut flagged = 0;
    for u in &f.nofile.uses {
        let share = u.ratio();
        if share < NOFILE_WARN {
            break;
        }
        flagged += 1;
        let severity = if share >= NOFILE_CRITICAL || u.open + 1 >= u.soft {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let mut x = finding(
            severity,
            "nofile",
            format!(
                "{} (pid {}) has {} files open of its limit {} ({})",
                u.comm,
                u.pid,
                u.open,
                u.soft,
                pct(share)
            ),
        );
        x.pid = Some(u.pid);
        x.comm = Some(u.comm.clone());
        let hard = u
            .hard
            .map_or_else(|| "unlimited".to_owned(), |h| h.to_string());
        x.evidence.push(format!(
            "open files: {} (entries in /proc/{}/fd)",
            u.open, u.pid
        ));
        x.evidence.push(format!(
            "Max open files: soft {}, hard {hard} (/proc/{}/limits)",
            u.soft, u.pid
        ));
        if let Some(c) = &u.cmdline {
            x.evidence.push(format!("command line: {c}"));
        }
        let now = match u.hard {
            Some(h) if h > u.soft => format!(
                "now, up to its hard limit and without privileges: `prlimit --pid {} \
                 --nofile={h}:{h}`",
                u.pid
            ),
            _ => {
                let more = u.soft.saturating_mul(4).max(65536);
                format!(
                    "its hard limit is reached too; now, as root: `prlimit --pid {} \
                     --nofile={more}:{more}`",
                    u.pid
                )
            }
        };
        x.remedy = format!(
            "Raise the soft limit of {} (pid {}): {now}; for good with LimitNOFILE= in its \
             systemd unit, `ulimit -n` in what starts it, or nofile in \
             /etc/security/limits.conf. At the limit socket(), accept() and open() fail with \
             EMFILE (\"Too many open files\"). If its count only grows, it leaks descriptors: \
             `sudo twtrace` shows whether they are connections left in CLOSE_WAIT.",
            u.comm, u.pid
        );
        out.push(x);
    }
    if flagged == 0
        && explain
        && let Some(u) = f.nofile.uses.first()
    {
        let mut x = finding(
            Severity::Info,
            "nofile",
            format!(
                "no process is near its open-file limit; the nearest, {} (pid {}), has {} of {}",
                u.comm, u.pid, u.open, u.soft
            ),
        );
        x.pid = Some(u.pid);
        x.comm = Some(u.comm.clone());
        x.evidence.push(format!(
            "open files: {} (entries in /proc/{}/fd); soft limit {} (/proc/{}/limits)",
            u.open, u.pid, u.soft, u.pid
        ));
        x.evidence.push(format!(
            "processes counted: {} of {}",
            f.nofile.seen - f.nofile.refused,
            f.nofile.seen
        ));
        x.remedy = "Nothing to do.".to_owned();
        out.push(x);
    }
}

// ---- settings ------------------------------------------------------------------------------

/// `tcp_tw_reuse` needs timestamps (PAWS) to tell an old connection's packets from the new one's.
fn reuse_needs_timestamps(f: &Facts, out: &mut Vec<Finding>) {
    let (Some(reuse), Some(0)) = (f.tw_reuse(), f.sysctl_num(TIMESTAMPS)) else {
        return;
    };
    if reuse == TwReuse::Off {
        return;
    }
    let mut x = finding(
        Severity::Warning,
        "sysctl",
        format!(
            "net.ipv4.tcp_tw_reuse = {} has no effect: tcp_timestamps is off",
            f.sysctl(TwReuse::NAME).unwrap_or("?")
        ),
    );
    x.evidence.push(sysctl_ev(f, TwReuse::NAME));
    x.evidence.push(sysctl_ev(f, TIMESTAMPS));
    x.evidence
        .extend(f.settings_for(TIMESTAMPS).map(setting_ev));
    x.remedy = "Set net.ipv4.tcp_timestamps = 1 (the default): connect() takes a TIME_WAIT \
                socket's port only when that connection carried timestamps, which tell its late \
                packets from the new connection's."
        .to_owned();
    out.push(x);
}

fn tw_recycle(f: &Facts, explain: bool, out: &mut Vec<Finding>) {
    let lines: Vec<&Setting> = f.settings_for(TW_RECYCLE).collect();
    let live = f.sysctl(TW_RECYCLE);
    let (severity, title) = match (live, lines.last()) {
        (Some(v), _) if v != "0" => (
            Severity::Warning,
            format!("net.ipv4.tcp_tw_recycle = {v} drops connections from clients behind NAT"),
        ),
        (None, Some(last)) if f.sysctl_read(TW_RECYCLE) => (
            Severity::Info,
            format!(
                "{}:{} sets net.ipv4.tcp_tw_recycle, which this kernel does not have",
                last.file.display(),
                last.line
            ),
        ),
        (None, None) if explain && f.sysctl_read(TW_RECYCLE) => (
            Severity::Info,
            "net.ipv4.tcp_tw_recycle does not exist on this kernel".to_owned(),
        ),
        _ => return,
    };
    let mut x = finding(severity, "wrong_advice", title);
    x.evidence.push(sysctl_ev(f, TW_RECYCLE));
    x.evidence.extend(lines.iter().map(|s| setting_ev(s)));
    x.remedy = if live.is_some() {
        "Set it to 0: it drops SYNs whose timestamps are older than the last seen from the same \
         address, and clients behind one NAT address have unrelated timestamps. Linux 4.12 \
         removed it for that reason. For ports held by TIME_WAIT, use tcp_tw_reuse and \
         connection reuse."
            .to_owned()
    } else if lines.is_empty() {
        "Nothing to do: advice to enable tcp_tw_recycle is out of date. It was removed in Linux \
         4.12 because it dropped connections from clients behind NAT. For ports held by \
         TIME_WAIT, use tcp_tw_reuse and connection reuse."
            .to_owned()
    } else {
        "Remove the line: tcp_tw_recycle was removed in Linux 4.12 because it dropped \
         connections from clients behind NAT, and `sysctl --system` reports an error for it at \
         every boot. For ports held by TIME_WAIT, use tcp_tw_reuse and connection reuse."
            .to_owned()
    };
    out.push(x);
}

fn fin_timeout(f: &Facts, explain: bool, out: &mut Vec<Finding>) {
    let value = f.sysctl_num(FIN_TIMEOUT);
    let lines: Vec<&Setting> = f
        .settings_for(FIN_TIMEOUT)
        .filter(|s| s.value.parse::<i64>() != Ok(FIN_TIMEOUT_DEFAULT))
        .collect();
    let applied = value.is_some_and(|v| v != FIN_TIMEOUT_DEFAULT) || !lines.is_empty();
    if !(applied || explain && value.is_some()) {
        return;
    }
    let title = match value {
        Some(v) if applied => format!("net.ipv4.tcp_fin_timeout = {v} does not shorten TIME_WAIT"),
        _ => "net.ipv4.tcp_fin_timeout does not set how long TIME_WAIT lasts".to_owned(),
    };
    let mut x = finding(Severity::Info, "wrong_advice", title);
    x.evidence.push(sysctl_ev(f, FIN_TIMEOUT));
    x.evidence.extend(lines.iter().map(|s| setting_ev(s)));
    if let Some(s) = &f.sockets {
        if let Some(ms) = s.longest_timewait_ms {
            let mut line = format!(
                "the longest TIME_WAIT timer left now: {:.1} s, of {} TIME_WAIT sockets \
                 (sock_diag)",
                f64::from(ms) / 1000.0,
                s.timewait
            );
            if let Some(v) = value
                && i64::from(ms) > v * 1000
            {
                let _ = write!(line, ": longer than tcp_fin_timeout's {v} s");
            }
            x.evidence.push(line);
        }
        x.evidence.push(format!(
            "orphaned FIN_WAIT2 sockets now: {} (sock_diag)",
            s.fin_wait2_orphans
        ));
    }
    x.remedy = format!(
        "TIME_WAIT lasts {TIME_WAIT_S} s whatever this says (TCP_TIMEWAIT_LEN, fixed when the \
         kernel is built). tcp_fin_timeout bounds how long an orphaned connection (closed by its \
         process) waits in FIN_WAIT2 for the peer's FIN. Changing it is harmless, but does \
         nothing for ports held by TIME_WAIT: reuse connections, set tcp_tw_reuse, or widen \
         ip_local_port_range."
    );
    out.push(x);
}

fn tw_reuse_incoming(f: &Facts, explain: bool, out: &mut Vec<Finding>) {
    let Some(s) = &f.sockets else {
        return;
    };
    let lines: Vec<&Setting> = f
        .settings_for(TwReuse::NAME)
        .filter(|s| s.value == "1")
        .collect();
    let applied = f.tw_reuse() == Some(TwReuse::On) || !lines.is_empty();
    let incoming = s.timewait_incoming > 0 && s.timewait_incoming * 2 >= s.timewait;
    if !(applied && incoming || explain && f.sysctl(TwReuse::NAME).is_some()) {
        return;
    }
    let title = if applied && incoming {
        format!(
            "net.ipv4.tcp_tw_reuse = {} does nothing for the {} TIME_WAIT sockets of incoming \
             connections here",
            f.sysctl(TwReuse::NAME).unwrap_or("?"),
            s.timewait_incoming
        )
    } else {
        "net.ipv4.tcp_tw_reuse does nothing for incoming connections".to_owned()
    };
    let mut x = finding(Severity::Info, "wrong_advice", title);
    x.evidence.push(sysctl_ev(f, TwReuse::NAME));
    x.evidence.extend(lines.iter().map(|s| setting_ev(s)));
    x.evidence.push(timewait_split(s));
    x.remedy = "tcp_tw_reuse lets connect() take the local port of a TIME_WAIT socket; nothing \
                asks it for accepted connections. A server's TIME_WAIT sockets hold no \
                ephemeral port (their local port is the listening one), only kernel memory up to \
                tcp_max_tw_buckets. To move them to the clients, let the clients close first \
                (HTTP keep-alive, the client closing after the response)."
        .to_owned();
    out.push(x);
}

fn timewait_split(s: &SocketFacts) -> String {
    format!(
        "TIME_WAIT now: {}, of which {} on ports this host listens on (accepted connections it \
         closed first) (sock_diag)",
        s.timewait, s.timewait_incoming
    )
}

// ---- the watch -----------------------------------------------------------------------------

/// What the live view saw: the diagnosis of its last snapshot (CLOSE_WAIT holders...) and the
/// processes that made most TIME_WAIT.
fn watched(f: &Facts, out: &mut Vec<Finding>) {
    let Some(w) = &f.watch else {
        return;
    };
    let Some(snap) = &w.snapshot else {
        return;
    };
    let mut diag = diagnosis::diagnose(snap, &Thresholds::default());
    // Each process the diagnosis names, by its command line too: three `python3` are three
    // different programs.
    for x in &mut diag {
        let cmdline = x
            .pid
            .and_then(|pid| snap.processes.iter().find(|p| p.pid == pid))
            .and_then(|p| p.cmdline.as_deref());
        if let Some(c) = cmdline {
            x.evidence
                .push(format!("command line of pid {}: {c}", x.pid.unwrap_or(0)));
        }
    }
    let covered: Vec<u32> = diag
        .iter()
        .filter(|d| d.kind == "churn_without_reuse")
        .filter_map(|d| d.pid)
        .collect();
    out.extend(diag);
    let secs = if snap.uptime_s > 0.0 {
        snap.uptime_s
    } else {
        w.seconds
    };
    if secs <= 0.0 {
        return;
    }
    let mut rows: Vec<_> = snap
        .processes
        .iter()
        .filter(|p| p.pid != 0 && p.timewait_entered > 0 && !covered.contains(&p.pid))
        .collect();
    rows.sort_by(|a, b| {
        b.timewait_entered
            .cmp(&a.timewait_entered)
            .then(a.pid.cmp(&b.pid))
    });
    for p in rows.into_iter().take(CHURNERS) {
        let rate = p.timewait_entered as f64 / secs;
        let mut x = finding(
            Severity::Info,
            "churn",
            format!(
                "{} (pid {}) closed {} connections into TIME_WAIT in {secs:.0} s ({rate:.1}/s)",
                p.comm, p.pid, p.timewait_entered
            ),
        );
        x.pid = Some(p.pid);
        x.comm = Some(p.comm.clone());
        x.evidence.push(format!(
            "TIME_WAIT entered: {} in {secs:.1} s watched, {} alive now; opens {}, closes {} \
             (twtrace)",
            p.timewait_entered, p.timewait_now, p.opens, p.closes
        ));
        if let Some(c) = &p.cmdline {
            x.evidence.push(format!("command line: {c}"));
        }
        let mut remedy = "Reuse connections (HTTP keep-alive, a connection pool) instead of \
                          opening one per request."
            .to_owned();
        // The capped rest (`other`) names no peer to act on.
        if let Some(top) = p
            .peers
            .iter()
            .find(|r| r.peer != PeerKey::Other && r.timewait_entered > 0)
        {
            x.peer = Some(top.peer.to_string());
            let peer_rate = top.timewait_entered as f64 / secs;
            x.evidence.push(format!(
                "top peer {}: {} TIME_WAIT entered ({peer_rate:.1}/s)",
                top.peer, top.timewait_entered
            ));
            match top.peer {
                PeerKey::Out { raddr, .. } => {
                    let reuse = f.tw_reuse().is_some_and(|r| r.applies(raddr, raddr));
                    if let Some(range) = f.ports.as_ref().map(|p| &p.range) {
                        let held = (peer_rate * TIME_WAIT_S as f64).round();
                        let share = held / f64::from(range.usable.max(1));
                        x.evidence.push(format!(
                            "at that rate its TIME_WAIT sockets toward {} hold about {held:.0} \
                             of the {} usable local ports ({}, {TIME_WAIT_S} s each){}",
                            top.peer,
                            range.usable,
                            pct(share),
                            if reuse {
                                "; tcp_tw_reuse lets connect() take them"
                            } else {
                                ""
                            }
                        ));
                        if !reuse {
                            x.severity = if share > CRITICAL_SHARE {
                                Severity::Critical
                            } else if share > WARN_SHARE {
                                Severity::Warning
                            } else {
                                Severity::Info
                            };
                        }
                    }
                    if !reuse {
                        remedy.push_str(
                            " Or set net.ipv4.tcp_tw_reuse = 1, so connect() may take the ports \
                             of its TIME_WAIT sockets a second after they close.",
                        );
                    }
                }
                PeerKey::In { .. } => remedy.push_str(
                    " These are accepted connections this process closed first: their \
                     TIME_WAIT holds no ephemeral port, only memory; clients closing first \
                     (keep-alive) moves it to them.",
                ),
                PeerKey::Other => {}
            }
        }
        x.remedy = remedy;
        out.push(x);
    }
}

#[cfg(test)]
mod tests;
