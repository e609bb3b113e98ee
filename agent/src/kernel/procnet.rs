//! What /proc says about sockets that existed before twtrace started.
//!
//! The kernel program learns a listener's owner when it sees `CLOSE -> LISTEN`; a server started
//! before twtrace never shows that, so its accepted connections would be unattributed until the
//! server closed them. At start-up the listening sockets of every network namespace come from
//! listener-only sock_diag dumps (`crate::kernel::netns::listeners`) and are matched to
//! processes through the socket inodes in /proc/<pid>/fd, as `ss -p` does. The `procfs` crate
//! reads and parses those.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use procfs::{
    ProcError,
    process::{FDTarget, Process, all_processes},
};
use twtrace_ebpf::{COMM_LEN, Owner, how};

/// The inode of an fd link target such as `socket:[1644]`; `None` for any other kind of fd.
pub fn socket_inode(link: &str) -> Option<u64> {
    match link.parse() {
        Ok(FDTarget::Socket(inode)) => Some(inode),
        _ => None,
    }
}

/// Listening sockets (namespace, local port, inode) grouped by (namespace, port). Port 0 and
/// inode 0 rows (none in practice) are dropped.
pub fn listening_inodes(sockets: &[(u32, u16, u64)]) -> BTreeMap<(u32, u16), Vec<u64>> {
    let mut by_port: BTreeMap<(u32, u16), Vec<u64>> = BTreeMap::new();
    for &(netns, port, inode) in sockets {
        if port != 0 && inode != 0 {
            by_port.entry((netns, port)).or_default().push(inode);
        }
    }
    by_port
}

/// For each port, the owner among the processes holding one of its listening sockets. Forked
/// servers share a listener between parent and workers; the lowest pid (usually the parent,
/// which opened it) is chosen so the answer does not depend on directory order.
pub fn choose_owners<K: Ord + Copy>(
    by_port: &BTreeMap<K, Vec<u64>>,
    holders: &HashMap<u64, Vec<u32>>,
) -> BTreeMap<K, u32> {
    by_port
        .iter()
        .filter_map(|(&port, inodes)| {
            let pid = inodes
                .iter()
                .filter_map(|i| holders.get(i))
                .flatten()
                .min()?;
            Some((port, *pid))
        })
        .collect()
}

/// The owners of listening sockets that existed before twtrace started, keyed by (namespace,
/// port): `listening` holds (namespace, port, inode) of each, from listener-only sock_diag dumps
/// of every namespace. Socket inodes are unique across namespaces, so one walk of every
/// process's fds finds all holders.
pub fn existing_listeners(listening: &[(u32, u16, u64)]) -> Vec<((u32, u16), Owner)> {
    let by_port = listening_inodes(listening);
    if by_port.is_empty() {
        return Vec::new();
    }
    let wanted: HashSet<u64> = by_port.values().flatten().copied().collect();
    let holders = socket_holders(&wanted);
    let cgroup_root = cgroup2_mount();
    choose_owners(&by_port, &holders)
        .into_iter()
        .map(|(key, pid)| (key, owner_of(pid, cgroup_root.as_deref())))
        .collect()
}

/// Which processes hold each wanted socket inode (as `ss -p` finds them). Processes that exit
/// meanwhile, or whose fds cannot be read, are skipped.
pub fn socket_holders(wanted: &HashSet<u64>) -> HashMap<u64, Vec<u32>> {
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    if wanted.is_empty() {
        return holders;
    }
    let procs = match all_processes() {
        Ok(procs) => procs,
        Err(e) => {
            log::debug!("cannot list processes: {e}");
            return holders;
        }
    };
    // Processes whose fds this one may not read (other users' without CAP_DAC_READ_SEARCH and
    // CAP_SYS_PTRACE): the notice at start-up says what that costs; -v says how many.
    let mut refused = 0usize;
    // Each `Process` holds its /proc/<pid> directory open: one at a time, dropped after its fds.
    for process in procs.flatten() {
        let Ok(pid) = u32::try_from(process.pid) else {
            continue;
        };
        let fds = match process.fd() {
            Ok(fds) => fds,
            Err(e) => {
                refused += usize::from(matches!(e, ProcError::PermissionDenied(_)));
                continue;
            }
        };
        let mut denied = false;
        for fd in fds {
            match fd {
                Ok(fd) => {
                    if let FDTarget::Socket(inode) = fd.target
                        && wanted.contains(&inode)
                    {
                        holders.entry(inode).or_default().push(pid);
                    }
                }
                Err(ProcError::PermissionDenied(_)) => denied = true,
                // Closed meanwhile.
                Err(_) => {}
            }
        }
        refused += usize::from(denied);
    }
    if refused > 0 {
        log::debug!("the fds of {refused} processes could not be read (permission denied)");
    }
    holders
}

/// When `pid` started (clock ticks after boot), or None when it does not exist: with the pid,
/// it names one process even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let process = Process::new(i32::try_from(pid).ok()?).ok()?;
    let stat = process.stat().ok()?;
    // A zombie has exited: it holds no file descriptors any more, only its exit status.
    (stat.state != 'Z').then_some(stat.starttime)
}

/// A process's owner record (pid, comm, cgroup id) read from /proc. What cannot be read (the
/// process exited) stays empty: no comm, cgroup id 0.
pub fn owner_of(pid: u32, cgroup_root: Option<&Path>) -> Owner {
    let process = i32::try_from(pid).ok().and_then(|p| Process::new(p).ok());
    let mut comm = [0u8; COMM_LEN];
    if let Some(stat) = process.as_ref().and_then(|p| p.stat().ok()) {
        let name = stat.comm.as_bytes();
        let n = name.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&name[..n]);
    }
    Owner {
        tgid: pid,
        how: how::OWNER,
        cgroup_id: match (process, cgroup_root) {
            (Some(process), Some(root)) => cgroup_id(&process, root),
            _ => 0,
        },
        comm,
    }
}

/// Bytes of a command line kept (an ellipsis marks a cut): enough to tell three `python3`
/// processes apart by their scripts and options, short enough for a table row.
pub const CMDLINE_CAP: usize = 200;

/// A process's command line, from /proc/<pid>/cmdline: its arguments joined by spaces, not
/// escaped (the text outputs escape it), cut at [`CMDLINE_CAP`] bytes with `…`. `None` when it
/// cannot be read or is empty (a kernel thread, a zombie).
pub fn cmdline(pid: u32) -> Option<String> {
    use std::io::Read as _;
    let mut buf = Vec::with_capacity(CMDLINE_CAP + 64);
    // A command line may be megabytes long; what is shown needs its start only. One byte past
    // the cap (and a UTF-8 character's worth more) tells whether it was cut.
    fs::File::open(format!("/proc/{pid}/cmdline"))
        .ok()?
        .take((CMDLINE_CAP + 8) as u64)
        .read_to_end(&mut buf)
        .ok()?;
    format_cmdline(&buf)
}

/// The text of a /proc/<pid>/cmdline: arguments are NUL-terminated (a process that rewrote its
/// arguments may leave one string with spaces), invalid UTF-8 is replaced, and text beyond
/// [`CMDLINE_CAP`] bytes is cut at a character boundary, followed by `…`.
pub fn format_cmdline(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let text: String = String::from_utf8_lossy(raw)
        .split('\0')
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.trim_end();
    if text.is_empty() {
        return None;
    }
    if text.len() <= CMDLINE_CAP {
        return Some(text.to_owned());
    }
    let mut cut = CMDLINE_CAP;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(format!("{}…", &text[..cut]))
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid systems like this one), from this process's mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = Process::myself().and_then(|p| p.mountinfo()).ok()?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

/// The cgroup id bpf_get_current_cgroup_id() reports: the inode of the process's cgroup v2
/// directory (the `0::<path>` line of /proc/<pid>/cgroup, under the cgroup2 mount).
fn cgroup_id(process: &Process, root: &Path) -> u64 {
    let Ok(cgroups) = process.cgroups() else {
        return 0;
    };
    let Some(v2) = cgroups
        .0
        .into_iter()
        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())
    else {
        return 0;
    };
    fs::metadata(root.join(v2.pathname.trim_start_matches('/'))).map_or(0, |m| m.ino())
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        os::fd::{AsFd, AsRawFd as _},
    };

    use super::*;

    /// The inode of the socket behind `fd`, from its /proc/self/fd link.
    fn inode_of(fd: &impl AsFd) -> u64 {
        let raw = fd.as_fd().as_raw_fd();
        let link = fs::read_link(format!("/proc/self/fd/{raw}")).expect("fd link");
        socket_inode(&link.to_string_lossy()).expect("a socket:[N] link")
    }

    #[test]
    fn listeners_are_grouped_by_namespace_and_port() {
        let by_port = listening_inodes(&[
            (7, 2024, 1644),
            (7, 8080, 99),
            (7, 8080, 100),
            (9, 8080, 101),
            (7, 0, 5),
            (7, 9000, 0),
        ]);
        assert_eq!(
            by_port,
            BTreeMap::from([
                ((7, 2024), vec![1644]),
                ((7, 8080), vec![99, 100]),
                ((9, 8080), vec![101]),
            ])
        );
    }

    #[test]
    fn the_lowest_holder_owns_a_shared_listener() {
        let by_port = BTreeMap::from([(8080, vec![99, 100]), (2024, vec![1644]), (9000, vec![5])]);
        let holders = HashMap::from([(99, vec![300, 200]), (100, vec![250]), (1644, vec![7])]);
        let owners = choose_owners(&by_port, &holders);
        assert_eq!(
            owners,
            BTreeMap::from([(8080, 200), (2024, 7)]),
            "port 9000 has no holder"
        );
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[1644]"), Some(1644));
        assert_eq!(socket_inode("pipe:[1644]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode(""), None);
    }

    #[test]
    fn finds_the_holder_of_its_own_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let inode = inode_of(&listener);
        let holders = socket_holders(&HashSet::from([inode]));
        assert_eq!(holders.get(&inode), Some(&vec![std::process::id()]));
        assert!(socket_holders(&HashSet::new()).is_empty());
    }

    #[test]
    fn finds_its_own_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // As a listener-only dump gives it, tagged as namespace 7.
        let owners = existing_listeners(&[(7, port, inode_of(&listener))]);
        let (_, owner) = owners
            .iter()
            .find(|(key, _)| *key == (7, port))
            .expect("own listener found");
        assert_eq!(owner.tgid, std::process::id());
        assert_eq!(owner.how, how::OWNER);
        assert_ne!(owner.comm[0], 0, "comm read from /proc");
    }

    #[test]
    fn owner_of_itself_matches_proc_self() {
        let pid = std::process::id();
        let root = cgroup2_mount();
        let owner = owner_of(pid, root.as_deref());
        assert_eq!(owner.tgid, pid);

        let comm = fs::read("/proc/self/comm").expect("comm");
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        let len = owner.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        assert_eq!(&owner.comm[..len], comm);

        // The cgroup id is the inode of the `0::` path's directory under the cgroup2 mount.
        let expected = root.as_deref().map_or(0, |root| {
            let text = fs::read_to_string("/proc/self/cgroup").expect("cgroup");
            text.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .and_then(|path| fs::metadata(root.join(path.trim_start_matches('/'))).ok())
                .map_or(0, |m| m.ino())
        });
        assert_eq!(owner.cgroup_id, expected);
    }

    #[test]
    fn cgroup2_mount_is_the_one_in_proc_mounts() {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
        let expected = mounts.lines().find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(cols[1]))
        });
        assert_eq!(cgroup2_mount(), expected);
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            format_cmdline(b"python3\0-m\0http.server\08000\0").as_deref(),
            Some("python3 -m http.server 8000")
        );
        // Rewritten by the process (setproctitle): one string, no NUL at the end.
        assert_eq!(
            format_cmdline(b"nginx: worker process").as_deref(),
            Some("nginx: worker process")
        );
        assert_eq!(format_cmdline(b""), None, "a kernel thread");
        assert_eq!(format_cmdline(b"\0"), None);
        // Kept as read (escaping is the outputs' job), invalid UTF-8 replaced.
        assert_eq!(
            format_cmdline(b"a\x1b[2J\0\xff\0").as_deref(),
            Some("a\x1b[2J \u{fffd}")
        );
        // Cut at the cap, on a character boundary, with an ellipsis.
        let long = "é".repeat(150);
        let cut = format_cmdline(long.as_bytes()).expect("text");
        assert!(cut.ends_with('…'), "{cut}");
        assert_eq!(cut.len(), CMDLINE_CAP + '…'.len_utf8());
        let exact = "x".repeat(CMDLINE_CAP);
        assert_eq!(format_cmdline(exact.as_bytes()), Some(exact));
    }

    #[test]
    fn its_own_command_line() {
        let mine = cmdline(std::process::id()).expect("own cmdline");
        let argv0 = std::env::args().next().expect("argv[0]");
        assert!(mine.starts_with(&argv0) || mine.ends_with('…'), "{mine}");
        assert_eq!(cmdline(i32::MAX as u32), None);
    }

    #[test]
    fn an_exited_process_has_an_empty_owner() {
        // Beyond pid_max (at most 2^22): no such process; u32::MAX is no pid_t at all.
        for pid in [i32::MAX as u32, u32::MAX] {
            let owner = owner_of(pid, Some(Path::new("/sys/fs/cgroup")));
            assert_eq!((owner.tgid, owner.cgroup_id), (pid, 0));
            assert_eq!(owner.comm, [0; COMM_LEN]);
        }
    }
}
