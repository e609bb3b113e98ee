//! Vocabulary that matches `ss` (issue 12): a server that closes connections its clients have
//! not closed leaves timewait sockets in the FIN_WAIT2 substate (`ss`: FIN-WAIT-2 with a
//! timewait timer), not TIME_WAIT. twtrace reports them as orphaned FIN_WAIT2, in the trace
//! and in their own gauges, and still adds up to sockstat's `tw`, which counts both.
//! Everything runs in a network namespace of its own, so that namespace's sockstat is the
//! ground truth. Run as root with `cargo xtask test`; without root the test prints `SKIPPED`
//! and passes.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use twtrace_tests::{
    ChildGuard, DRIVER_TIMEOUT, Twtrace,
    live::{Live, counter, timewait_total_now},
    netns::Netns,
    parse_summary, select, skip_unless_root,
};

/// Connections the server closes while the client keeps them.
const N: usize = 20;
/// Long enough for a snapshot after a reconciliation (every 2 s by default).
const SETTLE: Duration = Duration::from_millis(3500);
/// How long the client keeps the closed connections open: past the first phase's checks.
const HOLD: Duration = Duration::from_secs(12);

fn tcpdrive() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// The child's stdout lines, read in the background.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("waiting for a `{prefix}` line: {e}"),
        }
    }
}

/// Waits until the namespace's sockstat counts `want` timewait sockets.
fn wait_tw(ns: &Netns, want: u64) {
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    loop {
        let tw = ns.sockstat_tw();
        if tw == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "namespace sockstat tw {tw}, want {want}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The snapshots printed between `from` and `to` for sure: one printed at uptime `u` was
/// printed between `started.0 + u` and `started.1 + u` (twtrace started in that span).
fn between(
    snapshots: &[Value],
    started: (Instant, Instant),
    from: Instant,
    to: Instant,
) -> Vec<&Value> {
    snapshots
        .iter()
        .filter(|s| {
            let up = Duration::from_secs_f64(s["uptime_s"].as_f64().unwrap_or(0.0));
            started.0 + up >= from && started.1 + up <= to
        })
        .collect()
}

/// (timewait_entered, timewait_now, fin_wait2_entered, fin_wait2_now) of `pid`'s row.
fn counts(snapshot: &Value, pid: u32) -> (u64, u64, u64, u64) {
    (
        counter(snapshot, pid, "timewait_entered"),
        counter(snapshot, pid, "timewait_now"),
        counter(snapshot, pid, "fin_wait2_entered"),
        counter(snapshot, pid, "fin_wait2_now"),
    )
}

fn totals(snapshot: &Value, field: &str) -> u64 {
    snapshot["totals"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("totals.{field} in {snapshot}"))
}

/// The server writes a byte and closes each connection; the client reads to the end but keeps
/// every socket open for a while (in CLOSE_WAIT), then exits. When the client's ACK of the
/// server's FIN arrives, each server socket, orphaned, becomes a timewait socket in the
/// FIN_WAIT2 substate: N orphaned FIN_WAIT2 entries for the server, no TIME_WAIT. When the
/// client closes, its FIN turns each one into TIME_WAIT (no event: the reconcile sees it), and
/// nothing is counted twice. Throughout, TIME_WAIT now plus FIN_WAIT2 now equals the
/// namespace's sockstat `tw`.
#[test]
fn a_server_closing_idle_clients_makes_orphaned_fin_wait2_not_time_wait() {
    const TEST: &str =
        "vocabulary a_server_closing_idle_clients_makes_orphaned_fin_wait2_not_time_wait";
    if skip_unless_root(TEST) {
        return;
    }
    let ns = Netns::new("vocab");
    let only_ns = ["--netns".to_owned(), format!("/run/netns/{}", ns.name)];
    let trace = Twtrace::start(&only_ns);
    let before_start = Instant::now();
    let live = Live::start(&only_ns);
    let started = (before_start, Instant::now());

    let mut cmd = ns.command(tcpdrive());
    cmd.args([
        "server",
        "--bind",
        "127.0.0.1:0",
        "--count",
        &N.to_string(),
        "--mode",
        "leak",
        "--comm",
        "twv-srv",
    ])
    .stdout(Stdio::piped());
    let mut server = ChildGuard::spawn("twv-srv", &mut cmd);
    let server_out = stdout_lines(server.child_mut());
    let port: u16 = wait_line(&server_out, "port ")
        .trim_start_matches("port ")
        .parse()
        .expect("port number");
    let mut cmd = ns.command(tcpdrive());
    cmd.args([
        "client",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--count",
        &N.to_string(),
        "--mode",
        "leak",
        "--hold-ms",
        &HOLD.as_millis().to_string(),
        "--comm",
        "twv-cl",
    ])
    .stdout(Stdio::piped());
    let mut client = ChildGuard::spawn("twv-cl", &mut cmd);
    let client_out = stdout_lines(client.child_mut());
    wait_line(&client_out, "holding");
    server.wait_success(DRIVER_TIMEOUT);
    // The server's sockets become timewait sockets when the client's (delayed) ACK arrives.
    wait_tw(&ns, N as u64);
    let holding_from = Instant::now();
    thread::sleep(SETTLE);
    let tw_holding = ns.sockstat_tw();
    let holding_to = Instant::now();
    client.wait_success(DRIVER_TIMEOUT);
    let closed_at = Instant::now();
    thread::sleep(SETTLE);
    let tw_closed = ns.sockstat_tw();
    let run = live.stop_after(Duration::ZERO);
    let t = trace.stop();
    let (s, c) = (server.pid(), client.pid());
    eprintln!(
        "[{TEST}] server {s}, client {c}, port {port}; sockstat tw {tw_holding} while the client held its sockets, {tw_closed} after it closed them"
    );
    for snap in &run.snapshots {
        eprintln!(
            "[{TEST}] uptime {:.1}: server {:?} client {:?} totals {}",
            snap["uptime_s"].as_f64().unwrap_or(0.0),
            counts(snap, s),
            counts(snap, c),
            snap["totals"]
        );
    }
    assert_eq!(tw_holding, N as u64, "the kernel's count while held");
    assert_eq!(
        tw_closed, N as u64,
        "the kernel's count after the client closed"
    );

    // While the client holds its side: orphaned FIN_WAIT2, no TIME_WAIT, for the server.
    let holding = between(
        &run.snapshots,
        started,
        holding_from + Duration::from_millis(500),
        holding_to,
    );
    assert!(
        holding.len() >= 2,
        "{} snapshots while the client held its sockets",
        holding.len()
    );
    for snap in &holding {
        assert_eq!(
            counts(snap, s),
            (0, 0, N as u64, N as u64),
            "server: {snap}"
        );
        assert_eq!(counts(snap, c), (0, 0, 0, 0), "client: {snap}");
        assert_eq!(counter(snap, c, "close_wait_now"), N as u64);
        assert_eq!(
            (
                totals(snap, "timewait_entered"),
                totals(snap, "fin_wait2_entered")
            ),
            (0, N as u64)
        );
        assert_eq!(
            timewait_total_now(snap),
            tw_holding,
            "TIME_WAIT + FIN_WAIT2 now vs tw"
        );
        assert_eq!(snap["totals"]["timewait_kernel"].as_u64(), Some(tw_holding));
    }

    // After the client closed: the FIN made each one TIME_WAIT (the reconcile moved the
    // gauges); the entries stay as they were made, counted once.
    let after = between(
        &run.snapshots,
        started,
        closed_at + SETTLE - Duration::from_millis(900),
        Instant::now(),
    );
    assert!(!after.is_empty(), "no snapshot after the client closed");
    let last = run.last();
    for snap in after.iter().copied().chain([last]) {
        assert_eq!(
            counts(snap, s),
            (0, N as u64, N as u64, 0),
            "server: {snap}"
        );
        assert_eq!(counts(snap, c), (0, 0, 0, 0), "client: {snap}");
        assert_eq!(counter(snap, c, "close_wait_now"), 0);
        assert_eq!(
            totals(snap, "timewait_entered") + totals(snap, "fin_wait2_entered"),
            N as u64,
            "one entry per connection: {snap}"
        );
        assert_eq!(
            timewait_total_now(snap),
            tw_closed,
            "TIME_WAIT + FIN_WAIT2 now vs tw"
        );
        assert_eq!(snap["totals"]["timewait_kernel"].as_u64(), Some(tw_closed));
    }
    // Nothing lost to the ring buffer. Events the kernel skips (a softirq arriving while
    // another BPF program runs on that CPU: other tracers on a shared machine) count as lost
    // whatever their namespace, so the summary must show each lost event as such a skip; one of
    // ours skipped would have made a count above wrong.
    let board = run
        .stderr
        .iter()
        .find_map(|l| parse_summary(l))
        .unwrap_or_else(|| panic!("no summary line: {:#?}", run.stderr));
    eprintln!(
        "[{TEST}] leaderboard: {} lost, {} of them skipped by the kernel",
        board.lost, board.skipped
    );
    assert_eq!(board.lost, board.skipped, "events lost to the ring buffer");
    assert!(
        run.snapshots
            .iter()
            .all(|snap| counter(snap, 0, "timewait_now") + counter(snap, 0, "fin_wait2_now") == 0),
        "nothing shown as from before the start"
    );

    // The trace says the same, transition by transition.
    let summary = t.summary();
    assert_eq!(
        summary.lost, summary.skipped,
        "trace: events lost to the ring buffer"
    );
    let events = t.on_port(port);
    let server_side = select(&events, |e| {
        e.lport == port && !e.accept && e.old != "LISTEN"
    });
    let orphans = select(&server_side, |e| e.orphan);
    for e in &orphans {
        eprintln!("[{TEST}] {}", e.raw);
    }
    assert_eq!(orphans.len(), N, "server-side orphaned FIN_WAIT2 entries");
    assert!(
        orphans.iter().all(|e| e.old == "FIN_WAIT2"
            && e.new == "FIN_WAIT2"
            && e.pid == s
            && e.comm == "twv-srv"
            && e.attribution == "owner"
            && e.contract_violations().is_empty()),
        "orphaned entries: FIN_WAIT2 -> FIN_WAIT2, the server's own"
    );
    assert_eq!(
        select(&events, |e| e.new == "TIME_WAIT").len(),
        0,
        "no TIME_WAIT entry on the port"
    );
    let client_side = select(&events, |e| e.lport != port);
    assert_eq!(
        select(&client_side, |e| e.transition() == "LAST_ACK->CLOSE"
            && e.pid == c)
        .len(),
        N,
        "the client's closes"
    );
}
