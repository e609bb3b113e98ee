//! Checking capabilities up front, so a missing one is one clear line naming it (or a notice
//! saying what works less well) instead of an EPERM from deep inside the loader or a silently
//! empty /proc read.
//!
//! What each capability is for (docs/privileges.md has the evidence, measured on Linux 6.18):
//! - CAP_BPF: create maps, load BTF and programs (`bpf()`).
//! - CAP_PERFMON: load tracing programs and open tracepoint perf events on every CPU
//!   (`perf_event_paranoid` is 2 here).
//! - CAP_DAC_READ_SEARCH: read tracefs (mode 0700, files 0440, owner root) for the tracepoint
//!   ids and formats, and list other users' `/proc/<pid>/fd` (mode 0500).
//! - CAP_SYS_PTRACE: read the links in other users' `/proc/<pid>/fd` (a ptrace access check), to
//!   find the processes holding sockets that existed before the start.
//! - CAP_SYS_NICE: raise the agent's scheduling priority (`raise_priority`), so it keeps up
//!   at peak; without it twtrace says what it risks and goes on.
//! - CAP_SYS_ADMIN: only to mount tracefs when it is not mounted; it also stands in for CAP_BPF
//!   and CAP_PERFMON (and is all there is on kernels before 5.8).
//!
//! sock_diag dumps, /proc/net/tcp and /proc/net/sockstat need none: they list every socket of the
//! network namespace to anyone.

use procfs::process::Process;

/// A capability twtrace uses, with its number from linux/capability.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    DacOverride = 1,
    DacReadSearch = 2,
    SysPtrace = 19,
    SysAdmin = 21,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    pub fn name(self) -> &'static str {
        match self {
            Self::DacOverride => "CAP_DAC_OVERRIDE",
            Self::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Self::SysPtrace => "CAP_SYS_PTRACE",
            Self::SysAdmin => "CAP_SYS_ADMIN",
            Self::Perfmon => "CAP_PERFMON",
            Self::Bpf => "CAP_BPF",
        }
    }
}

/// The least set that gives full function when tracefs is already mounted.
pub const LEAST: [Cap; 4] = [Cap::Bpf, Cap::Perfmon, Cap::DacReadSearch, Cap::SysPtrace];

/// An effective capability set, one bit per capability number (`CapEff` of /proc/self/status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps(pub u64);

impl Caps {
    /// This process's effective set; `None` when /proc cannot tell, and then the kernel decides
    /// and twtrace reports its answer.
    pub fn current() -> Option<Self> {
        match Process::myself().and_then(|p| p.status()) {
            Ok(status) => Some(Self(status.capeff)),
            Err(e) => {
                log::debug!("capabilities unknown, /proc/self/status not read: {e}");
                None
            }
        }
    }

    pub fn has(self, cap: Cap) -> bool {
        self.0 & (1u64 << cap as u32) != 0
    }

    /// What loading and attaching the program needs and this set lacks. The kernel accepts
    /// CAP_SYS_ADMIN for either (`bpf_capable()`, `perfmon_capable()`).
    pub fn missing_to_trace(self) -> Vec<Cap> {
        if self.has(Cap::SysAdmin) {
            return Vec::new();
        }
        [Cap::Bpf, Cap::Perfmon]
            .into_iter()
            .filter(|&c| !self.has(c))
            .collect()
    }

    /// Whether file permissions are no obstacle to reading (CAP_DAC_OVERRIDE includes it).
    pub fn reads_anything(self) -> bool {
        self.has(Cap::DacReadSearch) || self.has(Cap::DacOverride)
    }

    /// What reading the fd links of other users' processes needs and this set lacks: listing
    /// `/proc/<pid>/fd` (mode 0500, owned by the process's user) is a permission check, reading
    /// its links a ptrace access check.
    pub fn missing_for_other_fds(self) -> Vec<Cap> {
        let mut missing = Vec::new();
        if !self.reads_anything() {
            missing.push(Cap::DacReadSearch);
        }
        if !self.has(Cap::SysPtrace) {
            missing.push(Cap::SysPtrace);
        }
        missing
    }

    /// Things that work less well with this set, one notice each (without the `twtrace: `).
    pub fn degradations(self) -> Vec<String> {
        let missing = self.missing_for_other_fds();
        if missing.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "without {} twtrace cannot read /proc/<pid>/fd of other users' processes (nor of \
             processes with capabilities it lacks), so listeners already open at the start are \
             not learnt (the connections they accept show as pid 0 `unknown`) and sockets that \
             existed before the start are counted under `(before start)`; everything else works",
            names(&missing, "and"),
        )]
    }
}

/// The nice value the live agent runs at (see `raise_priority`).
pub const AGENT_NICE: i32 = -10;

/// Raises the process's scheduling priority to `AGENT_NICE` unless it is already that high.
///
/// Why: at peak the traced workload has more runnable threads than there are CPUs, and the fair
/// scheduler gives each, the agent included, an equal share. With four churn generators (eight
/// busy threads) on two CPUs that share was less than the agent needs to read ~450,000 events/s,
/// so the ring buffer overflowed (113,179 of 2.9 M events lost in one 8 s run); at nice -10 it
/// lost none. The agent's CPU use does not grow with its priority: it is bounded by the event
/// rate, and the workload gets the rest. Linux applies it to the calling thread and to the
/// threads it creates later, so this runs before the agent starts any.
///
/// Returns a notice when the kernel refuses (no CAP_SYS_NICE): twtrace works, but may fall
/// behind at peak, and says so in its lost count.
pub fn raise_priority() -> Option<String> {
    // SAFETY: plain system calls on this thread (who = 0), no pointers. getpriority() cannot
    // fail for the calling thread, so its -1 is a value, not an error.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if now <= AGENT_NICE {
        return None;
    }
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, AGENT_NICE) } == 0 {
        return None;
    }
    Some(format!(
        "could not raise its scheduling priority to nice {AGENT_NICE} ({}; it needs \
         CAP_SYS_NICE): at peak churn, with more busy threads than CPUs, twtrace may fall behind \
         and lose events (always counted as lost)",
        std::io::Error::last_os_error()
    ))
}

/// `A`, `A and B`, `A, B and C`.
pub fn names(caps: &[Cap], conjunction: &str) -> String {
    match caps {
        [] => String::new(),
        [one] => one.name().to_owned(),
        [init @ .., last] => format!(
            "{} {conjunction} {}",
            init.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
            last.name()
        ),
    }
}

/// The error line for capabilities missing to load and attach the program.
pub fn explain(missing: &[Cap]) -> String {
    format!(
        "needs root, or the capabilities CAP_BPF and CAP_PERFMON to load its eBPF program and \
         attach it to tracepoints (missing: {}; full function also needs CAP_DAC_READ_SEARCH, \
         CAP_SYS_PTRACE and CAP_SYS_NICE); run it with sudo",
        names(missing, "and")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Cap]) -> Caps {
        Caps(caps.iter().fold(0, |bits, &c| bits | 1 << c as u32))
    }

    /// Every capability this kernel knows (0..=40), as root has them.
    const ALL: Caps = Caps((1 << 41) - 1);

    #[test]
    fn reads_its_own_cap_eff() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("a CapEff line");
        let expected = u64::from_str_radix(hex.trim(), 16).expect("hex");
        assert_eq!(Caps::current(), Some(Caps(expected)));
    }

    #[test]
    fn numbers_are_the_kernel_ones() {
        // CapEff of `setpriv --inh-caps=+bpf,+perfmon --ambient-caps=+bpf,+perfmon`.
        assert_eq!(set(&[Cap::Bpf, Cap::Perfmon]), Caps(0xc0_0000_0000));
        // ... of +dac_read_search,+sys_ptrace.
        assert_eq!(set(&[Cap::DacReadSearch, Cap::SysPtrace]), Caps(0x8_0004));
        assert_eq!(set(&[Cap::SysAdmin, Cap::DacOverride]), Caps(0x20_0002));
    }

    #[test]
    fn root_and_sys_admin_can_trace() {
        assert!(ALL.missing_to_trace().is_empty());
        assert!(set(&[Cap::SysAdmin]).missing_to_trace().is_empty());
    }

    #[test]
    fn names_exactly_what_tracing_lacks() {
        assert_eq!(Caps(0).missing_to_trace(), vec![Cap::Bpf, Cap::Perfmon]);
        assert_eq!(set(&[Cap::Bpf]).missing_to_trace(), vec![Cap::Perfmon]);
        assert_eq!(set(&[Cap::Perfmon]).missing_to_trace(), vec![Cap::Bpf]);
        assert!(set(&[Cap::Bpf, Cap::Perfmon]).missing_to_trace().is_empty());
        // The file-reading ones do not stand in for either.
        assert_eq!(
            set(&[Cap::DacReadSearch, Cap::SysPtrace, Cap::DacOverride]).missing_to_trace(),
            vec![Cap::Bpf, Cap::Perfmon]
        );
        let line = explain(&[Cap::Perfmon]);
        assert!(line.contains("(missing: CAP_PERFMON;"), "{line}");
        let line = explain(&[Cap::Bpf, Cap::Perfmon]);
        assert!(
            line.contains("(missing: CAP_BPF and CAP_PERFMON;"),
            "{line}"
        );
    }

    #[test]
    fn other_processes_fds_need_dac_read_search_and_sys_ptrace() {
        assert!(ALL.missing_for_other_fds().is_empty());
        assert!(set(&LEAST).missing_for_other_fds().is_empty());
        assert_eq!(
            set(&[Cap::Bpf, Cap::Perfmon, Cap::DacReadSearch]).missing_for_other_fds(),
            vec![Cap::SysPtrace]
        );
        assert_eq!(
            set(&[Cap::SysPtrace]).missing_for_other_fds(),
            vec![Cap::DacReadSearch]
        );
        assert!(
            set(&[Cap::DacOverride, Cap::SysPtrace])
                .missing_for_other_fds()
                .is_empty()
        );
        assert_eq!(
            Caps(0).missing_for_other_fds(),
            vec![Cap::DacReadSearch, Cap::SysPtrace]
        );
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not for these.
        assert_eq!(
            set(&[Cap::SysAdmin]).missing_for_other_fds(),
            vec![Cap::DacReadSearch, Cap::SysPtrace]
        );
    }

    #[test]
    fn the_least_set_degrades_nothing_and_one_less_says_what() {
        assert!(set(&LEAST).degradations().is_empty());
        assert!(ALL.degradations().is_empty());
        let notices = set(&[Cap::Bpf, Cap::Perfmon, Cap::DacReadSearch]).degradations();
        assert_eq!(notices.len(), 1, "{notices:?}");
        let notice = &notices[0];
        assert!(notice.starts_with("without CAP_SYS_PTRACE twtrace cannot read /proc/<pid>/fd"));
        assert!(notice.contains("pid 0 `unknown`"), "{notice}");
        assert!(notice.contains("`(before start)`"), "{notice}");
        assert!(!notice.contains("DAC"), "{notice}");
        let notices = set(&[Cap::SysAdmin]).degradations();
        assert!(
            notices[0].starts_with("without CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE twtrace"),
            "{notices:?}"
        );
    }

    #[test]
    fn lists_read_naturally() {
        assert_eq!(names(&[], "and"), "");
        assert_eq!(names(&[Cap::Bpf], "and"), "CAP_BPF");
        assert_eq!(
            names(&[Cap::Bpf, Cap::Perfmon], "or"),
            "CAP_BPF or CAP_PERFMON"
        );
        assert_eq!(
            names(&LEAST, "and"),
            "CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE"
        );
    }
}
