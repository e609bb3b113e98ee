//! Events the kernel skips: a tracepoint program is not run while another BPF program runs on
//! the same CPU (a softirq interrupting one of twtrace's programs, say), and the kernel only
//! counts that in the program's `recursion_misses`. twtrace must count those events as lost;
//! it must never say "0 lost" when the kernel dropped some.

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use twtrace::kernel::progstats;
use twtrace_tests::{Twtrace, skip_unless_root};

/// Connections closed at once. Thousands of closes racing the softirqs they cause is what made
/// the kernel skip events on these machines (hundreds per 5,000).
const N: usize = 3000;

/// The ids of the BPF programs a process holds open, from its fdinfo (`prog_id:` lines), each
/// once (a program can be open through more than one fd).
fn program_ids(pid: u32) -> BTreeSet<u32> {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// The kernel's own count of skipped runs of a process's programs, as `bpftool prog show`
/// prints it.
fn recursion_misses(pid: u32) -> u64 {
    let ids = program_ids(pid);
    assert!(ids.len() >= 2, "twtrace holds its programs: {ids:?}");
    ids.into_iter()
        .map(|id| {
            let fd = progstats::program_by_id(id).expect("open program by id");
            progstats::recursion_misses(std::os::fd::AsFd::as_fd(&fd)).expect("bpf_prog_info")
        })
        .sum()
}

#[test]
fn events_the_kernel_skipped_are_counted_as_lost() {
    if skip_unless_root("skipped events_the_kernel_skipped_are_counted_as_lost") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let trace = Twtrace::start(&["--port".to_owned(), port.to_string()]);

    // One accept per connect: the listen backlog (128 for std) would drop handshakes.
    let (clients, servers): (Vec<TcpStream>, Vec<TcpStream>) = (0..N)
        .map(|i| {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("#{i}: {e}"));
            (c, listener.accept().expect("accept").0)
        })
        .unzip();
    // Both sides close at once, from two threads: closes in process context racing the
    // softirqs that deliver the other side's FINs.
    let a = thread::spawn(move || drop(clients));
    let b = thread::spawn(move || drop(servers));
    a.join().expect("client closer");
    b.join().expect("server closer");
    thread::sleep(Duration::from_secs(1));

    let misses = recursion_misses(trace.pid());
    let t = trace.stop();
    let summary = t.summary();
    eprintln!(
        "[skipped] kernel recursion_misses {misses}, twtrace: {} events, {} lost",
        summary.events, summary.lost
    );
    assert!(
        summary.lost >= misses,
        "twtrace said {} lost, the kernel skipped {misses}: {:#?}",
        summary.lost,
        t.stderr
    );
    if misses > 0 {
        assert!(
            t.stderr.iter().any(|l| l.contains("skipped by the kernel")),
            "the summary names the skipped events: {:#?}",
            t.stderr
        );
    }
}
