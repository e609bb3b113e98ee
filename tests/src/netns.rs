//! Network namespaces made by a test (with `ip netns`), removed when dropped, and what /proc
//! says inside them: the ground truth twtrace's namespace-aware numbers are compared with.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Stdio},
};

/// A network namespace `twt-<tag>-<pid>`, with `lo` up; deleted on drop (also when the test
/// panics). Processes still inside keep it alive in the kernel, so tests kill theirs first
/// (their guards are declared after the namespace, and drop before it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("twt-{tag}-{}", std::process::id());
        // A namespace left behind by a killed run of the same test (same pid is unlikely, but
        // harmless to clear).
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Its nsfs inode: what twtrace reports as `netns`.
    pub fn id(&self) -> u32 {
        let path = format!("/run/netns/{}", self.name);
        let ino = fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .ino();
        u32::try_from(ino).expect("nsfs inodes fit u32")
    }

    /// `ip netns exec <name> <program>`: the program runs with the same pid, inside.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `sysctl -w` each `name=value` inside the namespace (its own network sysctls).
    pub fn sysctl(&self, settings: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name, "sysctl", "-qw"];
        args.extend_from_slice(settings);
        run("ip", &args);
    }

    /// How many sockets `ss -tanH state all <filter>` lists inside the namespace.
    pub fn ss_count(&self, filter: &[&str]) -> usize {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "ss", "-tanH", "state", "all"])
            .args(filter)
            .output()
            .expect("ip netns exec ss");
        assert!(out.status.success(), "ss {filter:?}: {}", out.status);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// The `tw` of this namespace's /proc/net/sockstat.
    pub fn sockstat_tw(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat", "/proc/net/sockstat"])
            .output()
            .expect("ip netns exec cat");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("TCP:"))
            .unwrap_or_else(|| panic!("no TCP line in sockstat: {text}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "tw").expect("tw field");
        words[at + 1].parse().expect("tw number")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// How many sockets in `state` (the kernel's number: 8 is CLOSE_WAIT) process `pid` holds, as
/// `ss -p` would find them: its fds' socket inodes matched with its namespace's TCP tables.
pub fn held_in_state(pid: u32, state: u8) -> usize {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| {
            let link = fs::read_link(fd.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(st), Some(inode)) = (f.get(3), f.get(9)) else {
                continue;
            };
            if u8::from_str_radix(st, 16).ok() == Some(state)
                && inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i))
            {
                n += 1;
            }
        }
    }
    n
}
