//! tracefs: making sure it is mounted (it is not on a fresh machine of this kind, and aya finds
//! tracepoint ids through it) and readable (it is mode 0700, owner root), and checking that the
//! tracepoints still have the field layout the kernel program was compiled for. "Not mounted"
//! and "mounted but unreadable" are told apart, each naming the capability that is missing.

use std::{
    ffi::CString,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use procfs::process::Process;
use twtrace_ebpf::offsets;

use super::privilege::{Cap, Caps};

pub const DEFAULT_ROOT: &str = "/sys/kernel/tracing";

/// A field of a tracepoint's `format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// What the kernel program reads from one tracepoint: (field name, offset, size).
#[derive(Debug)]
pub struct Layout {
    pub category: &'static str,
    pub name: &'static str,
    pub fields: &'static [(&'static str, usize, usize)],
    /// Without it twtrace still works, with less information (and says so).
    pub optional: bool,
}

/// Every tracepoint the kernel program attaches to, with the fields it reads.
pub const LAYOUTS: &[Layout] = &[
    Layout {
        category: "sock",
        name: "inet_sock_set_state",
        fields: {
            use offsets::set_state::*;
            &[
                ("skaddr", SKADDR, 8),
                ("oldstate", OLDSTATE, 4),
                ("newstate", NEWSTATE, 4),
                ("sport", SPORT, 2),
                ("dport", DPORT, 2),
                ("family", FAMILY, 2),
                ("protocol", PROTOCOL, 2),
                ("saddr", SADDR, 4),
                ("daddr", DADDR, 4),
                ("saddr_v6", SADDR_V6, 16),
                ("daddr_v6", DADDR_V6, 16),
            ]
        },
        optional: false,
    },
    Layout {
        category: "tcp",
        name: "tcp_destroy_sock",
        fields: &[
            ("skaddr", offsets::tcp_sock::SKADDR, 8),
            ("sock_cookie", offsets::tcp_sock::SOCK_COOKIE, 8),
        ],
        optional: false,
    },
    Layout {
        category: "tcp",
        name: "tcp_receive_reset",
        fields: &[("skaddr", offsets::tcp_sock::SKADDR, 8)],
        optional: false,
    },
    Layout {
        category: "tcp",
        name: "tcp_send_reset",
        fields: &[("skaddr", offsets::send_reset::SKADDR, 8)],
        optional: true,
    },
    // Who accept()ed a socket: its owner, where a listener is shared (see `accepted` in the
    // kernel program). Without them an accepted socket stays the listener's owner's until a
    // reconcile asks /proc.
    Layout {
        category: "syscalls",
        name: "sys_exit_accept4",
        fields: &[("ret", offsets::sys_exit::RET, 8)],
        optional: true,
    },
    Layout {
        category: "syscalls",
        name: "sys_exit_accept",
        fields: &[("ret", offsets::sys_exit::RET, 8)],
        optional: true,
    },
    // Failed connect() and bind() calls (see `remember` and `failed` in the kernel program):
    // the enter copies the address, the exit reports a failure with it. Without them failures
    // are not counted.
    Layout {
        category: "syscalls",
        name: "sys_enter_connect",
        fields: {
            use offsets::sys_enter_sockaddr::*;
            &[
                ("fd", FD, 8),
                ("uservaddr", ADDR, 8),
                ("addrlen", ADDRLEN, 8),
            ]
        },
        optional: true,
    },
    Layout {
        category: "syscalls",
        name: "sys_exit_connect",
        fields: &[("ret", offsets::sys_exit::RET, 8)],
        optional: true,
    },
    Layout {
        category: "syscalls",
        name: "sys_enter_bind",
        fields: {
            use offsets::sys_enter_sockaddr::*;
            &[("fd", FD, 8), ("umyaddr", ADDR, 8), ("addrlen", ADDRLEN, 8)]
        },
        optional: true,
    },
    Layout {
        category: "syscalls",
        name: "sys_exit_bind",
        fields: &[("ret", offsets::sys_exit::RET, 8)],
        optional: true,
    },
];

/// Parses a tracepoint `format` file into its fields.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines().filter_map(parse_field_line).collect()
}

/// `\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;`
fn parse_field_line(line: &str) -> Option<Field> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d);
        } else if let Some(o) = part.strip_prefix("offset:") {
            offset = o.parse().ok();
        } else if let Some(s) = part.strip_prefix("size:") {
            size = s.parse().ok();
        }
    }
    // The name is the last word of the declaration, without an array suffix.
    let name = decl?.split_whitespace().last()?;
    let name = name.split('[').next()?.trim_start_matches('*');
    Some(Field {
        name: name.to_owned(),
        offset: offset?,
        size: size?,
    })
}

/// Compares the fields a program reads with a parsed format file.
pub fn check_fields(layout: &Layout, fields: &[Field]) -> anyhow::Result<()> {
    for &(name, offset, size) in layout.fields {
        match fields.iter().find(|f| f.name == name) {
            None => bail!(
                "tracepoint {}:{} has no field `{name}`; this kernel's layout is not supported",
                layout.category,
                layout.name
            ),
            Some(f) if f.offset != offset || f.size != size => bail!(
                "tracepoint {}:{} field `{name}` is at offset {} size {}, twtrace was built for \
                 offset {offset} size {size}; this kernel's layout is not supported",
                layout.category,
                layout.name,
                f.offset,
                f.size
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

pub fn format_path(root: &Path, layout: &Layout) -> PathBuf {
    root.join("events")
        .join(layout.category)
        .join(layout.name)
        .join("format")
}

/// Checks every layout against the live kernel. Returns the optional tracepoints that are
/// missing or changed, with the reason, for the caller to report.
pub fn check_layouts(root: &Path) -> anyhow::Result<Vec<(&'static Layout, String)>> {
    let mut degraded = Vec::new();
    for layout in LAYOUTS {
        let path = format_path(root, layout);
        let result = match fs::read_to_string(&path) {
            Ok(text) => check_fields(layout, &parse_format(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(anyhow::anyhow!(
                "tracepoint {}:{} not found ({} does not exist); this kernel lacks it",
                layout.category,
                layout.name,
                path.display()
            )),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        };
        match result {
            Ok(()) => {}
            Err(e) if layout.optional => degraded.push((layout, format!("{e:#}"))),
            Err(e) => return Err(e),
        }
    }
    Ok(degraded)
}

/// Whether tracefs is mounted at `root`. This process's mountinfo says so even when the
/// directory is unreadable (mode 0700 without CAP_DAC_READ_SEARCH), which a look inside cannot
/// tell from an empty mount point.
pub fn is_mounted(root: &Path) -> bool {
    match Process::myself().and_then(|p| p.mountinfo()) {
        Ok(mounts) => tracefs_in(
            mounts
                .iter()
                .map(|m| (m.fs_type.as_str(), m.mount_point.as_path())),
            root,
        ),
        Err(e) => {
            log::debug!("mountinfo not read ({e}); looking into {}", root.display());
            // The mount point alone is an empty directory: `events` is not found there. Any
            // other answer (it is there, or it may not be looked at) means something is mounted.
            !matches!(fs::metadata(root.join("events")), Err(e) if e.kind() == io::ErrorKind::NotFound)
        }
    }
}

/// Whether one of `mounts` (file system type, mount point) is tracefs at `root`.
fn tracefs_in<'a>(mounts: impl IntoIterator<Item = (&'a str, &'a Path)>, root: &Path) -> bool {
    mounts
        .into_iter()
        .any(|(fs_type, point)| fs_type == "tracefs" && point == root)
}

/// Mounts tracefs at `root` if it is not mounted. Returns true when it mounted it.
pub fn ensure_mounted(root: &Path) -> anyhow::Result<bool> {
    if is_mounted(root) {
        return Ok(false);
    }
    let target = CString::new(root.as_os_str().as_encoded_bytes()).context("tracefs path")?;
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; `data` may be
    // NULL for tracefs.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // This process's capabilities only shape the error line.
        bail!(mount_failed(root, &err, Caps::current()));
    }
    Ok(true)
}

/// The error line for a failed mount: the missing capability when that is why.
fn mount_failed(root: &Path, err: &io::Error, caps: Option<Caps>) -> String {
    let lacks_sys_admin = caps.is_some_and(|c| !c.has(Cap::SysAdmin));
    let why = if err.raw_os_error() == Some(libc::EPERM) && lacks_sys_admin {
        "mounting it needs CAP_SYS_ADMIN (or root), which this process lacks".to_owned()
    } else {
        format!("mounting it failed ({err})")
    };
    format!(
        "tracefs is not mounted at {root} and {why}; mount it once as root: mount -t tracefs \
         tracefs {root}",
        root = root.display()
    )
}

/// Checks that this process may read what aya and the layout check read in a mounted tracefs:
/// the listing of `root` and a tracepoint's `id` file (tracefs makes its root mode 0700 and its
/// files 0440, owner root). A refusal is one line naming the path, its mode and owner, and the
/// capability that would allow it; anything else is left to the layout check, which says more.
pub fn check_readable(root: &Path, caps: Option<Caps>) -> anyhow::Result<()> {
    let id = format_path(root, &LAYOUTS[0]).with_file_name("id");
    let refused = match fs::read_dir(root) {
        Err(e) => Some((root, e)),
        Ok(_) => fs::read(&id).err().map(|e| (id.as_path(), e)),
    };
    match refused {
        Some((path, e)) if e.kind() == io::ErrorKind::PermissionDenied => {
            let meta = fs::metadata(path).ok();
            bail!(unreadable(
                root,
                path,
                meta.as_ref().map(|m| (m.mode() & 0o7777, m.uid())),
                &e,
                caps
            ))
        }
        _ => Ok(()),
    }
}

/// The error line for a mounted tracefs this process may not read. `mode_owner` is the
/// refused path's permission bits and owner uid, when they could be read.
fn unreadable(
    root: &Path,
    path: &Path,
    mode_owner: Option<(u32, u32)>,
    err: &io::Error,
    caps: Option<Caps>,
) -> String {
    let what = match mode_owner {
        Some((mode, 0)) => format!("{} is mode {mode:04o}, owned by root", path.display()),
        Some((mode, uid)) => format!("{} is mode {mode:04o}, owned by uid {uid}", path.display()),
        None => path.display().to_string(),
    };
    let fix = if caps.is_some_and(Caps::reads_anything) {
        // File permissions do not stop this process, so something else does (a security module).
        "this process has CAP_DAC_READ_SEARCH, so it is not the file permissions that refuse it"
    } else {
        "reading the tracepoint ids and formats there needs CAP_DAC_READ_SEARCH (or running as \
         root)"
    };
    format!(
        "tracefs is mounted at {}, but this process may not read it: {what} ({err}); {fix}",
        root.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE_FORMAT: &str = "name: inet_sock_set_state
ID: 1375
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s ...\"
";

    /// `syscalls:sys_enter_connect` as Linux 6.18 prints it: every argument 8 bytes wide.
    const ENTER_CONNECT_FORMAT: &str = "name: sys_enter_connect
ID: 2230
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;

print fmt: \"fd: 0x%08lx, uservaddr: 0x%08lx, addrlen: 0x%08lx\", ...
";

    #[test]
    fn the_connect_and_bind_layouts_match_the_6_18_formats() {
        let layout = |name: &str| {
            LAYOUTS
                .iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("no layout {name}"))
        };
        let connect = parse_format(ENTER_CONNECT_FORMAT);
        check_fields(layout("sys_enter_connect"), &connect).expect("matches");
        // bind()'s record names its address `umyaddr`, at the same place.
        let bind = parse_format(&ENTER_CONNECT_FORMAT.replace("uservaddr", "umyaddr"));
        check_fields(layout("sys_enter_bind"), &bind).expect("matches");
        assert!(check_fields(layout("sys_enter_bind"), &connect).is_err());
        for name in [
            "sys_enter_connect",
            "sys_exit_connect",
            "sys_enter_bind",
            "sys_exit_bind",
        ] {
            assert!(layout(name).optional, "{name}");
        }
    }

    #[test]
    fn parses_fields_with_pointers_and_arrays() {
        let fields = parse_format(SET_STATE_FORMAT);
        assert_eq!(fields.len(), 15);
        assert_eq!(
            fields[4],
            Field {
                name: "skaddr".into(),
                offset: 8,
                size: 8
            }
        );
        assert_eq!(
            fields[14],
            Field {
                name: "daddr_v6".into(),
                offset: 56,
                size: 16
            }
        );
    }

    #[test]
    fn the_built_in_layout_matches_the_6_18_format() {
        check_fields(&LAYOUTS[0], &parse_format(SET_STATE_FORMAT)).expect("matches");
    }

    #[test]
    fn a_moved_field_is_a_clear_error() {
        let moved = SET_STATE_FORMAT.replace("offset:26;", "offset:28;");
        let err = check_fields(&LAYOUTS[0], &parse_format(&moved)).expect_err("must fail");
        assert!(
            err.to_string().contains("field `dport` is at offset 28"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_field_is_a_clear_error() {
        let gone: String = SET_STATE_FORMAT
            .lines()
            .filter(|l| !l.contains("protocol"))
            .collect::<Vec<_>>()
            .join("\n");
        let err = check_fields(&LAYOUTS[0], &parse_format(&gone)).expect_err("must fail");
        assert!(err.to_string().contains("has no field `protocol`"), "{err}");
    }

    #[test]
    fn garbage_parses_to_nothing() {
        assert!(parse_format("").is_empty());
        assert!(parse_format("field:;offset:x;size:;\n\u{0}\u{ff}").is_empty());
    }

    /// Lines of a mountinfo as this kernel prints them (tracefs mounted, debugfs not).
    const MOUNTINFO: &str = "22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
43 23 0:14 / /sys/kernel/debug/tracing rw,relatime - sysfs none rw
";

    fn mountinfo(text: &str) -> procfs::process::MountInfos {
        use procfs::FromRead as _;
        procfs::process::MountInfos::from_read(text.as_bytes()).expect("mountinfo sample")
    }

    fn has_tracefs(text: &str, root: &str) -> bool {
        let mounts = mountinfo(text);
        tracefs_in(
            mounts
                .iter()
                .map(|m| (m.fs_type.as_str(), m.mount_point.as_path())),
            Path::new(root),
        )
    }

    #[test]
    fn mountinfo_tells_where_tracefs_is() {
        assert!(has_tracefs(MOUNTINFO, DEFAULT_ROOT));
        // Another file system at a path is not tracefs; another path is not the root asked for.
        assert!(!has_tracefs(MOUNTINFO, "/sys/kernel/debug/tracing"));
        assert!(!has_tracefs(MOUNTINFO, "/sys/kernel"));
        let without: String = MOUNTINFO
            .lines()
            .filter(|l| !l.contains("tracefs"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!has_tracefs(&without, DEFAULT_ROOT));
    }

    #[test]
    fn is_mounted_agrees_with_proc_mounts() {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
        let expected = mounts.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1) == Some(&DEFAULT_ROOT) && cols.get(2) == Some(&"tracefs")
        });
        assert_eq!(is_mounted(Path::new(DEFAULT_ROOT)), expected);
        let dir = std::env::temp_dir();
        assert!(!is_mounted(&dir), "{} is no tracefs", dir.display());
    }

    #[test]
    fn a_refused_mount_names_cap_sys_admin_only_when_it_is_missing() {
        let root = Path::new(DEFAULT_ROOT);
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let without = Caps(1 << Cap::Bpf as u32 | 1 << Cap::Perfmon as u32);
        assert_eq!(
            mount_failed(root, &eperm, Some(without)),
            "tracefs is not mounted at /sys/kernel/tracing and mounting it needs CAP_SYS_ADMIN (or \
             root), which this process lacks; mount it once as root: mount -t tracefs tracefs \
             /sys/kernel/tracing"
        );
        // With CAP_SYS_ADMIN (or when unknown) the kernel's answer is all there is to say.
        let with = Caps(1 << Cap::SysAdmin as u32);
        for caps in [Some(with), None] {
            let line = mount_failed(root, &eperm, caps);
            assert!(
                line.contains("and mounting it failed (Operation not permitted (os error 1));"),
                "{line}"
            );
        }
        let enodev = io::Error::from_raw_os_error(libc::ENODEV);
        let line = mount_failed(root, &enodev, Some(without));
        assert!(
            line.contains("mounting it failed (No such device"),
            "{line}"
        );
    }

    #[test]
    fn an_unreadable_tracefs_names_its_mode_and_cap_dac_read_search() {
        let root = Path::new(DEFAULT_ROOT);
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        let bpf_perfmon = Caps(1 << Cap::Bpf as u32 | 1 << Cap::Perfmon as u32);
        let line = unreadable(root, root, Some((0o700, 0)), &eacces, Some(bpf_perfmon));
        assert_eq!(
            line,
            "tracefs is mounted at /sys/kernel/tracing, but this process may not read it: \
             /sys/kernel/tracing is mode 0700, owned by root (Permission denied (os error 13)); \
             reading the tracepoint ids and formats there needs CAP_DAC_READ_SEARCH (or running \
             as root)"
        );
        assert!(!line.contains("not mounted"));
        let id = format_path(root, &LAYOUTS[0]).with_file_name("id");
        let line = unreadable(root, &id, Some((0o440, 1000)), &eacces, None);
        assert!(
            line.contains("inet_sock_set_state/id is mode 0440, owned by uid 1000"),
            "{line}"
        );
        assert!(line.contains("needs CAP_DAC_READ_SEARCH"), "{line}");
        let line = unreadable(
            root,
            root,
            None,
            &eacces,
            Some(Caps(1 << Cap::DacReadSearch as u32)),
        );
        assert!(
            line.contains("may not read it: /sys/kernel/tracing (Permission denied"),
            "{line}"
        );
        assert!(line.contains("not the file permissions"), "{line}");
    }

    #[test]
    fn a_readable_or_missing_tracefs_is_no_refusal() {
        // Root reads anything; a directory without the id file is for the layout check to report.
        let dir = std::env::temp_dir().join(format!("twtrace-tracefs-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let result = check_readable(&dir, None);
        fs::remove_dir(&dir).expect("remove temp dir");
        result.expect("an empty readable directory is no refusal");
    }

    #[test]
    fn missing_tracefs_root_reports_the_path() {
        let dir = std::env::temp_dir().join(format!("twtrace-no-tracefs-{}", std::process::id()));
        let err = check_layouts(&dir).expect_err("no tracefs there");
        assert!(
            err.to_string().contains("inet_sock_set_state not found"),
            "{err}"
        );
    }
}
