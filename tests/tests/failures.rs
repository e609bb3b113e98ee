//! Failed connect() and bind() calls, counted from the kernel: a client that runs out of
//! ephemeral ports (a namespace whose `ip_local_port_range` holds 10 ports, `tcp_tw_reuse` off,
//! the client closing first so its TIME_WAIT sockets keep the ports) and keeps connecting until
//! connect() has failed with EADDRNOTAVAIL a known number of times; and a process whose bind()
//! calls fail with EADDRINUSE and EADDRNOTAVAIL. The truth is what the processes themselves
//! saw and printed; the leaderboard's per-pid counts and the trace's failure lines must equal it
//! exactly.
//! Run as root with `cargo xtask test`; without root every test prints `SKIPPED` and passes.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use twtrace_tests::{
    ChildGuard, DRIVER_TIMEOUT, Event, Twtrace,
    live::{Live, counter, process},
    netns::Netns,
    record::{Recording, TempDir, twtrace_output},
    skip_unless_root,
};

/// Long enough for a snapshot after the last failure.
const SETTLE: Duration = Duration::from_millis(2500);

fn portfail() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portfail"))
}

/// `sysctl -w NAME=VALUE` inside `ns` (these two are per namespace).
fn sysctl(ns: &Netns, name: &str, value: &str) {
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sysctl", "-qw"])
        .arg(format!("{name}={value}"))
        .status()
        .expect("ip netns exec sysctl");
    assert!(status.success(), "sysctl {name}={value} in {}", ns.name);
}

/// Runs `portfail` inside `ns` to its end; returns its pid and the value of each `word N` line.
fn run_to_end(ns: &Netns, args: &[&str], comm: &str) -> (u32, Vec<(String, u64)>) {
    let mut cmd = ns.command(portfail());
    cmd.args(args).args(["--comm", comm]).stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(comm, &mut cmd);
    let stdout = guard.child_mut().stdout.take().expect("piped stdout");
    guard.wait_success(DRIVER_TIMEOUT);
    let said = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let (word, n) = l.split_once(' ')?;
            Some((word.to_owned(), n.parse().ok()?))
        })
        .collect();
    (guard.pid(), said)
}

fn said(lines: &[(String, u64)], word: &str) -> u64 {
    lines
        .iter()
        .find(|(w, _)| w == word)
        .map(|&(_, n)| n)
        .unwrap_or_else(|| panic!("no `{word} N` line in {lines:?}"))
}

/// The failure lines of `pid` in a trace, as (call, errno) with the event.
fn failures_of(events: &[Event], pid: u32) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| e.pid == pid && e.failure.is_some())
        .collect()
}

fn failure_count(row: &Value, call: &str, errno: &str) -> u64 {
    row["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["call"] == call && f["errno"] == errno)
        .filter_map(|f| f["count"].as_u64())
        .sum()
}

/// A client out of ephemeral ports: every EADDRNOTAVAIL it saw is one failure line in the trace
/// (its pid, the server's address and port, the namespace) and one in the leaderboard's
/// `connect_failures`, per process, per peer and in total.
#[test]
fn connect_failures_equal_what_the_client_saw() {
    const TEST: &str = "failures connect_failures_equal_what_the_client_saw";
    if skip_unless_root(TEST) {
        return;
    }
    const FAILURES: u64 = 25;
    let ns = Netns::new("ports");
    sysctl(&ns, "net.ipv4.ip_local_port_range", "40000 40009");
    sysctl(&ns, "net.ipv4.tcp_tw_reuse", "0");
    let netns = format!("/run/netns/{}", ns.name);
    let trace = Twtrace::start(&["--netns".into(), netns.clone()]);
    let live = Live::start(&["--netns".into(), netns.clone()]);
    let dir = TempDir::new("failures");
    let file = dir.join("ports.twr");
    let recording = Recording::start(&file, &["--netns".into(), netns]);

    let mut cmd = ns.command(portfail());
    // A port outside the client's range, so all 10 are the client's.
    cmd.args(["serve", "--bind", "127.0.0.1:8080", "--comm", "twf-srv"])
        .stdout(Stdio::piped());
    let mut server = ChildGuard::spawn("twf-srv", &mut cmd);
    let mut lines = BufReader::new(server.child_mut().stdout.take().expect("piped stdout")).lines();
    let port: u16 = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.strip_prefix("port ")?.parse().ok())
        .expect("`port P` from the server");

    let (client, said_lines) = run_to_end(
        &ns,
        &[
            "exhaust",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--failures",
            &FAILURES.to_string(),
        ],
        "twf-client",
    );
    let seen = said(&said_lines, "eaddrnotavail");
    let connected = said(&said_lines, "connected");
    eprintln!("[{TEST}] client {client}: {connected} connected, {seen} EADDRNOTAVAIL");
    assert_eq!(seen, FAILURES);
    assert_eq!(
        connected, 10,
        "10 ports: 10 connections before they ran out"
    );

    thread::sleep(Duration::from_millis(300));
    let t = trace.stop();
    t.summary();
    let run = live.stop_after(SETTLE);
    let last = run.last();
    eprintln!("[{TEST}] last snapshot: {last}");

    // The trace: one line per failure, naming the client, the destination and the namespace.
    let lines = failures_of(&t.events, client);
    for e in lines.iter().take(3) {
        eprintln!("[{TEST}] {}", e.raw);
    }
    assert_eq!(lines.len() as u64, seen, "failure lines of the client");
    for e in &lines {
        let f = e.failure.as_ref().expect("a failure");
        assert_eq!(
            (f.call.as_str(), f.errno.as_str()),
            ("connect", "EADDRNOTAVAIL"),
            "{}",
            e.raw
        );
        assert_eq!(
            (e.raddr.as_str(), e.rport),
            ("127.0.0.1", port),
            "{}",
            e.raw
        );
        assert_eq!(e.netns, ns.id(), "{}", e.raw);
        assert_eq!(e.comm, "twf-client", "{}", e.raw);
    }
    assert!(
        failures_of(&t.events, server.pid()).is_empty(),
        "the server failed nothing"
    );
    let all = t.events.iter().filter(|e| e.failure.is_some()).count() as u64;
    assert_eq!(all, seen, "no other failure in the namespace");

    // The leaderboard: per process, per peer, in total.
    assert_eq!(counter(last, client, "connect_failures"), seen);
    assert_eq!(counter(last, client, "bind_failures"), 0);
    let row = process(last, client).expect("the client's row");
    assert_eq!(failure_count(row, "connect", "EADDRNOTAVAIL"), seen);
    let peer = row["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["raddr"] == "127.0.0.1" && p["rport"] == port)
        .unwrap_or_else(|| panic!("no peer 127.0.0.1:{port} in {row}"));
    assert_eq!(peer["connect_failures"], seen);
    assert_eq!(last["totals"]["connect_failures"], seen);
    assert_eq!(last["totals"]["bind_failures"], 0);
    assert_eq!(counter(last, server.pid(), "connect_failures"), 0);
    assert_eq!(last["lost_events"], 0);
    // The port pool toward the server (`twtrace ports`' view): all 10 ports held, every failure
    // counted on it.
    let dest = last["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["raddr"] == "127.0.0.1" && d["rport"] == port)
        .unwrap_or_else(|| panic!("no destination 127.0.0.1:{port} in {last}"));
    assert_eq!(dest["connect_failures"], seen, "{dest}");
    assert_eq!(dest["in_use"], 10, "{dest}");
    assert_eq!(dest["share"], 1.0, "{dest}");

    // The recording carries them: its report and its replayed trace count the same.
    let recorded = recording.stop(libc::SIGINT);
    assert!(recorded.status.success(), "{:?}", recorded.stderr);
    let path = file.to_str().expect("utf-8 path");
    let report = twtrace_output(&["report", path, "--json"], false);
    assert!(report.status.success());
    let report: Value = serde_json::from_slice(&report.stdout).expect("report JSON");
    assert_eq!(
        counter(&report, client, "connect_failures"),
        seen,
        "{report}"
    );
    assert_eq!(report["totals"]["connect_failures"], seen);
    let replay = twtrace_output(&["trace", "--from", path, "--json"], false);
    assert!(replay.status.success());
    let replayed: Vec<Event> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        failures_of(&replayed, client).len() as u64,
        seen,
        "replayed"
    );
}

/// bind() to a taken TCP address (EADDRINUSE) and to one no host has (EADDRNOTAVAIL): each is
/// one failure, of the process that called it; a UDP bind failing the same way is not TCP and
/// not counted.
#[test]
fn bind_failures_equal_what_the_process_saw() {
    const TEST: &str = "failures bind_failures_equal_what_the_process_saw";
    if skip_unless_root(TEST) {
        return;
    }
    const IN_USE: u64 = 7;
    const NOT_LOCAL: u64 = 3;
    const IN_USE_V6: u64 = 4;
    let ns = Netns::new("bind");
    let netns = format!("/run/netns/{}", ns.name);
    let trace = Twtrace::start(&["--netns".into(), netns.clone()]);
    let live = Live::start(&["--netns".into(), netns]);
    let (pid, said_lines) = run_to_end(
        &ns,
        &[
            "bind",
            "--in-use",
            &IN_USE.to_string(),
            "--not-local",
            &NOT_LOCAL.to_string(),
            "--in-use-v6",
            &IN_USE_V6.to_string(),
        ],
        "twf-binder",
    );
    let in_use_v4 = said(&said_lines, "eaddrinuse");
    let not_local = said(&said_lines, "eaddrnotavail");
    let in_use_v6 = said(&said_lines, "eaddrinuse_v6");
    assert_eq!(
        (in_use_v4, not_local, in_use_v6),
        (IN_USE, NOT_LOCAL, IN_USE_V6)
    );
    let in_use = in_use_v4 + in_use_v6;

    thread::sleep(Duration::from_millis(300));
    let t = trace.stop();
    t.summary();
    let run = live.stop_after(SETTLE);
    let last = run.last();
    eprintln!("[{TEST}] last snapshot: {last}");

    let lines = failures_of(&t.events, pid);
    for e in &lines {
        eprintln!("[{TEST}] {}", e.raw);
    }
    let with = |errno: &str| {
        lines
            .iter()
            .filter(|e| {
                e.failure
                    .as_ref()
                    .is_some_and(|f| f.call == "bind" && f.errno == errno)
            })
            .count() as u64
    };
    assert_eq!(with("EADDRINUSE"), in_use);
    assert_eq!(with("EADDRNOTAVAIL"), not_local);
    assert_eq!(
        lines.len() as u64,
        in_use + not_local,
        "nothing else (the UDP bind)"
    );
    let in_use_lines: Vec<&&Event> = lines
        .iter()
        .filter(|e| e.failure.as_ref().is_some_and(|f| f.errno == "EADDRINUSE"))
        .collect();
    let v4 = in_use_lines
        .iter()
        .filter(|e| e.laddr == "127.0.0.1" && e.family == "ipv4")
        .count() as u64;
    let v6 = in_use_lines
        .iter()
        .filter(|e| e.laddr == "::1" && e.family == "ipv6")
        .count() as u64;
    assert_eq!((v4, v6), (in_use_v4, in_use_v6), "{in_use_lines:#?}");
    assert!(in_use_lines.iter().all(|e| e.lport != 0 && e.rport == 0));
    for e in lines.iter().filter(|e| {
        e.failure
            .as_ref()
            .is_some_and(|f| f.errno == "EADDRNOTAVAIL")
    }) {
        assert_eq!((e.laddr.as_str(), e.lport), ("192.0.2.1", 0), "{}", e.raw);
    }
    assert!(lines.iter().all(|e| e.netns == ns.id()));

    assert_eq!(counter(last, pid, "bind_failures"), in_use + not_local);
    assert_eq!(counter(last, pid, "connect_failures"), 0);
    let row = process(last, pid).expect("the binder's row: failures alone make one");
    assert_eq!(row["comm"], "twf-binder");
    assert_eq!(failure_count(row, "bind", "EADDRINUSE"), in_use);
    assert_eq!(failure_count(row, "bind", "EADDRNOTAVAIL"), not_local);
    assert_eq!(last["totals"]["bind_failures"], in_use + not_local);
}

/// `--no-syscall-hooks` (and its old name) attach no syscall tracepoint: no failure is seen.
#[test]
fn without_syscall_hooks_no_failure_is_counted() {
    const TEST: &str = "failures without_syscall_hooks_no_failure_is_counted";
    if skip_unless_root(TEST) {
        return;
    }
    let ns = Netns::new("nohooks");
    let netns = format!("/run/netns/{}", ns.name);
    let trace = Twtrace::start(&["--netns".into(), netns.clone(), "--no-accept".into()]);
    let (pid, said_lines) = run_to_end(
        &ns,
        &["bind", "--in-use", "2", "--not-local", "1"],
        "twf-nohooks",
    );
    assert_eq!(said(&said_lines, "eaddrinuse"), 2);
    thread::sleep(Duration::from_millis(300));
    let t = trace.stop();
    t.summary();
    assert!(
        failures_of(&t.events, pid).is_empty(),
        "{TEST}: failures seen with the syscall hooks off"
    );
}
