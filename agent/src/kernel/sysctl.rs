//! The sysctls that decide which local port connect() can give a new connection, per network
//! namespace: `net.ipv4.ip_local_port_range`, `net.ipv4.ip_local_reserved_ports`,
//! `net.ipv4.tcp_tw_reuse` and `net.ipv4.tcp_timestamps` (all four are per namespace; see
//! docs/kernel.md, "Ephemeral ports").
//!
//! A file under /proc/sys/net shows the values of the namespace of the thread that opened it, and
//! keeps showing them when read again later from any thread: [`SysctlFiles::open_here`] is
//! called on the thread that entered a namespace (crate::kernel::netns), and the files are kept.
//! The parsers are plain functions, tested without root.

use std::{fs::File, os::unix::fs::FileExt as _};

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
}
