//! Open files against the limit: each process's count of /proc/<pid>/fd and its `Max open
//! files` in /proc/<pid>/limits (RLIMIT_NOFILE). A process at its soft limit gets EMFILE from
//! socket(), accept() and open(): "Too many open files".
//!
//! /proc/<pid>/limits is readable by anyone; listing /proc/<pid>/fd of another user's process
//! needs CAP_DAC_READ_SEARCH (the directory is mode 0500, owned by the process's user), so
//! without it only one's own processes are counted, and the others are counted as refused.

use std::{fs, io};

/// A process's `Max open files`: `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The `Max open files` line of /proc/<pid>/limits.
pub fn parse_limits(text: &str) -> Option<Limit> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    let mut words = rest.split_whitespace();
    let value = |w: Option<&str>| -> Option<Option<u64>> {
        match w? {
            "unlimited" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    Some(Limit {
        soft: value(words.next())?,
        hard: value(words.next())?,
    })
}

/// One process's open files and limit.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FdUse {
    pub pid: u32,
    pub comm: String,
    /// The command line (see `procnet::cmdline`), when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Entries in /proc/<pid>/fd.
    pub open: u64,
    /// The soft limit (what the process gets EMFILE at).
    pub soft: u64,
    /// The hard limit (how far the process, or an unprivileged user, may raise the soft one);
    /// None: unlimited.
    pub hard: Option<u64>,
}

impl FdUse {
    /// The share of the soft limit in use.
    pub fn ratio(&self) -> f64 {
        if self.soft == 0 {
            return 1.0;
        }
        self.open as f64 / self.soft as f64
    }
}

/// What a walk of every process found.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Processes with a finite soft limit, most of it in use first.
    pub uses: Vec<FdUse>,
    /// Processes whose fds could not be listed (permission denied): other users' without
    /// CAP_DAC_READ_SEARCH.
    pub refused: usize,
    /// Processes looked at (those that exited meanwhile left out).
    pub seen: usize,
}

/// Counts the entries of /proc/<pid>/fd.
pub fn count_fds(pid: u32) -> io::Result<u64> {
    let mut n = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// Every process's open files against its soft limit, except `skip` (the caller itself).
pub fn scan(skip: u32) -> Scan {
    let mut scan = Scan::default();
    let Ok(dir) = fs::read_dir("/proc") else {
        return scan;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == skip {
            continue;
        }
        let Some(limit) = fs::read_to_string(format!("/proc/{pid}/limits"))
            .ok()
            .as_deref()
            .and_then(parse_limits)
        else {
            continue;
        };
        let open = match count_fds(pid) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                scan.seen += 1;
                scan.refused += 1;
                continue;
            }
            // Exited meanwhile.
            Err(_) => continue,
        };
        scan.seen += 1;
        let Some(soft) = limit.soft else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end_matches('\n').to_owned())
            .unwrap_or_default();
        scan.uses.push(FdUse {
            pid,
            comm,
            cmdline: None,
            open,
            soft,
            hard: limit.hard,
        });
    }
    scan.uses.sort_by(|a, b| {
        b.ratio()
            .total_cmp(&a.ratio())
            .then(b.open.cmp(&a.open))
            .then(a.pid.cmp(&b.pid))
    });
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max processes             62760                62760                processes 
Max open files            1024                 524288               files     
Max locked memory         8388608              8388608              bytes     
";

    #[test]
    fn the_open_files_line() {
        assert_eq!(
            parse_limits(LIMITS),
            Some(Limit {
                soft: Some(1024),
                hard: Some(524288)
            })
        );
        assert_eq!(
            parse_limits(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(Limit {
                soft: None,
                hard: None
            })
        );
        assert_eq!(parse_limits("Max processes 5 5 processes\n"), None);
        assert_eq!(parse_limits("Max open files  many  1024  files\n"), None);
        assert_eq!(parse_limits("Max open files  1024\n"), None);
        assert_eq!(parse_limits(""), None);
    }

    #[test]
    fn ratio_of_the_soft_limit() {
        let u = FdUse {
            pid: 1,
            comm: "x".into(),
            cmdline: None,
            open: 900,
            soft: 1000,
            hard: None,
        };
        assert!((u.ratio() - 0.9).abs() < 1e-9);
        assert_eq!(FdUse { soft: 0, ..u }.ratio(), 1.0);
    }

    #[test]
    fn counts_its_own_fds() {
        let me = std::process::id();
        let before = count_fds(me).expect("own fds");
        let _f = fs::File::open("/proc/self/limits").expect("open");
        assert_eq!(count_fds(me).expect("own fds"), before + 1);
        // Itself is skipped; its parent (cargo, or a shell) is found when it is this user's.
        let scan = scan(me);
        assert!(scan.uses.iter().all(|u| u.pid != me));
        assert!(scan.seen >= scan.uses.len());
    }
}
