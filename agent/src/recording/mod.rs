//! Recordings: capture now, analyse later on another machine without root.
//!
//! [`format`] defines the file (and [`kernel`] its kernel dumps, as deltas), [`writer`] and
//! [`reader`] write and read it. A recording holds
//! the stream's items ([`crate::stream::Item`]); `crate::source::recording` plays one back into
//! the same pipeline the live tracer feeds, and `crate::sink::recorder` writes one.

pub mod format;
pub mod kernel;
pub mod reader;
pub mod writer;

#[cfg(test)]
pub(crate) mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use format::{Filters, Header};
pub use reader::{Problem, Reader};
pub use writer::{Encoder, Writer};

use crate::{
    clock::{WallClock, monotonic_ns},
    kernel::sysctl,
};

/// The sysctls that decide how TIME_WAIT and ephemeral ports behave, recorded in the header.
pub const SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_max_tw_buckets",
];

/// The header for a recording starting now on this machine.
pub fn header_now(command_line: Vec<String>, filters: Filters) -> Header {
    let mono = monotonic_ns();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let (hostname, kernel) = uname();
    let sysctls = SYSCTLS
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), sysctl::read(name).ok()??)))
        .collect();
    Header {
        format: format::FORMAT_NAME.to_owned(),
        version: format::VERSION,
        twtrace: env!("CARGO_PKG_VERSION").to_owned(),
        hostname,
        kernel,
        start_time: humantime::format_rfc3339_micros(UNIX_EPOCH + wall).to_string(),
        start_mono_ns: mono,
        mono_to_wall_ns: i64::try_from(wall.as_nanos()).unwrap_or(i64::MAX) - mono as i64,
        sysctls,
        command_line,
        filters,
        note: None,
    }
}

impl Header {
    /// Maps the recording's monotonic timestamps to wall time.
    pub fn clock(&self) -> WallClock {
        WallClock::with_offset(i128::from(self.mono_to_wall_ns))
    }

    pub fn wall_time(&self, mono_ns: u64) -> SystemTime {
        self.clock().to_system_time(mono_ns)
    }
}

/// (nodename, release) from uname(2).
pub(crate) fn uname() -> (String, String) {
    // SAFETY: utsname is plain old data; an all-zero value is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname; uname fills it and cannot fail on Linux.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (text(&u.nodename), text(&u.release))
}

/// Parses sizes such as `500M`, `64K`, `2G` or a plain number of bytes (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("`{s}`: unknown size suffix `{c}` (use K, M or G)")),
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 500M, 64K, 2G)"))?;
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("`{s}` is out of range"))
}

/// Sizes for people: 1.5 MB (powers of 1024, one decimal).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
