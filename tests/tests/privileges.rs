//! Privileged integration tests: the real twtrace binary run as uid 65534 (nobody) with only some
//! capabilities, through `setpriv` (util-linux), against real loopback TCP between tcpdrive
//! processes that the test starts as root, so reading their /proc entries takes capabilities.
//!
//! They check that each missing capability is named, with what it costs, and that the documented
//! least set (CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE; README, "Privileges")
//! attributes everything as root would. Without root they print `SKIPPED: needs root`; without
//! setpriv (or unshare, for the tracefs mount tests) they print `SKIPPED` naming util-linux and
//! install nothing.
//!
//! tracefs must be mounted for the runs that expect twtrace to start. When the host has it
//! unmounted, the test mounts it in a private mount namespace (`unshare --mount`) that only
//! twtrace lives in, so no mount outlives the test; the tests about an unmounted tracefs unmount
//! it the same way, inside such a namespace. `unshare` without `--fork` and `setpriv` both exec,
//! so the pid the test holds is twtrace's.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;

use twtrace_tests::{
    Checks, ChildGuard, DRIVER_TIMEOUT, Event, Mode, READY_TIMEOUT, Trace, Traffic, Twtrace,
    parse_summary, print_breakdown, select, skip_unless_root, staged::Staged,
};

const TRACEFS: &str = "/sys/kernel/tracing";
/// The user twtrace runs as: nobody, which owns none of the processes or files involved.
const NOBODY: u32 = 65534;
/// The least set for full function, as setpriv spells it (docs: README, "Privileges").
const LEAST: &[&str] = &[
    "bpf",
    "perfmon",
    "dac_read_search",
    "sys_ptrace",
    "sys_nice",
];
/// Connections per run: enough to count exactly, few enough to take well under a second.
const N: usize = 20;

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// Whether `program` can be run at all (it prints its version and exits).
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Prints a loud skip line and returns true unless the test can run: root, setpriv, and unshare
/// when twtrace must run in a mount namespace of its own (see [`under`]); both are util-linux.
/// Nothing is installed on the way.
fn skip(test: &str, tracefs: Tracefs) -> bool {
    if skip_unless_root(test) {
        return true;
    }
    let needs_unshare = tracefs == Tracefs::Unmounted || !tracefs_mounted();
    let needs: &[&str] = if needs_unshare {
        &["setpriv", "unshare"]
    } else {
        &["setpriv"]
    };
    let missing: Vec<&str> = needs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return false;
    }
    eprintln!(
        "SKIPPED: {test} needs {} (util-linux), not found on PATH; util-linux normally provides \
         it, and this test installs nothing",
        missing.join(" and ")
    );
    true
}

/// Whether the host has tracefs mounted at [`TRACEFS`], from this process's mountinfo (field 5 is
/// the mount point; the file system type follows the ` - ` separator).
fn tracefs_mounted() -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    info.lines().any(|line| {
        let point = line.split(' ').nth(4);
        let fs_type = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next());
        point == Some(TRACEFS) && fs_type == Some("tracefs")
    })
}

/// What the mount namespace twtrace runs in has at [`TRACEFS`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracefs {
    /// Mounted: the host's mount, or when the host has none, one made in a private namespace.
    Mounted,
    /// Not mounted: a private namespace with every tracefs mount there taken away.
    Unmounted,
}

/// The command that runs a program (appended after it) as nobody with exactly `caps`: permitted,
/// inheritable, ambient (so they survive the exec into a binary without file capabilities) and
/// the bounding set, so nothing more can be gained.
fn under(caps: &[&str], tracefs: Tracefs) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let setpriv = [
        "setpriv".to_owned(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
    ];
    let in_namespace = |script: &str| -> Vec<String> {
        let mut prefix: Vec<String> = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ]
        .map(str::to_owned)
        .to_vec();
        prefix.extend(setpriv.iter().cloned());
        prefix
    };
    match tracefs {
        Tracefs::Mounted if tracefs_mounted() => setpriv.to_vec(),
        Tracefs::Mounted => in_namespace(&format!(
            "mount -t tracefs tracefs {TRACEFS} && exec \"$@\""
        )),
        Tracefs::Unmounted => in_namespace(&format!(
            "while umount {TRACEFS} 2>/dev/null; do :; done; exec \"$@\""
        )),
    }
}

/// What a twtrace that was expected to refuse to start printed.
struct Refusal {
    status: ExitStatus,
    stdout: String,
    stderr: Vec<String>,
}

/// Runs `<prefix> <bin> <args>` to its exit (at most [`READY_TIMEOUT`]).
fn run_to_exit(prefix: &[String], bin: &Path, args: &[&str]) -> Refusal {
    let mut cmd = Command::new(&prefix[0]);
    cmd.args(&prefix[1..])
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!(
        "running {} {} {}",
        prefix.join(" "),
        bin.display(),
        args.join(" ")
    );
    let mut guard = ChildGuard::spawn("twtrace", &mut cmd);
    let read = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(guard.child_mut().stdout.take().expect("stdout")));
    let stderr = read(Box::new(guard.child_mut().stderr.take().expect("stderr")));
    let status = guard.wait_timeout(READY_TIMEOUT);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    eprintln!("exit {status}; stderr:\n{stderr}");
    Refusal {
        status,
        stdout,
        stderr: stderr.lines().map(str::to_owned).collect(),
    }
}

/// A refusal is exactly one line on stderr starting `twtrace: `, nothing on stdout, exit 1.
/// Returns the line.
fn one_line_exit_1(c: &mut Checks, refusal: &Refusal) -> String {
    c.value("exit code", refusal.status.code(), Some(1));
    c.value("stdout", refusal.stdout.as_str(), "");
    c.value("stderr lines", refusal.stderr.len(), 1);
    let line = refusal.stderr.first().cloned().unwrap_or_default();
    c.value(
        "the line starts with `twtrace: `",
        line.starts_with("twtrace: "),
        true,
    );
    line
}

/// `field` of /proc/<pid>/status, e.g. `Uid` or `CapEff`.
fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The effective set setpriv should have given: `caps` as CapEff bits.
fn cap_bits(caps: &[&str]) -> u64 {
    caps.iter()
        .map(|c| match *c {
            "dac_read_search" => 1 << 2,
            "sys_ptrace" => 1 << 19,
            "sys_admin" => 1 << 21,
            "sys_nice" => 1 << 23,
            "perfmon" => 1 << 38,
            "bpf" => 1 << 39,
            other => panic!("no bit known for {other}"),
        })
        .fold(0, |bits, bit| bits | bit)
}

/// A finished run: the trace, the peers' pids and port, and what the checks look at.
struct Run {
    trace: Trace,
    port: u16,
    server: u32,
    client: u32,
}

impl Run {
    fn events(&self) -> Vec<&Event> {
        self.trace.on_port(self.port)
    }

    fn server_side(&self) -> Vec<&Event> {
        select(&self.events(), |e| e.lport == self.port)
    }

    fn client_side(&self) -> Vec<&Event> {
        select(&self.events(), |e| e.lport != self.port)
    }
}

/// Starts a server (as root, before twtrace: a listener twtrace can only learn from
/// /proc/<pid>/fd), then twtrace through `prefix` filtered on its port (checking it runs as
/// nobody with exactly `caps`), then `N` server-first connections; stops twtrace and makes the
/// checks every run must pass: exit 0, nothing lost, and the client side, which twtrace learns
/// from the client's own connect(), attributed to the client.
fn traced(test: &str, c: &mut Checks, prefix: &[String], caps: &[&str]) -> Run {
    let staged = Staged::new(test);
    let traffic = Traffic::new(driver(), Mode::ServerFirst, N, "tws-privs", "twc-privs");
    let (mut peers, twtrace) = traffic.start(|port| {
        let twtrace = Twtrace::start_via(
            prefix,
            &staged.bin,
            &["--port".to_owned(), port.to_string()],
        );
        // Proof that setpriv did what it was asked, while twtrace surely runs.
        c.value(
            "twtrace's uids (real, effective, saved, fs)",
            status_field(twtrace.pid(), "Uid"),
            format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}"),
        );
        c.value(
            "twtrace's effective capabilities",
            status_field(twtrace.pid(), "CapEff"),
            format!("{:016x}", cap_bits(caps)),
        );
        twtrace
    });
    peers.wait();
    let trace = twtrace.stop();
    let summary = trace.summary();
    c.value("lost", summary.lost, 0);
    let run = Run {
        port: peers.port(),
        server: peers.server.pid(),
        client: peers.client.pid(),
        trace,
    };
    print_breakdown(
        test,
        &run.trace,
        &run.events(),
        run.port,
        &[("client", run.client), ("server", run.server)],
    );
    let client_side = run.client_side();
    c.count("client-side events", &client_side, 5 * N);
    c.all(
        "client-side events have the client pid",
        &client_side,
        |e| e.pid == run.client && e.attribution == "owner",
    );
    run
}

/// The stderr lines that say a capability is missing or something works less well.
fn capability_lines(trace: &Trace) -> Vec<&String> {
    trace
        .stderr
        .iter()
        .filter(|l| l.contains("CAP_") || l.starts_with("twtrace: without"))
        .collect()
}

/// Checks that the run printed exactly one capability notice and that it says each of `wants`;
/// returns it.
fn the_one_notice<'a>(c: &mut Checks, trace: &'a Trace, wants: &[&str]) -> &'a str {
    let notices = capability_lines(trace);
    c.value("capability notices", notices.len(), 1);
    let notice = notices.first().map(|s| s.as_str()).unwrap_or_default();
    for want in wants {
        c.value(
            &format!("the notice says {want:?}"),
            notice.contains(want),
            true,
        );
    }
    notice
}

/// With CAP_BPF and CAP_PERFMON alone twtrace could load its program, but tracefs (mounted,
/// mode 0700, owner root) is closed to it: one line naming CAP_DAC_READ_SEARCH and the
/// directory, never "not mounted".
#[test]
fn tracefs_unreadable_names_cap_dac_read_search() {
    let test = "tracefs_unreadable_names_cap_dac_read_search";
    if skip(test, Tracefs::Mounted) {
        return;
    }
    let staged = Staged::new(test);
    let refusal = run_to_exit(
        &under(&["bpf", "perfmon"], Tracefs::Mounted),
        &staged.bin,
        &["trace", "--port", "9"],
    );
    let mut c = Checks::new(test);
    let line = one_line_exit_1(&mut c, &refusal);
    for want in [
        "tracefs is mounted at /sys/kernel/tracing",
        "CAP_DAC_READ_SEARCH",
    ] {
        c.value(
            &format!("the line says {want:?}"),
            line.contains(want),
            true,
        );
    }
    c.value(
        "the line does not say `not mounted`",
        line.contains("not mounted"),
        false,
    );
    c.finish();
}

/// With CAP_DAC_READ_SEARCH but not CAP_SYS_PTRACE twtrace runs, says once at start-up that
/// CAP_SYS_PTRACE is missing and what that costs, and it does cost that: the server's listener
/// (opened before twtrace, by root) is not learnt, so its accepted connections are pid 0
/// `unknown` until the server's own close; the rest is attributed as usual.
#[test]
fn without_sys_ptrace_names_it_and_what_degrades() {
    let test = "without_sys_ptrace_names_it_and_what_degrades";
    if skip(test, Tracefs::Mounted) {
        return;
    }
    let caps = ["bpf", "perfmon", "dac_read_search", "sys_nice"];
    let mut c = Checks::new(test);
    let run = traced(test, &mut c, &under(&caps, Tracefs::Mounted), &caps);

    let notice = the_one_notice(
        &mut c,
        &run.trace,
        &[
            "twtrace: without CAP_SYS_PTRACE ",
            "/proc/<pid>/fd",
            "pid 0 `unknown`",
            "`(before start)`",
        ],
    );
    c.value(
        "the notice names only CAP_SYS_PTRACE",
        notice.matches("CAP_").count(),
        1,
    );
    let at = |l: &str| run.trace.stderr.iter().position(|s| s == l);
    let tracing = run
        .trace
        .stderr
        .iter()
        .find(|l| l.starts_with("twtrace: tracing"))
        .map(String::as_str)
        .unwrap_or_default();
    c.value(
        "the notice comes before `twtrace: tracing`",
        at(notice) < at(tracing),
        true,
    );

    let server_side = run.server_side();
    let accepted = select(&server_side, |e| {
        (e.old == "LISTEN" && e.new == "SYN_RECV")
            || (e.old == "SYN_RECV" && e.new == "ESTABLISHED")
    });
    c.count("accepting transitions", &accepted, 2 * N);
    c.all(
        "accepting transitions are pid 0 `unknown`",
        &accepted,
        |e| e.pid == 0 && e.attribution == "unknown",
    );
    c.value(
        "unattributed in the summary",
        run.trace.summary().unattributed,
        2 * N as u64,
    );
    // From the server's own close on, the socket has its owner again.
    let time_wait = select(&server_side, |e| e.timewait_entry());
    c.count("server TIME_WAIT entries", &time_wait, N);
    c.all(
        "server TIME_WAIT entries have the server pid",
        &time_wait,
        |e| e.pid == run.server && e.attribution == "owner",
    );
    c.finish();
}

/// The documented least set: twtrace runs as nobody without a capability notice and attributes
/// everything, including the accepted connections of the server that was listening before it
/// started (learnt from the server's /proc/<pid>/fd), to the right pid.
#[test]
fn least_set_attributes_everything() {
    let test = "least_set_attributes_everything";
    if skip(test, Tracefs::Mounted) {
        return;
    }
    let mut c = Checks::new(test);
    let run = traced(test, &mut c, &under(LEAST, Tracefs::Mounted), LEAST);
    c.value(
        "capability notices",
        capability_lines(&run.trace),
        Vec::<&String>::new(),
    );
    let server_side = run.server_side();
    // Five transitions per connection, the listener's close, and each accept().
    c.count("server-side events", &server_side, 1 + 6 * N);
    let accepts = select(&server_side, |e| e.accept);
    c.count("accept() events", &accepts, N);
    c.all("accept() names the server", &accepts, |e| {
        e.attribution == "accepted"
    });
    c.all(
        "server-side events have the server pid",
        &server_side,
        |e| e.pid == run.server,
    );
    let accepted = select(&server_side, |e| e.old == "LISTEN" && e.new == "SYN_RECV");
    c.count("accepted connections", &accepted, N);
    c.all(
        "accepted connections are attributed through the listener",
        &accepted,
        |e| e.attribution == "listener",
    );
    let time_wait = select(&server_side, |e| e.timewait_entry());
    c.count("server TIME_WAIT entries", &time_wait, N);
    c.value(
        "unattributed in the summary",
        run.trace.summary().unattributed,
        0,
    );
    c.finish();
}

/// Without CAP_SYS_NICE twtrace cannot raise its scheduling priority: it says once what that
/// risks (falling behind at peak, with the loss counted) and attributes everything as before.
#[test]
fn without_sys_nice_says_what_it_risks() {
    let test = "without_sys_nice_says_what_it_risks";
    if skip(test, Tracefs::Mounted) {
        return;
    }
    let caps = ["bpf", "perfmon", "dac_read_search", "sys_ptrace"];
    let mut c = Checks::new(test);
    let run = traced(test, &mut c, &under(&caps, Tracefs::Mounted), &caps);
    the_one_notice(
        &mut c,
        &run.trace,
        &[
            "twtrace: could not raise its scheduling priority to nice -10",
            "CAP_SYS_NICE",
            "lose events (always counted as lost)",
        ],
    );
    let server_side = run.server_side();
    // Five transitions per connection, the listener's close, and each accept().
    c.count("server-side events", &server_side, 1 + 6 * N);
    let accepts = select(&server_side, |e| e.accept);
    c.count("accept() events", &accepts, N);
    c.all("accept() names the server", &accepts, |e| {
        e.attribution == "accepted"
    });
    c.all(
        "server-side events have the server pid",
        &server_side,
        |e| e.pid == run.server,
    );
    c.value(
        "unattributed in the summary",
        run.trace.summary().unattributed,
        0,
    );
    c.finish();
}

/// tracefs not mounted and no CAP_SYS_ADMIN to mount it: one line saying it is not mounted and
/// naming CAP_SYS_ADMIN, with the command to run.
#[test]
fn unmounted_tracefs_without_sys_admin_names_it() {
    let test = "unmounted_tracefs_without_sys_admin_names_it";
    if skip(test, Tracefs::Unmounted) {
        return;
    }
    let staged = Staged::new(test);
    let refusal = run_to_exit(
        &under(LEAST, Tracefs::Unmounted),
        &staged.bin,
        &["trace", "--port", "9"],
    );
    let mut c = Checks::new(test);
    let line = one_line_exit_1(&mut c, &refusal);
    for want in [
        "tracefs is not mounted at /sys/kernel/tracing",
        "needs CAP_SYS_ADMIN",
        "mount -t tracefs tracefs /sys/kernel/tracing",
    ] {
        c.value(
            &format!("the line says {want:?}"),
            line.contains(want),
            true,
        );
    }
    c.finish();
}

/// CAP_SYS_ADMIN is only needed to mount tracefs (and stands in for CAP_BPF and CAP_PERFMON):
/// with it instead of those two and tracefs unmounted, twtrace mounts it, says so, and
/// attributes everything.
#[test]
fn sys_admin_mounts_tracefs() {
    let test = "sys_admin_mounts_tracefs";
    if skip(test, Tracefs::Unmounted) {
        return;
    }
    let caps = ["sys_admin", "dac_read_search", "sys_ptrace", "sys_nice"];
    let mut c = Checks::new(test);
    let run = traced(test, &mut c, &under(&caps, Tracefs::Unmounted), &caps);
    c.value(
        "notices",
        run.trace
            .stderr
            .iter()
            .filter(|l| !l.starts_with("twtrace: tracing") && parse_summary(l).is_none())
            .cloned()
            .collect::<Vec<_>>(),
        vec!["twtrace: mounted tracefs at /sys/kernel/tracing (it was not mounted)".to_owned()],
    );
    let accepted = select(&run.server_side(), |e| {
        e.old == "LISTEN" && e.new == "SYN_RECV"
    });
    c.count("accepted connections", &accepted, N);
    c.all("accepted connections have the server pid", &accepted, |e| {
        e.pid == run.server && e.attribution == "listener"
    });
    c.finish();
}

/// The CLOSE_WAIT sockets of a client (root) that were open before twtrace started, as the
/// leaderboard's first snapshot (`--json --count 1`, run as nobody with `caps`) counts them:
/// (under the client's pid, under pid 0 `(before start)`, in the totals).
fn close_wait_before_start(test: &str, caps: &[&str]) -> (u64, u64, u64) {
    let staged = Staged::new(test);
    let traffic =
        Traffic::new(driver(), Mode::Leak, N, "tws-privleak", "twc-privleak").hold_ms(30_000);
    let mut peers = traffic.start_unwatched();
    peers.client.wait_for_stdout("holding", DRIVER_TIMEOUT);
    // The server closed its side of every connection and exited: only the client holds any.
    peers.server.guard.wait_success(DRIVER_TIMEOUT);
    let port = peers.port().to_string();
    let run = run_to_exit(
        &under(caps, Tracefs::Mounted),
        &staged.bin,
        &["--json", "--count", "1", "--port", &port],
    );
    assert_eq!(run.status.code(), Some(0), "the leaderboard failed");
    let snapshot: serde_json::Value = run
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON snapshot on stdout:\n{}", run.stdout));
    let close_wait_of = |pid: u32| {
        snapshot["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["pid"] == pid)
            .filter_map(|p| p["close_wait_now"].as_u64())
            .sum::<u64>()
    };
    let counts = (
        close_wait_of(peers.client.pid()),
        close_wait_of(0),
        snapshot["totals"]["close_wait_now"].as_u64().unwrap_or(0),
    );
    // Dropping the peers kills the client, which still holds its sockets.
    drop(peers);
    counts
}

/// The least set finds the holder of sockets that existed before the start through
/// /proc/<pid>/fd (sock_diag, which lists them, needs no capability at all): the client's
/// CLOSE_WAIT sockets are counted under its pid.
#[test]
fn least_set_owns_sockets_from_before_the_start() {
    let test = "least_set_owns_sockets_from_before_the_start";
    if skip(test, Tracefs::Mounted) {
        return;
    }
    let mut c = Checks::new(test);
    let (client, before_start, total) = close_wait_before_start(test, LEAST);
    c.value("CLOSE_WAIT in the totals", total, N as u64);
    c.value("CLOSE_WAIT under the client's pid", client, N as u64);
    c.value("CLOSE_WAIT under (before start)", before_start, 0);
    c.finish();
}

/// Without CAP_SYS_PTRACE the same sockets are counted, as the notice says, under
/// `(before start)`.
#[test]
fn without_sys_ptrace_sockets_from_before_the_start_have_no_owner() {
    let test = "without_sys_ptrace_sockets_from_before_the_start_have_no_owner";
    if skip(test, Tracefs::Mounted) {
        return;
    }
    let mut c = Checks::new(test);
    let (client, before_start, total) =
        close_wait_before_start(test, &["bpf", "perfmon", "dac_read_search", "sys_nice"]);
    c.value("CLOSE_WAIT in the totals", total, N as u64);
    c.value("CLOSE_WAIT under the client's pid", client, 0);
    c.value("CLOSE_WAIT under (before start)", before_start, N as u64);
    c.finish();
}
