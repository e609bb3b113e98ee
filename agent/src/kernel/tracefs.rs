//! tracefs: making sure it is mounted (it is not on a fresh machine of this kind, and aya finds
//! tracepoint ids through it), and checking that the tracepoints still have the field layout the
//! kernel program was compiled for.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use twtrace_ebpf::offsets;

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

/// Whether tracefs is mounted at `root` (the directory exists but is empty when it is not).
pub fn is_mounted(root: &Path) -> bool {
    root.join("events").is_dir()
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
        bail!(
            "tracefs is not mounted at {} and mounting it failed ({err}); run: mount -t tracefs tracefs {}",
            root.display(),
            root.display()
        );
    }
    if !is_mounted(root) {
        bail!(
            "mounted tracefs at {} but it has no events directory",
            root.display()
        );
    }
    Ok(true)
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
