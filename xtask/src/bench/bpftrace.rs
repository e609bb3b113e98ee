//! bpftrace (mode e, and the empty program of the kernel-cost floor) and bpftool (the kernel
//! programs' run-time counters): found on PATH or installed from Debian.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::apt;

/// `program` on PATH, or in the sbin directories a non-login root shell may lack (Debian puts
/// bpftool in /usr/sbin).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `program` from Debian's package `package`, installed with apt-get when missing.
fn ensure(program: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = find_program(program) {
        eprintln!("bench: {program} ok ({})", path.display());
        return Ok(path);
    }
    eprintln!("bench: {program} is missing: installing Debian's package {package} with apt-get");
    apt::install(&format!("install {package}"), &[package])?;
    find_program(program)
        .with_context(|| format!("apt-get installed {package}, but {program} is not on PATH"))
}

/// Debian's bpftrace, installed with apt-get when missing.
pub fn ensure_bpftrace() -> Result<PathBuf> {
    ensure("bpftrace", "bpftrace")
}

/// Debian's bpftool, installed with apt-get when missing.
pub fn ensure_bpftool() -> Result<PathBuf> {
    ensure("bpftool", "bpftool")
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
