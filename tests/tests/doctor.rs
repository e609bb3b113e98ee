//! `twtrace doctor` on the live system: the settings it prints are what `sysctl -n` says, it
//! runs as an unprivileged user and says what it skipped, it names a process near its
//! open-file limit with the exact counts, and `--watch` names a churning process with its
//! command line. Also each leaderboard row's command line (`twtrace --json`).
//!
//! The first and third need no root; the others print `SKIPPED` without it.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use twtrace_tests::{
    Attached, ChildGuard, DRIVER_TIMEOUT, Mode, Traffic, line_reader,
    live::{Live, process},
    skip_unless_root,
    staged::Staged,
    twtrace_bin,
};

fn doctor(prefix: &[&str], bin: &Path, args: &[&str]) -> Output {
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("doctor")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

/// The JSON document of a run that must have succeeded.
fn document(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "twtrace doctor exited with {}; stderr:\n{stderr}\nstdout:\n{stdout}",
        out.status
    );
    assert_eq!(stdout.lines().count(), 1, "one document: {stdout}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(doc["schema"], 1);
    assert!(
        doc["findings"].is_array() && doc["skipped"].is_array(),
        "{doc}"
    );
    doc
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_sysctl_printed_is_what_sysctl_says() {
    let doc = document(&doctor(&[], &twtrace_bin(), &["--json"]));
    let sysctls = doc["sysctls"].as_object().expect("sysctls object");
    assert!(sysctls.len() >= 10, "{sysctls:?}");
    for (name, value) in sysctls {
        let out = Command::new("sysctl")
            .args(["-n", name])
            .output()
            .expect("running sysctl (procps)");
        if out.status.success() {
            let want = words(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(value.as_str(), Some(want.as_str()), "{name}");
        } else {
            // `sysctl -n net.ipv4.tcp_tw_recycle` on Linux 4.12 and later: no such key.
            assert!(
                value.is_null(),
                "{name}: sysctl failed, twtrace printed {value}"
            );
        }
        eprintln!("[doctor] {name} = {value}");
    }
    assert!(
        sysctls.contains_key("net.ipv4.tcp_tw_recycle"),
        "the folklore key is always looked for"
    );
    // The port range as numbers too.
    let range = sysctls["net.ipv4.ip_local_port_range"]
        .as_str()
        .expect("a range");
    let ends: Vec<u64> = range.split(' ').map(|p| p.parse().expect("port")).collect();
    assert_eq!(doc["ports"]["low"], ends[0]);
    assert_eq!(doc["ports"]["high"], ends[1]);
}

#[test]
fn an_unprivileged_run_says_what_it_skipped() {
    const TEST: &str = "doctor an_unprivileged_run_says_what_it_skipped";
    if skip_unless_root(TEST) {
        return;
    }
    let staged = Staged::new("doctor-nobody");
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let doc = document(&doctor(&setpriv, &staged.bin, &["--json"]));
    eprintln!("[{TEST}] skipped: {}", doc["skipped"]);
    let skipped = doc["skipped"].as_array().expect("array");
    let fds = skipped
        .iter()
        .find(|s| {
            s["check"]
                .as_str()
                .is_some_and(|c| c.starts_with("open files of"))
        })
        .unwrap_or_else(|| panic!("root's processes' fds are skipped: {skipped:?}"));
    assert!(
        fds["why"].as_str().is_some_and(|w| w.contains("root")),
        "{fds}"
    );
    // Everything else was read without privileges.
    assert!(doc["sysctls"]["net.ipv4.tcp_tw_reuse"].is_string(), "{doc}");
    assert!(
        doc["counters"]["TcpExt"]["ListenOverflows"].is_number(),
        "{doc}"
    );
    assert!(doc["sockets"]["timewait"].is_number(), "{doc}");
    // No root process among the open-file counts: nobody may not list their fds.
    for u in doc["nofile"].as_array().expect("array") {
        let pid = u["pid"].as_u64().expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            !status.lines().any(|l| l.starts_with("Uid:\t0\t")),
            "pid {pid} is root's: {u}"
        );
    }

    // The text says so too, and still exits 0.
    let out = doctor(&setpriv, &staged.bin, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\nSkipped:\n  open files of "), "{text}");

    // --watch needs the tracer's privileges: one line naming what is missing, exit 1.
    let out = doctor(&setpriv, &staged.bin, &["--watch", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CAP_BPF") || err.contains("CAP_PERFMON"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no document without the watch asked for"
    );
}

#[test]
fn a_process_near_its_open_file_limit_is_named_with_its_counts() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fdhog"));
    cmd.args(["--limit", "64", "--open", "62", "--comm", "tw-fdhog"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut hog = ChildGuard::spawn("fdhog", &mut cmd);
    let pid = hog.pid();
    let stdout = hog.child_mut().stdout.take().expect("piped stdout");
    let rx = line_reader("fdhog-stdout".into(), stdout);
    let ready = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("fdhog says it is ready");
    let parts: Vec<&str> = ready.split(' ').collect();
    assert_eq!(parts[..3], ["ready", "62", "64"], "{ready}");
    let hard = parts[3];

    let doc = document(&doctor(&[], &twtrace_bin(), &["--json"]));
    let findings = doc["findings"].as_array().expect("array");
    let x = findings
        .iter()
        .find(|x| x["kind"] == "nofile" && x["pid"] == pid)
        .unwrap_or_else(|| panic!("fdhog (pid {pid}) is named: {findings:#?}"));
    eprintln!("[doctor] {x}");
    assert_eq!(x["severity"], "critical");
    assert_eq!(x["comm"], "tw-fdhog");
    assert_eq!(
        x["title"],
        format!("tw-fdhog (pid {pid}) has 62 files open of its limit 64 (97%)")
    );
    let evidence: Vec<&str> = x["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        evidence[0],
        format!("open files: 62 (entries in /proc/{pid}/fd)")
    );
    assert_eq!(
        evidence[1],
        format!("Max open files: soft 64, hard {hard} (/proc/{pid}/limits)")
    );
    assert_eq!(
        evidence[2],
        format!(
            "command line: {} --limit 64 --open 62 --comm tw-fdhog",
            env!("CARGO_BIN_EXE_fdhog")
        )
    );
    assert!(
        x["remedy"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("prlimit --pid {pid}"))),
        "{x}"
    );
    // And in the list of open files, first or close to it.
    let listed = doc["nofile"]
        .as_array()
        .expect("array")
        .iter()
        .find(|u| u["pid"] == pid)
        .unwrap_or_else(|| panic!("fdhog in nofile: {}", doc["nofile"]));
    assert_eq!(
        (listed["open"].as_u64(), listed["soft"].as_u64()),
        (Some(62), Some(64))
    );

    // The text names it, escaped and aligned like every finding.
    let out = doctor(&[], &twtrace_bin(), &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "CRITICAL  nofile: tw-fdhog (pid {pid}) has 62 files open of its limit 64 (97%)"
        )),
        "{text}"
    );
    drop(hog.child_mut().stdin.take());
    hog.wait_success(Duration::from_secs(10));
}

fn driver() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tcpdrive"))
}

/// Each leaderboard row carries its process's command line, read while it ran, and keeps it.
#[test]
fn the_leaderboard_shows_each_process_command_line() {
    const TEST: &str = "doctor the_leaderboard_shows_each_process_command_line";
    if skip_unless_root(TEST) {
        return;
    }
    const N: usize = 5;
    let traffic = Traffic::new(driver(), Mode::Leak, N, "tws-cmdline", "twc-cmdline").hold_ms(3000);
    let (mut peers, live) = traffic.start(|port| Live::start(&["--port".into(), port.to_string()]));
    peers.client.wait_for_stdout("holding", DRIVER_TIMEOUT);
    peers.wait();
    let run = live.stop_after(Duration::from_millis(3500));
    let d = driver().display();
    let client_cmdline = format!(
        "{d} client --connect 127.0.0.1:{} --count {N} --mode leak --comm twc-cmdline --hold-ms 3000",
        peers.port()
    );
    let server_cmdline =
        format!("{d} server --bind 127.0.0.1:0 --count {N} --mode leak --comm tws-cmdline");
    // The client runs through several snapshots: every one of its rows has the command line,
    // also those after it exited.
    let client = peers.client.pid();
    let rows: Vec<&Value> = run
        .snapshots
        .iter()
        .filter_map(|s| process(s, client))
        .collect();
    assert!(rows.len() >= 2, "the client has rows: {rows:?}");
    for row in &rows {
        assert_eq!(row["cmdline"], client_cmdline.as_str(), "{row}");
    }
    // The server exits (a zombie until the test reaps it, with no command line left) right
    // after its last accept, which may be before the first snapshot: its rows have its command
    // line or none, never another one.
    let server = peers.server.pid();
    for row in run.snapshots.iter().filter_map(|s| process(s, server)) {
        assert!(
            row.get("cmdline").is_none() || row["cmdline"] == server_cmdline.as_str(),
            "{row}"
        );
    }
}

/// `--watch` runs the live view and adds what it saw: the churning process, by pid, with its
/// command line.
#[test]
fn the_watch_names_the_churning_process() {
    const TEST: &str = "doctor the_watch_names_the_churning_process";
    if skip_unless_root(TEST) {
        return;
    }
    let doctor = Attached::start(&["doctor", "--watch", "5s", "--json"].map(String::from));
    let churn_bin = env!("CARGO_BIN_EXE_churn");
    let mut cmd = Command::new(churn_bin);
    cmd.args(["--clients", "1", "--servers", "1", "--duration", "2.5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut churn = ChildGuard::spawn("churn", &mut cmd);
    let pid = churn.pid();
    churn.wait_success(DRIVER_TIMEOUT);
    let stopped = doctor.stop_after(Duration::from_secs(4));
    assert!(stopped.status.success(), "{:#?}", stopped.stderr);
    let doc: Value =
        serde_json::from_str(stopped.stdout.first().expect("a document")).expect("JSON");
    assert!(
        doc["watch"]["seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{}",
        doc["watch"]
    );
    // Named as churning: by the diagnosis's `churn_without_reuse` (connections to one peer that
    // each lived under a second), or else by doctor's own `churn`; either way with its command
    // line.
    let findings = doc["findings"].as_array().expect("array");
    let x = findings
        .iter()
        .find(|x| (x["kind"] == "churn" || x["kind"] == "churn_without_reuse") && x["pid"] == pid)
        .unwrap_or_else(|| panic!("churn (pid {pid}) is named: {findings:#?}"));
    eprintln!("[{TEST}] {x}");
    assert!(
        x["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{x}"
    );
    let evidence: Vec<&str> = x["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let cmdline = format!("{churn_bin} --clients 1 --servers 1 --duration 2.5");
    assert!(
        evidence
            .iter()
            .any(|e| e.starts_with("command line") && e.ends_with(&format!(": {cmdline}"))),
        "{evidence:#?}"
    );
}
