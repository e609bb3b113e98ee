//! Network namespaces and shared listeners, as on container hosts: servers on the same port in
//! two namespaces, a churning process inside its own namespace, a pre-fork server and an
//! SO_REUSEPORT pair. Each test makes its namespaces with `ip netns` and removes them, also on
//! failure. The truth is what /proc says: each process's fds matched with its namespace's TCP
//! tables (as `ss -p` does) and the namespace's own sockstat.
//! Run as root with `cargo xtask test`; without root every test prints `SKIPPED` and passes.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use twtrace_tests::{
    ChildGuard, DRIVER_TIMEOUT, Twtrace,
    live::{Live, counter, process, timewait_sockets_now},
    netns::{Netns, held_in_state},
    skip_unless_root,
};

const CLOSE_WAIT: u8 = 8;

/// Long enough for a snapshot after a reconciliation (every 2 s by default).
const SETTLE: Duration = Duration::from_millis(3500);

fn bin(name: &str) -> &'static Path {
    match name {
        "tcpdrive" => Path::new(env!("CARGO_BIN_EXE_tcpdrive")),
        "holdsrv" => Path::new(env!("CARGO_BIN_EXE_holdsrv")),
        "churn" => Path::new(env!("CARGO_BIN_EXE_churn")),
        other => panic!("no test binary {other}"),
    }
}

/// Reads stdout lines of `child` until one starts with `prefix`; returns them all.
fn lines_until(child: &mut Child, prefix: &str, count: usize) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.starts_with(prefix))
        .count()
        < count
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("waiting for {count} `{prefix}` lines ({e}); got {seen:?}"),
        }
    }
    seen
}

/// `holdsrv` inside `ns`; returns it with its workers' pids (empty for `single`).
fn hold_server(ns: &Netns, shape: &str, bind: &str, comm: &str) -> (ChildGuard, Vec<u32>) {
    let mut cmd = ns.command(bin("holdsrv"));
    cmd.args(["--bind", bind, "--shape", shape, "--comm", comm])
        .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(comm, &mut cmd);
    // Every line comes before holdsrv blocks: the port, then one per worker.
    let lines = if shape == "single" {
        lines_until(guard.child_mut(), "port", 1)
    } else {
        lines_until(guard.child_mut(), "worker", 2)
    };
    let pids = lines
        .iter()
        .filter_map(|l| l.strip_prefix("worker "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    (guard, pids)
}

/// `n` client-first connections to 127.0.0.1:`port` from inside `ns`: each client socket
/// closes first, so the server's socket waits in CLOSE_WAIT where it was accepted.
fn clients(ns: &Netns, port: u16, n: usize, comm: &str) {
    let mut cmd = ns.command(bin("tcpdrive"));
    cmd.args([
        "client",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--count",
        &n.to_string(),
        "--mode",
        "client-first",
        "--comm",
        comm,
    ])
    .stdout(Stdio::null());
    ChildGuard::spawn(comm, &mut cmd).wait_success(DRIVER_TIMEOUT);
}

/// Waits until the processes together hold `want` CLOSE_WAIT sockets (the accepts are done);
/// returns what each holds.
fn wait_held(pids: &[u32], want: usize) -> Vec<usize> {
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    loop {
        let held: Vec<usize> = pids.iter().map(|&p| held_in_state(p, CLOSE_WAIT)).collect();
        if held.iter().sum::<usize>() == want {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "processes {pids:?} hold {held:?} CLOSE_WAIT sockets, want {want} in all"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Two namespaces, each with a server on 0.0.0.0:8080 that keeps what it accepts: each
/// server's CLOSE_WAIT sockets are its own, not the other's; and a server-closes-first server
/// on 8081 in each gets exactly its own TIME_WAIT entries.
#[test]
fn the_same_port_in_two_namespaces_is_two_servers() {
    const TEST: &str = "netns the_same_port_in_two_namespaces_is_two_servers";
    if skip_unless_root(TEST) {
        return;
    }
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let live = Live::start(&["--port".into(), "8080,8081".into()]);
    let (srv_a, _) = hold_server(&a, "single", "0.0.0.0:8080", "twns-hold-a");
    let (srv_b, _) = hold_server(&b, "single", "0.0.0.0:8080", "twns-hold-b");
    let mut tw_servers = Vec::new();
    for (ns, n, comm) in [(&a, 3, "twns-tw-a"), (&b, 4, "twns-tw-b")] {
        let mut cmd = ns.command(bin("tcpdrive"));
        cmd.args([
            "server",
            "--bind",
            "0.0.0.0:8081",
            "--count",
            &n.to_string(),
            "--mode",
            "server-first",
            "--comm",
            comm,
        ])
        .stdout(Stdio::piped());
        let mut guard = ChildGuard::spawn(comm, &mut cmd);
        lines_until(guard.child_mut(), "port", 1);
        tw_servers.push((guard, n));
    }
    clients(&a, 8080, 5, "twns-cl-a");
    clients(&b, 8080, 7, "twns-cl-b");
    let mut cmd_clients = Vec::new();
    for (ns, n) in [(&a, 3), (&b, 4)] {
        let mut cmd = ns.command(bin("tcpdrive"));
        cmd.args([
            "client",
            "--connect",
            "127.0.0.1:8081",
            "--count",
            &n.to_string(),
            "--mode",
            "server-first",
            "--comm",
            "twns-twcl",
        ])
        .stdout(Stdio::null());
        cmd_clients.push(ChildGuard::spawn("twns-twcl", &mut cmd));
    }
    for c in &mut cmd_clients {
        c.wait_success(DRIVER_TIMEOUT);
    }
    for (s, _) in &mut tw_servers {
        s.wait_success(DRIVER_TIMEOUT);
    }
    assert_eq!(wait_held(&[srv_a.pid()], 5), vec![5]);
    assert_eq!(wait_held(&[srv_b.pid()], 7), vec![7]);
    let run = live.stop_after(SETTLE);
    let last = run.last();
    eprintln!("[{TEST}] last snapshot: {last}");
    assert_eq!(counter(last, srv_a.pid(), "close_wait_now"), 5);
    assert_eq!(counter(last, srv_b.pid(), "close_wait_now"), 7);
    for (ns, srv) in [(&a, &srv_a), (&b, &srv_b)] {
        let row = process(last, srv.pid()).expect("server row");
        assert_eq!(row["netns"], ns.id(), "the row names its namespace");
    }
    for (s, n) in &tw_servers {
        assert_eq!(counter(last, s.pid(), "timewait_entered"), *n as u64);
    }
    assert!(
        last["totals"]["namespaces"].as_u64().unwrap_or(0) >= 3,
        "the host's and both test namespaces are read: {}",
        last["totals"]
    );
    assert_eq!(last["lost_events"], 0);
}

/// Listeners that existed before twtrace started are learnt per namespace: the accepted
/// sockets of each are attributed to the server of its own namespace from the first packet,
/// and the accept names the same process.
#[test]
fn listeners_from_before_the_start_are_keyed_by_namespace() {
    const TEST: &str = "netns listeners_from_before_the_start_are_keyed_by_namespace";
    if skip_unless_root(TEST) {
        return;
    }
    let (a, b) = (Netns::new("pa"), Netns::new("pb"));
    let (srv_a, _) = hold_server(&a, "single", "0.0.0.0:8080", "twns-pre-a");
    let (srv_b, _) = hold_server(&b, "single", "0.0.0.0:8080", "twns-pre-b");
    let trace = Twtrace::start(&["--port".into(), "8080".into()]);
    clients(&a, 8080, 2, "twns-pcl-a");
    clients(&b, 8080, 3, "twns-pcl-b");
    wait_held(&[srv_a.pid()], 2);
    wait_held(&[srv_b.pid()], 3);
    thread::sleep(Duration::from_millis(300));
    let t = trace.stop();
    t.summary();
    for (ns, srv, n) in [(&a, &srv_a, 2), (&b, &srv_b, 3)] {
        let accepted: Vec<_> = t
            .events
            .iter()
            .filter(|e| e.netns == ns.id() && e.lport == 8080)
            .collect();
        for e in &accepted {
            eprintln!("[{TEST}] {}", e.raw);
        }
        let syn_recv = accepted
            .iter()
            .filter(|e| e.old == "LISTEN" && e.new == "SYN_RECV")
            .count();
        assert_eq!(syn_recv, n, "child sockets in namespace {}", ns.id());
        assert!(
            accepted
                .iter()
                .filter(|e| e.old == "LISTEN")
                .all(|e| e.pid == srv.pid() && e.attribution == "listener"),
            "each child goes to its own namespace's listener"
        );
        let accepts = accepted.iter().filter(|e| e.accept).count();
        assert_eq!(accepts, n, "each accept() seen");
        assert!(
            accepted
                .iter()
                .filter(|e| e.accept)
                .all(|e| e.pid == srv.pid() && e.attribution == "accepted")
        );
    }
}

/// A process churning inside its own namespace: the host's leaderboard counts its TIME_WAIT
/// entries exactly and keeps its gauge in line with that namespace's own sockstat.
#[test]
fn churn_in_a_namespace_keeps_its_time_wait_gauge() {
    const TEST: &str = "netns churn_in_a_namespace_keeps_its_time_wait_gauge";
    if skip_unless_root(TEST) {
        return;
    }
    const N: u64 = 400;
    let ns = Netns::new("churn");
    let live = Live::start(&["--netns".into(), format!("/run/netns/{}", ns.name)]);
    let mut cmd = ns.command(bin("churn"));
    cmd.args([
        "--clients",
        "1",
        "--servers",
        "1",
        "--count",
        &N.to_string(),
        "--duration",
        "30",
    ])
    .stdout(Stdio::piped());
    let mut churn = ChildGuard::spawn("churn", &mut cmd);
    churn.wait_success(DRIVER_TIMEOUT);
    let pid = churn.pid();
    let run = live.stop_after(SETTLE);
    let tw = ns.sockstat_tw();
    let last = run.last();
    eprintln!("[{TEST}] last snapshot: {last}; namespace sockstat tw {tw}");
    assert_eq!(counter(last, pid, "timewait_entered"), N);
    // sockstat's tw counts timewait sockets in both substates: TIME_WAIT and orphaned FIN_WAIT2.
    let now = timewait_sockets_now(last, pid);
    let slack = (tw / 100).max(2);
    assert!(
        now.abs_diff(tw) <= slack,
        "timewait_now + fin_wait2_now {now} vs the namespace's sockstat tw {tw}"
    );
    assert_eq!(
        last["totals"]["timewait_kernel"].as_u64(),
        Some(tw),
        "--netns reads that namespace's own sockstat"
    );
    assert_eq!(last["lost_events"], 0);
}

/// Shared listeners: a pre-fork server (the parent listens, two workers accept) and an
/// SO_REUSEPORT pair. Each worker's CLOSE_WAIT count is what its fds hold, the parent holds
/// none, and the trace names the worker at each accept.
#[test]
fn shared_listeners_go_to_the_worker_that_accepted() {
    const TEST: &str = "netns shared_listeners_go_to_the_worker_that_accepted";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 12;
    let ns = Netns::new("shared");
    let netns = format!("/run/netns/{}", ns.name);
    let trace = Twtrace::start(&["--netns".into(), netns.clone()]);
    let live = Live::start(&["--netns".into(), netns]);
    let (prefork, prefork_workers) = hold_server(&ns, "prefork", "0.0.0.0:8080", "twns-pf");
    let (reuse, reuse_workers) = hold_server(&ns, "reuseport", "0.0.0.0:8081", "twns-rp");
    assert_eq!((prefork_workers.len(), reuse_workers.len()), (2, 2));
    clients(&ns, 8080, N, "twns-pfcl");
    clients(&ns, 8081, N, "twns-rpcl");
    let held_pf = wait_held(&prefork_workers, N);
    let held_rp = wait_held(&reuse_workers, N);
    eprintln!("[{TEST}] prefork workers hold {held_pf:?}, reuseport workers {held_rp:?}");
    thread::sleep(Duration::from_millis(300));
    let t = trace.stop();
    t.summary();
    let run = live.stop_after(SETTLE);
    let last = run.last();
    eprintln!("[{TEST}] last snapshot: {last}");
    for (workers, held, port) in [
        (&prefork_workers, &held_pf, 8080),
        (&reuse_workers, &held_rp, 8081),
    ] {
        for (&w, &h) in workers.iter().zip(held.iter()) {
            assert_eq!(
                counter(last, w, "close_wait_now"),
                h as u64,
                "worker {w} on port {port}"
            );
            let accepts = t
                .events
                .iter()
                .filter(|e| e.accept && e.pid == w && e.lport == port)
                .count();
            assert_eq!(accepts, h, "accept() events of worker {w}");
        }
    }
    for parent in [prefork.pid(), reuse.pid()] {
        assert_eq!(
            counter(last, parent, "close_wait_now"),
            0,
            "parent {parent}"
        );
    }
    assert_eq!(last["totals"]["close_wait_now"], 2 * N as u64);
}
