//! What /proc says about sockets that existed before twtrace started.
//!
//! The kernel program learns a listener's owner when it sees `CLOSE -> LISTEN`; a server started
//! before twtrace never shows that, so its accepted connections would be unattributed until the
//! server closed them. At start-up the listening sockets are read from /proc/net/tcp{,6} and
//! matched to processes through the socket inodes in /proc/<pid>/fd, as `ss -p` does.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use twtrace_ebpf::{COMM_LEN, Owner, how};

/// TCP_LISTEN as /proc/net/tcp prints it (`st` column, hex).
const ST_LISTEN: u8 = 0x0A;

/// One row of /proc/net/tcp or /proc/net/tcp6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSocket {
    pub local_port: u16,
    pub state: u8,
    pub inode: u64,
}

/// Parses the rows of /proc/net/tcp or tcp6; the header and malformed rows are skipped.
pub fn parse_proc_net_tcp(text: &str) -> Vec<ProcSocket> {
    text.lines().filter_map(parse_row).collect()
}

/// `   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1644 ...`
fn parse_row(line: &str) -> Option<ProcSocket> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    if cols.len() < 10 || !cols[0].ends_with(':') {
        return None;
    }
    let (_, port) = cols[1].rsplit_once(':')?;
    Some(ProcSocket {
        local_port: u16::from_str_radix(port, 16).ok()?,
        state: u8::from_str_radix(cols[3], 16).ok()?,
        inode: cols[9].parse().ok()?,
    })
}

/// The inode of an fd link target such as `socket:[1644]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Listening sockets by local port with their inodes. Port 0 rows (none in practice) are dropped.
pub fn listening_inodes(sockets: &[ProcSocket]) -> BTreeMap<u16, Vec<u64>> {
    let mut by_port: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    for s in sockets {
        if s.state == ST_LISTEN && s.local_port != 0 && s.inode != 0 {
            by_port.entry(s.local_port).or_default().push(s.inode);
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

/// The listening sockets of this network namespace with their owning processes.
pub fn existing_listeners() -> Vec<(u16, Owner)> {
    let mut rows = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        // A kernel without IPv6 has no tcp6: nothing to learn there.
        if let Ok(text) = fs::read_to_string(file) {
            rows.extend(parse_proc_net_tcp(&text));
        }
    }
    let by_port = listening_inodes(&rows);
    if by_port.is_empty() {
        return Vec::new();
    }
    let wanted: std::collections::HashSet<u64> = by_port.values().flatten().copied().collect();
    let holders = socket_holders(&wanted);
    let cgroup_root = cgroup2_mount();
    choose_owners(&by_port, &holders)
        .into_iter()
        .map(|(port, pid)| (port, owner_of(pid, cgroup_root.as_deref())))
        .collect()
}

/// Which processes hold each wanted socket inode (as `ss -p` finds them). Processes that exit
/// meanwhile, or whose fds cannot be read, are skipped.
pub fn socket_holders(wanted: &std::collections::HashSet<u64>) -> HashMap<u64, Vec<u32>> {
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return holders;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = target.to_str().and_then(socket_inode)
                && wanted.contains(&inode)
            {
                holders.entry(inode).or_default().push(pid);
            }
        }
    }
    holders
}

/// A process's owner record (pid, comm, cgroup id) read from /proc.
pub fn owner_of(pid: u32, cgroup_root: Option<&Path>) -> Owner {
    let mut comm = [0u8; COMM_LEN];
    if let Ok(name) = fs::read(format!("/proc/{pid}/comm")) {
        let name = name.strip_suffix(b"\n").unwrap_or(&name);
        let n = name.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&name[..n]);
    }
    Owner {
        tgid: pid,
        how: how::OWNER,
        cgroup_id: cgroup_root.map_or(0, |root| cgroup_id(pid, root)),
        comm,
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid systems like this one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        let (_dev, dir, fstype) = (cols.next()?, cols.next()?, cols.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The cgroup id bpf_get_current_cgroup_id() reports: the inode of the process's cgroup v2
/// directory.
fn cgroup_id(pid: u32, root: &Path) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return 0;
    };
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        return 0;
    };
    fs::metadata(root.join(path.trim_start_matches('/'))).map_or(0, |m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1644 1 00000000ff4e9776 100 0 0 10 0
   1: 0100007F:8000 0100007F:8F5B 06 00000000:00000000 03:0000122A 00000000     0        0 0 3 00000000f60116c9
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_rows_and_skips_the_header() {
        let rows = parse_proc_net_tcp(TCP);
        assert_eq!(
            rows,
            vec![
                ProcSocket {
                    local_port: 2024,
                    state: 0x0A,
                    inode: 1644
                },
                ProcSocket {
                    local_port: 0x8000,
                    state: 0x06,
                    inode: 0
                },
                ProcSocket {
                    local_port: 8080,
                    state: 0x0A,
                    inode: 99
                },
            ]
        );
        assert_eq!(
            parse_proc_net_tcp(TCP6),
            vec![ProcSocket {
                local_port: 8080,
                state: 0x0A,
                inode: 100
            }]
        );
    }

    #[test]
    fn malformed_rows_are_skipped() {
        assert!(parse_proc_net_tcp("").is_empty());
        assert!(parse_proc_net_tcp("   0: zz:zz 0:0 0A a b c d e f\n").is_empty());
        assert!(parse_proc_net_tcp("garbage\n\u{0}\n   1: 0:1 0:0 0A\n").is_empty());
    }

    #[test]
    fn only_listeners_count_and_ports_gather_their_inodes() {
        let mut rows = parse_proc_net_tcp(TCP);
        rows.extend(parse_proc_net_tcp(TCP6));
        let by_port = listening_inodes(&rows);
        assert_eq!(by_port.get(&2024), Some(&vec![1644]));
        assert_eq!(by_port.get(&8080), Some(&vec![99, 100]));
        assert_eq!(by_port.len(), 2, "the TIME_WAIT row is not a listener");
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
    }

    #[test]
    fn finds_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let owners = existing_listeners();
        let (_, owner) = owners
            .iter()
            .find(|(p, _)| *p == port)
            .expect("own listener found");
        assert_eq!(owner.tgid, std::process::id());
        assert_eq!(owner.how, how::OWNER);
        assert_ne!(owner.comm[0], 0, "comm read from /proc");
    }
}
