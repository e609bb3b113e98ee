//! bpftrace (mode e, and the empty program of the kernel-cost floor) and bpftool (the kernel
//! programs' run-time counters): found on PATH or installed from Debian.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Result;

use crate::apt;

/// Debian's bpftrace, installed with apt-get when missing.
pub fn ensure_bpftrace() -> Result<PathBuf> {
    apt::ensure("bench", "bpftrace", "bpftrace")
}

/// Debian's bpftool, installed with apt-get when missing.
pub fn ensure_bpftool() -> Result<PathBuf> {
    apt::ensure("bench", "bpftool", "bpftool")
}

/// The first line of `PROGRAM --version` (`bpftrace v0.17.0`, `bpftool v7.1.0`).
pub fn tool_version(path: &Path) -> Option<String> {
    let out = Command::new(path)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    version_line(&String::from_utf8(out.stdout).ok()?)
}

/// The first line, without the path bpftool prints its name with (`/usr/sbin/bpftool v7.1.0`).
fn version_line(text: &str) -> Option<String> {
    let line = text.lines().next()?.trim();
    let (program, rest) = line.split_once(' ').unwrap_or((line, ""));
    let program = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(program);
    Some(format!("{program} {rest}").trim().to_owned()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lines_lose_the_path() {
        // Real first lines of `bpftool --version` and `bpftrace --version`.
        assert_eq!(
            version_line("/usr/sbin/bpftool v7.1.0\nusing libbpf v1.1\n").as_deref(),
            Some("bpftool v7.1.0")
        );
        assert_eq!(
            version_line("bpftrace v0.17.0\n").as_deref(),
            Some("bpftrace v0.17.0")
        );
        assert_eq!(version_line(""), None);
        assert_eq!(version_line("\n"), None);
    }
}
