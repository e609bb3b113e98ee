//! Privileged integration tests: the real twtrace binary, real eBPF in the running kernel, real
//! loopback TCP between tcpdrive processes with known pids and comm names, exact numbers.
//!
//! Run as root with `cargo xtask test` (which builds twtrace and sets TWTRACE_BIN), or
//! `TWTRACE_BIN=target/debug/twtrace cargo test -p twtrace-tests -- --test-threads=1 --nocapture`.
//! Without root every test prints `SKIPPED: needs root` and passes.

use std::path::Path;

use twtrace_tests::{
    CLOSE_WAIT, Checks, Client, ClientOpts, DRIVER_TIMEOUT, Mode, PortRunSpec, Server, TIME_WAIT,
    Twtrace, port_run, print_breakdown, select, skip_unless_root,
};

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

fn spec<'a>(
    mode: Mode,
    count: usize,
    server_comm: &'a str,
    client_comm: &'a str,
) -> PortRunSpec<'a> {
    PortRunSpec {
        driver: driver(),
        bind: "127.0.0.1:0",
        host: "127.0.0.1",
        count,
        mode,
        server_comm,
        client_comm,
        client_opts: ClientOpts::default(),
        client_says: None,
    }
}

/// The client closes first, so every client socket goes through TIME_WAIT, and the server's
/// accepted sockets pass through CLOSE_WAIT. The server-side transitions mostly run in softirq
/// while the client is current: twtrace must still name the server.
#[test]
fn client_closes_first() {
    const TEST: &str = "client_closes_first";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 50;
    let (sc, cc) = ("tws-cfirst", "twc-cfirst");
    let run = port_run(spec(Mode::ClientFirst, N, sc, cc));
    let (port, server, client) = (run.port, run.server_pid, run.client_pid);
    let summary = run.trace.summary();
    let events = run.trace.on_port(port);
    print_breakdown(
        TEST,
        &run.trace,
        &events,
        port,
        &[("client", client), ("server", server)],
    );

    let server_side = select(&events, |e| e.lport == port);
    let client_side = select(&events, |e| e.lport != port);
    let differs = select(&server_side, |e| e.current_pid != server).len();
    eprintln!(
        "[{TEST}] server-side events whose current_pid was not the server: {differs} of {}",
        server_side.len()
    );

    let mut c = Checks::new(TEST);
    c.value("lost", summary.lost, 0);
    c.count(
        "TIME_WAIT for the client pid",
        &select(&events, |e| e.new == TIME_WAIT && e.pid == client),
        N,
    );
    c.count(
        "TIME_WAIT for the server pid",
        &select(&events, |e| e.new == TIME_WAIT && e.pid == server),
        0,
    );
    c.count(
        "TIME_WAIT on the port in total",
        &select(&events, |e| e.new == TIME_WAIT),
        N,
    );
    c.all(
        "TIME_WAIT events carry the client comm",
        &select(&events, |e| e.new == TIME_WAIT),
        |e| e.comm == cc,
    );
    c.all(
        "server-side events have the server pid",
        &server_side,
        |e| e.pid == server,
    );
    c.all(
        "client-side events have the client pid",
        &client_side,
        |e| e.pid == client,
    );
    let close_wait = select(&server_side, |e| e.new == CLOSE_WAIT);
    c.count("server-side CLOSE_WAIT", &close_wait, N);
    c.all(
        "server-side CLOSE_WAIT: server pid, attribution listener",
        &close_wait,
        |e| e.pid == server && e.comm == sc && e.attribution == "listener",
    );
    c.finish();
}

/// The server closes first: TIME_WAIT moves to the server's accepted sockets.
#[test]
fn server_closes_first() {
    const TEST: &str = "server_closes_first";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 50;
    let (sc, cc) = ("tws-sfirst", "twc-sfirst");
    let run = port_run(spec(Mode::ServerFirst, N, sc, cc));
    let (port, server, client) = (run.port, run.server_pid, run.client_pid);
    let summary = run.trace.summary();
    let events = run.trace.on_port(port);
    print_breakdown(
        TEST,
        &run.trace,
        &events,
        port,
        &[("client", client), ("server", server)],
    );

    let mut c = Checks::new(TEST);
    c.value("lost", summary.lost, 0);
    c.count(
        "TIME_WAIT for the server pid",
        &select(&events, |e| e.new == TIME_WAIT && e.pid == server),
        N,
    );
    c.count(
        "TIME_WAIT for the client pid",
        &select(&events, |e| e.new == TIME_WAIT && e.pid == client),
        0,
    );
    c.count(
        "TIME_WAIT on the port in total",
        &select(&events, |e| e.new == TIME_WAIT),
        N,
    );
    // The server closed these sockets itself before they reached TIME_WAIT, so the owner is
    // known first-hand.
    c.all(
        "TIME_WAIT: server comm, attribution owner, server-side",
        &select(&events, |e| e.new == TIME_WAIT),
        |e| e.comm == sc && e.attribution == "owner" && e.lport == port,
    );
    let close_wait = select(&events, |e| e.new == CLOSE_WAIT);
    c.count("CLOSE_WAIT on the port", &close_wait, N);
    c.all(
        "CLOSE_WAIT: client pid and comm, attribution owner",
        &close_wait,
        |e| e.pid == client && e.comm == cc && e.attribution == "owner",
    );
    c.finish();
}

/// A close with SO_LINGER {on, 0} sends a reset: no TIME_WAIT on either side.
#[test]
fn abort_gives_no_time_wait() {
    const TEST: &str = "abort_gives_no_time_wait";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 20;
    let (sc, cc) = ("tws-abort", "twc-abort");
    let run = port_run(spec(Mode::Abort, N, sc, cc));
    let (port, server, client) = (run.port, run.server_pid, run.client_pid);
    let summary = run.trace.summary();
    let events = run.trace.on_port(port);
    print_breakdown(
        TEST,
        &run.trace,
        &events,
        port,
        &[("client", client), ("server", server)],
    );

    let client_side = select(&events, |e| e.lport != port);
    let server_side = select(&events, |e| e.lport == port);
    let mut c = Checks::new(TEST);
    c.value("lost", summary.lost, 0);
    c.count(
        "TIME_WAIT on the port",
        &select(&events, |e| e.new == TIME_WAIT),
        0,
    );
    c.count(
        "client ESTABLISHED->CLOSE for the client pid",
        &select(&client_side, |e| {
            e.old == "ESTABLISHED" && e.new == "CLOSE" && e.pid == client && e.comm == cc
        }),
        N,
    );
    // The listener's own LISTEN->CLOSE at server exit is not a reset.
    let server_closes = select(&server_side, |e| e.new == "CLOSE" && e.old != "LISTEN");
    c.count("server-side closes (accepted sockets)", &server_closes, N);
    c.all(
        "server-side closes: reset received, server pid",
        &server_closes,
        |e| e.reset.as_deref() == Some("received") && e.pid == server,
    );
    // SO_LINGER 0 makes tcp_disconnect() set CLOSE first and send the reset after; the kernel
    // side holds the close until the socket is destroyed so the reset is seen.
    let client_closes = select(&client_side, |e| e.new == "CLOSE");
    c.count("client-side closes", &client_closes, N);
    c.all(
        "client-side closes: reset sent, client pid",
        &client_closes,
        |e| e.reset.as_deref() == Some("sent") && e.pid == client,
    );
    c.finish();
}

/// The same as client_closes_first over ::1.
#[test]
fn ipv6() {
    const TEST: &str = "ipv6";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 50;
    let (sc, cc) = ("tws-ipv6", "twc-ipv6");
    let run = port_run(PortRunSpec {
        bind: "[::1]:0",
        host: "[::1]",
        ..spec(Mode::ClientFirst, N, sc, cc)
    });
    let (port, server, client) = (run.port, run.server_pid, run.client_pid);
    let summary = run.trace.summary();
    let events = run.trace.on_port(port);
    print_breakdown(
        TEST,
        &run.trace,
        &events,
        port,
        &[("client", client), ("server", server)],
    );

    let time_wait = select(&events, |e| e.new == TIME_WAIT);
    let mut c = Checks::new(TEST);
    c.value("lost", summary.lost, 0);
    c.count(
        "TIME_WAIT for the client pid",
        &select(&time_wait, |e| e.pid == client),
        N,
    );
    c.count("TIME_WAIT on the port in total", &time_wait, N);
    c.all("TIME_WAIT: client comm, ::1 to ::1", &time_wait, |e| {
        e.comm == cc && e.laddr == "::1" && e.raddr == "::1"
    });
    c.all("events on the port are ipv6", &events, |e| {
        e.family == "ipv6"
    });
    c.all(
        "server-side events have the server pid",
        &select(&events, |e| e.lport == port),
        |e| e.pid == server,
    );
    c.finish();
}

/// The client never closes its sockets until it exits: each one sits in CLOSE_WAIT, and that
/// leak must be pinned on the client even though the server's close made the transition happen.
#[test]
fn close_wait_leak() {
    const TEST: &str = "close_wait_leak";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 20;
    let (sc, cc) = ("tws-leak", "twc-leak");
    let run = port_run(PortRunSpec {
        client_opts: ClientOpts {
            hold_ms: Some(500),
            wait_stdin: false,
        },
        client_says: Some("holding"),
        ..spec(Mode::Leak, N, sc, cc)
    });
    let (port, server, client) = (run.port, run.server_pid, run.client_pid);
    let summary = run.trace.summary();
    let events = run.trace.on_port(port);
    print_breakdown(
        TEST,
        &run.trace,
        &events,
        port,
        &[("client", client), ("server", server)],
    );

    let close_wait = select(&events, |e| e.new == CLOSE_WAIT);
    let current_differs = select(&close_wait, |e| e.current_pid != client).len();
    eprintln!(
        "[{TEST}] CLOSE_WAIT events whose current_pid was not the client: {current_differs} of {}",
        close_wait.len()
    );
    let mut c = Checks::new(TEST);
    c.value("lost", summary.lost, 0);
    c.count(
        "CLOSE_WAIT for the client pid, comm and attribution owner",
        &select(&close_wait, |e| {
            e.pid == client && e.comm == cc && e.attribution == "owner"
        }),
        N,
    );
    c.count("CLOSE_WAIT on the port in total", &close_wait, N);
    c.finish();
}

/// `--pid` alone: only the client's sockets, nothing of the server's or anyone else's.
#[test]
fn pid_filter() {
    const TEST: &str = "pid_filter";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 50;
    let (sc, cc) = ("tws-pid", "twc-pid");
    let mut server = Server::start(driver(), "127.0.0.1:0", N, Mode::ClientFirst, sc);
    let port = server.port;
    // Started blocked on stdin so its pid can be given to twtrace before any of its traffic.
    let mut client = Client::start(
        driver(),
        &format!("127.0.0.1:{port}"),
        N,
        Mode::ClientFirst,
        cc,
        ClientOpts {
            hold_ms: None,
            wait_stdin: true,
        },
    );
    let (server_pid, client_pid) = (server.pid(), client.pid());
    let twtrace = Twtrace::start(&["--pid".into(), client_pid.to_string()]);
    client.go();
    client.guard.wait_success(DRIVER_TIMEOUT);
    server.guard.wait_success(DRIVER_TIMEOUT);
    let trace = twtrace.stop();
    let summary = trace.summary();
    let all: Vec<_> = trace.events.iter().collect();
    print_breakdown(
        TEST,
        &trace,
        &all,
        port,
        &[("client", client_pid), ("server", server_pid)],
    );

    let mut c = Checks::new(TEST);
    c.value("lost", summary.lost, 0);
    c.all("every event has the client pid", &all, |e| {
        e.pid == client_pid
    });
    c.count("TIME_WAIT", &select(&all, |e| e.new == TIME_WAIT), N);
    c.all(
        "TIME_WAIT: client comm, client side of our port",
        &select(&all, |e| e.new == TIME_WAIT),
        |e| e.comm == cc && e.rport == port,
    );
    c.finish();
}

/// 3000 connections as fast as one client and one server make them: nothing may be lost.
#[test]
fn no_loss_modest_rate() {
    const TEST: &str = "no_loss_modest_rate";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 3000;
    let (sc, cc) = ("tws-rate", "twc-rate");
    let started = std::time::Instant::now();
    let run = port_run(spec(Mode::ClientFirst, N, sc, cc));
    eprintln!("[{TEST}] run took {:?}", started.elapsed());
    let (port, server, client) = (run.port, run.server_pid, run.client_pid);
    let summary = run.trace.summary();
    let events = run.trace.on_port(port);
    print_breakdown(
        TEST,
        &run.trace,
        &events,
        port,
        &[("client", client), ("server", server)],
    );

    let mut c = Checks::new(TEST);
    c.value("lost (twtrace summary)", summary.lost, 0);
    c.count(
        "TIME_WAIT for the client pid",
        &select(&events, |e| e.new == TIME_WAIT && e.pid == client),
        N,
    );
    c.at_least("events on the port", &events, N * 8);
    c.finish();
}
