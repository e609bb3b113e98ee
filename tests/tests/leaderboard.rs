//! The leaderboard in JSON mode against real traffic from tcpdrive processes with known pids:
//! exact per-process counts, kernel-truth reconciliation, sockets from before the start.
//! Run as root with `cargo xtask test`; without root every test prints `SKIPPED` and passes.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use twtrace::kernel::sockdiag::dump_tcp;
use twtrace_tests::{
    DRIVER_TIMEOUT, Mode, Traffic,
    live::{Live, counter, process, timewait_entries, timewait_sockets_now, timewait_total_now},
    skip_unless_root,
};

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// Long enough for a snapshot after a reconciliation (every 2 s by default).
const SETTLE: Duration = Duration::from_millis(3500);

/// Client closes first: the client pid gets every TIME_WAIT, entered and alive now, toward the
/// server's address and port; the server gets none. The server closes as soon as it reads the
/// end, so its FIN rides on its (delayed) ACK of the client's: TIME_WAIT, no orphaned FIN_WAIT2.
#[test]
fn time_wait_per_process_and_peer() {
    const TEST: &str = "leaderboard time_wait_per_process_and_peer";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 40;
    let traffic = Traffic::new(driver(), Mode::ClientFirst, N, "tws-lb", "twc-lb");
    let (mut peers, live) = traffic.start(|port| Live::start(&["--port".into(), port.to_string()]));
    peers.wait();
    let run = live.stop_after(SETTLE);
    let last = run.last();
    eprintln!("[{TEST}] last snapshot: {last}");
    let (c, s, port) = (peers.client.pid(), peers.server.pid(), peers.port());
    assert_eq!(counter(last, c, "timewait_entered"), N as u64);
    assert_eq!(counter(last, c, "timewait_now"), N as u64);
    assert_eq!(timewait_entries(last, c), N as u64, "no FIN_WAIT2 entry");
    assert_eq!(counter(last, c, "opens"), N as u64);
    assert_eq!(counter(last, c, "closes"), N as u64);
    assert_eq!(counter(last, c, "established_now"), 0);
    assert_eq!(timewait_entries(last, s), 0);
    assert_eq!(timewait_sockets_now(last, s), 0);
    assert_eq!(counter(last, s, "opens"), N as u64, "accepted connections");
    assert_eq!(counter(last, s, "close_wait_now"), 0);
    let row = process(last, c).expect("client row");
    assert_eq!(row["comm"], "twc-lb");
    let peer = &row["peers"][0];
    assert_eq!(
        (peer["raddr"].as_str(), peer["rport"].as_u64()),
        (Some("127.0.0.1"), Some(u64::from(port)))
    );
    assert_eq!(peer["timewait_entered"], N);
    assert_eq!(peer["timewait_now"], N);
    let server_peer = &process(last, s).expect("server row")["peers"][0];
    assert_eq!(
        server_peer["lport"], port,
        "accepted connections are grouped by listening port"
    );
    // Other tests' timewait sockets may share the port number (they live 60 s); they can only
    // be in the "(before start)" row.
    let before = timewait_sockets_now(last, 0);
    assert_eq!(
        timewait_total_now(last),
        N as u64 + before,
        "the total is the rows' sum"
    );
    assert_eq!(
        last["totals"]["timewait_now"],
        N as u64 + counter(last, 0, "timewait_now"),
    );
    assert_eq!(last["lost_events"], 0);
    // The rate shows up in the snapshot that covered the traffic.
    let peak: f64 = run
        .snapshots
        .iter()
        .filter_map(|s| process(s, c)?["timewait_per_s"].as_f64())
        .fold(0.0, f64::max);
    assert!(peak > 0.0, "a snapshot saw the TIME_WAIT rate");
}

/// A client that never closes what the server closed: CLOSE_WAIT now, for the client pid, while
/// it holds the sockets, and back to 0 when it exits.
#[test]
fn close_wait_now_follows_the_leak() {
    const TEST: &str = "leaderboard close_wait_now_follows_the_leak";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 15;
    let traffic = Traffic::new(driver(), Mode::Leak, N, "tws-lbleak", "twc-lbleak").hold_ms(3000);
    let (mut peers, live) = traffic.start(|port| Live::start(&["--port".into(), port.to_string()]));
    peers.client.wait_for_stdout("holding", DRIVER_TIMEOUT);
    peers.wait();
    let run = live.stop_after(SETTLE);
    let c = peers.client.pid();
    let held = run
        .snapshots
        .iter()
        .map(|s| counter(s, c, "close_wait_now"))
        .max()
        .unwrap_or(0);
    for snap in &run.snapshots {
        eprintln!(
            "[{TEST}] {} client row: {:?}",
            snap["time"],
            process(snap, c)
        );
    }
    eprintln!("[{TEST}] most CLOSE_WAIT seen for the client: {held}");
    assert_eq!(held, N as u64, "every leaked socket counted while held");
    assert_eq!(
        counter(run.last(), c, "close_wait_now"),
        0,
        "released when the client exited"
    );
    assert_eq!(run.last()["totals"]["close_wait_now"], 0);
}

/// Sockets that existed before twtrace started: CLOSE_WAIT sockets get their owner from /proc;
/// TIME_WAIT sockets (which have no owner) are shown as "(before start)", never dropped.
#[test]
fn sockets_from_before_the_start() {
    const TEST: &str = "leaderboard sockets_from_before_the_start";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 12;
    // TIME_WAIT sockets made before twtrace starts.
    let mut tw =
        Traffic::new(driver(), Mode::ClientFirst, N, "tws-lbpre", "twc-lbpre").start_unwatched();
    tw.wait();
    // A client holding CLOSE_WAIT sockets while twtrace starts.
    let leak = Traffic::new(driver(), Mode::Leak, N, "tws-lbcw", "twc-lbcw").hold_ms(6000);
    let mut cw = leak.start_unwatched();
    cw.client.wait_for_stdout("holding", DRIVER_TIMEOUT);
    // The leak server's orphaned sockets become timewait sockets when the client's ACK of their
    // FIN arrives, which can come after "holding" (a delayed ACK): if twtrace attached first,
    // it would see those TIME_WAIT entries happen, under no known owner, and they would not be
    // "from before the start". Wait until the kernel holds none of them as full sockets.
    let leak_port = cw.port();
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    loop {
        let closing = dump_tcp()
            .expect("sock_diag dump")
            .iter()
            // Not its listener (kernel state 10), if it is still there.
            .filter(|d| d.local.port() == leak_port && !d.timewait && d.state != 10)
            .count();
        if closing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{closing} of the leak server's sockets still not timewait"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let ports = format!("{},{}", tw.port(), cw.port());
    let live = Live::start(&["--port".into(), ports]);
    let run = live.stop_after(SETTLE);
    cw.wait();
    let first = &run.snapshots[0];
    eprintln!("[{TEST}] first snapshot: {first}");
    let before = process(first, 0).expect("a (before start) row");
    assert_eq!(before["comm"], "(before start)");
    // The client-first connections left N TIME_WAIT sockets on the client side; the leak
    // server closed first and exited, so its N orphaned FIN_WAIT2 sockets became timewait sockets
    // too, in the FIN_WAIT2 substate while the client holds its side (counted in sockstat's tw
    // as well): the dump's substate splits them.
    let peers = before["peers"].as_array().expect("peers");
    let sum = |field: &str, keep: &dyn Fn(&serde_json::Value) -> bool| -> u64 {
        peers
            .iter()
            .filter(|p| keep(p))
            .map(|p| p[field].as_u64().unwrap_or(0))
            .sum()
    };
    let first_port = |p: &serde_json::Value| p["rport"] == tw.port();
    let leak_port = |p: &serde_json::Value| p["rport"] != tw.port();
    let toward_first = sum("timewait_now", &first_port);
    assert_eq!(
        toward_first, N as u64,
        "client-side TIME_WAIT toward the first server"
    );
    assert_eq!(sum("fin_wait2_now", &first_port), 0);
    let leak_side = sum("fin_wait2_now", &leak_port);
    assert!(
        leak_side >= N as u64,
        "the leak server's orphaned FIN_WAIT2 sockets: {leak_side}"
    );
    let leak_tw = sum("timewait_now", &leak_port);
    assert_eq!(
        before["timewait_now"].as_u64(),
        Some(toward_first + leak_tw)
    );
    assert_eq!(before["fin_wait2_now"].as_u64(), Some(leak_side));
    assert_eq!(
        (&before["timewait_entered"], &before["fin_wait2_entered"]),
        (&0.into(), &0.into()),
        "entered before twtrace saw them"
    );
    let c = cw.client.pid();
    assert_eq!(
        counter(first, c, "close_wait_now"),
        N as u64,
        "owner found through /proc/<pid>/fd"
    );
    assert_eq!(process(first, c).expect("client row")["comm"], "twc-lbcw");
}

/// Without filters, twtrace's timewait-now total (TIME_WAIT and orphaned FIN_WAIT2, owned plus
/// before start) matches the kernel's own count in /proc/net/sockstat (`tw`, which counts both):
/// while the churn generator runs flat out, and afterwards.
#[test]
fn time_wait_total_matches_sockstat() {
    const TEST: &str = "leaderboard time_wait_total_matches_sockstat";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 300;
    let traffic = Traffic::new(driver(), Mode::ServerFirst, N, "tws-lbsum", "twc-lbsum");
    let (mut peers, live) = traffic.start(|_| Live::start(&[]));
    peers.wait();
    // Churn at the machine's limit for a few seconds (bounded: it stops by itself).
    let churn = std::process::Command::new(env!("CARGO_BIN_EXE_churn"))
        .args(["--duration", "6"])
        .output()
        .expect("run churn");
    assert!(churn.status.success(), "churn failed: {churn:?}");
    eprintln!("[{TEST}] {}", String::from_utf8_lossy(&churn.stdout).trim());
    let run = live.stop_after(SETTLE);
    let mut checked = 0;
    for snap in &run.snapshots {
        let ours = timewait_total_now(snap);
        let kernel = snap["totals"]["timewait_kernel"]
            .as_u64()
            .expect("timewait_kernel");
        let uptime = snap["uptime_s"].as_f64().unwrap_or(0.0);
        eprintln!("[{TEST}] uptime {uptime:.1} s: twtrace {ours} vs sockstat {kernel}");
        // The first reconciliation after the start of the churn settles the model; from then
        // on every snapshot must be within 1% of the kernel's count.
        if uptime >= 4.5 {
            checked += 1;
            assert!(
                ours.abs_diff(kernel) <= kernel / 100,
                "twtrace {ours} vs kernel {kernel} at {uptime:.1} s: more than 1% apart"
            );
        }
    }
    assert!(checked >= 3, "only {checked} snapshots were compared");
    let last = run.last();
    let server = peers.server.pid();
    assert_eq!(counter(last, server, "timewait_entered"), N as u64);
    assert_eq!(counter(last, server, "timewait_now"), N as u64);
    assert_eq!(
        timewait_entries(last, server),
        N as u64,
        "no FIN_WAIT2 entry"
    );
}
