//! Every rule on synthetic /proc text: the parsers' input as the kernel writes it, the facts
//! built from it the way `Facts::gather` builds them.

use std::{path::PathBuf, sync::Arc};

use super::*;
use crate::{
    doctor::facts::{Watched, tests::sock},
    kernel::{
        netstat::Counters,
        nofile::{FdUse, Scan, parse_limits},
        sockdiag::parse_sockstat,
    },
    model::snapshot::{PeerRow, ProcessRow, Snapshot},
};

const NETSTAT: &str = "\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDrop TCPTimeWaitOverflow TW TCPAbortOnData TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPMemoryPressures
TcpExt: 0 0 0 0 0 5000 0 0 0 0 0
";
const SNMP: &str = "\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts
Tcp: 1 200 120000 -1 3000 2900 4 0 9 100 100 0 0 0
";

const RANGE: &str = "net.ipv4.ip_local_port_range";

/// A healthy host: default settings, no overflow, nobody near a limit.
fn base() -> Facts {
    let sysctls: Vec<(&'static str, Option<String>)> = [
        (RANGE, Some("32768 60999")),
        ("net.ipv4.ip_local_reserved_ports", Some("")),
        ("net.ipv4.tcp_tw_reuse", Some("2")),
        ("net.ipv4.tcp_timestamps", Some("1")),
        ("net.ipv4.tcp_fin_timeout", Some("60")),
        ("net.ipv4.tcp_max_tw_buckets", Some("262144")),
        ("net.ipv4.tcp_max_orphans", Some("65536")),
        ("net.core.somaxconn", Some("4096")),
        ("net.ipv4.tcp_max_syn_backlog", Some("1024")),
        ("net.ipv4.tcp_syncookies", Some("1")),
        ("net.ipv4.tcp_tw_recycle", None),
    ]
    .into_iter()
    .map(|(n, v)| (n, v.map(str::to_owned)))
    .collect();
    let mut counters = Counters::parse(NETSTAT);
    counters.parse_into(SNMP);
    let ports = PortPool::parse("32768\t60999", "").expect("range");
    let dump = vec![
        sock(10, false, "0.0.0.0:22", "0.0.0.0:0"),
        sock(1, false, "10.0.0.1:22", "10.0.0.9:50000"),
        sock(6, true, "10.0.0.1:40000", "10.0.0.5:443"),
    ];
    let sockets = SocketFacts::from_dump(&dump, Some(&ports), Some(TwReuse::Loopback));
    let limits =
        parse_limits("Max open files            1024                 524288               files\n")
            .expect("limits");
    Facts {
        time: "2026-11-30T10:00:00Z".parse().expect("time"),
        host: "web-1".into(),
        kernel: "6.18.44".into(),
        netns: Some(4026531840),
        uptime_s: Some(86400.0),
        sysctls,
        ports: Some(ports),
        counters,
        sockstat: parse_sockstat("TCP: inuse 5 orphan 0 tw 1 alloc 7 mem 1\n"),
        sockets: Some(sockets),
        nofile: Scan {
            uses: vec![FdUse {
                pid: 100,
                comm: "sshd".into(),
                cmdline: Some("sshd: /usr/sbin/sshd -D".into()),
                open: 12,
                soft: limits.soft.expect("finite"),
                hard: limits.hard,
            }],
            refused: 0,
            seen: 1,
        },
        settings: Vec::new(),
        skipped: Vec::new(),
        watch: None,
    }
}

fn set(f: &mut Facts, name: &str, value: Option<&str>) {
    let slot = f
        .sysctls
        .iter_mut()
        .find(|(n, _)| *n == name)
        .expect("a sysctl of the list");
    slot.1 = value.map(str::to_owned);
}

fn counter(f: &mut Facts, group: &str, name: &str, v: i64) {
    f.counters
        .0
        .entry(group.into())
        .or_default()
        .insert(name.into(), v);
}

fn setting(f: &mut Facts, file: &str, line: usize, key: &str, value: &str) {
    f.settings.push(Setting {
        file: PathBuf::from(file),
        line,
        key: key.into(),
        value: value.into(),
    });
}

fn kinds(findings: &[Finding]) -> Vec<(Severity, &'static str)> {
    findings.iter().map(|x| (x.severity, x.kind)).collect()
}

fn one<'a>(findings: &'a [Finding], kind: &str) -> &'a Finding {
    let mut it = findings.iter().filter(|x| x.kind == kind);
    let x = it
        .next()
        .unwrap_or_else(|| panic!("no {kind} finding in {findings:#?}"));
    assert!(it.next().is_none(), "one {kind} finding: {findings:#?}");
    x
}

/// Many sockets toward one destination, from consecutive ephemeral ports.
fn toward(f: &mut Facts, dest: &str, from: &str, timewait: u16, other: u16) {
    let mut dump = vec![sock(10, false, "0.0.0.0:8080", "0.0.0.0:0")];
    for i in 0..timewait + other {
        let local = format!("{from}:{}", 32768 + i);
        dump.push(if i < timewait {
            sock(6, true, &local, dest)
        } else {
            sock(1, false, &local, dest)
        });
    }
    f.sockets = Some(SocketFacts::from_dump(
        &dump,
        f.ports.as_ref(),
        f.tw_reuse(),
    ));
}

#[test]
fn a_healthy_host_has_no_findings() {
    assert_eq!(findings(&base(), false), []);
}

#[test]
fn explain_says_what_it_read_and_corrects_the_folklore() {
    let x = findings(&base(), true);
    assert!(x.iter().all(|x| x.severity == Severity::Info), "{x:#?}");
    let advice: Vec<&str> = x
        .iter()
        .filter(|x| x.kind == "wrong_advice")
        .map(|x| x.title.as_str())
        .collect();
    assert_eq!(
        advice,
        [
            "net.ipv4.tcp_tw_recycle does not exist on this kernel",
            "net.ipv4.tcp_fin_timeout does not set how long TIME_WAIT lasts",
            "net.ipv4.tcp_tw_reuse does nothing for incoming connections",
        ]
    );
    let recycle = &x
        .iter()
        .find(|x| x.title.contains("tcp_tw_recycle"))
        .expect("recycle")
        .evidence;
    assert_eq!(
        recycle[0],
        "net.ipv4.tcp_tw_recycle: not in this kernel (/proc/sys/net/ipv4/tcp_tw_recycle does not \
         exist; Linux 6.18.44)"
    );
    // Zero counters: info lines only with --explain.
    for kind in ["timewait_overflow", "listen_overflow", "orphans"] {
        assert_eq!(one(&x, kind).severity, Severity::Info);
    }
    assert!(
        one(&x, "listen_overflow")
            .evidence
            .contains(&"TcpExt ListenOverflows = 0 (/proc/net/netstat, total so far)".to_owned())
    );
    assert_eq!(
        one(&x, "nofile").title,
        "no process is near its open-file limit; the nearest, sshd (pid 100), has 12 of 1024"
    );
    // The one outgoing TIME_WAIT socket: 1 of 28232 ports.
    assert!(
        one(&x, "port_exhaustion")
            .title
            .contains("hold 1 of the 28232")
    );
}

#[test]
fn ports_held_toward_one_destination() {
    let mut f = base();
    set(&mut f, "net.ipv4.tcp_tw_reuse", Some("0"));
    toward(&mut f, "10.0.0.5:5432", "10.0.0.1", 24_000, 2_000);
    let x = findings(&f, false);
    let p = one(&x, "port_exhaustion");
    assert_eq!(p.severity, Severity::Critical);
    assert_eq!(
        p.title,
        "connections from 10.0.0.1 to 10.0.0.5:5432 hold 26000 of the 28232 local ports connect() \
         can pick (92%)"
    );
    assert_eq!(p.peer.as_deref(), Some("10.0.0.5:5432"));
    assert_eq!(
        p.evidence,
        [
            "net.ipv4.ip_local_port_range = 32768 60999 (/proc/sys/net/ipv4/ip_local_port_range): \
             28232 ports, 0 of them reserved",
            "toward 10.0.0.5:5432 from 10.0.0.1: 24000 TIME_WAIT, 2000 in other states \
             (sock_diag, this network namespace)",
            "net.ipv4.tcp_tw_reuse = 0 (/proc/sys/net/ipv4/tcp_tw_reuse): its TIME_WAIT sockets' \
             ports are not reused",
        ]
    );
    assert!(
        p.remedy.contains("Set net.ipv4.tcp_tw_reuse = 1 (now 0"),
        "{}",
        p.remedy
    );
    assert!(
        p.remedy.contains("tcp_timestamps on at both ends (here 1)"),
        "{}",
        p.remedy
    );
    assert!(
        p.remedy
            .contains("Widen net.ipv4.ip_local_port_range (now 32768 60999"),
        "{}",
        p.remedy
    );
    assert!(p.remedy.contains("listening now: 8080"), "{}", p.remedy);
    assert!(
        p.remedy.contains("more destination addresses or ports"),
        "{}",
        p.remedy
    );

    // With tcp_tw_reuse = 1 the TIME_WAIT ports are free for it: 2000 held, no finding.
    set(&mut f, "net.ipv4.tcp_tw_reuse", Some("1"));
    toward(&mut f, "10.0.0.5:5432", "10.0.0.1", 24_000, 2_000);
    assert!(
        findings(&f, false)
            .iter()
            .all(|x| x.kind != "port_exhaustion")
    );

    // The default (loopback only) does not cover a remote destination; half the pool warns.
    set(&mut f, "net.ipv4.tcp_tw_reuse", Some("2"));
    toward(&mut f, "10.0.0.5:5432", "10.0.0.1", 15_000, 0);
    let x = findings(&f, false);
    assert_eq!(one(&x, "port_exhaustion").severity, Severity::Warning);
    // ... but does loopback.
    toward(&mut f, "127.0.0.1:9000", "127.0.0.1", 27_000, 0);
    assert!(
        findings(&f, false)
            .iter()
            .all(|x| x.kind != "port_exhaustion")
    );
}

#[test]
fn reserved_ports_shrink_the_pool() {
    let mut f = base();
    set(
        &mut f,
        "net.ipv4.ip_local_reserved_ports",
        Some("40000-59999"),
    );
    f.ports = PortPool::parse("32768 60999", "40000-59999");
    set(&mut f, "net.ipv4.tcp_tw_reuse", Some("0"));
    // Ports 32768.. and 60000..: toward() uses consecutive ones, 7232 left below 40000.
    toward(&mut f, "10.0.0.5:80", "10.0.0.1", 7_000, 0);
    let x = findings(&f, false);
    let p = one(&x, "port_exhaustion");
    assert_eq!(p.severity, Severity::Warning, "7000 of 8232");
    assert!(p.title.contains("hold 7000 of the 8232"), "{}", p.title);
    assert!(
        p.evidence[0].ends_with("28232 ports, 20000 of them reserved"),
        "{:?}",
        p.evidence
    );
    assert_eq!(
        p.evidence[1],
        "net.ipv4.ip_local_reserved_ports = 40000-59999 (/proc/sys/net/ipv4/ip_local_reserved_ports)"
    );
}

#[test]
fn a_full_time_wait_table() {
    let mut f = base();
    counter(&mut f, "TcpExt", "TCPTimeWaitOverflow", 120);
    let x = findings(&f, false);
    let t = one(&x, "timewait_overflow");
    assert_eq!(t.severity, Severity::Warning);
    assert_eq!(
        t.title,
        "the kernel skipped TIME_WAIT for 120 closed connections: its TIME_WAIT table \
         (tcp_max_tw_buckets) was full"
    );
    assert_eq!(
        t.evidence,
        [
            "TcpExt TCPTimeWaitOverflow = 120 (/proc/net/netstat, total so far)",
            "net.ipv4.tcp_max_tw_buckets = 262144 (/proc/sys/net/ipv4/tcp_max_tw_buckets)",
            "timewait sockets now: tw 1 (/proc/net/sockstat)",
        ]
    );

    // Nearly full, not yet overflowed.
    let mut f = base();
    f.sockstat = parse_sockstat("TCP: inuse 5 orphan 0 tw 250000 alloc 7 mem 1\n");
    let x = findings(&f, false);
    assert_eq!(
        one(&x, "timewait_overflow").title,
        "TIME_WAIT sockets fill 95% of the kernel's table (tcp_max_tw_buckets)"
    );
}

#[test]
fn listen_queue_overflows() {
    let mut f = base();
    counter(&mut f, "TcpExt", "ListenOverflows", 12);
    counter(&mut f, "TcpExt", "ListenDrops", 12);
    let x = findings(&f, false);
    let l = one(&x, "listen_overflow");
    assert_eq!(l.severity, Severity::Warning);
    assert_eq!(
        l.title,
        "12 incoming connections found a listener's accept queue full"
    );
    assert_eq!(
        l.evidence,
        [
            "TcpExt ListenOverflows = 12 (/proc/net/netstat, total so far)",
            "TcpExt ListenDrops = 12 (/proc/net/netstat, total so far)",
            "net.core.somaxconn = 4096 (/proc/sys/net/core/somaxconn)",
            "net.ipv4.tcp_max_syn_backlog = 1024 (/proc/sys/net/ipv4/tcp_max_syn_backlog)",
            "net.ipv4.tcp_syncookies = 1 (/proc/sys/net/ipv4/tcp_syncookies)",
        ]
    );
    assert!(
        l.remedy.contains("net.core.somaxconn = 4096"),
        "{}",
        l.remedy
    );
    assert!(!l.remedy.contains("syncookies = 1 answers"), "{}", l.remedy);

    // Rising while watched: critical, and the rise is in the evidence.
    let mut before = f.counters.clone();
    before
        .0
        .get_mut("TcpExt")
        .expect("group")
        .insert("ListenOverflows".into(), 2);
    f.watch = Some(Watched {
        seconds: 10.0,
        snapshot: None,
        counters_before: Some(before),
    });
    // Syncookies off and the SYN queue full.
    set(&mut f, "net.ipv4.tcp_syncookies", Some("0"));
    counter(&mut f, "TcpExt", "TCPReqQFullDrop", 40);
    let x = findings(&f, false);
    let l = one(&x, "listen_overflow");
    assert_eq!(l.severity, Severity::Critical);
    assert_eq!(
        l.title,
        "12 incoming connections found a listener's accept queue full, 10 of them while watched"
    );
    assert_eq!(
        l.evidence[0],
        "TcpExt ListenOverflows = 12 (/proc/net/netstat, total so far); +10 in the 10 s watched"
    );
    assert!(l.evidence.contains(
        &"TcpExt TCPReqQFullDrop = 40 (/proc/net/netstat, total so far); +40 in the 10 s watched"
            .to_owned()
    ));
    assert!(
        l.remedy
            .contains("net.ipv4.tcp_syncookies = 1 answers them"),
        "{}",
        l.remedy
    );
    assert!(
        l.remedy.contains("tcp_max_syn_backlog (now 1024)"),
        "{}",
        l.remedy
    );
}

#[test]
fn resets_for_lack_of_memory_and_orphans() {
    let mut f = base();
    counter(&mut f, "TcpExt", "TCPAbortOnMemory", 7);
    f.sockstat = parse_sockstat("TCP: inuse 5 orphan 40000 tw 1 alloc 7 mem 1\n");
    let x = findings(&f, false);
    let o = one(&x, "orphans");
    assert_eq!(o.severity, Severity::Warning);
    assert_eq!(
        o.title,
        "the kernel reset 7 connections for lack of memory or too many orphaned sockets"
    );
    assert!(
        o.evidence
            .contains(&"orphaned sockets now: orphan 40000 (/proc/net/sockstat)".to_owned())
    );
    assert!(o.evidence.contains(
        &"net.ipv4.tcp_max_orphans = 65536 (/proc/sys/net/ipv4/tcp_max_orphans)".to_owned()
    ));
    assert!(
        o.remedy.contains("tcp_fin_timeout (now 60 s)"),
        "{}",
        o.remedy
    );
}

#[test]
fn resets_only_when_rising_or_explained() {
    let mut f = base();
    counter(&mut f, "Tcp", "EstabResets", 300);
    counter(&mut f, "Tcp", "OutRsts", 500);
    // Since boot only: every host has some.
    assert!(findings(&f, false).iter().all(|x| x.kind != "resets"));
    let x = findings(&f, true);
    assert_eq!(
        one(&x, "resets").title,
        "300 established connections were reset and 500 resets sent so far"
    );
    let mut before = f.counters.clone();
    before
        .0
        .get_mut("Tcp")
        .expect("group")
        .insert("OutRsts".into(), 450);
    f.watch = Some(Watched {
        seconds: 5.0,
        snapshot: None,
        counters_before: Some(before),
    });
    let x = findings(&f, false);
    let r = one(&x, "resets");
    assert_eq!(
        r.title,
        "while watched, 0 established connections were reset and 50 resets sent"
    );
    assert_eq!(
        r.evidence,
        [
            "Tcp EstabResets = 300 (/proc/net/snmp, total so far); +0 in the 5 s watched",
            "Tcp OutRsts = 500 (/proc/net/snmp, total so far); +50 in the 5 s watched",
        ]
    );
}

#[test]
fn processes_near_their_open_file_limit() {
    let mut f = base();
    f.nofile.uses = vec![
        FdUse {
            pid: 4242,
            comm: "java".into(),
            cmdline: Some("java -jar /srv/app.jar".into()),
            open: 62,
            soft: 64,
            hard: Some(4096),
        },
        FdUse {
            pid: 77,
            comm: "nginx".into(),
            cmdline: None,
            open: 850,
            soft: 1000,
            hard: Some(1000),
        },
        FdUse {
            pid: 100,
            comm: "sshd".into(),
            cmdline: None,
            open: 12,
            soft: 1024,
            hard: None,
        },
    ];
    let x = findings(&f, false);
    assert_eq!(
        kinds(&x),
        [
            (Severity::Critical, "nofile"),
            (Severity::Warning, "nofile")
        ]
    );
    let java = &x[0];
    assert_eq!((java.pid, java.comm.as_deref()), (Some(4242), Some("java")));
    assert_eq!(
        java.title,
        "java (pid 4242) has 62 files open of its limit 64 (97%)"
    );
    assert_eq!(
        java.evidence,
        [
            "open files: 62 (entries in /proc/4242/fd)",
            "Max open files: soft 64, hard 4096 (/proc/4242/limits)",
            "command line: java -jar /srv/app.jar",
        ]
    );
    assert!(
        java.remedy
            .contains("`prlimit --pid 4242 --nofile=4096:4096`"),
        "{}",
        java.remedy
    );
    assert!(java.remedy.contains("LimitNOFILE="), "{}", java.remedy);
    let nginx = &x[1];
    assert_eq!(
        nginx.title,
        "nginx (pid 77) has 850 files open of its limit 1000 (85%)"
    );
    assert!(
        nginx.remedy.contains(
            "hard limit is reached too; now, as root: `prlimit --pid 77 --nofile=65536:65536`"
        ),
        "{}",
        nginx.remedy
    );
}

#[test]
fn reuse_without_timestamps() {
    let mut f = base();
    set(&mut f, "net.ipv4.tcp_tw_reuse", Some("1"));
    set(&mut f, "net.ipv4.tcp_timestamps", Some("0"));
    setting(
        &mut f,
        "/etc/sysctl.d/90-net.conf",
        4,
        "net.ipv4.tcp_timestamps",
        "0",
    );
    let x = findings(&f, false);
    let s = one(&x, "sysctl");
    assert_eq!(s.severity, Severity::Warning);
    assert_eq!(
        s.title,
        "net.ipv4.tcp_tw_reuse = 1 has no effect: tcp_timestamps is off"
    );
    assert_eq!(
        s.evidence[2],
        "/etc/sysctl.d/90-net.conf:4: net.ipv4.tcp_timestamps = 0"
    );
    set(&mut f, "net.ipv4.tcp_tw_reuse", Some("0"));
    assert!(findings(&f, false).iter().all(|x| x.kind != "sysctl"));
}

#[test]
fn tw_recycle_in_a_settings_file_is_corrected() {
    let mut f = base();
    setting(
        &mut f,
        "/etc/sysctl.d/99-tune.conf",
        3,
        "net.ipv4.tcp_tw_recycle",
        "1",
    );
    let x = findings(&f, false);
    let w = one(&x, "wrong_advice");
    assert_eq!(w.severity, Severity::Info);
    assert_eq!(
        w.title,
        "/etc/sysctl.d/99-tune.conf:3 sets net.ipv4.tcp_tw_recycle, which this kernel does not have"
    );
    assert_eq!(
        w.evidence[1],
        "/etc/sysctl.d/99-tune.conf:3: net.ipv4.tcp_tw_recycle = 1"
    );
    assert!(w.remedy.starts_with("Remove the line"), "{}", w.remedy);
    assert!(w.remedy.contains("4.12"), "{}", w.remedy);

    // An old kernel that still has it, switched on.
    let mut f = base();
    set(&mut f, "net.ipv4.tcp_tw_recycle", Some("1"));
    let x = findings(&f, false);
    let w = one(&x, "wrong_advice");
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(
        w.evidence[0],
        "net.ipv4.tcp_tw_recycle = 1 (/proc/sys/net/ipv4/tcp_tw_recycle)"
    );
}

#[test]
fn fin_timeout_applied_is_corrected_with_the_timers_read() {
    let mut f = base();
    set(&mut f, "net.ipv4.tcp_fin_timeout", Some("30"));
    setting(
        &mut f,
        "/etc/sysctl.conf",
        12,
        "net.ipv4.tcp_fin_timeout",
        "30",
    );
    let mut dump = vec![sock(6, true, "10.0.0.1:40000", "10.0.0.5:443")];
    dump[0].expires_ms = 58_200;
    dump.push(sock(5, true, "10.0.0.1:40001", "10.0.0.6:443"));
    f.sockets = Some(SocketFacts::from_dump(
        &dump,
        f.ports.as_ref(),
        f.tw_reuse(),
    ));
    let x = findings(&f, false);
    let w = one(&x, "wrong_advice");
    assert_eq!(
        w.title,
        "net.ipv4.tcp_fin_timeout = 30 does not shorten TIME_WAIT"
    );
    assert_eq!(
        w.evidence,
        [
            "net.ipv4.tcp_fin_timeout = 30 (/proc/sys/net/ipv4/tcp_fin_timeout)",
            "/etc/sysctl.conf:12: net.ipv4.tcp_fin_timeout = 30",
            "the longest TIME_WAIT timer left now: 58.2 s, of 1 TIME_WAIT sockets (sock_diag): \
             longer than tcp_fin_timeout's 30 s",
            "orphaned FIN_WAIT2 sockets now: 1 (sock_diag)",
        ]
    );
    assert!(w.remedy.contains("TIME_WAIT lasts 60 s"), "{}", w.remedy);
    // Set in a file to the default: nothing applied.
    let mut f = base();
    setting(
        &mut f,
        "/etc/sysctl.conf",
        12,
        "net.ipv4.tcp_fin_timeout",
        "60",
    );
    assert_eq!(findings(&f, false), []);
}

#[test]
fn tw_reuse_does_nothing_for_a_server() {
    let mut f = base();
    set(&mut f, "net.ipv4.tcp_tw_reuse", Some("1"));
    let mut dump = vec![sock(10, false, "0.0.0.0:80", "0.0.0.0:0")];
    for i in 0..30u16 {
        dump.push(sock(
            6,
            true,
            "10.0.0.1:80",
            &format!("10.0.0.9:{}", 50000 + i),
        ));
    }
    dump.push(sock(6, true, "10.0.0.1:40000", "10.0.0.5:443"));
    f.sockets = Some(SocketFacts::from_dump(
        &dump,
        f.ports.as_ref(),
        f.tw_reuse(),
    ));
    let x = findings(&f, false);
    let w = one(&x, "wrong_advice");
    assert_eq!(
        w.title,
        "net.ipv4.tcp_tw_reuse = 1 does nothing for the 30 TIME_WAIT sockets of incoming \
         connections here"
    );
    assert_eq!(
        w.evidence[1],
        "TIME_WAIT now: 31, of which 30 on ports this host listens on (accepted connections it \
         closed first) (sock_diag)"
    );
    // A client host, where it helps: no correction.
    let dump: Vec<_> = (0..30u16)
        .map(|i| sock(6, true, &format!("10.0.0.1:{}", 40000 + i), "10.0.0.5:443"))
        .collect();
    f.sockets = Some(SocketFacts::from_dump(
        &dump,
        f.ports.as_ref(),
        f.tw_reuse(),
    ));
    assert_eq!(findings(&f, false), []);
}

fn churner(pid: u32, comm: &str, tw: u64, peer: PeerKey) -> ProcessRow {
    ProcessRow {
        pid,
        comm: comm.into(),
        cmdline: Some(format!("python3 /srv/{comm}.py")),
        timewait_entered: tw,
        timewait_now: tw,
        opens: tw,
        closes: tw,
        peers: vec![PeerRow {
            timewait_entered: tw,
            timewait_now: tw,
            ..PeerRow::new(peer)
        }],
        ..ProcessRow::default()
    }
}

#[test]
fn the_watch_names_churners_and_leakers() {
    let mut f = base();
    let out = |a: &str, p| PeerKey::Out {
        raddr: a.parse().expect("addr"),
        rport: p,
    };
    let snap = Snapshot {
        uptime_s: 10.0,
        processes: vec![
            // 3000/s toward one destination: 180,000 ports' worth over 60 s.
            churner(10, "loader", 30_000, out("10.0.0.5", 5432)),
            // 50/s: 3000 of 28232, info.
            churner(11, "poller", 500, out("10.0.0.6", 80)),
            // A server closing first: no ports.
            churner(
                12,
                "server",
                400,
                PeerKey::In {
                    raddr: "10.0.0.9".parse().expect("addr"),
                    lport: 8080,
                },
            ),
            churner(13, "idle", 1, out("10.0.0.7", 80)),
            // Marked a suspect by the model (CLOSE_WAIT older than --min-age).
            ProcessRow {
                pid: 14,
                comm: "leaky".into(),
                cmdline: Some("/usr/bin/leaky --serve".into()),
                close_wait_now: 40,
                close_wait_oldest_s: 120.0,
                leak_suspect: true,
                ..ProcessRow::default()
            },
        ],
        ..Snapshot::default()
    };
    f.watch = Some(Watched {
        seconds: 10.0,
        snapshot: Some(Arc::new(snap)),
        counters_before: Some(f.counters.clone()),
    });
    let x = findings(&f, false);
    assert_eq!(
        kinds(&x),
        [
            (Severity::Critical, "churn"),
            (Severity::Warning, "close_wait_leak"),
            (Severity::Info, "churn"),
            (Severity::Info, "churn"),
        ],
        "{x:#?}"
    );
    let loader = &x[0];
    assert_eq!(
        loader.title,
        "loader (pid 10) closed 30000 connections into TIME_WAIT in 10 s (3000.0/s)"
    );
    assert_eq!(loader.peer.as_deref(), Some("10.0.0.5:5432"));
    assert_eq!(
        loader.evidence,
        [
            "TIME_WAIT entered: 30000 in 10.0 s watched, 30000 alive now; opens 30000, closes 30000 (twtrace)",
            "command line: python3 /srv/loader.py",
            "top peer 10.0.0.5:5432: 30000 TIME_WAIT entered (3000.0/s)",
            "at that rate its TIME_WAIT sockets toward 10.0.0.5:5432 hold about 180000 of the 28232 usable local ports (638%, 60 s each)",
        ]
    );
    assert!(
        loader.remedy.contains("tcp_tw_reuse = 1"),
        "{}",
        loader.remedy
    );
    assert_eq!(x[1].pid, Some(14));
    assert_eq!(
        x[1].evidence.last().map(String::as_str),
        Some("command line of pid 14: /usr/bin/leaky --serve"),
        "the diagnosis's findings get the command line: {:?}",
        x[1].evidence
    );
    assert_eq!(x[2].pid, Some(11));
    let server = &x[3];
    assert_eq!(server.pid, Some(12));
    assert!(
        server.remedy.contains("accepted connections"),
        "{}",
        server.remedy
    );
}

#[test]
fn the_capped_rest_of_the_peers_is_not_named() {
    let mut f = base();
    let mut p = churner(
        20,
        "fanout",
        100,
        PeerKey::Out {
            raddr: "10.0.0.8".parse().expect("addr"),
            rport: 443,
        },
    );
    p.peers.insert(
        0,
        PeerRow {
            timewait_entered: 900,
            ..PeerRow::new(PeerKey::Other)
        },
    );
    p.timewait_entered = 1000;
    f.watch = Some(Watched {
        seconds: 10.0,
        snapshot: Some(Arc::new(Snapshot {
            uptime_s: 10.0,
            processes: vec![p],
            ..Snapshot::default()
        })),
        counters_before: None,
    });
    let x = findings(&f, false);
    let c = one(&x, "churn");
    assert_eq!(c.peer.as_deref(), Some("10.0.0.8:443"));
    assert!(
        c.evidence
            .contains(&"top peer 10.0.0.8:443: 100 TIME_WAIT entered (10.0/s)".to_owned()),
        "{:?}",
        c.evidence
    );
}

#[test]
fn a_destination_the_watch_named_is_not_named_twice() {
    use crate::{event::Comm, kernel::sysctl::PortRange, model::ports};
    let mut f = base();
    set(&mut f, "net.ipv4.tcp_tw_reuse", Some("0"));
    toward(&mut f, "10.0.0.5:5432", "10.0.0.1", 27_000, 0);
    let dest = ports::Destination {
        netns: 0,
        laddr: "10.0.0.1".parse().expect("addr"),
        raddr: "10.0.0.5".parse().expect("addr"),
        rport: 5432,
        in_use: 27_000,
        timewait: 27_000,
        share: Some(0.956),
        timewait_reusable: false,
        opens_per_s: 500.0,
        exhaustion_eta_s: Some(2.5),
        connect_failures: 0,
        range: PortRange::parse("32768 60999", ""),
        tcp_tw_reuse: Some(0),
        tcp_timestamps: Some(1),
        pids: vec![ports::PidOpens {
            pid: 10,
            comm: Comm::from("loader"),
            opens: 27_000,
        }],
        other_pids_opens: 0,
    };
    f.watch = Some(Watched {
        seconds: 10.0,
        snapshot: Some(Arc::new(Snapshot {
            uptime_s: 10.0,
            destinations: vec![dest],
            ..Snapshot::default()
        })),
        counters_before: None,
    });
    let x = findings(&f, false);
    let p = one(&x, "port_exhaustion");
    assert_eq!(
        p.pid,
        Some(10),
        "the watch's, which names the opener: {p:#?}"
    );
    // Without the watch, the one dump's.
    f.watch = None;
    let x = findings(&f, false);
    assert_eq!(one(&x, "port_exhaustion").pid, None);
}
