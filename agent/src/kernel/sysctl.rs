//! Kernel settings (sysctls) that decide how ephemeral ports and TIME_WAIT behave: read from
//! /proc/sys (per network namespace for `net.*`, readable by anyone), and the settings files
//! that set them at boot (`sysctl --system`, systemd-sysctl).
//!
//! [`PortRange`] is the pool connect() picks local ports from: `ip_local_port_range` less
//! `ip_local_reserved_ports`. [`TwReuse`] is whether connect() may take a port that a TIME_WAIT
//! socket holds toward the same destination.

use std::{
    collections::HashSet,
    fs, io,
    net::IpAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

/// Where a sysctl lives: `net.ipv4.tcp_fin_timeout` is /proc/sys/net/ipv4/tcp_fin_timeout.
pub fn path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// A sysctl's value as `sysctl -n` prints it, with its whitespace (tabs between the two ports of
/// `ip_local_port_range`) made single spaces; `Ok(None)` when this kernel has no such setting.
pub fn read(name: &str) -> io::Result<Option<String>> {
    match fs::read_to_string(path(name)) {
        Ok(text) => Ok(Some(normalize(&text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whitespace runs made single spaces, none at the ends.
pub fn normalize(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The local ports connect() picks from when the caller did not bind one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// `ip_local_port_range`, both ends included.
    pub low: u16,
    pub high: u16,
    /// Ports of the range listed in `ip_local_reserved_ports` (never picked automatically).
    pub reserved: u32,
    /// Ports of the range not reserved: how many connections one (source address, destination
    /// address, destination port) can have at once.
    pub usable: u32,
    /// `ip_local_reserved_ports` as ranges, both ends included (also those outside the range).
    pub reserved_ranges: Vec<RangeInclusive<u16>>,
}

impl PortRange {
    pub const RANGE: &'static str = "net.ipv4.ip_local_port_range";
    pub const RESERVED: &'static str = "net.ipv4.ip_local_reserved_ports";

    /// From the two sysctls' text: `range` is "32768 60999" (any whitespace), `reserved` a list
    /// such as "8080,9000-9010" or empty. `None` when either does not parse.
    pub fn parse(range: &str, reserved: &str) -> Option<Self> {
        let mut ends = range.split_whitespace().map(str::parse::<u16>);
        let (Some(Ok(low)), Some(Ok(high)), None) = (ends.next(), ends.next(), ends.next()) else {
            return None;
        };
        let reserved_ranges = parse_port_list(reserved)?;
        let mut in_range: HashSet<u16> = HashSet::new();
        if low <= high {
            for r in &reserved_ranges {
                let (a, b) = ((*r.start()).max(low), (*r.end()).min(high));
                if a <= b {
                    in_range.extend(a..=b);
                }
            }
        }
        let size = if low <= high {
            u32::from(high) - u32::from(low) + 1
        } else {
            0
        };
        let reserved = u32::try_from(in_range.len()).unwrap_or(u32::MAX);
        Some(Self {
            low,
            high,
            reserved,
            usable: size.saturating_sub(reserved),
            reserved_ranges,
        })
    }

    /// This network namespace's, from /proc/sys.
    pub fn read() -> io::Result<Self> {
        let missing = |name: &str| io::Error::new(io::ErrorKind::NotFound, format!("no {name}"));
        let range = read(Self::RANGE)?.ok_or_else(|| missing(Self::RANGE))?;
        let reserved = read(Self::RESERVED)?.unwrap_or_default();
        Self::parse(&range, &reserved).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unparsable {}: {range:?}", Self::RANGE),
            )
        })
    }

    /// Whether connect() may pick `port` by itself: in the range and not reserved.
    pub fn picks(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
            && !self.reserved_ranges.iter().any(|r| r.contains(&port))
    }

    /// Ports in the range, reserved or not.
    pub fn size(&self) -> u32 {
        self.usable + self.reserved
    }
}

/// A list of ports and ranges as `ip_local_reserved_ports` takes it ("8080,9000-9010"); empty
/// text is an empty list. `None` when a part does not parse.
pub fn parse_port_list(text: &str) -> Option<Vec<RangeInclusive<u16>>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                    (a <= b).then_some(a..=b)
                }
                None => {
                    let p = part.parse().ok()?;
                    Some(p..=p)
                }
            }
        })
        .collect()
}

/// `net.ipv4.tcp_tw_reuse`: whether connect() may take the local port of a TIME_WAIT socket
/// toward the same destination (net/ipv4/tcp_ipv4.c `tcp_twsk_unique()`), when the TIME_WAIT
/// socket has a timestamp from its peer and that is at least a second old. Only connect()
/// asks: it does nothing for incoming connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwReuse {
    /// 0.
    Off,
    /// 1: for every destination.
    On,
    /// 2, the default since Linux 4.19: only when the TIME_WAIT socket's source or destination
    /// address is a loopback one (or it was bound to `lo`).
    Loopback,
}

impl TwReuse {
    pub const NAME: &'static str = "net.ipv4.tcp_tw_reuse";

    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "0" => Some(Self::Off),
            "1" => Some(Self::On),
            "2" => Some(Self::Loopback),
            _ => None,
        }
    }

    /// Whether connect() may reuse a TIME_WAIT port for connections between `local` and
    /// `remote` (timestamps allowing).
    pub fn applies(self, local: IpAddr, remote: IpAddr) -> bool {
        match self {
            Self::Off => false,
            Self::On => true,
            Self::Loopback => is_loopback(local) || is_loopback(remote),
        }
    }
}

/// Loopback as the kernel's `tcp_twsk_unique()` sees it: 127/8, ::1, and IPv4-mapped 127/8.
fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// One `key = value` line of a sysctl settings file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// With dots (`net.ipv4.tcp_fin_timeout`), whichever separator the file used.
    pub key: String,
    /// As written, whitespace made single spaces.
    pub value: String,
}

/// The directories `sysctl --system` and systemd-sysctl read `*.conf` files from, first wins
/// for a file name found in several (sysctl.d(5)).
pub const SETTINGS_DIRS: [&str; 5] = [
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];

/// Read after the directories by `sysctl --system` (systemd distributions link it into
/// /etc/sysctl.d as 99-sysctl.conf).
pub const SETTINGS_FILE: &str = "/etc/sysctl.conf";

/// The `key = value` lines of one settings file: (line number, key with dots, value). Comments
/// (`#`, `;`), blank lines and lines without `=` are skipped; a leading `-` (ignore failures)
/// is dropped from the key, and a key written with slashes gets dots.
pub fn parse_settings(text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let key = key.trim().trim_start_matches('-').trim();
            if key.is_empty() {
                return None;
            }
            // sysctl.d(5): "net/ipv4/tcp_fin_timeout" is "net.ipv4.tcp_fin_timeout" (the
            // first separator decides; a dot in a slash-separated key is part of a name).
            let slash_first = match (key.find('/'), key.find('.')) {
                (Some(slash), Some(dot)) => slash < dot,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let key = if slash_first {
                key.replace('/', ".")
            } else {
                key.to_owned()
            };
            Some((i + 1, key, normalize(value)))
        })
        .collect()
}

/// The settings files under `root` (`/` on a live system), in the order they are applied: the
/// directories' `*.conf` files sorted by name (a name in an earlier directory hides the same
/// name in a later one), then /etc/sysctl.conf. A file reached twice through links is listed
/// once, where it is applied first.
pub fn settings_files(root: &Path) -> Vec<PathBuf> {
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    let mut by_name: Vec<(String, PathBuf)> = Vec::new();
    for dir in SETTINGS_DIRS {
        let Ok(entries) = fs::read_dir(under(dir)) else {
            continue;
        };
        let mut names: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with(".conf").then(|| (name, e.path()))
            })
            .collect();
        names.sort();
        for (name, path) in names {
            if !by_name.iter().any(|(n, _)| *n == name) {
                by_name.push((name, path));
            }
        }
    }
    by_name.sort_by(|a, b| a.0.cmp(&b.0));
    let mut files: Vec<PathBuf> = by_name.into_iter().map(|(_, p)| p).collect();
    files.push(under(SETTINGS_FILE));
    let mut seen = HashSet::new();
    files
        .into_iter()
        .filter(|p| p.is_file())
        .filter(|p| seen.insert(fs::canonicalize(p).unwrap_or_else(|_| p.clone())))
        .collect()
}

/// Every line of the settings files under `root` that sets one of `keys`, in the order they are
/// applied (the last one for a key is what boot leaves). Unreadable files are skipped.
pub fn settings(root: &Path, keys: &[&str]) -> Vec<Setting> {
    let mut out = Vec::new();
    for file in settings_files(root) {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for (line, key, value) in parse_settings(&text) {
            if keys.contains(&key.as_str()) {
                out.push(Setting {
                    file: file.clone(),
                    line,
                    key,
                    value,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_with_and_without_reserved_ports() {
        let r = PortRange::parse("32768\t60999", "").expect("parses");
        assert_eq!(
            (r.low, r.high, r.reserved, r.usable),
            (32768, 60999, 0, 28232)
        );
        assert_eq!(r.size(), 28232);

        // Reserved ports count only inside the range, and overlaps once.
        let r =
            PortRange::parse("1024 2047", "80,1000-1030,1030-1039,2047,3000-4000").expect("parses");
        assert_eq!((r.reserved, r.usable), (16 + 1, 1024 - 17));
        assert!(r.picks(1040) && !r.picks(1030) && !r.picks(2047) && !r.picks(80));
        assert!(!r.picks(2048));

        // An inverted range picks nothing (the kernel refuses one, but a file may hold it).
        let r = PortRange::parse("5000 4000", "").expect("parses");
        assert_eq!((r.usable, r.reserved), (0, 0));
    }

    #[test]
    fn port_range_refuses_garbage() {
        for (range, reserved) in [
            ("", ""),
            ("32768", ""),
            ("32768 60999 1", ""),
            ("a b", ""),
            ("32768 70000", ""),
            ("32768 60999", "80,"),
            ("32768 60999", "90-80"),
            ("32768 60999", "x"),
        ] {
            assert_eq!(
                PortRange::parse(range, reserved),
                None,
                "{range:?} {reserved:?}"
            );
        }
    }

    #[test]
    fn port_lists() {
        assert_eq!(parse_port_list(""), Some(vec![]));
        assert_eq!(parse_port_list(" \n"), Some(vec![]));
        assert_eq!(
            parse_port_list("8080,9000-9010\n"),
            Some(vec![8080..=8080, 9000..=9010])
        );
        assert_eq!(parse_port_list("1-65535"), Some(vec![1..=65535]));
        assert_eq!(parse_port_list("65536"), None);
    }

    #[test]
    fn tw_reuse_values_and_where_they_apply() {
        let lo: IpAddr = "127.0.0.1".parse().expect("addr");
        let lo6: IpAddr = "::1".parse().expect("addr");
        let mapped: IpAddr = "::ffff:127.0.0.5".parse().expect("addr");
        let a: IpAddr = "10.0.0.1".parse().expect("addr");
        let b: IpAddr = "10.0.0.2".parse().expect("addr");
        assert_eq!(TwReuse::parse("2\n"), Some(TwReuse::Loopback));
        assert_eq!(TwReuse::parse("0"), Some(TwReuse::Off));
        assert_eq!(TwReuse::parse("1"), Some(TwReuse::On));
        assert_eq!(TwReuse::parse("3"), None);
        assert!(TwReuse::Loopback.applies(lo, lo));
        assert!(TwReuse::Loopback.applies(lo6, lo6));
        assert!(TwReuse::Loopback.applies(mapped, a));
        assert!(!TwReuse::Loopback.applies(a, b));
        assert!(TwReuse::On.applies(a, b));
        assert!(!TwReuse::Off.applies(lo, lo));
    }

    #[test]
    fn settings_lines() {
        let text = "# tuning from a blog\n\
                    net.ipv4.tcp_tw_recycle = 1\n\
                    ; another comment\n\
                    \n\
                    -net.ipv4.tcp_fin_timeout=30\n\
                    net/ipv4/ip_local_port_range = 1024\t65535\n\
                    net.ipv4.conf.eth0/1.rp_filter = 0\n\
                    garbage without equals\n\
                    = 5\n";
        assert_eq!(
            parse_settings(text),
            vec![
                (2, "net.ipv4.tcp_tw_recycle".into(), "1".into()),
                (5, "net.ipv4.tcp_fin_timeout".into(), "30".into()),
                (
                    6,
                    "net.ipv4.ip_local_port_range".into(),
                    "1024 65535".into()
                ),
                // Dots first: the slash belongs to the interface name.
                (7, "net.ipv4.conf.eth0/1.rp_filter".into(), "0".into()),
            ]
        );
    }

    #[test]
    fn settings_files_in_the_order_they_are_applied() {
        let root = std::env::temp_dir().join(format!("twtrace-sysctl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let write = |p: &str, text: &str| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, text).expect("write");
        };
        write(
            "usr/lib/sysctl.d/50-default.conf",
            "net.ipv4.tcp_fin_timeout = 60\n",
        );
        write(
            "usr/lib/sysctl.d/10-vendor.conf",
            "net.ipv4.tcp_tw_reuse = 2\n",
        );
        // Same name in /etc: hides the vendor's file.
        write("etc/sysctl.d/10-vendor.conf", "net.ipv4.tcp_tw_reuse = 0\n");
        write(
            "run/sysctl.d/99-tune.conf",
            "net.ipv4.tcp_fin_timeout = 30\nnet.ipv4.tcp_tw_recycle=1\n",
        );
        write("etc/sysctl.d/README", "net.ipv4.tcp_fin_timeout = 1\n");
        write("etc/sysctl.conf", "net.ipv4.tcp_fin_timeout = 15\n");
        // systemd distributions link sysctl.conf into the directory: read once.
        std::os::unix::fs::symlink(
            root.join("etc/sysctl.conf"),
            root.join("etc/sysctl.d/99-sysctl.conf"),
        )
        .expect("symlink");

        let files = settings_files(&root);
        let rel: Vec<String> = files
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            rel,
            [
                "etc/sysctl.d/10-vendor.conf",
                "usr/lib/sysctl.d/50-default.conf",
                "etc/sysctl.d/99-sysctl.conf",
                "run/sysctl.d/99-tune.conf",
            ]
        );
        let set = settings(
            &root,
            &["net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_tw_recycle"],
        );
        let got: Vec<(String, usize, &str)> = set
            .iter()
            .map(|s| {
                (
                    s.file
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                    s.line,
                    s.value.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("50-default.conf".into(), 1, "60"),
                ("99-sysctl.conf".into(), 1, "15"),
                ("99-tune.conf".into(), 1, "30"),
                ("99-tune.conf".into(), 2, "1"),
            ]
        );
        fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn reads_this_kernel() {
        // Every kernel with IPv4 has these; tcp_tw_recycle is gone since Linux 4.12.
        let range = read(PortRange::RANGE).expect("readable").expect("exists");
        assert!(!range.contains('\t'), "{range:?}");
        let r = PortRange::read().expect("port range");
        assert!(r.low <= r.high && r.usable <= r.size());
        assert!(TwReuse::parse(&read(TwReuse::NAME).expect("readable").expect("exists")).is_some());
        assert_eq!(
            read("net.ipv4.twtrace_no_such_setting").expect("absent is no error"),
            None
        );
        assert_eq!(
            path("net.core.somaxconn"),
            Path::new("/proc/sys/net/core/somaxconn")
        );
    }
}
