//! cgroups made by a test in the cgroup v2 hierarchy, removed when dropped (also when the test
//! panics).

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The cgroup v2 mount (`/sys/fs/cgroup` or, on hybrid hosts, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount))
    })
}

/// Cgroups made by the test; on drop, whatever is inside goes back to the root cgroup and the
/// directories are removed, the last made first.
pub struct Cgroups {
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    /// Cgroups below `root`, the v2 mount.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            dirs: Vec::new(),
        }
    }

    /// Makes the cgroup `dir` (its parent must exist) and returns it.
    pub fn make(&mut self, dir: PathBuf) -> PathBuf {
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.dirs.push(dir.clone());
        dir
    }

    /// Moves process `pid` into the cgroup `dir`.
    pub fn enter(dir: &Path, pid: u32) {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", procs.display()));
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            if let Ok(pids) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            if let Err(e) = fs::remove_dir(d) {
                eprintln!("could not remove cgroup {}: {e}", d.display());
            }
        }
    }
}
