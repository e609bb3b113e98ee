//! `twtrace leaks` against real traffic from tcpdrive processes with known pids: a client that
//! never closes what its server closed is a leak suspect with its pid, peer and an oldest age of
//! at least the time it held them; a client that closes promptly is not. A client that opens a
//! connection per request is flagged; one that reuses its connection is not.
//! Run as root with `cargo xtask test`; without root every test prints `SKIPPED` and passes.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use twtrace_tests::{
    Attached, DRIVER_TIMEOUT, Mode, Traffic,
    record::{Recording, TempDir, twtrace_output},
    skip_unless_root,
};

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// Starts `twtrace leaks --json --watch <watch> <args>`; returns once it is attached.
fn leaks(watch: &str, args: &[String]) -> Attached {
    let mut all: Vec<String> = ["leaks", "--json", "--watch", watch]
        .map(String::from)
        .into();
    all.extend_from_slice(args);
    Attached::start(&all)
}

/// Waits for the report at the end of the watch and parses its JSON Lines.
fn suspects(twtrace: Attached, watch: Duration) -> Vec<Value> {
    let out = twtrace.wait_exit(watch + Duration::from_secs(30));
    assert!(out.status.success(), "leaks failed: {:#?}", out.stderr);
    eprintln!("stderr: {:#?}", out.stderr);
    out.stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .inspect(|v| eprintln!("suspect: {v}"))
        .collect()
}

fn of<'a>(found: &'a [Value], kind: &str, pid: u32) -> Vec<&'a Value> {
    found
        .iter()
        .filter(|v| v["kind"] == kind && v["pid"] == pid)
        .collect()
}

#[test]
fn a_client_that_never_closes_is_a_leak_suspect_and_a_prompt_one_is_not() {
    const TEST: &str = "leaks a_client_that_never_closes_is_a_leak_suspect_and_a_prompt_one_is_not";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 5;
    const WATCH: Duration = Duration::from_secs(8);
    // The server closes first in both; the leaking client keeps its sockets (CLOSE_WAIT)
    // for longer than the watch, the prompt one closes each at once.
    let leaky = Traffic::new(driver(), Mode::Leak, N, "tws-lk", "twc-lk").hold_ms(60_000);
    let prompt = Traffic::new(driver(), Mode::ServerFirst, N, "tws-ok", "twc-ok");
    let (leak_server, ok_server) = (leaky.server(), prompt.server());
    let ports = format!("{},{}", leak_server.port, ok_server.port);
    let twtrace = leaks(
        "8s",
        &["--min-age".into(), "2s".into(), "--port".into(), ports],
    );
    let mut leak_client = leaky.client(leak_server.port);
    let mut ok_client = prompt.client(ok_server.port);
    leak_client.wait_for_stdout("holding", DRIVER_TIMEOUT);
    // Every leaked socket is in CLOSE_WAIT from here on.
    let held_since = Instant::now();
    ok_client.guard.wait_success(DRIVER_TIMEOUT);
    let found = suspects(twtrace, WATCH);
    let held_s = held_since.elapsed().as_secs_f64();

    let leak = of(&found, "close_wait_leak", leak_client.pid());
    assert_eq!(
        leak.len(),
        1,
        "one suspect for the leaking client: {found:#?}"
    );
    let s = leak[0];
    assert_eq!(s["comm"], "twc-lk");
    assert_eq!(s["close_wait_now"], N);
    assert_eq!(s["close_wait_peak"], N);
    assert_eq!(s["close_wait_old"], N);
    assert_eq!(s["oldest_age_at_least"], false);
    let oldest = s["oldest_age_s"].as_f64().expect("oldest_age_s");
    // The report's snapshot is taken at the end of the watch, within a second of the exit we
    // measured; ages are rounded to 0.1 s.
    assert!(
        oldest >= held_s - 1.2 && oldest <= held_s + 0.1,
        "oldest {oldest} s, held {held_s:.1} s"
    );
    assert!(oldest >= 2.0, "older than --min-age: {oldest}");
    assert!(s["growth_per_min"].is_number());
    let peers = s["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 1, "{peers:#?}");
    assert_eq!(peers[0]["raddr"], "127.0.0.1");
    assert_eq!(peers[0]["rport"], leak_server.port);
    assert_eq!(peers[0]["close_wait_now"], N);
    assert!(s["remedy"].as_str().is_some_and(|r| r.contains("close()")));

    // Neither the prompt client nor any server is a suspect of any kind.
    for pid in [
        ok_client.pid(),
        leak_server.guard.pid(),
        ok_server.guard.pid(),
    ] {
        let any: Vec<_> = found.iter().filter(|v| v["pid"] == pid).collect();
        assert!(any.is_empty(), "pid {pid} reported: {any:#?}");
    }
    drop(leak_client);
}

#[test]
fn a_connection_per_request_is_flagged_and_a_reused_connection_is_not() {
    const TEST: &str = "leaks a_connection_per_request_is_flagged_and_a_reused_connection_is_not";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 200;
    const WATCH: Duration = Duration::from_secs(6);
    let churn = Traffic::new(driver(), Mode::ClientFirst, N, "tws-ch", "twc-ch");
    let reuse = Traffic::new(driver(), Mode::Reuse, N, "tws-ka", "twc-ka");
    let (churn_server, reuse_server) = (churn.server(), reuse.server());
    let ports = format!("{},{}", churn_server.port, reuse_server.port);
    let twtrace = leaks("6s", &["--port".into(), ports]);
    let mut churn_client = churn.client(churn_server.port);
    let mut reuse_client = reuse.client(reuse_server.port);
    churn_client.guard.wait_success(DRIVER_TIMEOUT);
    reuse_client.guard.wait_success(DRIVER_TIMEOUT);
    let found = suspects(twtrace, WATCH);

    let flagged = of(&found, "churn_without_reuse", churn_client.pid());
    assert_eq!(flagged.len(), 1, "{found:#?}");
    let f = flagged[0];
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["comm"], "twc-ch");
    assert_eq!(f["raddr"], "127.0.0.1");
    assert_eq!(f["rport"], churn_server.port);
    assert_eq!(
        f["lifetimes"]["ended"], N,
        "every connection's life counted"
    );
    assert_eq!(f["timewait_entered"], N);
    assert!(
        f["lifetimes"]["median_le_s"]
            .as_f64()
            .is_some_and(|m| m <= 1.0)
    );
    assert!(
        f["remedy"]
            .as_str()
            .is_some_and(|r| r.contains("keep-alive"))
    );
    // The server side sees it too, as its clients' habit.
    let server = of(&found, "churn_without_reuse", churn_server.guard.pid());
    assert_eq!(server.len(), 1, "{found:#?}");
    assert_eq!(server[0]["severity"], "info");
    assert_eq!(server[0]["lport"], churn_server.port);

    // One connection carrying N requests is what the remedy asks for: nothing to report.
    for pid in [reuse_client.pid(), reuse_server.guard.pid()] {
        let any: Vec<_> = found.iter().filter(|v| v["pid"] == pid).collect();
        assert!(any.is_empty(), "pid {pid} reported: {any:#?}");
    }
}

#[test]
fn a_recording_names_the_same_suspect_without_root() {
    const TEST: &str = "leaks a_recording_names_the_same_suspect_without_root";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 4;
    let dir = TempDir::new("leaks-from");
    let file = dir.join("leak.twr");
    let leaky = Traffic::new(driver(), Mode::Leak, N, "tws-rl", "twc-rl").hold_ms(60_000);
    let server = leaky.server();
    let rec = Recording::start(&file, &["--port".into(), server.port.to_string()]);
    let mut client = leaky.client(server.port);
    client.wait_for_stdout("holding", DRIVER_TIMEOUT);
    // Past --min-age (2 s) and two reconciliations, with the sockets still held.
    std::thread::sleep(Duration::from_secs(4));
    let recorded = rec.stop(libc::SIGINT);
    assert!(recorded.status.success());
    // A recording is created 0600 for root: hand it to the unprivileged reader.
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).expect("chown");
    let path = file.to_str().expect("utf-8 path");
    let out = twtrace_output(
        &["leaks", "--from", path, "--json", "--min-age", "2s"],
        true,
    );
    assert!(out.status.success());
    let found: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let leak = of(&found, "close_wait_leak", client.pid());
    assert_eq!(leak.len(), 1, "{found:#?}");
    assert_eq!(leak[0]["close_wait_now"], N);
    let oldest = leak[0]["oldest_age_s"].as_f64().expect("oldest_age_s");
    assert!((3.0..=6.0).contains(&oldest), "oldest {oldest} s");
    assert_eq!(found.len(), 1, "nothing else: {found:#?}");
    drop(client);
}
