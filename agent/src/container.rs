//! Which container a socket owner runs in, from its cgroup.
//!
//! The kernel program records `bpf_get_current_cgroup_id()` for every socket owner. On a 64-bit
//! kernel that id is the inode number of the owner's directory in the cgroup v2 hierarchy, so
//! [`CgroupPaths`] walks that hierarchy to turn an id back into a path (relative to the v2 mount,
//! the same text as the `0::` line of `/proc/<pid>/cgroup`), and [`parse`] reads a container
//! identity out of the path. No runtime is asked anything: the path is all there is, which
//! keeps this working for processes that have already exited and needs no runtime socket.
//!
//! # Layouts recognised
//!
//! Every container runtime names the cgroup it creates for a container after the container's
//! 64-hex id; what differs is the wrapping, which depends on whether the runtime (or the kubelet
//! above it) manages cgroups itself ("cgroupfs" driver: plain directories) or asks systemd to
//! ("systemd" driver: a transient `.scope` unit inside a `.slice`).
//!
//! | who creates it                  | cgroup path (`<id>` = 64 lowercase hex)                        |
//! |---------------------------------|-----------------------------------------------------------------|
//! | docker, cgroupfs driver         | `/docker/<id>`                                                  |
//! | docker, systemd driver          | `/system.slice/docker-<id>.scope`                               |
//! | podman, systemd manager         | `/machine.slice/libpod-<id>.scope` (rootless: under `user@.service`) |
//! | podman, cgroupfs manager        | `/libpod_parent/libpod-<id>`                                    |
//! | nerdctl (containerd), systemd   | `/system.slice/nerdctl-<id>.scope`                              |
//! | kubelet cgroupfs + containerd   | `/kubepods[/burstable\|/besteffort]/pod<uid>/<id>`              |
//! | kubelet cgroupfs + cri-o        | `/kubepods[/burstable\|/besteffort]/pod<uid>/crio-<id>`         |
//! | kubelet systemd + containerd    | `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | kubelet systemd + cri-o         | `… /kubepods-<qos>-pod<uid_>.slice/crio-<id>.scope`             |
//! | kubelet systemd + dockershim    | `… /kubepods-<qos>-pod<uid_>.slice/docker-<id>.scope`           |
//!
//! The kubelet's guaranteed QoS class has no level of its own (`kubepods-pod<uid_>.slice`,
//! `/kubepods/pod<uid>`). The systemd driver writes the pod UID with `_` for `-`, because `-`
//! separates levels in a slice name; [`Container::pod_uid`] is always given dashed. A static pod
//! (a manifest the kubelet reads from disk) has no API-server UID: its cgroup carries the
//! kubelet's 32-hex config hash instead, which is returned as is.
//!
//! A bare `<id>` directory is accepted only under `docker` or a kubelet pod directory: elsewhere
//! (for instance containerd's own `/<namespace>/<id>`, as plain nerdctl makes) a hex name says
//! nothing certain about who made it. Under a cgroupfs pod it is reported as containerd, the
//! kubelet's usual runtime since dockershim was removed; dockershim used the same shape.
//!
//! cri-o and podman also give each container's monitor, conmon, a cgroup of its own
//! (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`). conmon is host-side plumbing (it keeps
//! the container's stdio and waits for its exit), not the container's workload, so it is not
//! reported as that container: blaming the application for conmon's sockets would mislead.
//! [`pod_uid`] still finds the pod around a conmon cgroup.
//!
//! Only lowercase hex is accepted, as every runtime writes it; anything else is not ours to guess.
//!
//! # `--cgroup`
//!
//! The same walk, limited to one subtree, gives the ids `--cgroup` keeps in the kernel
//! ([`subtree_ids`], [`CgroupIds`]): the kernel program compares ids, not paths.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::model::Map;

/// The container runtime that made a container's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    /// Podman (its library and cgroup names say "libpod").
    Podman,
}

impl Runtime {
    /// The runtime's usual name, as its own tools print it.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

/// A container identity read from a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Container {
    pub runtime: Runtime,
    /// The full 64-hex container id.
    pub id: String,
    /// The UID of the Kubernetes pod the container belongs to (dashed UUID, or a static pod's
    /// 32-hex config hash), when the kubelet made it.
    pub pod_uid: Option<String>,
}

impl Container {
    /// The id's first 12 characters, as `docker ps` and `crictl ps` show it.
    pub fn short_id(&self) -> &str {
        short_id(&self.id)
    }
}

/// A container id as `docker ps` shows it: its first 12 characters.
pub fn short_id(id: &str) -> &str {
    // `get`, not indexing: an id from a row or a hand-built one may be short, or be cut inside a
    // character.
    id.get(..12).unwrap_or(id)
}

/// The container a cgroup path belongs to, if the path has one of the layouts in the module
/// documentation.
///
/// When containers nest, the innermost one wins. Nesting means a runtime running inside a
/// container: a kind or k3d node (`/docker/<id>/kubepods/…`), docker-in-docker, or systemd inside
/// a container (`/system.slice/docker-<id>.scope/init.scope`). The process belongs to every level,
/// but the deepest container is the one that was started for it; the outer one is only the host
/// of the runtime that started it. Directories below the innermost container that are not
/// containers (`init.scope`, podman's `container` leaf) are the container's own business.
pub fn parse(path: &str) -> Option<Container> {
    let parts = components(path);
    let (at, runtime, id) = (0..parts.len())
        .rev()
        .find_map(|i| container_at(&parts, i).map(|(runtime, id)| (i, runtime, id)))?;
    // The kubelet puts a container's cgroup directly in its pod's: the pod is the parent, and
    // only the parent (a container nested in a pod's container is not that pod's container).
    let pod_uid = at.checked_sub(1).and_then(|parent| pod_at(&parts, parent));
    Some(Container {
        runtime,
        id: id.to_owned(),
        pod_uid,
    })
}

/// The UID of the innermost Kubernetes pod on a cgroup path, with or without a container below
/// it: the pod's own cgroup, a container's, or conmon's.
pub fn pod_uid(path: &str) -> Option<String> {
    let parts = components(path);
    (0..parts.len()).rev().find_map(|i| pod_at(&parts, i))
}

fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// The container whose cgroup is `parts[i]`, judging by its name and, for the cgroupfs layouts'
/// bare names, its parent.
fn container_at<'a>(parts: &[&'a str], i: usize) -> Option<(Runtime, &'a str)> {
    let name = parts.get(i)?;
    // systemd scopes: the name alone says who made them. `crio-conmon-<id>.scope` and
    // `libpod-conmon-<id>.scope` fail the id check, as they should (see the module doc).
    const SCOPES: [(&str, Runtime); 5] = [
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("nerdctl-", Runtime::Containerd),
    ];
    for (prefix, runtime) in SCOPES {
        if let Some(id) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".scope"))
            .filter(|id| is_container_id(id))
        {
            return Some((runtime, id));
        }
    }
    // cgroupfs directories: a bare name counts only under the parent that its runtime uses.
    let parent = i.checked_sub(1).and_then(|p| parts.get(p)).copied();
    let bare = |prefix: &str| name.strip_prefix(prefix).filter(|id| is_container_id(id));
    match parent {
        Some("docker") => bare("").map(|id| (Runtime::Docker, id)),
        Some("libpod_parent") => bare("libpod-").map(|id| (Runtime::Podman, id)),
        Some(_) if cgroupfs_pod_at(parts, i - 1).is_some() => bare("")
            .map(|id| (Runtime::Containerd, id))
            .or_else(|| bare("crio-").map(|id| (Runtime::Crio, id))),
        _ => None,
    }
}

/// The pod UID of the kubelet pod cgroup `parts[i]`, in either driver's layout.
fn pod_at(parts: &[&str], i: usize) -> Option<String> {
    cgroupfs_pod_at(parts, i).or_else(|| systemd_pod(parts.get(i)?))
}

/// `pod<uid>` directly under `kubepods`, or under its `burstable` / `besteffort` QoS level.
fn cgroupfs_pod_at(parts: &[&str], i: usize) -> Option<String> {
    let uid = parts.get(i)?.strip_prefix("pod")?;
    let ancestor = |up: usize| i.checked_sub(up).and_then(|a| parts.get(a)).copied();
    let under_kubepods = match ancestor(1)? {
        "kubepods" => true,
        "burstable" | "besteffort" => ancestor(2) == Some("kubepods"),
        _ => false,
    };
    under_kubepods.then(|| pod_uid_text(uid, b'-')).flatten()
}

/// `<levels>-pod<uid_>.slice`, where the levels are the kubelet's slice path (`kubepods`,
/// `kubepods-burstable`, or with kind's `kubelet-` root in front).
fn systemd_pod(name: &str) -> Option<String> {
    let (levels, uid) = name.strip_suffix(".slice")?.rsplit_once("-pod")?;
    let mut levels = levels.split('-');
    let qos = levels.next_back()?;
    let known = matches!(qos, "kubepods" | "burstable" | "besteffort")
        && (qos == "kubepods" || levels.any(|l| l == "kubepods"));
    known.then(|| pod_uid_text(uid, b'_')).flatten()
}

/// A pod UID as written in a cgroup name, dashed: a UUID whose groups are separated by `sep`, or
/// a static pod's 32-hex config hash.
fn pod_uid_text(uid: &str, sep: u8) -> Option<String> {
    let bytes = uid.as_bytes();
    if bytes.len() == 32 && bytes.iter().all(|&b| is_hex(b)) {
        return Some(uid.to_owned());
    }
    let dashes = [8, 13, 18, 23];
    let uuid = bytes.len() == 36
        && bytes.iter().enumerate().all(|(at, &b)| {
            if dashes.contains(&at) {
                b == sep
            } else {
                is_hex(b)
            }
        });
    uuid.then(|| uid.replace(char::from(sep), "-"))
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(is_hex)
}

fn is_hex(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

/// How often a miss may rewalk the hierarchy: often enough that a new container is named within
/// a second of its first event, rarely enough that ids nobody can resolve (a cgroup already gone)
/// cannot make every event walk the tree.
const REWALK_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// How deep the walk goes below the v2 root. Real layouts stay far below this (a kind node's pod
/// containers are about 8 deep); the bound only stops a pathological tree.
const MAX_DEPTH: usize = 32;

/// cgroup id -> path (and container) for one cgroup v2 hierarchy.
///
/// The map is rebuilt from the hierarchy on every walk, so removed cgroups are forgotten then:
/// the tree is the truth, and the cache never outgrows it.
pub struct CgroupPaths {
    root: Option<PathBuf>,
    // The model's fast hash: `trace` asks for every event's container. At four churn generators
    // `container_ref` and SipHash were 5.4% of its agent's samples (perf), 0.8% with this.
    paths: Map<u64, String>,
    containers: Map<u64, Option<Container>>,
    last_walk: Option<Instant>,
}

impl CgroupPaths {
    /// A resolver for the cgroup v2 hierarchy mounted at `root`
    /// ([`crate::kernel::procnet::cgroup2_mount`]); `None` resolves nothing. Paths are relative to
    /// that mount, so in a cgroup namespace they are relative to the namespace's root, as in
    /// `/proc/<pid>/cgroup`.
    pub fn new(root: Option<PathBuf>) -> Self {
        CgroupPaths {
            root,
            paths: Map::default(),
            containers: Map::default(),
            last_walk: None,
        }
    }

    /// The path of the cgroup whose id is `cgroup_id`, relative to the v2 root and starting with
    /// `/` (the root itself is `/`). A miss rewalks the hierarchy, at most once a second.
    pub fn path(&mut self, cgroup_id: u64) -> Option<&str> {
        if !self.paths.contains_key(&cgroup_id) {
            self.rewalk_if_due();
        }
        self.paths.get(&cgroup_id).map(String::as_str)
    }

    /// The container whose cgroup (or a cgroup below it) has id `cgroup_id`: [`Self::path`] then
    /// [`parse`], remembered per id until the next walk.
    pub fn container(&mut self, cgroup_id: u64) -> Option<Container> {
        self.container_ref(cgroup_id).cloned()
    }

    /// [`Self::container`] without a copy: the trace view asks for every event, and a copy is
    /// two Strings allocated per event of a process in a container.
    pub fn container_ref(&mut self, cgroup_id: u64) -> Option<&Container> {
        if !self.containers.contains_key(&cgroup_id) {
            let container = parse(self.path(cgroup_id)?);
            // Only ids with a path get here, so this map is never larger than the tree.
            self.containers.insert(cgroup_id, container);
        }
        self.containers.get(&cgroup_id)?.as_ref()
    }

    fn rewalk_if_due(&mut self) {
        let Some(root) = &self.root else {
            return;
        };
        if self
            .last_walk
            .is_some_and(|at| at.elapsed() < REWALK_AT_MOST_EVERY)
        {
            return;
        }
        self.paths = walk(root);
        self.containers.clear();
        self.last_walk = Some(Instant::now());
    }
}

/// Every directory under `root` (itself included, as `/`) by inode number, down to [`MAX_DEPTH`].
/// What cannot be read (a cgroup removed during the walk) is left out.
fn walk(root: &Path) -> Map<u64, String> {
    let mut paths = Map::default();
    let Ok(meta) = fs::metadata(root) else {
        return paths;
    };
    paths.insert(meta.ino(), "/".to_owned());
    visit_dirs(root, String::new(), |entry, path| {
        let child = format!("{path}/{}", entry.file_name().to_string_lossy());
        paths.insert(entry.ino(), child.clone());
        child
    });
    paths
}

/// Calls `visit` for every directory below `root`, down to [`MAX_DEPTH`] levels, with the value
/// `visit` returned for its parent (`top` for `root`'s children). What cannot be read (a cgroup
/// removed during the walk) is skipped.
fn visit_dirs<T>(root: &Path, top: T, mut visit: impl FnMut(&fs::DirEntry, &T) -> T) {
    let mut pending = vec![(root.to_path_buf(), top, 0)];
    while let Some((dir, parent, depth)) = pending.pop() {
        if depth >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // DirEntry::file_type does not follow symlinks: a link cannot lead the walk out of
            // the hierarchy or round in a loop (cgroupfs has none, but `root` may be any tree).
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // readdir's inode number (`DirEntry::ino`) is, on cgroupfs (kernfs), the one stat
            // reports: one syscall less per cgroup than a metadata call.
            let value = visit(&entry, &parent);
            pending.push((entry.path(), value, depth + 1));
        }
    }
}

/// A `--cgroup` argument, checked: a directory in the cgroup v2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDir {
    /// Its path relative to the v2 mount, from `/` (as the `0::` line of `/proc/<pid>/cgroup`
    /// shows it); the root is `/`.
    pub path: String,
    /// The directory itself: the mount joined with `path`.
    pub dir: PathBuf,
}

impl CgroupDir {
    /// `arg` ([`cgroup_path`]) as a directory of the v2 hierarchy mounted at `mount`
    /// ([`crate::kernel::procnet::cgroup2_mount`]); anything else is refused in one line.
    pub fn resolve(arg: &str, mount: Option<&Path>) -> anyhow::Result<Self> {
        let Some(mount) = mount else {
            anyhow::bail!("--cgroup {arg}: no cgroup v2 hierarchy is mounted");
        };
        let path = cgroup_path(arg, mount)?;
        let dir = mount.join(path.trim_start_matches('/'));
        // symlink_metadata: a link is not a cgroup (cgroupfs has none), whatever it points at.
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(Self { path, dir }),
            Ok(_) => anyhow::bail!(
                "--cgroup {arg}: {} is not a directory of the cgroup v2 hierarchy (mounted at {})",
                dir.display(),
                mount.display()
            ),
            Err(e) => anyhow::bail!(
                "--cgroup {arg}: {} is not a directory of the cgroup v2 hierarchy (mounted at \
                 {}): {e}",
                dir.display(),
                mount.display()
            ),
        }
    }
}

/// A `--cgroup` argument as a path in the cgroup v2 hierarchy mounted at `mount`, from `/`:
/// given with the mount in front or without it (`/sys/fs/cgroup/unified/x` and `/x` are the
/// same there), with or without the leading `/`; `.` and repeated or trailing `/` are dropped.
/// `..` is refused: it could leave the hierarchy, and no cgroup path needs it. Only the text is
/// looked at; [`CgroupDir::resolve`] checks the directory.
pub fn cgroup_path(arg: &str, mount: &Path) -> anyhow::Result<String> {
    use std::path::Component;
    if arg.is_empty() {
        anyhow::bail!("--cgroup needs a path in the cgroup v2 hierarchy, such as /system.slice");
    }
    let given = Path::new(arg);
    // Component-wise: `/sys/fs/cgroup/unifiedx` does not start with `/sys/fs/cgroup/unified`.
    let inside = given.strip_prefix(mount).unwrap_or(given);
    let mut path = String::new();
    for part in inside.components() {
        match part {
            Component::Normal(name) => {
                path.push('/');
                path.push_str(&name.to_string_lossy());
            }
            Component::ParentDir => anyhow::bail!(
                "--cgroup {arg}: `..` is not allowed; give the cgroup's path as \
                 /proc/PID/cgroup shows it"
            ),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// The ids of `dir` and of every cgroup below it (directory inodes, which are the cgroup ids
/// on cgroupfs), down to [`MAX_DEPTH`] levels below `dir`, without following symbolic links.
/// Empty when `dir` is gone.
pub fn subtree_ids(dir: &Path) -> Vec<u64> {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return Vec::new();
    };
    if !meta.is_dir() {
        return Vec::new();
    }
    let mut ids = vec![meta.ino()];
    visit_dirs(dir, (), |entry, _| ids.push(entry.ino()));
    ids
}

/// How long a removed cgroup's id stays in the `--cgroup` filter. A stopped container's sockets
/// outlive its cgroup (orphaned connections finish their close, usually within
/// `tcp_fin_timeout`, 60 s by default), and their transitions still carry the removed cgroup's
/// id. Keeping an id costs only room: 64-bit cgroup ids are never handed out again.
pub const GONE_KEPT_FOR: Duration = Duration::from_secs(120);

/// The cgroup ids a `--cgroup` filter holds in the kernel, at most `capacity` of them: every
/// cgroup a walk of the chosen subtree finds, and the removed ones for [`GONE_KEPT_FOR`]. When
/// there is no room, removed ones make way first (the longest gone first); what still does not
/// fit is left out and counted, and tried again at the next walk.
#[derive(Debug)]
pub struct CgroupIds {
    capacity: usize,
    /// id -> since when its cgroup has not been found (None: found by the latest walk).
    held: HashMap<u64, Option<Instant>>,
    left_out: usize,
}

/// What the kernel's map must lose and gain, in that order (removals make the room).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IdChanges {
    pub remove: Vec<u64>,
    pub add: Vec<u64>,
}

impl CgroupIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            held: HashMap::new(),
            left_out: 0,
        }
    }

    /// Takes the ids a walk found at `now` ([`subtree_ids`]); returns the changes for the map.
    pub fn update(&mut self, found: &[u64], now: Instant) -> IdChanges {
        let found_set: std::collections::HashSet<u64> = found.iter().copied().collect();
        let mut changes = IdChanges::default();
        self.held.retain(|&id, gone| {
            if found_set.contains(&id) {
                *gone = None;
                return true;
            }
            let since = *gone.get_or_insert(now);
            let keep = now.saturating_duration_since(since) < GONE_KEPT_FOR;
            if !keep {
                changes.remove.push(id);
            }
            keep
        });
        let new: Vec<u64> = found
            .iter()
            .copied()
            .filter(|id| !self.held.contains_key(id))
            .collect();
        let room = self.capacity.saturating_sub(self.held.len());
        if new.len() > room {
            let mut gone: Vec<(Instant, u64)> = self
                .held
                .iter()
                .filter_map(|(&id, &since)| Some((since?, id)))
                .collect();
            gone.sort_unstable();
            for (_, id) in gone.into_iter().take(new.len() - room) {
                self.held.remove(&id);
                changes.remove.push(id);
            }
        }
        let room = self.capacity.saturating_sub(self.held.len());
        self.left_out = new.len().saturating_sub(room);
        changes.add = new.into_iter().take(room).collect();
        for &id in &changes.add {
            self.held.insert(id, None);
        }
        changes
    }

    /// `id` could not be added to the map after all (the kernel refused it): it counts as left
    /// out, and the next walk tries again.
    pub fn not_added(&mut self, id: u64) {
        if self.held.remove(&id).is_some() {
            self.left_out += 1;
        }
    }

    /// Cgroups the latest walk found that are not in the filter.
    pub fn left_out(&self) -> usize {
        self.left_out
    }

    /// Ids in the filter now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::CString,
        os::unix::{ffi::OsStrExt as _, fs::symlink},
        process::{Child, Command},
        thread::sleep,
    };

    use super::*;

    const ID: &str = "3f4e9c2b1a0d8e7f6c5b4a3928171605f4e3d2c1b0a99887766554433221100f";
    const ID2: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff00";
    const UID: &str = "0f3e8b7a-2c4d-4e6f-9a1b-5c7d9e0f1a2b";
    const UID_: &str = "0f3e8b7a_2c4d_4e6f_9a1b_5c7d9e0f1a2b";

    fn container(runtime: Runtime, id: &str, pod: Option<&str>) -> Option<Container> {
        Some(Container {
            runtime,
            id: id.to_owned(),
            pod_uid: pod.map(str::to_owned),
        })
    }

    #[test]
    fn docker_both_drivers() {
        let want = container(Runtime::Docker, ID, None);
        assert_eq!(parse(&format!("/docker/{ID}")), want);
        assert_eq!(parse(&format!("/system.slice/docker-{ID}.scope")), want);
    }

    #[test]
    fn podman_systemd_cgroupfs_and_rootless() {
        let want = container(Runtime::Podman, ID, None);
        assert_eq!(parse(&format!("/machine.slice/libpod-{ID}.scope")), want);
        assert_eq!(
            parse(&format!("/machine.slice/libpod-{ID}.scope/container")),
            want
        );
        assert_eq!(parse(&format!("/libpod_parent/libpod-{ID}")), want);
        let rootless =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        assert_eq!(parse(&rootless), want);
        // A podman pod's slice holds its containers' scopes; a podman pod is not a kubelet pod.
        let in_pod = format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope");
        assert_eq!(parse(&in_pod), want);
    }

    #[test]
    fn nerdctl_systemd_only() {
        assert_eq!(
            parse(&format!("/system.slice/nerdctl-{ID}.scope")),
            container(Runtime::Containerd, ID, None)
        );
        // containerd's own cgroupfs layout (`/<namespace>/<id>`) is too ambiguous to claim.
        assert_eq!(parse(&format!("/default/{ID}")), None);
        assert_eq!(parse(&format!("/k8s.io/{ID}")), None);
    }

    #[test]
    fn kubelet_cgroupfs_every_qos() {
        let want = container(Runtime::Containerd, ID, Some(UID));
        for qos in ["", "/burstable", "/besteffort"] {
            assert_eq!(
                parse(&format!("/kubepods{qos}/pod{UID}/{ID}")),
                want,
                "{qos}"
            );
            assert_eq!(
                pod_uid(&format!("/kubepods{qos}/pod{UID}")).as_deref(),
                Some(UID)
            );
        }
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}")),
            container(Runtime::Crio, ID, Some(UID))
        );
        // The QoS level must be one the kubelet makes.
        assert_eq!(parse(&format!("/kubepods/gold/pod{UID}/{ID}")), None);
        assert_eq!(parse(&format!("/burstable/pod{UID}/{ID}")), None);
        // cgroupfs writes the UID dashed; underscores there are not a UID.
        assert_eq!(parse(&format!("/kubepods/pod{UID_}/{ID}")), None);
    }

    #[test]
    fn kubelet_systemd_each_runtime() {
        let pod =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(
            parse(&format!("{pod}/cri-containerd-{ID}.scope")),
            container(Runtime::Containerd, ID, Some(UID))
        );
        assert_eq!(
            parse(&format!("{pod}/crio-{ID}.scope")),
            container(Runtime::Crio, ID, Some(UID))
        );
        assert_eq!(
            parse(&format!("{pod}/docker-{ID}.scope")),
            container(Runtime::Docker, ID, Some(UID))
        );
        let besteffort = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
        );
        assert_eq!(parse(&besteffort), container(Runtime::Crio, ID, Some(UID)));
        let guaranteed = format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope");
        assert_eq!(
            parse(&guaranteed),
            container(Runtime::Docker, ID, Some(UID))
        );
        // The systemd driver never writes a bare id.
        assert_eq!(parse(&format!("{pod}/{ID}")), None);
    }

    #[test]
    fn static_pods_keep_their_config_hash() {
        let hash = "c704ef4c297ab11032b83ce52cbfc87b";
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse(&path), container(Runtime::Containerd, ID, Some(hash)));
        assert_eq!(
            pod_uid(&format!("/kubepods/pod{hash}")).as_deref(),
            Some(hash)
        );
    }

    #[test]
    fn conmon_is_not_the_container_but_is_in_the_pod() {
        let pod = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        let conmon = format!("{pod}/crio-conmon-{ID}.scope");
        assert_eq!(parse(&conmon), None);
        assert_eq!(pod_uid(&conmon).as_deref(), Some(UID));
        assert_eq!(parse(&format!("/kubepods/pod{UID}/crio-conmon-{ID}")), None);
        assert_eq!(
            parse(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn pod_slices_alone() {
        let slice =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(pod_uid(&slice).as_deref(), Some(UID));
        assert_eq!(parse(&slice), None);
        assert_eq!(
            pod_uid(&format!("/kubepods.slice/kubepods-pod{UID_}.slice")).as_deref(),
            Some(UID)
        );
        // kind roots the kubelet at `kubelet.slice`.
        let kind = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"
        );
        assert_eq!(pod_uid(&kind).as_deref(), Some(UID));
        for not_pod in [
            "/kubepods.slice/kubepods-burstable.slice".to_owned(),
            format!("/system.slice/foo-pod{UID_}.slice"),
            format!("/kubepods.slice/kubepods-gold-pod{UID_}.slice"),
            format!("/kubepods.slice/kubepods-pod{UID}.slice"),
            format!("/kubepods/pod{}", &UID[1..]),
            "/kubepods/podxyz".to_owned(),
        ] {
            assert_eq!(pod_uid(&not_pod), None, "{not_pod}");
        }
    }

    #[test]
    fn nested_containers_the_innermost_wins() {
        // systemd (or anything) inside a docker container.
        assert_eq!(
            parse(&format!("/system.slice/docker-{ID}.scope/init.scope")),
            container(Runtime::Docker, ID, None)
        );
        // A k3d node (cgroupfs inside a docker container) running a pod.
        let k3d = format!("/docker/{ID2}/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(parse(&k3d), container(Runtime::Containerd, ID, Some(UID)));
        // A kind node (systemd inside a docker container) running a pod.
        let kind = format!(
            "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse(&kind), container(Runtime::Containerd, ID, Some(UID)));
        // The node's own processes (kubelet, containerd) are the node container's.
        let node = format!("/system.slice/docker-{ID2}.scope/system.slice/containerd.service");
        assert_eq!(parse(&node), container(Runtime::Docker, ID2, None));
        // docker-in-docker inside a pod's container: not the pod's container.
        let dind = format!("/kubepods/pod{UID}/{ID2}/docker/{ID}");
        assert_eq!(parse(&dind), container(Runtime::Docker, ID, None));
        assert_eq!(pod_uid(&dind).as_deref(), Some(UID));
    }

    #[test]
    fn not_containers() {
        let short = &ID[..63];
        let upper = ID.to_uppercase();
        let not_hex = format!("{}g", &ID[..63]);
        for path in [
            "".to_owned(),
            "/".to_owned(),
            "/user.slice/user-1000.slice/session-2.scope".to_owned(),
            "/system.slice/sshd.service".to_owned(),
            "/system.slice/docker.service".to_owned(),
            "/docker".to_owned(),
            "\u{0}\u{ffff}//../docker-".to_owned(),
            format!("/{ID}"),
            format!("/docker/{short}"),
            format!("/docker/{ID}0"),
            format!("/docker/{upper}"),
            format!("/docker/{not_hex}"),
            format!("/system.slice/docker-{short}.scope"),
            format!("/system.slice/docker-{ID}.service"),
            format!("/system.slice/docker-{ID}"),
            format!("/system.slice/docker-{not_hex}.scope"),
            format!("/libpod_parent/libpod-{short}"),
            format!("/machine.slice/libpod-{ID}"),
        ] {
            assert_eq!(parse(&path), None, "{path:?}");
        }
    }

    #[test]
    fn names_and_short_id() {
        let names = [
            Runtime::Docker,
            Runtime::Containerd,
            Runtime::Crio,
            Runtime::Podman,
        ]
        .map(Runtime::name);
        assert_eq!(names, ["docker", "containerd", "cri-o", "podman"]);
        let c = parse(&format!("/docker/{ID}")).unwrap();
        assert_eq!(c.short_id(), "3f4e9c2b1a0d");
        let hand_made = Container {
            runtime: Runtime::Docker,
            id: "abc".to_owned(),
            pod_uid: None,
        };
        assert_eq!(hand_made.short_id(), "abc");
    }

    /// A directory tree removed on drop, for walking without cgroupfs.
    struct TempTree(PathBuf);

    impl TempTree {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("twtrace-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir).unwrap();
            TempTree(dir)
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ino(path: &Path) -> u64 {
        fs::symlink_metadata(path).unwrap().ino()
    }

    #[test]
    fn walks_dirs_only_without_following_links() {
        let tree = TempTree::new("walk");
        let scope = tree
            .0
            .join("system.slice")
            .join(format!("docker-{ID}.scope"));
        fs::create_dir_all(scope.join("init.scope")).unwrap();
        fs::write(scope.join("cgroup.procs"), "").unwrap();
        symlink(&tree.0, tree.0.join("system.slice/loop")).unwrap();

        let mut paths = CgroupPaths::new(Some(tree.0.clone()));
        assert_eq!(paths.path(ino(&tree.0)), Some("/"));
        let scope_path = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(paths.path(ino(&scope)), Some(scope_path.as_str()));
        assert_eq!(
            paths.path(ino(&scope.join("init.scope"))),
            Some(format!("{scope_path}/init.scope").as_str())
        );
        assert_eq!(paths.path(ino(&scope.join("cgroup.procs"))), None);
        assert_eq!(paths.path(ino(&tree.0.join("system.slice/loop"))), None);
        assert_eq!(paths.paths.len(), 4, "{:?}", paths.paths);

        let want = container(Runtime::Docker, ID, None);
        assert_eq!(paths.container(ino(&scope)), want);
        assert_eq!(paths.container(ino(&scope.join("init.scope"))), want);
        assert_eq!(paths.container(ino(&tree.0.join("system.slice"))), None);
        assert_eq!(paths.containers.len(), 3);
    }

    #[test]
    fn walk_stops_at_max_depth() {
        let tree = TempTree::new("depth");
        let mut dir = tree.0.clone();
        let mut dirs = Vec::new();
        for _ in 0..MAX_DEPTH + 2 {
            dir.push("d");
            dirs.push(dir.clone());
        }
        fs::create_dir_all(&dir).unwrap();
        let mut paths = CgroupPaths::new(Some(tree.0.clone()));
        let deepest = paths.path(ino(&dirs[MAX_DEPTH - 1])).unwrap();
        assert_eq!(deepest, "/d".repeat(MAX_DEPTH));
        assert_eq!(paths.path(ino(&dirs[MAX_DEPTH])), None);
    }

    #[test]
    fn a_miss_rewalks_at_most_once_a_second() {
        let tree = TempTree::new("rewalk");
        let mut paths = CgroupPaths::new(Some(tree.0.clone()));
        assert_eq!(paths.path(ino(&tree.0)), Some("/"));
        let first = paths.last_walk;

        let late = tree.0.join(format!("docker-{ID}.scope"));
        fs::create_dir(&late).unwrap();
        // A miss right after a walk does not walk again.
        assert_eq!(paths.path(ino(&late)), None);
        assert_eq!(paths.container(ino(&late)), None);
        assert_eq!(paths.last_walk, first);

        sleep(REWALK_AT_MOST_EVERY + Duration::from_millis(50));
        assert_eq!(
            paths.container(ino(&late)),
            container(Runtime::Docker, ID, None)
        );
        assert_ne!(paths.last_walk, first);

        // The next walk forgets what the tree no longer has.
        fs::remove_dir(&late).unwrap();
        sleep(REWALK_AT_MOST_EVERY + Duration::from_millis(50));
        assert_eq!(paths.path(u64::MAX), None);
        assert!(paths.paths.values().all(|p| p == "/"), "{:?}", paths.paths);
        assert!(paths.containers.is_empty());
    }

    #[test]
    fn no_root_resolves_nothing() {
        let mut paths = CgroupPaths::new(None);
        assert_eq!(paths.path(1), None);
        assert_eq!(paths.container(1), None);
        let mut gone = CgroupPaths::new(Some(PathBuf::from("/nonexistent/twtrace")));
        assert_eq!(gone.path(1), None);
    }

    #[test]
    fn cgroup_paths_with_or_without_the_mount_are_the_same() {
        let hybrid = Path::new("/sys/fs/cgroup/unified");
        let path = |arg: &str| cgroup_path(arg, hybrid).map_err(|e| format!("{e:#}"));
        let pod = format!("/kubepods/burstable/pod{UID}");
        for arg in [
            pod.clone(),
            format!("/sys/fs/cgroup/unified{pod}"),
            format!("/sys/fs/cgroup/unified/{pod}/"),
            format!("kubepods/burstable/pod{UID}"),
            format!("//kubepods/./burstable//pod{UID}/."),
        ] {
            assert_eq!(path(&arg).as_deref(), Ok(pod.as_str()), "{arg}");
        }
        // The root, however it is written.
        for arg in [
            "/",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/unified/",
            ".",
        ] {
            assert_eq!(path(arg).as_deref(), Ok("/"), "{arg}");
        }
        // Only a whole-component prefix is the mount: anything else is a path inside it (and
        // then, in the hierarchy, most likely no directory at all).
        assert_eq!(
            path("/sys/fs/cgroup/unifiedx/a").as_deref(),
            Ok("/sys/fs/cgroup/unifiedx/a")
        );
        assert_eq!(
            path("/sys/fs/cgroup/system.slice").as_deref(),
            Ok("/sys/fs/cgroup/system.slice"),
            "the v1 layout's path is not the v2 mount's"
        );
        // On a host with the v2 hierarchy alone.
        assert_eq!(
            cgroup_path(
                "/sys/fs/cgroup/system.slice/docker-x.scope",
                Path::new("/sys/fs/cgroup")
            )
            .ok()
            .as_deref(),
            Some("/system.slice/docker-x.scope")
        );
        for bad in ["", "/a/../..", "..", "/sys/fs/cgroup/unified/.."] {
            let e = path(bad).expect_err(bad);
            assert!(e.starts_with("--cgroup"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn a_cgroup_must_be_a_directory_of_the_hierarchy() {
        let tree = TempTree::new("resolve");
        let scope = tree
            .0
            .join("system.slice")
            .join(format!("docker-{ID}.scope"));
        fs::create_dir_all(&scope).unwrap();
        fs::write(tree.0.join("system.slice/cgroup.procs"), "").unwrap();
        symlink(&scope, tree.0.join("link")).unwrap();
        let root = Some(tree.0.as_path());

        let want = CgroupDir {
            path: format!("/system.slice/docker-{ID}.scope"),
            dir: scope.clone(),
        };
        let given = format!("{}/system.slice/docker-{ID}.scope", tree.0.display());
        assert_eq!(CgroupDir::resolve(&given, root).unwrap(), want);
        assert_eq!(CgroupDir::resolve(&want.path, root).unwrap(), want);
        assert_eq!(CgroupDir::resolve("/", root).unwrap().dir, tree.0);

        for (arg, why) in [
            ("/system.slice/nothing", "No such file"),
            ("/system.slice/cgroup.procs", "is not a directory"),
            ("/link", "is not a directory"),
        ] {
            let e = format!("{:#}", CgroupDir::resolve(arg, root).expect_err(arg));
            assert!(e.starts_with(&format!("--cgroup {arg}: ")), "{e}");
            assert!(e.contains(why) && e.contains("cgroup v2 hierarchy"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = format!("{:#}", CgroupDir::resolve("/x", None).expect_err("no v2"));
        assert_eq!(e, "--cgroup /x: no cgroup v2 hierarchy is mounted");
    }

    #[test]
    fn a_subtree_is_its_directory_and_every_one_below_without_links_or_files() {
        let tree = TempTree::new("subtree");
        let pod = tree.0.join("kubepods/burstable").join(format!("pod{UID}"));
        fs::create_dir_all(pod.join(ID)).unwrap();
        fs::create_dir_all(pod.join(ID2).join("init.scope")).unwrap();
        fs::create_dir_all(tree.0.join("kubepods/besteffort")).unwrap();
        fs::write(pod.join("cgroup.procs"), "").unwrap();
        // A link back up must not be followed (it would loop) nor counted.
        symlink(&tree.0, pod.join("up")).unwrap();

        let mut ids = subtree_ids(&pod);
        ids.sort_unstable();
        let mut want: Vec<u64> = [
            pod.clone(),
            pod.join(ID),
            pod.join(ID2),
            pod.join(ID2).join("init.scope"),
        ]
        .iter()
        .map(|d| ino(d))
        .collect();
        want.sort_unstable();
        assert_eq!(ids, want);
        assert_eq!(subtree_ids(&pod.join(ID)), vec![ino(&pod.join(ID))]);
        assert!(subtree_ids(&pod.join("cgroup.procs")).is_empty());
        assert!(
            subtree_ids(&pod.join("up")).is_empty(),
            "a link is no cgroup"
        );
        assert!(subtree_ids(&tree.0.join("gone")).is_empty());

        // Bounded depth, counted from the subtree's top.
        let mut deep = tree.0.join("deep");
        for _ in 0..MAX_DEPTH + 2 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        assert_eq!(subtree_ids(&tree.0.join("deep")).len(), MAX_DEPTH + 1);
    }

    #[test]
    fn the_filter_follows_the_tree_and_keeps_removed_cgroups_a_while() {
        let t0 = Instant::now();
        let mut ids = CgroupIds::new(8);
        let c = ids.update(&[1, 2, 3], t0);
        assert_eq!((c.remove, c.add), (vec![], vec![1, 2, 3]));
        // A new cgroup appears, another goes: only the new one is added, the gone one stays.
        let c = ids.update(&[1, 2, 4], t0 + Duration::from_secs(1));
        assert_eq!((c.remove, c.add), (vec![], vec![4]));
        assert_eq!(ids.len(), 4);
        // Nothing changes: nothing to do.
        let c = ids.update(&[1, 2, 4], t0 + Duration::from_secs(2));
        assert_eq!(c, IdChanges::default());
        // GONE_KEPT_FOR after it was first missed, it leaves.
        let c = ids.update(&[1, 2, 4], t0 + Duration::from_secs(1) + GONE_KEPT_FOR);
        assert_eq!((c.remove, c.add), (vec![3], vec![]));
        assert_eq!((ids.len(), ids.left_out()), (3, 0));
        // A cgroup back before its time is simply still there.
        let c = ids.update(&[1, 4], t0 + GONE_KEPT_FOR * 2);
        assert_eq!(c, IdChanges::default());
        let c = ids.update(&[1, 2, 4], t0 + GONE_KEPT_FOR * 2 + Duration::from_secs(1));
        assert_eq!(c, IdChanges::default());
    }

    #[test]
    fn a_full_filter_makes_room_from_the_longest_gone_then_leaves_out_and_counts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut ids = CgroupIds::new(4);
        ids.update(&[1, 2, 3, 4], t0);
        ids.update(&[1, 2, 4], t0 + s(1)); // 3 gone at 1 s
        ids.update(&[1, 4], t0 + s(2)); // 2 gone at 2 s
        // Two new ones: the two gone ones make way, 3 (longer gone) first.
        let c = ids.update(&[1, 4, 5], t0 + s(3));
        assert_eq!((c.remove, c.add), (vec![3], vec![5]));
        let c = ids.update(&[1, 4, 5, 6, 7, 8], t0 + s(4));
        assert_eq!((c.remove, c.add.len()), (vec![2], 1));
        assert_eq!((ids.len(), ids.left_out()), (4, 2));
        // Present cgroups are never pushed out for new ones; the left-out ones get in once
        // there is room.
        let kept = c.add[0];
        let c = ids.update(&[1, 4, 5, 6, 7, 8], t0 + s(5));
        assert_eq!((c, ids.left_out()), (IdChanges::default(), 2));
        let others: Vec<u64> = [6, 7, 8].into_iter().filter(|&i| i != kept).collect();
        let found: Vec<u64> = [5, kept].into_iter().chain(others.clone()).collect();
        let c = ids.update(&found, t0 + s(6) + GONE_KEPT_FOR);
        assert_eq!((c.remove, c.add), (vec![1, 4], others));
        assert_eq!((ids.len(), ids.left_out()), (4, 0));

        // What the kernel refused counts as left out, and is tried again.
        let mut ids = CgroupIds::new(4);
        let c = ids.update(&[1, 2], t0);
        assert_eq!(c.add, vec![1, 2]);
        ids.not_added(2);
        assert_eq!((ids.len(), ids.left_out()), (1, 1));
        assert_eq!(ids.update(&[1, 2], t0 + s(1)).add, vec![2]);
        assert_eq!(ids.left_out(), 0);
    }

    /// A cgroup made for the test, with a child process in it: on drop (pass or fail) the child is
    /// killed and reaped, anything else left inside moved back to the root, and the directories
    /// removed, innermost first.
    struct TestCgroup {
        root: PathBuf,
        dirs: Vec<PathBuf>,
        child: Option<Child>,
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            if let Some(child) = &mut self.child {
                let _ = child.kill();
                let _ = child.wait();
            }
            for dir in self.dirs.iter().rev() {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
                let _ = fs::remove_dir(dir);
            }
        }
    }

    /// The cgroup id the kernel itself hands out for a cgroup directory: the kernfs node id in
    /// the directory's file handle, which is what bpf_get_current_cgroup_id() returns (the way
    /// the kernel's BPF selftests get a cgroup's id).
    fn kernfs_id(dir: &Path) -> u64 {
        #[repr(C)]
        struct Handle {
            handle_bytes: u32,
            handle_type: i32,
            id: [u8; 8],
        }
        let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let mut handle = Handle {
            handle_bytes: 8,
            handle_type: 0,
            id: [0; 8],
        };
        let mut mount_id = 0;
        // SAFETY: `path` is a NUL-terminated string that outlives the call; `handle` is a
        // file_handle header followed by the `handle_bytes` (8) bytes of room it announces, and
        // `mount_id` a valid int, both live for the call.
        let rc = unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                path.as_ptr(),
                (&raw mut handle).cast::<libc::file_handle>(),
                &mut mount_id,
                0,
            )
        };
        assert_eq!(
            rc,
            0,
            "name_to_handle_at: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(handle.handle_bytes, 8);
        u64::from_ne_bytes(handle.id)
    }

    #[test]
    fn resolves_a_real_cgroup_as_the_kernel_sees_it() {
        let Some(root) = crate::kernel::procnet::cgroup2_mount() else {
            eprintln!("skipped: no cgroup v2 hierarchy mounted");
            return;
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: making a cgroup needs root");
            return;
        }
        let parent = root.join(format!("twtrace-test-{}", std::process::id()));
        let scope = parent.join(format!("docker-{ID}.scope"));
        let mut cgroup = TestCgroup {
            root: root.clone(),
            dirs: vec![parent.clone(), scope.clone()],
            child: None,
        };
        fs::create_dir(&parent).unwrap();
        fs::create_dir(&scope).unwrap();
        let id = ino(&scope);
        assert_eq!(kernfs_id(&scope), id, "the inode number is the cgroup id");

        let mut paths = CgroupPaths::new(Some(root.clone()));
        let want_path = format!("/twtrace-test-{}/docker-{ID}.scope", std::process::id());
        assert_eq!(paths.path(id), Some(want_path.as_str()));
        assert_eq!(paths.container(id), container(Runtime::Docker, ID, None));
        assert_eq!(paths.path(ino(&root)), Some("/"));

        // The kernel's own view of a process in it agrees.
        let child = cgroup
            .child
            .insert(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = child.id();
        fs::write(scope.join("cgroup.procs"), pid.to_string()).unwrap();
        let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let v2 = own.lines().find_map(|l| l.strip_prefix("0::"));
        assert_eq!(v2, Some(want_path.as_str()));

        // Out before the directories go (the guard would do it too, on failure).
        fs::write(root.join("cgroup.procs"), pid.to_string()).unwrap();
        drop(cgroup);
        assert!(!parent.exists(), "test cgroup removed");
    }
}
