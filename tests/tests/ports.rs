//! `twtrace ports`: the pool of local ports toward one destination, counted exactly. Inside a
//! network namespace of its own (so no other traffic on the machine counts) with a small
//! ip_local_port_range and tcp_tw_reuse off, a client churns connections to one server and closes
//! each first, so every one leaves its port in TIME_WAIT on the client side for 60 s. twtrace must
//! report that destination with the share of the pool it holds, the client as the one opening
//! the connections, and exactly as many ports in use as `ss` lists toward it.
//! Run as root with `cargo xtask test`; without root every test prints `SKIPPED` and passes.

use std::{
    io::Read,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use twtrace_tests::{
    Attached, ChildGuard, DRIVER_TIMEOUT, netns::Netns, skip_unless_root, twtrace_bin,
};

const LOW: u16 = 40000;
const HIGH: u16 = 40299;
const USABLE: u64 = (HIGH - LOW + 1) as u64;
/// Connections the client makes: 280 of the 300 ports, all left in TIME_WAIT.
const N: u64 = 280;
/// Outside the ephemeral range, so the server's port is never one of the client's.
const PORT: u16 = 8080;

fn tcpdrive() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// The namespace with its small pool, and the inode twtrace reports it by.
fn namespace(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.sysctl(&[
        &format!("net.ipv4.ip_local_port_range={LOW} {HIGH}"),
        "net.ipv4.tcp_tw_reuse=0",
    ]);
    ns
}

/// A client-first churn of `N` connections to 127.0.0.1:PORT inside `ns`; returns the client's
/// pid once both sides have exited.
fn churn(ns: &Netns, comm: &str) -> u32 {
    let mut cmd = ns.command(tcpdrive());
    cmd.args([
        "server",
        "--bind",
        &format!("127.0.0.1:{PORT}"),
        "--count",
        &N.to_string(),
        "--mode",
        "client-first",
        "--comm",
        "twports-srv",
    ])
    .stdout(Stdio::piped());
    let mut server = ChildGuard::spawn("twports-srv", &mut cmd);
    wait_listening(ns);
    let mut cmd = ns.command(tcpdrive());
    cmd.args([
        "client",
        "--connect",
        &format!("127.0.0.1:{PORT}"),
        "--count",
        &N.to_string(),
        "--mode",
        "client-first",
        "--comm",
        comm,
    ])
    .stdout(Stdio::null());
    let mut client = ChildGuard::spawn(comm, &mut cmd);
    client.wait_success(DRIVER_TIMEOUT);
    server.wait_success(DRIVER_TIMEOUT);
    client.pid()
}

fn wait_listening(ns: &Netns) {
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    while ns.ss_count(&["state", "listening", "sport", "=", &format!(":{PORT}")]) == 0 {
        assert!(Instant::now() < deadline, "the server never listened");
        thread::sleep(Duration::from_millis(20));
    }
}

/// What `ss` lists toward the destination inside the namespace, every state.
fn ss_toward(ns: &Netns) -> u64 {
    ns.ss_count(&["dst", "127.0.0.1", "dport", "=", &format!(":{PORT}")]) as u64
}

fn destination(doc: &Value, netns: u32) -> &Value {
    doc["destinations"]
        .as_array()
        .and_then(|d| {
            d.iter().find(|d| {
                d["netns"] == netns
                    && d["raddr"] == "127.0.0.1"
                    && d["laddr"] == "127.0.0.1"
                    && d["rport"] == PORT
            })
        })
        .unwrap_or_else(|| panic!("no destination 127.0.0.1:{PORT} in {doc}"))
}

#[test]
fn a_churning_client_fills_its_pool_toward_one_destination() {
    const TEST: &str = "ports a_churning_client_fills_its_pool_toward_one_destination";
    if skip_unless_root(TEST) {
        return;
    }
    let ns = namespace("ports");
    let id = ns.id();
    let ports = Attached::start(&[
        "ports".into(),
        "--json".into(),
        "--interval".into(),
        "1".into(),
        "--netns".into(),
        id.to_string(),
    ]);
    let client = churn(&ns, "twports-cl");
    // The client has exited; its TIME_WAIT sockets stay for 60 s, so the count is stable: a
    // dump (every second) and a snapshot after it, with ss in between, see the same sockets.
    thread::sleep(Duration::from_millis(2500));
    let ss_before = ss_toward(&ns);
    let run = ports.stop_after(Duration::from_millis(2000));
    let ss_after = ss_toward(&ns);
    assert!(run.status.success(), "{:?}: {:#?}", run.status, run.stderr);
    assert_eq!(ss_before, ss_after, "TIME_WAIT lasts 60 s: nothing changed");
    assert_eq!(ss_before, N, "every connection left its port in TIME_WAIT");
    let docs: Vec<Value> = run
        .stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = docs
        .last()
        .unwrap_or_else(|| panic!("nothing printed; stderr {:#?}", run.stderr));
    eprintln!("[{TEST}] last document: {last}");
    assert_eq!(
        last["range"],
        serde_json::json!({"low": LOW, "high": HIGH, "reserved": 0, "usable": USABLE}),
        "--netns: that namespace's own range"
    );
    assert_eq!(last["tcp_tw_reuse"], 0);
    let d = destination(last, id);
    assert_eq!(
        d["in_use"].as_u64(),
        Some(ss_before),
        "exactly what ss lists"
    );
    assert_eq!(d["timewait"].as_u64(), Some(N));
    let share = d["share"].as_f64().expect("share");
    assert!(share >= 0.9, "share {share}");
    assert_eq!(share, (N as f64 / USABLE as f64 * 1000.0).round() / 1000.0);
    assert_eq!(d["range"]["usable"], USABLE);
    assert_eq!(d["connect_failures"], 0);
    let pids = d["pids"].as_array().expect("pids");
    assert_eq!(
        pids,
        &vec![serde_json::json!({"pid": client, "comm": "twports-cl", "opens": N})],
        "the client opened every connection"
    );
    // Nothing grows once the client has stopped: no ETA.
    assert_eq!(d["exhaustion_eta_s"], Value::Null);
}

#[test]
fn watch_prints_one_table_and_exits_by_itself() {
    const TEST: &str = "ports watch_prints_one_table_and_exits_by_itself";
    if skip_unless_root(TEST) {
        return;
    }
    let ns = namespace("pwatch");
    // The TIME_WAIT sockets exist before twtrace starts: the dump finds them, no event needed.
    let client = churn(&ns, "twports-w");
    let mut cmd = std::process::Command::new(twtrace_bin());
    cmd.args(["ports", "--watch", "2s", "--netns", &ns.name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn("twtrace ports --watch", &mut cmd);
    let status = guard.wait_timeout(Duration::from_secs(60));
    let read = |pipe: Option<&mut dyn Read>| {
        let mut text = String::new();
        pipe.expect("piped")
            .read_to_string(&mut text)
            .expect("read");
        text
    };
    let child = guard.child_mut();
    let stdout = read(child.stdout.as_mut().map(|p| p as &mut dyn Read));
    let stderr = read(child.stderr.as_mut().map(|p| p as &mut dyn Read));
    assert!(status.success(), "{status}: {stderr}");
    eprintln!("[{TEST}] stdout:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].ends_with(&format!(
            "local ports {LOW}-{HIGH} ({USABLE} usable, 0 reserved)  tcp_tw_reuse 0"
        )),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("NETNS") && lines[1].ends_with("OPENED BY"));
    let row = lines
        .iter()
        .find(|l| l.contains(&format!("127.0.0.1:{PORT}")))
        .unwrap_or_else(|| panic!("no row for the destination: {}", stdout));
    let words: Vec<&str> = row.split_whitespace().collect();
    // NETNS LOCAL DESTINATION IN_USE TIME_WAIT SHARE ...
    assert_eq!(words[0], ns.id().to_string());
    assert_eq!(words[3], ss_toward(&ns).to_string());
    assert_eq!(words[4], N.to_string());
    assert_eq!(words[5], "93.3%");
    // Opened before the start: nobody is named.
    assert!(row.ends_with(" -"), "{row}");
    assert!(!row.contains(&client.to_string()));
    // One printout only.
    assert_eq!(stdout.matches("local ports").count(), 1, "{}", stdout);
}
