//! Recordings against real traffic from tcpdrive processes with known pids: `twtrace record`
//! while the live leaderboard watches the same traffic, then `twtrace report` as an unprivileged
//! user must agree with it; a recorder killed with SIGKILL or stopped by a full disk leaves a
//! readable file. Run as root with `cargo xtask test`; without root those tests print `SKIPPED`.
//! The damaged-file tests need no root.

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use serde_json::Value;
use twtrace_tests::{
    Mode, Peers, Traffic,
    live::{Live, counter, process},
    record::{Recorded, Recording, TempDir, twtrace_output},
    skip_unless_root,
};

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// `n` client-first connections over 127.0.0.1 between a server and a client with these comms.
fn traffic(n: usize, server_comm: &'static str, client_comm: &'static str) -> Traffic<'static> {
    Traffic::new(driver(), Mode::ClientFirst, n, server_comm, client_comm)
}

/// `--port PORT` followed by `more`.
fn port_and(port: u16, more: &[&str]) -> Vec<String> {
    let mut args = vec!["--port".to_owned(), port.to_string()];
    args.extend(more.iter().map(|&a| a.to_owned()));
    args
}

/// A recording of client-first traffic that ends before the traffic or by itself.
struct Cut {
    n: usize,
    server_comm: &'static str,
    client_comm: &'static str,
    /// Recorder arguments after `--port PORT`.
    args: &'static [&'static str],
    stop: Stop,
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL this long after the client started, while it still makes connections.
    KillAfter(Duration),
    /// The recorder stops by itself during the traffic; waited for once the traffic ends.
    ByItself,
}

/// SIGKILL while connections are being made.
const KILLED: Cut = Cut {
    n: 50000,
    server_comm: "tws-kill",
    client_comm: "twc-kill",
    args: &[],
    stop: Stop::KillAfter(Duration::from_millis(1500)),
};
/// On a 256 KiB tmpfs.
const FULL_DISK: Cut = Cut {
    n: 5000,
    server_comm: "tws-full",
    client_comm: "twc-full",
    args: &[],
    stop: Stop::ByItself,
};
/// With a size limit.
const MAX_SIZE: Cut = Cut {
    n: 3000,
    server_comm: "tws-max",
    client_comm: "twc-max",
    args: &["--max-size", "128K", "--duration", "1m"],
    stop: Stop::ByItself,
};

/// What [`cut`] leaves for a test to check.
struct CutRun {
    peers: Peers,
    recorded: Recorded,
    /// `twtrace report FILE --json`, as root; it exited 0.
    report: std::process::Output,
}

/// Records `case`'s traffic to `file`, stops as it says (both peers must exit 0), then reports
/// on the file.
fn cut(case: &Cut, file: &Path) -> CutRun {
    let traffic = traffic(case.n, case.server_comm, case.client_comm);
    let (mut peers, recording) =
        traffic.start(|port| Recording::start(file, &port_and(port, case.args)));
    let recorded = match case.stop {
        Stop::KillAfter(after) => {
            std::thread::sleep(after);
            let recorded = recording.stop(libc::SIGKILL);
            peers.wait();
            recorded
        }
        Stop::ByItself => {
            peers.wait();
            recording.stop(0)
        }
    };
    let path = file.to_str().expect("utf-8 path");
    let report = twtrace_output(&["report", path, "--json"], false);
    assert!(
        report.status.success(),
        "a cut recording is still a report: {}",
        String::from_utf8_lossy(&report.stderr)
    );
    CutRun {
        peers,
        recorded,
        report,
    }
}

/// Long enough for a snapshot after a reconciliation (every 2 s).
const SETTLE: Duration = Duration::from_millis(3500);

/// Makes `path` readable by uid 65534 (a recording is created 0600 for root).
fn give_to_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).expect("chown");
}

fn json_of(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Client closes first, N connections: the report of the recording (read by uid 65534) gives
/// the client pid exactly N TIME_WAIT entries and the server none, as the live leaderboard
/// watching the same traffic does; `trace --from` prints the same N TIME_WAIT transitions.
#[test]
fn report_of_a_recording_equals_the_live_leaderboard() {
    const TEST: &str = "record report_of_a_recording_equals_the_live_leaderboard";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 40;
    let dir = TempDir::new("record-rt");
    let file = dir.join("rt.twr");
    let (mut peers, (recording, live)) = traffic(N, "tws-rec", "twc-rec").start(|port| {
        let args = port_and(port, &[]);
        (Recording::start(&file, &args), Live::start(&args))
    });
    peers.wait();
    let run = live.stop_after(SETTLE);
    let recorded = recording.stop(libc::SIGINT);
    assert!(recorded.status.success(), "{:?}", recorded.stderr);
    assert!(
        recorded
            .stderr
            .iter()
            .any(|l| l.starts_with("twtrace: ") && l.ends_with(" lost, 0 unattributed")),
        "summary line: {:?}",
        recorded.stderr
    );
    let mode = std::fs::metadata(&file).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "created 0600");

    give_to_nobody(&file);
    let path = file.to_str().expect("utf-8 path");
    let out = twtrace_output(&["report", path, "--json"], true);
    assert!(out.status.success(), "report as uid 65534 failed");
    let report = json_of(&out);
    let (c, s) = (peers.client.pid(), peers.server.pid());
    let live_last = run.last();
    eprintln!("[{TEST}] live: {live_last}");
    eprintln!("[{TEST}] report: {report}");
    assert_eq!(counter(&report, c, "timewait_entered"), N as u64);
    assert_eq!(counter(&report, s, "timewait_entered"), 0);
    assert_eq!(counter(&report, c, "opens"), N as u64);
    assert_eq!(counter(&report, s, "opens"), N as u64);
    for pid in [c, s] {
        for field in [
            "timewait_entered",
            "opens",
            "closes",
            "resets",
            "close_wait_now",
        ] {
            assert_eq!(
                counter(&report, pid, field),
                counter(live_last, pid, field),
                "{field} of pid {pid}: report vs live"
            );
        }
    }
    assert_eq!(
        process(&report, c).map(|p| p["comm"].clone()),
        Some(Value::from("twc-rec"))
    );
    let host = &report["host"];
    assert!(host["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(host["sysctls"]["net.ipv4.tcp_tw_reuse"].is_string());
    assert_eq!(host["filters"]["ports"][0], peers.port());
    assert!(host["problems"].as_array().is_some_and(Vec::is_empty));
    let timeline = report["timeline"].as_array().expect("timeline");
    assert!(timeline.len() >= 3, "one point per recorded second");
    let peak = timeline
        .iter()
        .filter_map(|p| p["timewait_per_s"].as_f64())
        .fold(0.0, f64::max);
    assert!(peak > 0.0, "the timeline saw the TIME_WAIT rate");

    // The text report and the recorded events, also without privileges.
    let text = twtrace_output(&["report", path], true);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Top processes by TIME_WAIT entered"),
        "{text}"
    );
    assert!(text.contains("twc-rec"), "{text}");
    let events = twtrace_output(&["trace", "--from", path, "--json"], true);
    assert!(events.status.success());
    let tw = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .filter(|e| e["new"] == "TIME_WAIT")
        .map(|e| e["pid"].as_u64().unwrap_or(0))
        .collect::<Vec<_>>();
    assert_eq!(tw.len(), N);
    assert!(tw.iter().all(|&p| p == u64::from(c)));
    let export = twtrace_output(&["report", path, "--export", "jsonl"], true);
    assert_eq!(
        export.stdout, events.stdout,
        "--export jsonl is trace --json"
    );

    // Narrowed: one process; a time window before the traffic; one after the end.
    let only = json_of(&twtrace_output(
        &["report", path, "--json", "--pid", &c.to_string()],
        true,
    ));
    let pids: Vec<u64> = only["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert_eq!(pids, vec![u64::from(c)]);
    assert_eq!(counter(&only, c, "timewait_entered"), N as u64);
    for window in [["--until", "0s"], ["--since", "1h"]] {
        let mut args = vec!["report", path, "--json"];
        args.extend(window);
        let empty = json_of(&twtrace_output(&args, true));
        assert_eq!(empty["host"]["events"], 0, "{window:?}");
        assert_eq!(empty["totals"]["timewait_entered"], 0, "{window:?}");
    }

    // Replayed into the leaderboard, as fast as possible: its last snapshot is the report's.
    let replayed = twtrace_output(&["--from", path, "--speed", "0", "--json"], true);
    assert!(replayed.status.success());
    let snapshots: Vec<Value> = String::from_utf8_lossy(&replayed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json snapshot"))
        .collect();
    let last = snapshots.last().expect("snapshots");
    assert_eq!(snapshots.len(), timeline.len(), "one per recorded second");
    for pid in [c, s] {
        for field in ["timewait_entered", "timewait_now", "opens", "closes"] {
            assert_eq!(
                counter(last, pid, field),
                counter(&report, pid, field),
                "{field} of pid {pid}: replay vs report"
            );
        }
    }
}

/// The flight recorder keeps the last 30 s in memory; 60 client-first connections push
/// TIME_WAIT-now past 40, the trigger fires, and the capture written 2 s later holds every
/// connection, including the 41+ made before the trigger.
#[test]
fn the_flight_recorder_captures_what_came_before_its_trigger() {
    const TEST: &str = "record the_flight_recorder_captures_what_came_before_its_trigger";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 60;
    let dir = TempDir::new("record-ring");
    let captures = dir.join("captures");
    let (mut peers, mut recording) = traffic(N, "tws-ring", "twc-ring").start(|port| {
        let ring = [
            "--ring",
            "30s",
            "--trigger",
            "timewait_now>40",
            "--after",
            "2s",
        ];
        Recording::start(&captures, &port_and(port, &ring))
    });
    peers.wait();
    let fired = recording.wait_for_stderr("twtrace: trigger timewait_now>40 fired", SETTLE);
    let wrote = recording.wait_for_stderr("twtrace: wrote ", Duration::from_secs(10));
    eprintln!("[{TEST}] {fired}\n[{TEST}] {wrote}");
    // SIGUSR1 asks for a capture by hand; it goes to a second file.
    recording.guard.signal(libc::SIGUSR1);
    recording.wait_for_stderr("twtrace: SIGUSR1: capturing", Duration::from_secs(10));
    let by_hand = recording.wait_for_stderr("twtrace: wrote ", Duration::from_secs(10));
    let recorded = recording.stop(libc::SIGINT);
    assert!(recorded.status.success());
    let mut files: Vec<_> = std::fs::read_dir(&captures)
        .expect("captures")
        .map(|e| e.expect("entry").path())
        .filter(|p| !by_hand.contains(p.to_str().unwrap_or("")))
        .collect();
    files.sort();
    assert_eq!(files.len(), 1, "one triggered capture: {files:?}");
    let path = files[0].to_str().expect("utf-8");
    assert!(wrote.contains(path), "{wrote}");
    let name = files[0].file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(
        name.starts_with("twtrace-") && name.ends_with(".twr"),
        "{name}"
    );

    let out = twtrace_output(&["report", path, "--json"], false);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "a clean capture");
    let report = json_of(&out);
    assert_eq!(
        counter(&report, peers.client.pid(), "timewait_entered"),
        N as u64
    );
    assert_eq!(counter(&report, peers.server.pid(), "timewait_entered"), 0);
    assert!(
        report["host"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("timewait_now>40")),
        "{}",
        report["host"]
    );
}

/// SIGKILL while connections are being made: the report reads everything written before the
/// kill (the chunks of every full second) and says the recording was cut short; exit 0.
#[test]
fn a_killed_recording_is_read_up_to_its_last_chunk() {
    const TEST: &str = "record a_killed_recording_is_read_up_to_its_last_chunk";
    if skip_unless_root(TEST) {
        return;
    }
    let dir = TempDir::new("record-kill");
    let CutRun {
        peers,
        recorded,
        report: out,
    } = cut(&KILLED, &dir.join("killed.twr"));
    assert!(!recorded.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no end mark") || stderr.contains("cut short"),
        "the cut is reported: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one warning, nothing else: {stderr}"
    );
    let report = json_of(&out);
    let events = report["host"]["events"].as_u64().unwrap_or(0);
    let tw = counter(&report, peers.client.pid(), "timewait_entered");
    eprintln!("[{TEST}] {events} events read, client TIME_WAIT entered {tw}");
    assert!(events > 0 && tw > 0, "the chunks before the kill were read");
    // Everything the recorder said it had written before the kill is there.
    let written = recorded
        .stderr
        .iter()
        .filter_map(|l| l.strip_prefix("twtrace: recording: "))
        .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
        .next_back()
        .unwrap_or(0);
    assert!(written > 0, "a progress line before the kill");
    assert!(
        events >= written,
        "{events} events read, {written} written before the kill"
    );
    assert!(tw < KILLED.n as u64, "the traffic went on after the kill");
}

/// A full disk (a 256 KiB tmpfs): one clear line, a non-zero exit, and a file readable up to its
/// last complete chunk.
#[test]
fn a_full_disk_stops_with_one_line_and_a_readable_file() {
    const TEST: &str = "record a_full_disk_stops_with_one_line_and_a_readable_file";
    if skip_unless_root(TEST) {
        return;
    }
    let dir = TempDir::new("record-full");
    let mount = dir.join("small");
    std::fs::create_dir(&mount).expect("mkdir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "twtrace-test"])
        .arg(&mount)
        .status()
        .expect("mount");
    if !ok.success() {
        eprintln!("SKIPPED: {TEST}: cannot mount a tmpfs");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);
    let CutRun {
        recorded,
        report: out,
        ..
    } = cut(&FULL_DISK, &mount.join("full.twr"));
    assert!(!recorded.status.success(), "a full disk is a failure");
    let errors: Vec<&String> = recorded
        .stderr
        .iter()
        .filter(|l| l.contains("No space left on device"))
        .collect();
    assert_eq!(errors.len(), 1, "one line: {:?}", recorded.stderr);
    assert!(
        errors[0].contains("readable up to its last complete chunk"),
        "{}",
        errors[0]
    );

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cut short") || stderr.contains("no end mark"),
        "{stderr}"
    );
    let report = json_of(&out);
    assert!(report["host"]["events"].as_u64().unwrap_or(0) > 0);
}

/// Files that are not recordings: one clear line and a non-zero exit, never a panic. No root.
#[test]
fn files_that_are_not_recordings_are_one_clear_error() {
    let dir = TempDir::new("record-bad");
    let empty = dir.join("empty.twr");
    std::fs::write(&empty, b"").expect("write");
    let text = dir.join("text.twr");
    std::fs::write(&text, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").expect("write");
    let random = dir.join("random.twr");
    let bytes: Vec<u8> = (0u32..100_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, bytes).expect("write");
    // A recording from a future twtrace: a valid header with the next format version.
    let newer = dir.join("newer.twr");
    let next = twtrace::recording::format::VERSION + 1;
    let header = twtrace::recording::Header {
        format: twtrace::recording::format::FORMAT_NAME.into(),
        version: next,
        ..Default::default()
    };
    let mut bytes = twtrace::recording::format::encode_header(&header);
    bytes[8..10].copy_from_slice(&next.to_le_bytes());
    let newer_message = format!("version {next} is newer than this twtrace reads");
    std::fs::write(&newer, bytes).expect("write");
    let cases = [
        (newer.as_path(), newer_message.as_str()),
        (empty.as_path(), "empty"),
        (text.as_path(), "not a twtrace recording"),
        (random.as_path(), "not a twtrace recording"),
        (dir.0.as_path(), "is a directory"),
        (Path::new("/nonexistent/x.twr"), "No such file"),
    ];
    for (path, want) in cases {
        for args in [
            vec!["report", path.to_str().expect("utf-8")],
            vec!["trace", "--from", path.to_str().expect("utf-8")],
        ] {
            let out = twtrace_output(&args, false);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
            assert!(stderr.contains(want), "{args:?}: {stderr}");
            assert!(out.stdout.is_empty());
        }
    }
}

/// --max-size stops the recording by itself with a clear message, and the file, under the
/// limit, ends cleanly (its end mark fits in the room kept for it).
#[test]
fn max_size_stops_the_recording_under_the_limit() {
    const TEST: &str = "record max_size_stops_the_recording_under_the_limit";
    if skip_unless_root(TEST) {
        return;
    }
    const LIMIT: u64 = 128 * 1024;
    let dir = TempDir::new("record-max");
    let file = dir.join("max.twr");
    let CutRun {
        peers,
        recorded,
        report: out,
    } = cut(&MAX_SIZE, &file);
    assert!(recorded.status.success(), "{:?}", recorded.stderr);
    assert!(
        recorded
            .stderr
            .iter()
            .any(|l| l.contains("reached --max-size 128.0 KiB")),
        "{:?}",
        recorded.stderr
    );
    let size = std::fs::metadata(&file).expect("file").len();
    eprintln!("[{TEST}] {size} bytes");
    assert!(size <= LIMIT && size > LIMIT / 2, "{size} bytes");
    assert!(out.stderr.is_empty(), "ends cleanly");
    let report = json_of(&out);
    let tw = counter(&report, peers.client.pid(), "timewait_entered");
    assert!(tw > 0 && tw < MAX_SIZE.n as u64, "{tw}");
}
