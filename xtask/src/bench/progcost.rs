//! What twtrace's kernel programs cost per hit, next to the floor: an empty program on the same
//! tracepoint. Both are attached together while the peak load runs, with the kernel's run-time
//! statistics on; `bpftool prog show --json` gives each program's run_time_ns, run_cnt and
//! recursion_misses before and after the traffic, and the difference is the run's.
//!
//! The statistics are switched on with BPF_ENABLE_STATS, which is what
//! `sysctl kernel.bpf_stats_enabled=1` does, held by a file descriptor instead: the kernel
//! switches them off again when that closes, so neither a failed bench nor a killed xtask (Ctrl-C,
//! SIGKILL: no destructor runs) leaves a sysctl changed behind. They cost two clock reads per
//! program run, which is why they are on only for this measurement.

use std::{
    collections::BTreeMap,
    fs, io,
    mem::size_of,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    children::{ChildGuard, Scratch, StderrLines, dev_null, file_stdout},
    measure::{Attach, Bins, DRAIN, Load, SETTLE, run_generators, wait_attached},
    parse::Summary,
};
use crate::shell;

/// The floor: a tracepoint program that does nothing, on the tracepoint twtrace's main program
/// hooks. What it costs per hit is the price of any program there (the kernel's dispatch and
/// the statistics' own clock reads).
pub const FLOOR_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state {}";

/// The twtrace command whose programs are measured: the leaderboard, as people run it.
pub const TWTRACE_ARGS: [&str; 3] = ["--json", "--interval", "1"];

/// One program's counters, from `bpftool prog show --json` (or the difference of two).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    /// `tracepoint`, `kprobe`, ...
    pub kind: String,
    /// The program's name; bpftool gives the full function name when the kernel's 15-byte name
    /// is a truncation of it and BTF says so.
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

impl ProgStats {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }

    /// What happened between `before` and `self` (the same program, read later).
    fn since(&self, before: Option<&ProgStats>) -> ProgStats {
        let Some(before) = before else {
            return self.clone();
        };
        ProgStats {
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(before.run_cnt),
            recursion_misses: self
                .recursion_misses
                .saturating_sub(before.recursion_misses),
            ..self.clone()
        }
    }
}

/// The programs in `bpftool prog show --json` output. bpftool leaves out run_time_ns and
/// run_cnt while a program has not run with statistics on, and recursion_misses while it is 0.
pub fn parse_bpftool_progs(json: &str) -> Result<Vec<ProgStats>> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("bpftool's output is not JSON")?;
    let progs = value
        .as_array()
        .context("bpftool's output is not a JSON array")?;
    progs
        .iter()
        .map(|prog| {
            let number = |name: &str| prog.get(name).and_then(serde_json::Value::as_u64);
            let text = |name: &str| {
                prog.get(name)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let id = number("id").with_context(|| format!("a program without an id: {prog}"))?;
            Ok(ProgStats {
                id: u32::try_from(id).with_context(|| format!("program id {id} out of range"))?,
                kind: text("type"),
                name: text("name"),
                run_time_ns: number("run_time_ns").unwrap_or(0),
                run_cnt: number("run_cnt").unwrap_or(0),
                recursion_misses: number("recursion_misses").unwrap_or(0),
            })
        })
        .collect()
}

/// `bpftool prog show --json`, by id.
fn bpftool_progs(bpftool: &Path) -> Result<BTreeMap<u32, ProgStats>> {
    let mut cmd = Command::new(bpftool);
    cmd.args(["prog", "show", "--json"]).stdin(Stdio::null());
    let shown = shell::display(&cmd);
    let text = String::from_utf8(shell::capture(&mut cmd)?)
        .with_context(|| format!("`{shown}`: not UTF-8"))?;
    let progs = parse_bpftool_progs(&text).with_context(|| format!("`{shown}`"))?;
    Ok(progs.into_iter().map(|p| (p.id, p)).collect())
}

/// What one `/proc/<pid>/fdinfo/<fd>` says about a BPF object: a program fd and a link fd both
/// name the program (`prog_id`); a tracepoint link also names its tracepoint (`tp_name`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub prog_id: Option<u32>,
    pub tp_name: Option<String>,
}

impl FdInfo {
    pub fn parse(text: &str) -> Self {
        let mut info = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "prog_id" => info.prog_id = value.trim().parse().ok(),
                "tp_name" => info.tp_name = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        info
    }
}

/// The BPF programs a process holds (by program or link fd), each with the tracepoint a link
/// attaches it to when the kernel says.
fn programs_of(pid: u32) -> Result<BTreeMap<u32, Option<String>>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = fs::read_dir(&dir).with_context(|| format!("listing {dir}"))?;
    let mut programs: BTreeMap<u32, Option<String>> = BTreeMap::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        // An fd closed since the listing is not one of the programs.
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let info = FdInfo::parse(&text);
        if let Some(id) = info.prog_id {
            let tp = programs.entry(id).or_default();
            if tp.is_none() {
                *tp = info.tp_name;
            }
        }
    }
    Ok(programs)
}

/// One program's share of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramCost {
    pub stats: ProgStats,
    /// The tracepoint it is attached to, from its link's fdinfo.
    pub tracepoint: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KernelCost {
    pub duration_secs: u64,
    pub generators: usize,
    /// Summed over the generators, with the statistics on.
    pub rate: f64,
    pub connections: u64,
    /// twtrace's summary line.
    pub summary: Option<Summary>,
    pub twtrace: Vec<ProgramCost>,
    /// The empty program, or why it was not measured.
    pub floor: Result<ProgramCost, String>,
    pub bpftool_version: Option<String>,
}

/// BPF_ENABLE_STATS's number in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// BPF_STATS_RUN_TIME in `enum bpf_stats_type`.
const BPF_STATS_RUN_TIME: u32 = 0;

/// `union bpf_attr` as BPF_ENABLE_STATS reads it: `struct { __u32 type; } enable_stats`.
#[repr(C)]
struct EnableStatsAttr {
    kind: u32,
}

/// Run-time statistics on while this lives (see the module comment).
pub struct RunTimeStats {
    /// Only held: closing it is what switches the statistics off.
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<Self> {
        let attr = EnableStatsAttr {
            kind: BPF_STATS_RUN_TIME,
        };
        // SAFETY: bpf(2) with BPF_ENABLE_STATS reads `size` bytes of `attr`, which points to a
        // live, initialised value of exactly that size; it writes nothing to it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &raw const attr,
                size_of::<EnableStatsAttr>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error())
                .context("bpf(BPF_ENABLE_STATS) failed (Linux 5.8 or later, as root)");
        }
        let fd = RawFd::try_from(rc).context("bpf(BPF_ENABLE_STATS) returned no fd")?;
        // SAFETY: on success BPF_ENABLE_STATS returns a new file descriptor that nothing else
        // owns; OwnedFd closes it once, when dropped.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { _fd: fd })
    }
}

/// Starts a tracer and waits until it says it is attached, on stderr or (bpftrace) in its
/// stdout, which goes to `output` when given.
fn start_attached(
    name: &str,
    cmd: &mut Command,
    marker: &str,
    output: Option<&Path>,
) -> Result<(ChildGuard, StderrLines)> {
    let stdout = match output {
        Some(path) => file_stdout(path)?,
        None => dev_null()?,
    };
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let shown = shell::display(cmd);
    let mut child = ChildGuard::spawn(name, cmd)?;
    let mut stderr = StderrLines::follow(&mut child)?;
    match wait_attached(&mut child, &mut stderr, marker, output)? {
        Attach::Ready => Ok((child, stderr)),
        Attach::Exited(status) => {
            stderr.finish(Duration::from_secs(2));
            bail!("`{shown}` exited ({status}): {}", stderr.reason())
        }
        Attach::TimedOut => bail!("`{shown}` did not report being attached"),
    }
}

/// The counters of `pid`'s programs between `before` and `after`, with their tracepoints.
fn costs_of(
    programs: &BTreeMap<u32, Option<String>>,
    before: &BTreeMap<u32, ProgStats>,
    after: &BTreeMap<u32, ProgStats>,
) -> Vec<ProgramCost> {
    programs
        .iter()
        .filter_map(|(id, tp)| {
            let now = after.get(id)?;
            Some(ProgramCost {
                stats: now.since(before.get(id)),
                tracepoint: tp.clone(),
            })
        })
        .collect()
}

/// The floor is the one tracepoint program bpftrace loaded for the empty probe.
fn the_floor(costs: Vec<ProgramCost>) -> Result<ProgramCost, String> {
    let mut tracepoints: Vec<ProgramCost> = costs
        .into_iter()
        .filter(|c| c.stats.kind == "tracepoint")
        .collect();
    match tracepoints.len() {
        1 => Ok(tracepoints.remove(0)),
        n => Err(format!(
            "bpftrace held {n} tracepoint programs, not the one of `{FLOOR_PROGRAM}`"
        )),
    }
}

/// twtrace (the leaderboard) and the empty bpftrace program attached together, the peak load
/// for `duration` with statistics on, and each program's counters over the traffic. Without
/// bpftrace, `no_floor` says why there is no floor.
pub fn measure_kernel_cost(
    bins: &Bins,
    scratch: &Scratch,
    bpftool: &Path,
    duration: Duration,
    no_floor: &str,
) -> Result<KernelCost> {
    let _stats = RunTimeStats::enable()?;
    let mut cmd = Command::new(&bins.twtrace);
    cmd.args(TWTRACE_ARGS);
    let (mut twtrace, mut tw_stderr) =
        start_attached("twtrace", &mut cmd, "twtrace: tracing", None)?;
    let floor_output = scratch.file("floor.out");
    let mut floor_tracer = match &bins.bpftrace {
        Some(bpftrace) => {
            let mut cmd = Command::new(bpftrace);
            cmd.args(["-e", FLOOR_PROGRAM]);
            Some(
                start_attached("bpftrace", &mut cmd, "Attaching ", Some(&floor_output))
                    .map_err(|e| format!("{e:#}")),
            )
        }
        None => None,
    };
    thread::sleep(SETTLE);
    let tw_programs = programs_of(twtrace.pid())?;
    if tw_programs.is_empty() {
        bail!("twtrace holds no BPF program fds");
    }
    let floor_programs = match &floor_tracer {
        Some(Ok((bpftrace, _))) => Some(programs_of(bpftrace.pid())?),
        _ => None,
    };
    let before = bpftool_progs(bpftool)?;
    let runs = run_generators(bins, scratch, Load::Peak, duration)?;
    let after = bpftool_progs(bpftool)?;
    thread::sleep(DRAIN);

    let (status, killed) = twtrace.stop()?;
    tw_stderr.finish(Duration::from_secs(5));
    if killed || !status.success() {
        bail!(
            "twtrace did not stop cleanly ({status}): {}",
            tw_stderr.reason()
        );
    }
    let floor = match (floor_tracer.as_mut(), floor_programs) {
        (None, _) => Err(no_floor.to_owned()),
        (Some(Err(why)), _) => Err(why.clone()),
        (Some(Ok((bpftrace, stderr))), Some(programs)) => {
            bpftrace.stop()?;
            stderr.finish(Duration::from_secs(5));
            the_floor(costs_of(&programs, &before, &after))
        }
        (Some(Ok(_)), None) => Err("bpftrace's programs were not read".to_owned()),
    };
    let mut twtrace_costs = costs_of(&tw_programs, &before, &after);
    if twtrace_costs.is_empty() {
        bail!("bpftool did not list twtrace's programs {tw_programs:?}");
    }
    // The hottest first: the main program, then the others.
    twtrace_costs.sort_by_key(|c| std::cmp::Reverse(c.stats.run_cnt));
    Ok(KernelCost {
        duration_secs: duration.as_secs(),
        generators: runs.len(),
        rate: runs.iter().map(|(_, r)| r.rate).sum(),
        connections: runs.iter().map(|(_, r)| r.connections).sum(),
        summary: tw_stderr.seen.iter().rev().find_map(|l| Summary::parse(l)),
        twtrace: twtrace_costs,
        floor,
        bpftool_version: super::bpftrace::tool_version(bpftool),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn ids(costs: &[ProgramCost]) -> BTreeSet<u32> {
        costs.iter().map(|c| c.stats.id).collect()
    }

    /// `bpftool prog show --json` (Debian's bpftool v7.1.0, Linux 6.18) with twtrace's four
    /// programs and the empty bpftrace program loaded, after one second of one generator with
    /// statistics on.
    const BPFTOOL: &str = include_str!("testdata/bpftool-prog-show.json");

    #[test]
    fn parses_real_bpftool_output() {
        let progs = parse_bpftool_progs(BPFTOOL).expect("parses");
        assert_eq!(progs.len(), 5);
        let main = &progs[0];
        assert_eq!(
            main,
            &ProgStats {
                id: 3443,
                kind: "tracepoint".to_owned(),
                // Full: BTF gives the name the kernel truncates to 15 bytes.
                name: "inet_sock_set_state".to_owned(),
                run_time_ns: 129_556_372,
                run_cnt: 141_652,
                recursion_misses: 0,
            }
        );
        let per_run = main.ns_per_run().expect("ran");
        assert!((per_run - 914.6).abs() < 0.1, "{per_run}");
        // tcp_receive_reset never ran: bpftool leaves the counters out.
        let reset = progs.iter().find(|p| p.id == 3445).expect("listed");
        assert_eq!(reset.name, "tcp_receive_reset");
        assert_eq!((reset.run_cnt, reset.run_time_ns), (0, 0));
        assert_eq!(reset.ns_per_run(), None);
        // bpftrace's program has no BTF: its name stays truncated.
        let floor = progs.iter().find(|p| p.id == 3450).expect("listed");
        assert_eq!(floor.name, "inet_sock_set_s");
        assert_eq!(floor.run_cnt, main.run_cnt);
    }

    #[test]
    fn rejects_what_is_not_bpftools_list() {
        assert!(parse_bpftool_progs("").is_err());
        assert!(parse_bpftool_progs("{\"id\": 1}").is_err());
        assert!(parse_bpftool_progs("[{\"name\": \"x\"}]").is_err());
        assert!(parse_bpftool_progs("[{\"id\": 99999999999}]").is_err());
        assert_eq!(parse_bpftool_progs("[]").expect("empty list"), []);
        let misses = parse_bpftool_progs(r#"[{"id": 7, "recursion_misses": 3}]"#).expect("ok");
        assert_eq!(misses[0].recursion_misses, 3);
    }

    #[test]
    fn parses_real_fdinfo() {
        // twtrace's fds for its main program: the program itself, and its tracepoint link.
        let prog = FdInfo::parse(include_str!("testdata/fdinfo-prog.txt"));
        assert_eq!(
            prog,
            FdInfo {
                prog_id: Some(3443),
                tp_name: None
            }
        );
        let link = FdInfo::parse(include_str!("testdata/fdinfo-link.txt"));
        assert_eq!(
            link,
            FdInfo {
                prog_id: Some(3443),
                tp_name: Some("inet_sock_set_state".to_owned())
            }
        );
        assert_eq!(FdInfo::parse("pos:\t0\nflags:\t02\n"), FdInfo::default());
    }

    #[test]
    fn reads_this_processs_fdinfo() {
        // The test runner holds no BPF objects.
        let programs = programs_of(std::process::id()).expect("own fdinfo");
        assert!(programs.is_empty(), "{programs:?}");
        assert!(programs_of(1 << 30).is_err());
    }

    #[test]
    fn differences_are_taken_per_program() {
        let progs = parse_bpftool_progs(BPFTOOL).expect("parses");
        let after: BTreeMap<u32, ProgStats> = progs.into_iter().map(|p| (p.id, p)).collect();
        let mut before = after.clone();
        if let Some(p) = before.get_mut(&3443) {
            p.run_cnt = 41_652;
            p.run_time_ns = 29_556_372;
        }
        // 3444 was not listed before (loaded in between): all of it counts.
        before.remove(&3444);
        let programs: BTreeMap<u32, Option<String>> = [
            (3443, Some("inet_sock_set_state".to_owned())),
            (3444, None),
            // Gone by the second listing: left out.
            (1, None),
        ]
        .into();
        let costs = costs_of(&programs, &before, &after);
        assert_eq!(ids(&costs), [3443, 3444].into());
        assert_eq!(
            (costs[0].stats.run_cnt, costs[0].stats.run_time_ns),
            (100_000, 100_000_000)
        );
        assert_eq!(costs[0].tracepoint.as_deref(), Some("inet_sock_set_state"));
        assert_eq!(costs[1].stats.run_cnt, 28_331);
        // The floor is bpftrace's single tracepoint program.
        let floor_programs: BTreeMap<u32, Option<String>> = [(3450, None)].into();
        let floor = the_floor(costs_of(&floor_programs, &before, &after)).expect("one");
        assert_eq!(floor.stats.name, "inet_sock_set_s");
        assert!(the_floor(costs).is_err());
    }

    #[test]
    fn stats_switch_needs_no_sysctl() {
        let sysctl = || fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok();
        let before = sysctl();
        match RunTimeStats::enable() {
            Ok(guard) => {
                // The kernel counts the fd as a user of the statistics; the sysctl stays as the
                // administrator set it, during and after.
                assert_eq!(sysctl(), before);
                drop(guard);
                assert_eq!(sysctl(), before);
            }
            // Unprivileged: one clear error naming the call.
            Err(err) => {
                assert!(!crate::shell::is_root(), "root must be able to: {err:#}");
                assert!(format!("{err:#}").contains("BPF_ENABLE_STATS"), "{err:#}");
            }
        }
    }
}
