//! bpftrace, for mode e: found on PATH or installed from Debian.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::apt;

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Debian's bpftrace, installed with apt-get when missing.
pub fn ensure_bpftrace() -> Result<PathBuf> {
    if let Some(path) = find_on_path("bpftrace") {
        eprintln!("bench: bpftrace ok ({})", path.display());
        return Ok(path);
    }
    eprintln!("bench: bpftrace is missing: installing Debian's package with apt-get");
    apt::install("install bpftrace", &["bpftrace"])?;
    find_on_path("bpftrace").context("apt-get installed bpftrace, but it is not on PATH")
}

pub fn bpftrace_version(path: &Path) -> Option<String> {
    let out = Command::new(path)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|v| !v.is_empty())
}
