//! The sysctls that decide which local port connect() can give a new connection, per network
//! namespace: `net.ipv4.ip_local_port_range`, `net.ipv4.ip_local_reserved_ports`,
//! `net.ipv4.tcp_tw_reuse` and `net.ipv4.tcp_timestamps` (all four are per namespace; see
//! docs/kernel.md, "Ephemeral ports").
//!
//! A file under /proc/sys/net shows the values of the namespace of the thread that opened it, and
//! keeps showing them when read again later from any thread: [`SysctlFiles::open_here`] is
//! called on the thread that entered a namespace (crate::kernel::netns), and the files are kept.
//! The parsers are plain functions, tested without root.
//!
//! Also what `twtrace doctor` reads: any sysctl by name ([`read`], as `sysctl -n` prints it),
//! [`PortPool`] (the range with its reserved ports, to tell which ports connect() picks),
//! [`TwReuse`] and the settings files that set sysctls at boot ([`settings`]).

use std::{
    collections::HashSet,
    fs::{self, File},
    io,
    net::IpAddr,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
const TW_REUSE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";
const TIMESTAMPS: &str = "/proc/sys/net/ipv4/tcp_timestamps";

/// The local ports connect() picks from: `low..=high` of ip_local_port_range, less the ports of
/// ip_local_reserved_ports within it. Toward one (local address, remote address, remote port)
/// at most `usable` connections can exist at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
    /// Reserved ports within `low..=high`.
    pub reserved: u32,
    pub usable: u32,
}

impl PortRange {
    /// From the two files' texts: `"32768\t60999\n"` and `"8080,9000-9010\n"` (or empty).
    pub fn parse(range: &str, reserved: &str) -> Option<Self> {
        let (low, high) = parse_range(range)?;
        let reserved: u32 = parse_port_list(reserved)?
            .into_iter()
            .filter_map(|(a, b)| {
                let (a, b) = (a.max(low), b.min(high));
                (a <= b).then(|| u32::from(b - a) + 1)
            })
            .sum();
        // The kernel keeps the list as a bitmap, so overlapping items count once; the list it
        // prints is that bitmap's, without overlaps, and so is the sum above.
        let size = u32::from(high - low) + 1;
        Some(Self {
            low,
            high,
            reserved: reserved.min(size),
            usable: size.saturating_sub(reserved),
        })
    }
}

/// `ip_local_port_range`: two ports, low then high, separated by blanks.
pub fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut words = text.split_whitespace();
    let low: u16 = words.next()?.parse().ok()?;
    let high: u16 = words.next()?.parse().ok()?;
    (words.next().is_none() && low <= high && low > 0).then_some((low, high))
}

/// `ip_local_reserved_ports`: comma-separated ports and `a-b` ranges (inclusive); empty when
/// none is reserved. None for anything else.
pub fn parse_port_list(text: &str) -> Option<Vec<(u16, u16)>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|item| {
            let item = item.trim();
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a <= b).then_some((a, b))
        })
        .collect()
}

/// A small integer sysctl (`tcp_tw_reuse`: 0 off, 1 on, 2 loopback only; `tcp_timestamps`).
pub fn parse_flag(text: &str) -> Option<u8> {
    text.trim().parse().ok()
}

/// What one network namespace says about local ports. Each part is None when its file could not
/// be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSettings {
    pub range: Option<PortRange>,
    pub tw_reuse: Option<u8>,
    pub timestamps: Option<u8>,
}

impl PortSettings {
    /// From a recording's header (`net.ipv4.*` names and values as read when it started): the
    /// host's values, for replays, which hold no per-namespace values.
    pub fn from_sysctls(sysctls: &[(String, String)]) -> Option<Self> {
        let get = |name: &str| {
            sysctls
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let range = get("net.ipv4.ip_local_port_range").and_then(|r| {
            // Recordings made before the reserved ports were recorded: none assumed.
            PortRange::parse(r, get("net.ipv4.ip_local_reserved_ports").unwrap_or(""))
        });
        let settings = Self {
            range,
            tw_reuse: get("net.ipv4.tcp_tw_reuse").and_then(parse_flag),
            timestamps: get("net.ipv4.tcp_timestamps").and_then(parse_flag),
        };
        (settings != Self::default()).then_some(settings)
    }
}

/// The four files of one network namespace, opened inside it and kept.
#[derive(Debug)]
pub struct SysctlFiles {
    range: Option<File>,
    reserved: Option<File>,
    tw_reuse: Option<File>,
    timestamps: Option<File>,
}

impl SysctlFiles {
    /// Opens the files of the calling thread's network namespace. A file that cannot be opened
    /// (an old kernel without it) is left out; its value reads as unknown.
    pub fn open_here() -> Self {
        let open = |path: &str| {
            File::open(path)
                .inspect_err(|e| log::debug!("{path}: {e}"))
                .ok()
        };
        Self {
            range: open(PORT_RANGE),
            reserved: open(RESERVED_PORTS),
            tw_reuse: open(TW_REUSE),
            timestamps: open(TIMESTAMPS),
        }
    }

    /// The values now (each file read again from its start).
    pub fn read(&self, buf: &mut Vec<u8>) -> PortSettings {
        let mut text = |f: &Option<File>| -> Option<String> {
            read_all(f.as_ref()?, buf)
                .inspect_err(|e| log::debug!("reading a sysctl: {e}"))
                .ok()
        };
        let range = text(&self.range);
        // An unreadable reserved list leaves the range unknown rather than wrong.
        let reserved = text(&self.reserved);
        PortSettings {
            range: range
                .zip(reserved)
                .and_then(|(r, res)| PortRange::parse(&r, &res)),
            tw_reuse: text(&self.tw_reuse).as_deref().and_then(parse_flag),
            timestamps: text(&self.timestamps).as_deref().and_then(parse_flag),
        }
    }
}

/// The whole file, read from offset 0 (which makes the kernel format the value afresh).
fn read_all(file: &File, buf: &mut Vec<u8>) -> std::io::Result<String> {
    buf.clear();
    let mut chunk = [0u8; 512];
    loop {
        let n = file.read_at(&mut chunk, buf.len() as u64)?;
        match chunk.get(..n) {
            Some([]) | None => break,
            Some(bytes) => buf.extend_from_slice(bytes),
        }
        // The reserved list is the longest, a few kB at worst (every other port reserved).
        if buf.len() > 1 << 20 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(buf).into_owned())
}

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

/// A [`PortRange`] with the reserved ports themselves, to tell whether connect() may pick a
/// given port (`twtrace doctor` counts the ports held per destination from one dump).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPool {
    pub range: PortRange,
    /// `ip_local_reserved_ports`, inclusive ranges (also those outside the range).
    pub reserved: Vec<(u16, u16)>,
}

impl PortPool {
    pub const RANGE: &'static str = "net.ipv4.ip_local_port_range";
    pub const RESERVED: &'static str = "net.ipv4.ip_local_reserved_ports";

    /// From the two sysctls' text, as [`PortRange::parse`].
    pub fn parse(range: &str, reserved: &str) -> Option<Self> {
        Some(Self {
            range: PortRange::parse(range, reserved)?,
            reserved: parse_port_list(reserved)?,
        })
    }

    /// This network namespace's (the calling process's), from /proc/sys.
    pub fn read() -> io::Result<Self> {
        let missing = |name: &str| io::Error::new(io::ErrorKind::NotFound, format!("no {name}"));
        let range = read(Self::RANGE)?.ok_or_else(|| missing(Self::RANGE))?;
        let reserved = read(Self::RESERVED)?.unwrap_or_default();
        Self::parse(&range, &reserved).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unparsable {} or {}: {range:?}, {reserved:?}",
                    Self::RANGE,
                    Self::RESERVED
                ),
            )
        })
    }

    /// Whether connect() may pick `port` by itself: in the range and not reserved.
    pub fn picks(&self, port: u16) -> bool {
        (self.range.low..=self.range.high).contains(&port)
            && !self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }
}

impl PortRange {
    /// Ports in the range, reserved or not.
    pub fn size(&self) -> u32 {
        self.usable + self.reserved
    }
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

    /// The setting as `PortSettings::tw_reuse` holds it (the number read).
    pub fn of(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Off),
            1 => Some(Self::On),
            2 => Some(Self::Loopback),
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
    fn ranges_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("40000 40299"), Some((40000, 40299)));
        for bad in ["", "1", "2 1", "0 10", "1 2 3", "a b", "1 70000"] {
            assert_eq!(parse_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reserved_lists_parse() {
        assert_eq!(parse_port_list("\n"), Some(vec![]));
        assert_eq!(
            parse_port_list("8080,9000-9010\n"),
            Some(vec![(8080, 8080), (9000, 9010)])
        );
        for bad in ["x", "5-", "9-3", "1,,2", "70000"] {
            assert_eq!(parse_port_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reserved_ports_count_only_within_the_range() {
        let r = PortRange::parse("40000 40009\n", "40003-40004\n").expect("parses");
        assert_eq!((r.low, r.high, r.reserved, r.usable), (40000, 40009, 2, 8));
        // Partly outside, wholly outside, and a single port at the edge.
        let r = PortRange::parse("40000 40009", "39990-40001,50000,40009").expect("parses");
        assert_eq!((r.reserved, r.usable), (3, 7));
        let r = PortRange::parse("32768 60999", "").expect("parses");
        assert_eq!((r.reserved, r.usable), (0, 28232));
        // Everything reserved: nothing usable, never a negative count.
        let r = PortRange::parse("1000 1001", "1-65535").expect("parses");
        assert_eq!((r.reserved, r.usable), (2, 0));
        assert_eq!(PortRange::parse("1000 1001", "junk"), None);
    }

    #[test]
    fn header_sysctls_give_the_host_settings() {
        let s = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let got = PortSettings::from_sysctls(&[
            s("net.ipv4.ip_local_port_range", "32768 60999"),
            s("net.ipv4.tcp_tw_reuse", "2"),
        ])
        .expect("some");
        assert_eq!(got.range.map(|r| r.usable), Some(28232));
        assert_eq!((got.tw_reuse, got.timestamps), (Some(2), None));
        assert_eq!(PortSettings::from_sysctls(&[]), None);
    }

    #[test]
    fn this_namespace_reads_as_its_proc_sys_says() {
        let files = SysctlFiles::open_here();
        let got = files.read(&mut Vec::new());
        let want = std::fs::read_to_string(PORT_RANGE)
            .ok()
            .and_then(|r| parse_range(&r));
        assert_eq!(got.range.map(|r| (r.low, r.high)), want);
        // Read twice through the same open files: the same again.
        assert_eq!(files.read(&mut Vec::new()), got);
    }
    #[test]
    fn a_pool_knows_which_ports_connect_picks() {
        let p = PortPool::parse("1024 2047", "80,1000-1030,2047,3000-4000").expect("parses");
        assert_eq!((p.range.reserved, p.range.usable), (7 + 1, 1024 - 8));
        assert_eq!(p.range.size(), 1024);
        assert!(p.picks(1040) && !p.picks(1030) && !p.picks(2047) && !p.picks(80));
        assert!(!p.picks(2048) && !p.picks(1023));
        assert_eq!(PortPool::parse("1024 2047", "x"), None);
        let here = PortPool::read().expect("this namespace's");
        assert!(here.range.usable <= here.range.size());
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
        let range = read(PortPool::RANGE).expect("readable").expect("exists");
        assert!(!range.contains('\t'), "{range:?}");
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
