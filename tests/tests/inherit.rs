//! Sockets that change hands: a process connects, leaves its sockets to another process (a fork
//! child, or one it passes them to with SCM_RIGHTS) and exits. The kernel program still names
//! the exited process as their owner; twtrace must find the process that holds them now, show
//! later events as `inherited` by it, and count its CLOSE_WAIT sockets under it.

use std::{
    io::{BufRead as _, BufReader},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use twtrace_tests::{
    ChildGuard, DRIVER_TIMEOUT, SETTLE, Twtrace,
    live::{Live, counter, process},
    skip_unless_root,
};

const N: usize = 5;
/// Longer than two reconcile intervals (2 s each): the owner's exit is noticed at the first
/// dump after it, whatever the phase.
const NOTICE: Duration = Duration::from_millis(4500);

/// Kills a process that is not our child (the handoff child is reparented when its parent
/// exits), so a failing test leaves nothing behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            // SAFETY: kill has no memory-safety preconditions; a pid that is gone is ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// `parent <pid>` and `child <pid> holding <n>` from handoff's stdout, in either order.
fn pids(lines: &mut impl Iterator<Item = String>) -> (u32, u32, usize) {
    let (mut parent, mut child) = (None, None);
    for line in lines.by_ref() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["parent", pid] => parent = pid.parse().ok(),
            ["child", pid, "holding", n] => {
                child = Some((pid.parse().expect("pid"), n.parse().expect("count")));
            }
            _ => panic!("handoff printed {line:?}"),
        }
        if let (Some(p), Some((c, n))) = (parent, child) {
            return (p, c, n);
        }
    }
    panic!("handoff ended before naming both processes");
}

fn hand_off(how: &str) {
    let test = format!("inherit hand_off {how}");
    if skip_unless_root(&test) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let filter = ["--port".to_owned(), port.to_string()];
    let trace = Twtrace::start(&filter);
    let live = Live::start(&filter);

    let (parent_comm, child_comm) = (format!("twh-{how}-p"), format!("twh-{how}-c"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handoff"));
    cmd.args(["--connect", &format!("127.0.0.1:{port}")])
        .args(["--count", &N.to_string(), "--how", how])
        .args(["--comm", &parent_comm, "--child-comm", &child_comm])
        .stdout(Stdio::piped());
    let mut parent_guard = ChildGuard::spawn("handoff", &mut cmd);
    let stdout = parent_guard.child_mut().stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let (parent, child, held) = pids(&mut lines);
    let _child = KillOnDrop(child);
    assert_eq!(held, N, "the child holds every socket");
    let accepted: Vec<TcpStream> = (0..N)
        .map(|_| listener.accept().expect("accept").0)
        .collect();
    // Reaped, so the parent's pid is gone from /proc, as it is once a real parent waits.
    parent_guard.wait_success(DRIVER_TIMEOUT);
    std::thread::sleep(NOTICE);

    // The server closes: each client socket goes to CLOSE_WAIT in the child, driven by a
    // packet, so the kernel program stamps the owner it remembers: the exited parent.
    drop(accepted);
    std::thread::sleep(Duration::from_millis(2500));
    let run = live.stop_after(SETTLE);
    let t = trace.stop();
    t.summary();

    let close_wait: Vec<_> = t
        .on_port(port)
        .into_iter()
        .filter(|e| e.rport == port && e.new == "CLOSE_WAIT")
        .collect();
    assert_eq!(close_wait.len(), N, "{:#?}", t.on_port(port));
    for e in &close_wait {
        assert_eq!(
            (e.pid, e.comm.as_str(), e.attribution.as_str()),
            (child, child_comm.as_str(), "inherited"),
            "{}",
            e.raw
        );
    }
    let last = run.last();
    assert_eq!(counter(last, child, "close_wait_now"), N as u64, "{last}");
    assert_eq!(counter(last, parent, "close_wait_now"), 0, "{last}");
    if let Some(row) = process(last, parent) {
        assert_eq!(row["exited"], true, "{row}");
    }
    assert_eq!(
        process(last, child).map(|r| r["exited"].clone()),
        Some(serde_json::Value::Bool(false))
    );
}

#[test]
fn sockets_left_to_a_fork_child_are_its() {
    hand_off("fork");
}

#[test]
fn sockets_passed_with_scm_rights_are_the_receivers() {
    hand_off("scm");
}
