//! What the kernel reports about this machine and its processes, read through procfs: a tracer's
//! CPU time and peak RSS, other tracers running, the machine itself, its load, and the
//! TIME_WAIT overflow counter; and the one change it makes: clearing loopback's TIME_WAIT sockets
//! between measurements.

use std::{
    fs,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use procfs::{
    CpuInfo, Current as _, LoadAverage, Meminfo,
    process::{Process, Stat, all_processes},
};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_kib: Option<u64>,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Self {
        Self {
            cpus: thread::available_parallelism().map_or(0, usize::from),
            cpu_model: CpuInfo::current()
                .ok()
                .and_then(|info| info.model_name(0).map(str::to_owned))
                .unwrap_or_else(|| "unknown CPU".to_owned()),
            // procfs converts the kB of /proc/meminfo to bytes.
            mem_kib: Meminfo::current().ok().map(|info| info.mem_total / 1024),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
        }
    }
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg prints them (two decimals).
pub fn load_average() -> Option<String> {
    let load = LoadAverage::current().ok()?;
    Some(format!(
        "{:.2} {:.2} {:.2}",
        load.one, load.five, load.fifteen
    ))
}

fn stat(pid: u32) -> Option<Stat> {
    Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()
}

/// utime + stime of a process, in clock ticks.
pub fn read_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = stat(pid)?;
    Some(stat.utime + stat.stime)
}

/// VmHWM (peak resident set) of a process, in KiB.
pub fn read_vm_hwm(pid: u32) -> Option<u64> {
    Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .status()
        .ok()?
        .vmhwm
}

/// Clock ticks per second, the unit of [`read_cpu_ticks`].
pub fn clock_ticks() -> f64 {
    procfs::ticks_per_second() as f64
}

/// twtrace and bpftrace processes running now (none of ours is running when this is called):
/// their kernel programs run on every transition too and would be billed to the mode measured.
/// Also rustc: on a small machine a build next door takes the CPU the generator needs.
pub fn other_tracers() -> Vec<String> {
    let Ok(processes) = all_processes() else {
        return Vec::new();
    };
    processes
        .flatten()
        .filter_map(|process| {
            // Gone since the listing: nothing attached any more.
            let stat = process.stat().ok()?;
            // A zombie has no programs attached any more.
            let zombie = stat.state == 'Z';
            (matches!(stat.comm.as_str(), "twtrace" | "bpftrace" | "rustc") && !zombie)
                .then(|| format!("pid {} ({})", stat.pid, stat.comm))
        })
        .collect()
}

/// Set once a failure to clear the TIME_WAIT sockets was announced.
static CLEAR_FAILED: AtomicBool = AtomicBool::new(false);

/// Destroys the TIME_WAIT sockets toward 127.0.0.1 that earlier measurements left
/// (`ss -K state time-wait dst 127.0.0.1`, through sock_diag's SOCK_DESTROY), so that every
/// measurement starts from the same empty table. They live 60 s, so what a measurement found
/// depended on the ones just before it: once three peak measurements' worth were alive the table
/// (`net.ipv4.tcp_max_tw_buckets`) was full, the kernel made no more TIME_WAIT sockets, and the
/// generators ran 3-5% faster (measured: 49,689 and 49,476 conn/s at four generators with the
/// table full, against 47,355 and 48,164 right after clearing it). The bench of f8de80b gave
/// its tracers a full table and the untraced reference almost never. A measurement's own
/// generators cannot fill it: each talks to one server port, and one local address has 28,232
/// ephemeral ports for it. Says once on stderr when it cannot clear, and carries on (the
/// overflow notes then show what it cost).
pub fn clear_loopback_timewait() {
    let result = Command::new("ss")
        .args(["-K", "-t", "state", "time-wait", "dst", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let why = match result {
        Ok(out) if out.status.success() => return,
        Ok(out) => format!(
            "ss -K exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => format!("could not run ss: {err}"),
    };
    if !CLEAR_FAILED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "bench: could not clear loopback's TIME_WAIT sockets between measurements ({why}); \
             a full table makes later measurements faster"
        );
    }
}

/// `TcpExt: TCPTimeWaitOverflow` from /proc/net/netstat, if the kernel has it.
pub fn read_tw_overflow() -> Option<u64> {
    parse_tw_overflow(&fs::read_to_string("/proc/net/netstat").ok()?)
}

/// `TCPTimeWaitOverflow` from the text of /proc/net/netstat (a line of names followed by a line of
/// values, per protocol). procfs reads /proc/net/snmp, but not this file, whose `TcpExt` counters
/// are the kernel's extended TCP statistics.
fn parse_tw_overflow(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        let (Some(names), Some(values)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) else {
            continue;
        };
        let index = names
            .split_whitespace()
            .position(|n| n == "TCPTimeWaitOverflow")?;
        return values.split_whitespace().nth(index)?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let before = read_cpu_ticks(me).expect("own /proc/<pid>/stat");
        // Reading /proc takes CPU time itself: within a few seconds the count must move.
        let deadline = Instant::now() + Duration::from_secs(5);
        while read_cpu_ticks(me) == Some(before) && Instant::now() < deadline {}
        assert!(read_cpu_ticks(me).expect("still there") > before);
        assert!(read_vm_hwm(me).expect("own VmHWM") > 0);
        assert!(clock_ticks() > 0.0);
        // No such process: pid_max is at most 2^22.
        assert_eq!(read_cpu_ticks(1 << 30), None);
        assert_eq!(read_vm_hwm(1 << 30), None);
    }

    #[test]
    fn probes_this_machine() {
        let machine = Machine::probe();
        assert!(machine.cpus > 0);
        assert!(machine.mem_kib.expect("MemTotal") > 0);
        assert!(!machine.kernel.is_empty());
        let load = load_average().expect("/proc/loadavg");
        assert_eq!(load.split(' ').count(), 3, "{load:?}");
        // Whatever runs, the list is well formed (this test binary is none of those names).
        let me = format!("pid {} (", std::process::id());
        assert!(
            other_tracers()
                .iter()
                .all(|p| p.starts_with("pid ") && !p.starts_with(&me))
        );
    }

    #[test]
    fn parses_tw_overflow() {
        let netstat = "TcpExt: SyncookiesSent TCPTimeWaitOverflow TWRecycled\n\
                       TcpExt: 0 4321 9\n\
                       IpExt: InNoRoutes\n\
                       IpExt: 0\n";
        assert_eq!(parse_tw_overflow(netstat), Some(4321));
        assert_eq!(parse_tw_overflow("IpExt: A\nIpExt: 1\n"), None);
        if Path::new("/proc/net/netstat").exists() {
            assert!(read_tw_overflow().is_some(), "this kernel's netstat parses");
        }
    }
}
