//! `--cgroup`: only sockets whose owner is in a cgroup or below it, kept in the kernel.
//!
//! Two clients talk to one server. One client is moved into a cgroup made below the chosen one
//! after twtrace started, so only the periodic refresh of the kernel's filter can let its
//! sockets through; the other goes into a sibling whose name merely starts with the chosen
//! cgroup's name (a path prefix is whole components, not text). Only the first client's events
//! may be printed, all of them. The test makes its cgroups in the v2 hierarchy and removes them,
//! also on failure. Run as root with `cargo xtask test`; without root it prints `SKIPPED`.

use std::{path::Path, process::Command, time::Duration};

use twtrace_tests::{
    Checks, Client, ClientOpts, DRIVER_TIMEOUT, Mode, Server, Twtrace,
    cgroup::{Cgroups, cgroup2_root},
    select, skip_unless_root, twtrace_bin,
};

/// How long a cgroup made while twtrace runs may take to join its filter: the filter is
/// refreshed on the live source's stats tick, once a second.
const REFRESH_WAIT: Duration = Duration::from_millis(2500);

#[test]
fn only_sockets_of_the_cgroup_and_below_also_of_a_cgroup_made_after_the_start() {
    const TEST: &str = "cgroup_filter only_sockets_of_the_cgroup_and_below";
    if skip_unless_root(TEST) {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("[{TEST}] SKIPPED: no cgroup v2 hierarchy is mounted");
        return;
    };
    const N: usize = 4;
    let driver = Path::new(env!("CARGO_BIN_EXE_tcpdrive"));
    let name = format!("twtrace-cgfilter-{}", std::process::id());
    let mut cgroups = Cgroups::new(root.clone());
    let chosen = cgroups.make(root.join(&name));
    let server = Server::start(driver, "127.0.0.1:0", 2 * N, Mode::ClientFirst, "twcg-srv");
    // Given with the mount in front: the same cgroup as `/<name>`.
    let trace = Twtrace::start(&["--cgroup".into(), chosen.display().to_string()]);

    // Both made after the start.
    let below = cgroups.make(chosen.join("late"));
    let sibling = cgroups.make(root.join(format!("{name}-sibling")));
    let client = |comm: &str| {
        Client::start(
            driver,
            &format!("127.0.0.1:{}", server.port),
            N,
            Mode::ClientFirst,
            comm,
            ClientOpts {
                wait_stdin: true,
                ..ClientOpts::default()
            },
        )
    };
    let mut inside = client("twcg-in");
    let mut outside = client("twcg-out");
    Cgroups::enter(&below, inside.pid());
    Cgroups::enter(&sibling, outside.pid());
    std::thread::sleep(REFRESH_WAIT);
    inside.go();
    outside.go();
    inside.guard.wait_success(DRIVER_TIMEOUT);
    outside.guard.wait_success(DRIVER_TIMEOUT);
    let mut server = server;
    server.guard.wait_success(DRIVER_TIMEOUT);
    let t = trace.stop();
    let summary = t.summary();

    let mut checks = Checks::new(TEST);
    let all: Vec<_> = t.events.iter().collect();
    // Nothing else on the host (other tests, the server, the other client) is in the cgroup.
    checks.all("every event is the client's in the cgroup", &all, |e| {
        e.pid == inside.pid() && e.comm == "twcg-in"
    });
    checks.count(
        "its TIME_WAIT entries",
        &select(&all, |e| e.timewait_entry()),
        N,
    );
    checks.count(
        "its connects",
        &select(&all, |e| e.transition() == "CLOSE->SYN_SENT"),
        N,
    );
    checks.count(
        "events of the other client",
        &select(&all, |e| e.pid == outside.pid()),
        0,
    );
    checks.count(
        "events of the server",
        &select(&all, |e| e.pid == server.pid()),
        0,
    );
    checks.value("lost events", summary.lost, 0);
    let said = format!("(cgroup /{name})");
    checks.value(
        "the start line names the cgroup, without the mount",
        t.stderr
            .iter()
            .any(|l| l.starts_with("twtrace: tracing") && l.contains(&said)),
        true,
    );
    checks.finish();
}

/// `twtrace ARGS`, which must fail before tracing anything: its stderr.
fn refused(args: &[&str]) -> Vec<String> {
    let out = Command::new(twtrace_bin())
        .args(args)
        .output()
        .expect("run twtrace");
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_cgroup_that_is_not_there_and_a_replay_are_refused_in_one_line() {
    let lines = refused(&["trace", "--cgroup", "/twtrace-no-such-cgroup"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("twtrace: --cgroup /twtrace-no-such-cgroup: "),
        "{lines:?}"
    );
    // A recording's cgroup ids are the recording machine's: refused before the file is read.
    let lines = refused(&["trace", "--from", "/nonexistent.twr", "--cgroup", "/"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("--cgroup / works only live"), "{lines:?}");
}
