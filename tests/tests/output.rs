//! Output that other users control, and output that cannot be written: processes named with
//! terminal escapes (tcpdrive's `--comm` sets any name through `prctl(PR_SET_NAME)`) are shown
//! escaped by every text output and exactly by the JSON ones; a stderr that is full, closed or
//! whose reader left never makes twtrace panic; SIGHUP stops a recorder as cleanly as SIGTERM.
//! Run as root with `cargo xtask test`; without root every test prints `SKIPPED`.

use std::{
    io::{BufRead as _, BufReader},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use twtrace_tests::{
    Attached, ChildGuard, Event, Loopback, Mode, Peers, READY_TIMEOUT, SETTLE, STOP_TIMEOUT,
    Stopped, Traffic, Twtrace,
    live::{counter, timewait_entries},
    record::{Recording, TempDir, twtrace_output},
    skip_unless_root, twtrace_bin,
};

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// Clears the screen, homes the cursor and starts a line of its own: 13 bytes, a valid comm.
const CLIENT: &str = "\x1b[2J\x1b[H\nFAKE\r";
/// As twtrace shows it.
const CLIENT_SHOWN: &str = r"\x1b[2J\x1b[H\nFAKE\r";
/// [`CLIENT_SHOWN`] cut to the 16 characters of the table's and the report's COMM column.
const CLIENT_COLUMN: &str = r"\x1b[2J\x1b[H\nF";
/// DEL, the 8-bit CSI (a C1 control, UTF-8 encoded) and a backslash.
const SERVER: &str = "s\x7f\u{9b}\\";
const SERVER_SHOWN: &str = r"s\x7f\u{9b}\\";

/// `n` connections between a server and a client with the hostile names.
fn traffic(mode: Mode, n: usize) -> Traffic<'static> {
    Traffic::new(driver(), mode, n, SERVER, CLIENT)
}

fn port_args(port: u16, more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = more.iter().map(|&a| a.to_owned()).collect();
    args.extend(["--port".to_owned(), port.to_string()]);
    args
}

/// Panics with the offending lines if any line holds a control character: a raw ESC, CR or a
/// C1 control, or a tab, reached the output. (Lines were split at LF, so a raw LF inside a row
/// shows as a row that does not parse; the callers check that.)
fn assert_no_controls(what: &str, lines: &[String]) {
    let bad: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(char::is_control))
        .collect();
    assert!(bad.is_empty(), "{what}: control characters in {bad:#?}");
}

fn lines_of(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A `trace` text row: `HH:MM:SS.ffffff PID COMM ...`; its pid (0 for `?`, unattributed), or
/// None for anything else.
fn row_pid(line: &str) -> Option<u32> {
    let b = line.as_bytes();
    let time = b.len() > 16
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b'.'
        && b[..15]
            .iter()
            .enumerate()
            .all(|(i, c)| [2, 5, 8].contains(&i) || c.is_ascii_digit())
        && b[15] == b' ';
    if !time {
        return None;
    }
    match line[16..].split_whitespace().next()? {
        "?" => Some(0),
        pid => pid.parse().ok(),
    }
}

/// `trace` text and `trace --json` watch the same connections: one text row per JSON event,
/// each on one line, with the names escaped; the JSON has them exactly.
#[test]
fn trace_text_escapes_names_and_json_keeps_them() {
    const TEST: &str = "output trace_text_escapes_names_and_json_keeps_them";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 10;
    let (mut peers, (text, json)) = traffic(Mode::ClientFirst, N).start(|port| {
        let mut args = vec!["trace".to_owned()];
        args.extend(port_args(port, &[]));
        (
            Attached::start(&args),
            Twtrace::start(&port_args(port, &[])),
        )
    });
    peers.wait();
    let (client, server) = (peers.client.pid(), peers.server.pid());
    let Stopped {
        stdout,
        stderr,
        status,
    } = text.stop_after(SETTLE);
    let trace = json.stop();
    trace.summary();
    assert!(status.success(), "trace (text): {status}; {stderr:#?}");

    // JSON: the exact names.
    let by = |pid: u32| trace.events.iter().filter(move |e| e.pid == pid);
    assert!(by(client).count() >= 5 * N, "{:#?}", trace.stderr);
    assert!(by(client).all(|e| e.comm == CLIENT));
    assert!(by(server).all(|e| e.comm == SERVER));
    assert!(
        trace
            .events
            .iter()
            .all(|e| !e.raw.contains(char::is_control))
    );

    // Text: a header, then one parsable row per JSON event.
    assert_no_controls("trace text", &stdout);
    assert!(stdout[0].starts_with("TIME(UTC)"), "{stdout:#?}");
    let rows = &stdout[1..];
    let strays: Vec<&String> = rows.iter().filter(|l| row_pid(l).is_none()).collect();
    assert!(strays.is_empty(), "lines that are not rows: {strays:#?}");
    assert_eq!(rows.len(), trace.events.len(), "{stdout:#?}");
    for (pid, shown) in [(client, CLIENT_SHOWN), (server, SERVER_SHOWN)] {
        let mine: Vec<&String> = rows.iter().filter(|l| row_pid(l) == Some(pid)).collect();
        assert_eq!(mine.len(), by(pid).count(), "rows of pid {pid}");
        let named = format!(" {pid} {shown} ");
        assert!(
            mine.iter().all(|l| l.contains(&named)),
            "rows of pid {pid} without `{named}`: {mine:#?}"
        );
    }
    eprintln!("[{TEST}] e.g. {}", rows[0]);
}

/// The piped leaderboard (`--once`): the client's row shows its name escaped and cut to the
/// column, the numbers after it where they belong, and no line holds a control character.
#[test]
fn once_table_escapes_names() {
    const TEST: &str = "output once_table_escapes_names";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 5;
    // Leak mode: the client keeps its sockets (CLOSE_WAIT) while the snapshot is taken.
    let (mut peers, board) = traffic(Mode::Leak, N)
        .hold_ms(4000)
        .start(|port| Attached::start(&port_args(port, &["--once", "--interval", "2"])));
    let client = peers.client.pid();
    // `--once` exits by itself after one snapshot; the SIGTERM then finds it gone.
    let Stopped {
        stdout,
        stderr,
        status,
    } = board.stop_after(Duration::from_secs(3));
    peers.wait();
    assert!(status.success(), "{status}; {stderr:#?}");
    eprintln!("[{TEST}] table:\n{}", stdout.join("\n"));
    assert_no_controls("--once table", &stdout);
    assert!(stdout[0].contains("  TIME_WAIT now "), "{stdout:#?}");
    assert!(
        stdout[1].trim_start().starts_with("PID COMM"),
        "{stdout:#?}"
    );
    // Every row starts with a pid: a raw LF in a name would start a line of its own.
    let rows: Vec<&String> = stdout[2..].iter().take_while(|l| !l.is_empty()).collect();
    for row in &rows {
        assert!(
            row.get(..7)
                .is_some_and(|p| p.trim_start().parse::<u32>().is_ok()),
            "not a row: {row:?} in {stdout:#?}"
        );
    }
    // PID, COMM (16), TW/s, TW_TOTAL, TW_NOW, FW2_NOW, then CW_NOW: the client leaks N
    // sockets.
    let want = format!("{client:>7} {CLIENT_COLUMN:<16} ");
    let row = rows
        .iter()
        .find(|r| r.starts_with(&want))
        .unwrap_or_else(|| panic!("no row starting {want:?} in {stdout:#?}"));
    let numbers: Vec<&str> = row[want.len()..].split_whitespace().collect();
    assert_eq!(numbers.get(4), Some(&N.to_string().as_str()), "{row}");
}

/// A recording of traffic between processes with hostile names: `report` (text) shows them
/// escaped everywhere, `report --json` and `--export jsonl` exactly, and `trace --from` prints
/// one escaped row per exported event.
#[test]
fn a_recording_shows_names_escaped() {
    const TEST: &str = "output a_recording_shows_names_escaped";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 20;
    let dir = TempDir::new("output-rec");
    let file = dir.join("hostile.twr");
    let (mut peers, recording) =
        traffic(Mode::ClientFirst, N).start(|port| Recording::start(&file, &port_args(port, &[])));
    peers.wait();
    thread::sleep(SETTLE);
    let recorded = recording.stop(libc::SIGINT);
    assert!(recorded.status.success(), "{:?}", recorded.stderr);
    let (client, server) = (peers.client.pid(), peers.server.pid());
    let path = file.to_str().expect("utf-8 path");

    let out = twtrace_output(&["report", path, "--json"], false);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let comm = |pid: u32| {
        report["processes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
            .map(|p| p["comm"].clone())
    };
    assert_eq!(comm(client), Some(Value::from(CLIENT)));
    assert_eq!(comm(server), Some(Value::from(SERVER)));
    assert_eq!(counter(&report, client, "timewait_entered"), N as u64);

    let out = twtrace_output(&["report", path], false);
    assert!(out.status.success());
    let text = lines_of(&out.stdout);
    eprintln!("[{TEST}] report:\n{}", text.join("\n"));
    assert_no_controls("report", &text);
    // The process table: PID, COMM cut to 16, TW_ENTERED.
    for (pid, column, tw) in [(client, CLIENT_COLUMN, N), (server, SERVER_SHOWN, 0)] {
        let want = format!("{pid:>7} {column:<16} {tw:>10} ");
        assert!(
            text.iter().any(|l| l.starts_with(&want)),
            "no report row starting {want:?}"
        );
    }
    // The peers table names the processes in full.
    let peer = format!("127.0.0.1:{} ", peers.port());
    assert!(
        text.iter()
            .any(|l| l.starts_with(&peer) && l.contains(&format!("{client} {CLIENT_SHOWN}"))),
        "no peer row for {peer} naming the client"
    );

    // `trace --from` against the exported events.
    let out = twtrace_output(&["report", path, "--export", "jsonl"], false);
    assert!(out.status.success());
    let events: Vec<Value> = lines_of(&out.stdout)
        .iter()
        .map(|l| serde_json::from_str(l).expect("exported event"))
        .collect();
    let out = twtrace_output(&["trace", "--from", path], false);
    assert!(out.status.success());
    let rows = lines_of(&out.stdout);
    assert_no_controls("trace --from", &rows);
    assert_eq!(
        rows.len(),
        events.len() + 1,
        "a header and one row per event"
    );
    for (pid, name, shown) in [
        (client, CLIENT, CLIENT_SHOWN),
        (server, SERVER, SERVER_SHOWN),
    ] {
        let exported: Vec<&Value> = events.iter().filter(|e| e["pid"] == pid).collect();
        assert!(!exported.is_empty());
        assert!(exported.iter().all(|e| e["comm"] == name));
        let named = format!(" {pid} {shown} ");
        let shown_rows = rows[1..].iter().filter(|l| row_pid(l) == Some(pid));
        assert!(shown_rows.clone().all(|l| l.contains(&named)));
        assert_eq!(shown_rows.count(), exported.len(), "rows of pid {pid}");
    }
}

/// A terminal closed under a recorder (SIGHUP) stops it like SIGTERM: exit 0, its summary, and
/// a file with its end mark (the report names no problem, in particular not a killed recorder).
#[test]
fn sighup_stops_record_cleanly() {
    const TEST: &str = "output sighup_stops_record_cleanly";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 30;
    let dir = TempDir::new("output-hup");
    let file = dir.join("hup.twr");
    let traffic = Traffic::new(driver(), Mode::ClientFirst, N, "tws-hup", "twc-hup");
    let (mut peers, recording) =
        traffic.start(|port| Recording::start(&file, &port_args(port, &[])));
    peers.wait();
    thread::sleep(SETTLE);
    let recorded = recording.stop(libc::SIGHUP);
    assert!(
        recorded.status.success(),
        "{}: {:?}",
        recorded.status,
        recorded.stderr
    );
    assert!(
        recorded
            .stderr
            .iter()
            .any(|l| l.starts_with("twtrace: ") && l.contains(" events, 0 lost, ")),
        "summary line: {:?}",
        recorded.stderr
    );
    let path = file.to_str().expect("utf-8 path");
    let out = twtrace_output(&["report", path, "--json"], false);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("end mark"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["host"]["problems"], Value::Array(Vec::new()));
    assert_eq!(
        counter(&report, peers.client.pid(), "timewait_entered"),
        N as u64
    );
}

/// `record --duration 2s` with stderr on a full device (with and without -v, whose debug lines
/// also go there): exit 0 and a complete recording.
#[test]
fn record_with_a_full_stderr_completes() {
    const TEST: &str = "output record_with_a_full_stderr_completes";
    if skip_unless_root(TEST) {
        return;
    }
    let dir = TempDir::new("output-full");
    // A port nobody uses: the recording has no business with the machine's other traffic.
    let unused = Poker::new();
    for (n, verbose) in [(0, &[][..]), (1, &["-v"][..])] {
        let file = dir.join(&format!("full{n}.twr"));
        let mut cmd = Command::new(twtrace_bin());
        cmd.arg("record")
            .args(verbose)
            .args(["--duration", "2s", "--port"])
            .arg(unused.port.to_string())
            .arg("-o")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(dev_full());
        let mut guard = ChildGuard::spawn("twtrace record 2>/dev/full", &mut cmd);
        let status = guard.wait_timeout(READY_TIMEOUT + STOP_TIMEOUT);
        assert_eq!(status.code(), Some(0), "{verbose:?}: {status}");
        let path = file.to_str().expect("utf-8 path");
        let out = twtrace_output(&["report", path, "--json"], false);
        assert!(out.status.success(), "{verbose:?}");
        let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
        assert_eq!(report["host"]["problems"], Value::Array(Vec::new()));
        assert!(report["host"]["duration_s"].as_f64().is_some());
    }
}

fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full")
}

/// A loopback listener of the test's own, and connections to it: events for a `--port`
/// tracer whose stderr cannot say when it is ready, until its stdout shows them.
struct Poker {
    listener: TcpListener,
    port: u16,
}

impl Poker {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        Self { listener, port }
    }

    /// One connection, accepted and closed.
    fn poke(&self) {
        let c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let (s, _) = self.listener.accept().expect("accept");
        drop(c);
        drop(s);
    }
}

/// Makes connections until `done` says so or `timeout` passes.
fn poke_until(poker: &Poker, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        poker.poke();
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// How a tracer ended: it must not have panicked (101) or died of a signal.
fn assert_clean_exit(what: &str, status: ExitStatus) {
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "{what}: exited with {status}, want 0 or 1"
    );
}

/// `trace` whose stderr fails, on a full device or as a pipe whose reader left, with -v: it
/// traces (the events reach stdout), stops on SIGTERM with exit 0, and prints no panic.
#[test]
fn trace_with_a_failing_stderr_does_not_panic() {
    const TEST: &str = "output trace_with_a_failing_stderr_does_not_panic";
    if skip_unless_root(TEST) {
        return;
    }
    for broken in ["/dev/full", "a pipe without reader"] {
        let poker = Poker::new();
        let mut cmd = Command::new(twtrace_bin());
        cmd.args(["trace", "-v", "--json", "--port"])
            .arg(poker.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if broken == "/dev/full" {
            cmd.stderr(dev_full());
        } else {
            let (reader, writer) = std::io::pipe().expect("pipe");
            drop(reader);
            cmd.stderr(writer);
        }
        let mut guard = ChildGuard::spawn(&format!("twtrace 2>{broken}"), &mut cmd);
        let stdout = guard.child_mut().stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let traced = poke_until(&poker, READY_TIMEOUT, || rx.try_recv().is_ok());
        guard.signal(libc::SIGTERM);
        let status = guard.wait_timeout(STOP_TIMEOUT);
        let stdout = reader.join().expect("reader thread");
        assert!(traced, "2>{broken}: no event on stdout; stdout: {stdout}");
        assert!(!stdout.contains("panicked"), "2>{broken}: {stdout}");
        assert_eq!(status.code(), Some(0), "2>{broken}: {status}");
        eprintln!(
            "[{TEST}] 2>{broken}: {} lines, {status}",
            stdout.lines().count()
        );
    }
}

/// `twtrace trace --port P 2>&1 | head -2`: stdout and stderr share a pipe whose reader leaves
/// after two lines; twtrace ends at its next write, cleanly, whatever it was writing.
#[test]
fn trace_into_head_ends_cleanly() {
    const TEST: &str = "output trace_into_head_ends_cleanly";
    if skip_unless_root(TEST) {
        return;
    }
    let poker = Poker::new();
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut cmd = Command::new(twtrace_bin());
    cmd.args(["trace", "--port"])
        .arg(poker.port.to_string())
        .stdin(Stdio::null())
        .stdout(writer.try_clone().expect("dup pipe"))
        .stderr(writer);
    let mut guard = ChildGuard::spawn("twtrace 2>&1 | head -2", &mut cmd);
    // Our copies of the write end are gone with `cmd`: EOF comes when twtrace exits.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    let head = thread::spawn(move || {
        let mut lines = BufReader::new(reader).lines().map_while(Result::ok);
        let got: Vec<String> = lines.by_ref().take(2).collect();
        let _ = tx.send(());
        // Leaving closes the read end, as head does.
        got
    });
    assert!(
        poke_until(&poker, READY_TIMEOUT, || rx.try_recv().is_ok()),
        "twtrace printed no two lines"
    );
    let head = head.join().expect("head thread");
    eprintln!("[{TEST}] head -2: {head:#?}");
    assert_eq!(head.len(), 2, "{head:#?}");
    // It must now stop at its next write, to stdout (events) or stderr.
    let exited = poke_until(&poker, STOP_TIMEOUT, || {
        guard.child_mut().try_wait().ok().flatten().is_some()
    });
    assert!(exited, "twtrace kept running with nobody reading");
    let status = guard.wait_timeout(STOP_TIMEOUT);
    assert_clean_exit("2>&1 | head -2", status);
}

/// A reader that stops reading the leaderboard's JSON costs no events and no counts: the loop
/// that drains the kernel's rings never waits for stdout. Snapshots wait for the reader, the
/// oldest dropped and said so on stderr; the last one printed counts every connection. (When
/// that loop blocked in the write, the rings overflowed: events lost, TIME_WAIT missing.)
#[test]
fn a_reader_that_stops_reading_costs_no_events() {
    const TEST: &str = "output a_reader_that_stops_reading_costs_no_events";
    if skip_unless_root(TEST) {
        return;
    }
    // About 11 events each: 110,000, where the rings hold about 65,000 (8 MiB).
    const N: usize = 10_000;
    let traffic = Traffic::new(driver(), Mode::ClientFirst, N, "tws-unread", "twc-unread");
    let server = traffic.server();
    let (board, release) =
        Attached::start_unread(&port_args(server.port, &["--json", "--interval", "0.1"]));
    // Ten snapshots a second fill the pipe (a page) long before the traffic starts, and keep
    // coming all along: more than the queue holds (16).
    thread::sleep(Duration::from_millis(1500));
    let client = traffic.client(server.port);
    let mut peers = Peers { server, client };
    peers.wait();
    thread::sleep(Duration::from_millis(2500));
    drop(release);
    let Stopped {
        stdout,
        stderr,
        status,
    } = board.stop_after(SETTLE);
    assert!(status.success(), "{status}; {stderr:#?}");
    let last: Value = serde_json::from_str(stdout.last().expect("a snapshot")).expect("JSON");
    let c = peers.client.pid();
    eprintln!(
        "[{TEST}] {} snapshots read; stderr: {stderr:#?}",
        stdout.len()
    );
    assert_eq!(last["lost_events"], 0, "{stderr:#?}");
    assert_eq!(counter(&last, c, "opens"), N as u64);
    assert_eq!(timewait_entries(&last, c), N as u64);
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("not printed: standard output was not read fast enough")),
        "the dropped snapshots are said: {stderr:#?}"
    );
}

/// `twtrace --json | head -1`: the leaderboard's output thread meets the closed pipe, and
/// twtrace ends cleanly at its next snapshot.
#[test]
fn leaderboard_into_head_ends_cleanly() {
    const TEST: &str = "output leaderboard_into_head_ends_cleanly";
    if skip_unless_root(TEST) {
        return;
    }
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut cmd = Command::new(twtrace_bin());
    cmd.args(["--json", "--interval", "0.2"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null());
    let mut guard = ChildGuard::spawn("twtrace --json | head -1", &mut cmd);
    drop(cmd);
    let first = BufReader::new(reader)
        .lines()
        .next()
        .expect("a line")
        .expect("readable");
    eprintln!("[{TEST}] head -1: {} bytes", first.len());
    assert!(serde_json::from_str::<Value>(&first).is_ok(), "{first}");
    // The reader is gone with `first`'s BufReader.
    let status = guard.wait_timeout(STOP_TIMEOUT);
    assert_clean_exit("--json | head -1", status);
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|&a| a.to_owned()).collect()
}

/// What identifies a transition apart from its owner: (family, lport, rport, old, new), sorted,
/// so a live trace and a replay of the same connections compare exactly.
///
/// An accept event is no transition: it carries the state its own instance's socket map held
/// when accept() returned, and two attached instances can sample either side of a transition
/// the peer's close makes at that moment (seen in CI: one said ESTABLISHED, the other
/// CLOSE_WAIT for the same accept). Its key is "accept" whatever state it sampled.
fn keys<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<(String, u16, u16, String, String)> {
    let mut k: Vec<_> = events
        .map(|e| {
            let (old, new) = if e.accept {
                ("accept".to_string(), "accept".to_string())
            } else {
                (e.old.clone(), e.new.clone())
            };
            (e.family.clone(), e.lport, e.rport, old, new)
        })
        .collect();
    k.sort();
    k
}

/// `trace --from FILE --json <more>`: its events.
fn replayed(path: &str, more: &[&str]) -> Vec<Event> {
    let mut all = vec!["trace", "--from", path, "--json"];
    all.extend_from_slice(more);
    let out = twtrace_output(&all, false);
    assert!(
        out.status.success(),
        "trace --from {more:?}: {}",
        out.status
    );
    lines_of(&out.stdout)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event ({e}): {l}")))
        .collect()
}

/// -4/-6, --lport and --rport on real traffic, live and replayed: 5 connections over 127.0.0.1
/// and 3 over ::1 at the same time, the client closing first (so each connection leaves exactly
/// one TIME_WAIT, on the client's side). Each filter keeps exactly its connections' transitions:
/// the same ones, live, as the unfiltered recording holds for them, and a replay given the
/// filter prints those again.
#[test]
fn ip_version_and_port_side_filters_keep_exact_connections() {
    const TEST: &str = "output ip_version_and_port_side_filters_keep_exact_connections";
    if skip_unless_root(TEST) {
        return;
    }
    const N4: usize = 5;
    const N6: usize = 3;
    let t4 = Traffic::new(driver(), Mode::ClientFirst, N4, "twf-srv4", "twf-cli4");
    let t6 =
        Traffic::new(driver(), Mode::ClientFirst, N6, "twf-srv6", "twf-cli6").over(Loopback::V6);
    let (s4, s6) = (t4.server(), t6.server());
    let (p4, p6) = (s4.port, s6.port);
    let ports = format!("{p4},{p6}");
    let dir = TempDir::new("output-filters");
    let file = dir.join("both.twr");
    let recording = Recording::start(&file, &args(&["--port", &ports]));
    let v4 = Twtrace::start(&args(&["-4", "-P", &ports]));
    let v6 = Twtrace::start(&args(&["-6", "--port", &ports]));
    let lport = Twtrace::start(&args(&["--lport", &ports]));
    let rport = Twtrace::start(&args(&["--rport", &ports]));
    let mut peers4 = Peers {
        client: t4.client(p4),
        server: s4,
    };
    let mut peers6 = Peers {
        client: t6.client(p6),
        server: s6,
    };
    peers4.wait();
    peers6.wait();
    let (c4, c6) = (peers4.client.pid(), peers6.client.pid());
    let (v4, v6, lport, rport) = (v4.stop(), v6.stop(), lport.stop(), rport.stop());
    let recorded = recording.stop(libc::SIGINT);
    assert!(recorded.status.success(), "{:?}", recorded.stderr);
    for t in [&v4, &v6, &lport, &rport] {
        assert_eq!(t.summary().lost, 0, "{:?}", t.stderr);
    }
    let path = file.to_str().expect("utf-8 path");
    let all = replayed(path, &[]);
    let tw_by = |events: &[Event], pid: u32| {
        events
            .iter()
            .filter(|e| e.pid == pid && e.timewait_entry())
            .count()
    };
    assert_eq!((tw_by(&all, c4), tw_by(&all, c6)), (N4, N6));
    let ipv4 = |e: &&Event| e.family == "ipv4";
    let ipv6 = |e: &&Event| e.family == "ipv6";
    let local = |e: &&Event| e.lport == p4 || e.lport == p6;
    let remote = |e: &&Event| e.rport == p4 || e.rport == p6;

    type Filter<'a> = &'a dyn Fn(&&Event) -> bool;
    let cases: [(&str, &[&str], &twtrace_tests::Trace, Filter<'_>, usize); 4] = [
        ("-4", &["-4"], &v4, &ipv4, N4),
        ("-6", &["-6"], &v6, &ipv6, N6),
        ("--lport", &["--lport", &ports], &lport, &local, 0),
        ("--rport", &["--rport", &ports], &rport, &remote, N4 + N6),
    ];
    for (name, flags, live, keep, timewait) in cases {
        let want = keys(all.iter().filter(keep));
        assert!(!want.is_empty(), "{name}: nothing to compare");
        assert_eq!(keys(live.events.iter()), want, "{name}, live");
        let again = replayed(path, flags);
        assert_eq!(keys(again.iter()), want, "{name}, replayed");
        let tw = live.events.iter().filter(|e| e.timewait_entry()).count();
        assert_eq!(tw, timewait, "{name}: TIME_WAIT entries");
        eprintln!(
            "[{TEST}] {name}: {} transitions, {tw} TIME_WAIT",
            want.len()
        );
    }
    assert_eq!(tw_by(&v4.events, c4), N4);
    assert_eq!(tw_by(&v6.events, c6), N6);

    // The leaderboard's replay too: -6 keeps the IPv6 client's row and nothing of the other.
    let out = twtrace_output(&["--from", path, "--speed", "0", "-j", "-6"], false);
    assert!(out.status.success());
    let last: Value = lines_of(&out.stdout)
        .last()
        .map(|l| serde_json::from_str(l).expect("snapshot"))
        .expect("a snapshot");
    assert_eq!(last["schema"], 1);
    assert_eq!(counter(&last, c6, "timewait_entered"), N6 as u64);
    assert_eq!(counter(&last, c4, "timewait_entered"), 0);
}

/// The exit status says which kind of failure it was: 2 for usage (bad flag, bad value,
/// options that conflict), 1 for a runtime error (a missing file, a damaged recording, no
/// privileges), 0 for success; each error is one line on stderr.
#[test]
fn exit_status_says_which_kind_of_failure() {
    const TEST: &str = "output exit_status_says_which_kind_of_failure";
    if skip_unless_root(TEST) {
        return;
    }
    let one_line = |out: &std::process::Output| {
        let err = lines_of(&out.stderr);
        assert_eq!(err.len(), 1, "{err:#?}");
        err[0].clone()
    };
    for bad in [
        &["--frobnicate"][..],
        &["-4", "-6"],
        &["trace", "-i", "1"],
        &["--port", "0"],
        &["report"],
        &["--lport", "80", "trace"],
    ] {
        let out = twtrace_output(bad, false);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }

    let dir = TempDir::new("output-exit");
    let missing = dir.join("missing.twr");
    let missing = missing.to_str().expect("utf-8 path");
    let out = twtrace_output(&["report", missing], false);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).starts_with("twtrace: "));

    let damaged = dir.join("damaged.twr");
    std::fs::write(&damaged, b"not a recording at all\n").expect("write");
    let damaged = damaged.to_str().expect("utf-8 path");
    for cmd in [&["report", damaged][..], &["trace", "--from", damaged]] {
        let out = twtrace_output(cmd, false);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        assert!(one_line(&out).starts_with("twtrace: "), "{cmd:?}");
    }

    // Tracing without root or capabilities.
    let out = twtrace_output(&["trace", "--json"], true);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());

    let out = twtrace_output(&["--help"], false);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Exit status:") && help.contains("NO_COLOR"),
        "{help}"
    );
    let out = twtrace_output(&["doctor", "-j"], false);
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    assert_eq!(doc["schema"], 1);
}
