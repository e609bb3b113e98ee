//! What /proc says about sockets that existed before twtrace started.
//!
//! The kernel program learns a listener's owner when it sees `CLOSE -> LISTEN`; a server started
//! before twtrace never shows that, so its accepted connections would be unattributed until the
//! server closed them. At start-up the listening sockets are read from /proc/net/tcp{,6} and
//! matched to processes through the socket inodes in /proc/<pid>/fd, as `ss -p` does. The
//! `procfs` crate reads and parses every one of these files.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use procfs::{
    ProcError,
    net::{TcpNetEntry, TcpState},
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

/// Listening sockets by local port with their inodes. Port 0 rows (none in practice) are dropped.
pub fn listening_inodes(sockets: &[TcpNetEntry]) -> BTreeMap<u16, Vec<u64>> {
    let mut by_port: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    for s in sockets {
        let port = s.local_address.port();
        if s.state == TcpState::Listen && port != 0 && s.inode != 0 {
            by_port.entry(port).or_default().push(s.inode);
        }
    }
    by_port
}

/// For each port, the owner among the processes holding one of its listening sockets. Forked
/// servers share a listener between parent and workers; the lowest pid (usually the parent,
/// which opened it) is chosen so the answer does not depend on directory order.
pub fn choose_owners(
    by_port: &BTreeMap<u16, Vec<u64>>,
    holders: &HashMap<u64, Vec<u32>>,
) -> BTreeMap<u16, u32> {
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

/// The rows of /proc/<pid>/net/tcp and tcp6: the TCP sockets of that process's network
/// namespace (None: twtrace's own). A table that cannot be read is skipped: a kernel without
/// IPv6 has no tcp6, and a process may exit meanwhile; nothing to learn there.
fn tcp_sockets(pid: Option<u32>) -> Vec<TcpNetEntry> {
    let mut rows = Vec::new();
    let tables = match pid {
        None => [procfs::net::tcp(), procfs::net::tcp6()],
        Some(pid) => match Process::new(i32::try_from(pid).unwrap_or(i32::MAX)) {
            Ok(p) => [p.tcp(), p.tcp6()],
            Err(e) => {
                log::debug!("TCP socket tables of pid {pid} not read: {e}");
                return rows;
            }
        },
    };
    for table in tables {
        match table {
            Ok(table) => rows.extend(table),
            // procfs's error names the file.
            Err(e) => log::debug!("TCP socket table not read: {e}"),
        }
    }
    rows
}

/// The listening sockets of each network namespace with their owning processes, keyed by
/// (namespace, port). `namespaces` names each namespace with a process inside it, whose
/// /proc/<pid>/net/tcp{,6} shows that namespace's sockets; pid None reads twtrace's own. Socket
/// inodes are unique across namespaces, so one walk of every process's fds finds all holders.
pub fn existing_listeners(namespaces: &[(u32, Option<u32>)]) -> Vec<((u32, u16), Owner)> {
    let tables: Vec<(u32, BTreeMap<u16, Vec<u64>>)> = namespaces
        .iter()
        .map(|&(netns, pid)| (netns, listening_inodes(&tcp_sockets(pid))))
        .filter(|(_, by_port)| !by_port.is_empty())
        .collect();
    if tables.is_empty() {
        return Vec::new();
    }
    let wanted: HashSet<u64> = tables
        .iter()
        .flat_map(|(_, by_port)| by_port.values().flatten().copied())
        .collect();
    let holders = socket_holders(&wanted);
    let cgroup_root = cgroup2_mount();
    tables
        .iter()
        .flat_map(|(netns, by_port)| {
            choose_owners(by_port, &holders)
                .into_iter()
                .map(move |(port, pid)| ((*netns, port), pid))
        })
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
        net::{TcpListener, TcpStream},
        os::fd::{AsFd, AsRawFd as _},
    };

    use procfs::{FromReadSI as _, net::TcpNetEntries};

    use super::*;

    /// The inode of the socket behind `fd`, from its /proc/self/fd link.
    fn inode_of(fd: &impl AsFd) -> u64 {
        let raw = fd.as_fd().as_raw_fd();
        let link = fs::read_link(format!("/proc/self/fd/{raw}")).expect("fd link");
        socket_inode(&link.to_string_lossy()).expect("a socket:[N] link")
    }

    /// Rows as the kernel prints them (a listener, a TIME_WAIT socket, a listener of uid 1000;
    /// IPv6: a listener on a port the IPv4 table has too), parsed by procfs.
    fn sample_rows() -> Vec<TcpNetEntry> {
        const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1644 1 00000000ff4e9776 100 0 0 10 0
   1: 0100007F:8000 0100007F:8F5B 06 00000000:00000000 03:0000122A 00000000     0        0 0 3 00000000f60116c9
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 100 0 0 10 0
";
        const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0000000000000000 100 0 0 10 0
";
        let info = procfs::current_system_info();
        let mut rows = TcpNetEntries::from_read(TCP.as_bytes(), info)
            .expect("tcp sample")
            .0;
        rows.extend(
            TcpNetEntries::from_read(TCP6.as_bytes(), info)
                .expect("tcp6 sample")
                .0,
        );
        rows
    }

    #[test]
    fn only_listeners_count_and_ports_gather_their_inodes() {
        let by_port = listening_inodes(&sample_rows());
        assert_eq!(by_port.get(&2024), Some(&vec![1644]));
        assert_eq!(by_port.get(&8080), Some(&vec![99, 100]));
        assert_eq!(by_port.len(), 2, "the TIME_WAIT row is not a listener");
    }

    #[test]
    fn a_live_listener_is_read_from_proc_net_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let by_port = listening_inodes(&tcp_sockets(None));
        // The accepted connection has the listener's local port but is not a listener.
        assert_eq!(by_port.get(&port), Some(&vec![inode_of(&listener)]));
        let client_port = client.local_addr().expect("addr").port();
        assert!(
            !by_port.contains_key(&client_port),
            "a client is no listener"
        );
        drop((client, accepted));
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
        // Read through this process's /proc/<pid>/net, tagged as namespace 7.
        let owners = existing_listeners(&[(7, Some(std::process::id()))]);
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
    fn an_exited_process_has_an_empty_owner() {
        // Beyond pid_max (at most 2^22): no such process; u32::MAX is no pid_t at all.
        for pid in [i32::MAX as u32, u32::MAX] {
            let owner = owner_of(pid, Some(Path::new("/sys/fs/cgroup")));
            assert_eq!((owner.tgid, owner.cgroup_id), (pid, 0));
            assert_eq!(owner.comm, [0; COMM_LEN]);
        }
    }
}
