//! Privileged integration tests: the real twtrace binary, real eBPF in the running kernel, real
//! loopback TCP between tcpdrive processes with known pids and comm names, exact numbers.
//!
//! Run as root with `cargo xtask test` (which builds twtrace and sets TWTRACE_BIN), or
//! `TWTRACE_BIN=target/debug/twtrace cargo test -p twtrace-tests -- --test-threads=1 --nocapture`.
//! Without root every test prints `SKIPPED: needs root` and passes.
//!
//! Every test is one row of [`SCENARIOS`] (the traffic, and what twtrace is told to watch) run by
//! [`run`], which makes the checks every run must pass (exit 0, a summary line, nothing lost)
//! before the test's own.

use std::path::Path;
use std::time::Instant;

use twtrace_tests::{
    CLOSE_WAIT, Checks, ClientOpts, DRIVER_TIMEOUT, Event, Loopback, Mode, Peers, TIME_WAIT,
    Traffic, Twtrace, print_breakdown, select, skip_unless_root,
};

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// What twtrace is told to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// `--port` with the server's port; the checks see the events on that port.
    Port,
    /// `--pid` with the client's pid alone; the checks see every event twtrace printed.
    ClientPid,
}

/// One test's traffic and filter.
struct Scenario {
    test: &'static str,
    mode: Mode,
    /// Connections made, one after the other.
    n: usize,
    server_comm: &'static str,
    client_comm: &'static str,
    loopback: Loopback,
    filter: Filter,
    /// Leak mode: how long the client holds its sockets once it printed `holding`.
    hold_ms: Option<u64>,
}

impl Scenario {
    /// Over 127.0.0.1, filtered on the server's port.
    const fn port(
        test: &'static str,
        mode: Mode,
        n: usize,
        server_comm: &'static str,
        client_comm: &'static str,
    ) -> Self {
        Self {
            test,
            mode,
            n,
            server_comm,
            client_comm,
            loopback: Loopback::V4,
            filter: Filter::Port,
            hold_ms: None,
        }
    }
}

#[rustfmt::skip]
const SCENARIOS: &[Scenario] = &[
    Scenario::port("client_closes_first", Mode::ClientFirst, 50, "tws-cfirst", "twc-cfirst"),
    Scenario::port("server_closes_first", Mode::ServerFirst, 50, "tws-sfirst", "twc-sfirst"),
    Scenario::port("abort_gives_no_time_wait", Mode::Abort, 20, "tws-abort", "twc-abort"),
    Scenario {
        loopback: Loopback::V6,
        ..Scenario::port("ipv6", Mode::ClientFirst, 50, "tws-ipv6", "twc-ipv6")
    },
    Scenario {
        hold_ms: Some(500),
        ..Scenario::port("close_wait_leak", Mode::Leak, 20, "tws-leak", "twc-leak")
    },
    Scenario {
        filter: Filter::ClientPid,
        ..Scenario::port("pid_filter", Mode::ClientFirst, 50, "tws-pid", "twc-pid")
    },
    Scenario::port("no_loss_modest_rate", Mode::ClientFirst, 3000, "tws-rate", "twc-rate"),
];

/// What a test's own checks get to see of a finished run.
struct Run<'a> {
    n: usize,
    port: u16,
    server: u32,
    client: u32,
    server_comm: &'static str,
    client_comm: &'static str,
    /// The transitions of the connections between the peers (see [`Filter`]).
    events: Vec<&'a Event>,
    /// Their accept() lines (not transitions: kept apart, see `Event::accept`).
    accepts: Vec<&'a Event>,
}

impl<'a> Run<'a> {
    fn select(&self, pred: impl Fn(&Event) -> bool) -> Vec<&'a Event> {
        select(&self.events, pred)
    }

    /// The listener's and the accepted sockets' events.
    fn server_side(&self) -> Vec<&'a Event> {
        self.select(|e| e.lport == self.port)
    }

    fn client_side(&self) -> Vec<&'a Event> {
        self.select(|e| e.lport != self.port)
    }

    fn entered(&self, state: &str) -> Vec<&'a Event> {
        self.select(|e| e.new == state)
    }
}

/// One side of the connections.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }

    fn pid(self, run: &Run) -> u32 {
        match self {
            Self::Client => run.client,
            Self::Server => run.server,
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }
}

/// Every connection leaves exactly one TIME_WAIT, on the side that closed first and attributed
/// to its pid; the other side's pid gets none.
fn time_wait_only_for(c: &mut Checks, run: &Run, closer: Side) {
    let time_wait = run.entered(TIME_WAIT);
    for (side, want) in [(closer, run.n), (closer.other(), 0)] {
        c.count(
            &format!("TIME_WAIT for the {} pid", side.name()),
            &select(&time_wait, |e| e.pid == side.pid(run)),
            want,
        );
    }
    c.count("TIME_WAIT on the port in total", &time_wait, run.n);
}

/// Starts the peers and twtrace as `test`'s row of [`SCENARIOS`] says, lets the traffic run to
/// its end, stops twtrace, makes the checks every run must pass, then `checks`.
fn run(test: &str, checks: impl FnOnce(&mut Checks, &Run)) {
    if skip_unless_root(test) {
        return;
    }
    let s = SCENARIOS
        .iter()
        .find(|s| s.test == test)
        .unwrap_or_else(|| panic!("no scenario named {test}"));
    let traffic = Traffic {
        loopback: s.loopback,
        client_opts: ClientOpts {
            hold_ms: s.hold_ms,
            wait_stdin: s.filter == Filter::ClientPid,
        },
        ..Traffic::new(driver(), s.mode, s.n, s.server_comm, s.client_comm)
    };
    let started = Instant::now();
    let (mut peers, twtrace) = match s.filter {
        Filter::Port => traffic.start(|port| Twtrace::start(&["--port".into(), port.to_string()])),
        Filter::ClientPid => {
            // The client starts blocked on stdin, so its pid can be given to twtrace before any
            // of its traffic.
            let server = traffic.server();
            let mut client = traffic.client(server.port);
            let twtrace = Twtrace::start(&["--pid".into(), client.pid().to_string()]);
            client.go();
            (Peers { server, client }, twtrace)
        }
    };
    if s.mode == Mode::Leak {
        peers.client.wait_for_stdout("holding", DRIVER_TIMEOUT);
    }
    peers.wait();
    let trace = twtrace.stop();
    eprintln!("[{test}] run took {:?}", started.elapsed());
    let (port, server, client) = (peers.port(), peers.server.pid(), peers.client.pid());
    let summary = trace.summary();
    let all = match s.filter {
        Filter::Port => trace.on_port(port),
        Filter::ClientPid => trace.events.iter().collect(),
    };
    let (accepts, events): (Vec<&Event>, Vec<&Event>) = all.into_iter().partition(|e| e.accept);
    print_breakdown(
        test,
        &trace,
        &events,
        port,
        &[("client", client), ("server", server)],
    );

    let mut c = Checks::new(test);
    c.value("lost", summary.lost, 0);
    checks(
        &mut c,
        &Run {
            n: s.n,
            port,
            server,
            client,
            server_comm: s.server_comm,
            client_comm: s.client_comm,
            events,
            accepts,
        },
    );
    c.finish();
}

/// The client closes first, so every client socket goes through TIME_WAIT, and the server's
/// accepted sockets pass through CLOSE_WAIT. The server-side transitions mostly run in softirq
/// while the client is current: twtrace must still name the server.
#[test]
fn client_closes_first() {
    run("client_closes_first", |c, run| {
        let (server_side, client_side) = (run.server_side(), run.client_side());
        let differs = select(&server_side, |e| e.current_pid != run.server).len();
        eprintln!(
            "[client_closes_first] server-side events whose current_pid was not the server: \
             {differs} of {}",
            server_side.len()
        );
        time_wait_only_for(c, run, Side::Client);
        c.all(
            "TIME_WAIT events carry the client comm",
            &run.entered(TIME_WAIT),
            |e| e.comm == run.client_comm,
        );
        c.all(
            "server-side events have the server pid",
            &server_side,
            |e| e.pid == run.server,
        );
        c.all(
            "client-side events have the client pid",
            &client_side,
            |e| e.pid == run.client,
        );
        let close_wait = select(&server_side, |e| e.new == CLOSE_WAIT);
        c.count("server-side CLOSE_WAIT", &close_wait, run.n);
        // Through the listener until the server's accept() returned the socket, the server
        // itself after; which one depends on whether the client's FIN came first.
        c.all(
            "server-side CLOSE_WAIT: server pid, attribution listener or accepted",
            &close_wait,
            |e| {
                e.pid == run.server
                    && e.comm == run.server_comm
                    && ["listener", "accepted"].contains(&e.attribution.as_str())
            },
        );
        c.count("accept() lines", &run.accepts, run.n);
        c.all(
            "accept() lines: server pid, attribution accepted, server side",
            &run.accepts,
            |e| e.pid == run.server && e.attribution == "accepted" && e.lport == run.port,
        );
    });
}

/// The server closes first: TIME_WAIT moves to the server's accepted sockets.
#[test]
fn server_closes_first() {
    run("server_closes_first", |c, run| {
        time_wait_only_for(c, run, Side::Server);
        // The server closed these sockets itself before they reached TIME_WAIT, so the owner is
        // known first-hand.
        c.all(
            "TIME_WAIT: server comm, attribution owner, server-side",
            &run.entered(TIME_WAIT),
            |e| e.comm == run.server_comm && e.attribution == "owner" && e.lport == run.port,
        );
        let close_wait = run.entered(CLOSE_WAIT);
        c.count("CLOSE_WAIT on the port", &close_wait, run.n);
        c.all(
            "CLOSE_WAIT: client pid and comm, attribution owner",
            &close_wait,
            |e| e.pid == run.client && e.comm == run.client_comm && e.attribution == "owner",
        );
    });
}

/// A close with SO_LINGER {on, 0} sends a reset: no TIME_WAIT on either side.
#[test]
fn abort_gives_no_time_wait() {
    run("abort_gives_no_time_wait", |c, run| {
        let (server_side, client_side) = (run.server_side(), run.client_side());
        c.count("TIME_WAIT on the port", &run.entered(TIME_WAIT), 0);
        c.count(
            "client ESTABLISHED->CLOSE for the client pid",
            &select(&client_side, |e| {
                e.old == "ESTABLISHED"
                    && e.new == "CLOSE"
                    && e.pid == run.client
                    && e.comm == run.client_comm
            }),
            run.n,
        );
        // The listener's own LISTEN->CLOSE at server exit is not a reset.
        let server_closes = select(&server_side, |e| e.new == "CLOSE" && e.old != "LISTEN");
        c.count(
            "server-side closes (accepted sockets)",
            &server_closes,
            run.n,
        );
        c.all(
            "server-side closes: reset received, server pid",
            &server_closes,
            |e| e.reset.as_deref() == Some("received") && e.pid == run.server,
        );
        // SO_LINGER 0 makes tcp_disconnect() set CLOSE first and send the reset after; the
        // kernel side holds the close until the socket is destroyed so the reset is seen.
        let client_closes = select(&client_side, |e| e.new == "CLOSE");
        c.count("client-side closes", &client_closes, run.n);
        c.all(
            "client-side closes: reset sent, client pid",
            &client_closes,
            |e| e.reset.as_deref() == Some("sent") && e.pid == run.client,
        );
    });
}

/// The same as client_closes_first over ::1.
#[test]
fn ipv6() {
    run("ipv6", |c, run| {
        time_wait_only_for(c, run, Side::Client);
        c.all(
            "TIME_WAIT: client comm, ::1 to ::1",
            &run.entered(TIME_WAIT),
            |e| e.comm == run.client_comm && e.laddr == "::1" && e.raddr == "::1",
        );
        c.all("events on the port are ipv6", &run.events, |e| {
            e.family == "ipv6"
        });
        c.all(
            "server-side events have the server pid",
            &run.server_side(),
            |e| e.pid == run.server,
        );
    });
}

/// The client never closes its sockets until it exits: each one sits in CLOSE_WAIT, and that
/// leak must be pinned on the client even though the server's close made the transition happen.
#[test]
fn close_wait_leak() {
    run("close_wait_leak", |c, run| {
        let close_wait = run.entered(CLOSE_WAIT);
        let current_differs = select(&close_wait, |e| e.current_pid != run.client).len();
        eprintln!(
            "[close_wait_leak] CLOSE_WAIT events whose current_pid was not the client: \
             {current_differs} of {}",
            close_wait.len()
        );
        c.count(
            "CLOSE_WAIT for the client pid, comm and attribution owner",
            &select(&close_wait, |e| {
                e.pid == run.client && e.comm == run.client_comm && e.attribution == "owner"
            }),
            run.n,
        );
        c.count("CLOSE_WAIT on the port in total", &close_wait, run.n);
    });
}

/// `--pid` alone: only the client's sockets, nothing of the server's or anyone else's.
#[test]
fn pid_filter() {
    run("pid_filter", |c, run| {
        c.all("every event has the client pid", &run.events, |e| {
            e.pid == run.client
        });
        let time_wait = run.entered(TIME_WAIT);
        c.count("TIME_WAIT", &time_wait, run.n);
        c.all(
            "TIME_WAIT: client comm, client side of our port",
            &time_wait,
            |e| e.comm == run.client_comm && e.rport == run.port,
        );
    });
}

/// 3000 connections as fast as one client and one server make them: nothing may be lost.
#[test]
fn no_loss_modest_rate() {
    run("no_loss_modest_rate", |c, run| {
        c.count(
            "TIME_WAIT for the client pid",
            &run.select(|e| e.timewait_entry() && e.pid == run.client),
            run.n,
        );
        c.at_least("events on the port", &run.events, run.n * 8);
    });
}
