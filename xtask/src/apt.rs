//! Debian packages. A fresh machine's package index is stale (installs from it fail with 404), so
//! every `apt-get install` here comes after an `apt-get update`, run once per xtask run.

use std::{
    env, io,
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result};

use crate::shell;

/// Set once `apt-get update` succeeded in this run.
static UPDATED: AtomicBool = AtomicBool::new(false);

/// `apt-get install -y PACKAGES`, after `apt-get update` if this run has not updated yet; both
/// fail naming `step`. Their output goes to stderr.
pub fn install(step: &str, packages: &[&str]) -> Result<()> {
    if !UPDATED.load(Ordering::Relaxed) {
        shell::run(step, &mut apt_get(["update"])?)?;
        UPDATED.store(true, Ordering::Relaxed);
    }
    let args = ["install", "-y"].iter().chain(packages);
    shell::run(step, &mut apt_get(args)?)
}

/// `program` on PATH, or in the sbin directories a non-login root shell may lack (Debian puts
/// bpftool in /usr/sbin).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `program` from Debian's package `package`, installed with apt-get when missing; `who`
/// starts the lines it prints (`bench`, `xtask`).
pub fn ensure(who: &str, program: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = find_program(program) {
        eprintln!("{who}: {program} ok ({})", path.display());
        return Ok(path);
    }
    eprintln!("{who}: {program} is missing: installing Debian's package {package} with apt-get");
    install(&format!("install {package}"), &[package])?;
    find_program(program)
        .with_context(|| format!("apt-get installed {package}, but {program} is not on PATH"))
}

fn apt_get<I, S>(args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("apt-get");
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(to_stderr()?);
    Ok(cmd)
}

/// Our own stderr for a child's stdout: apt-get's progress must not end up in the results
/// stream on stdout.
fn to_stderr() -> Result<Stdio> {
    let fd = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stderr")?;
    Ok(Stdio::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_get_is_noninteractive() {
        let cmd = apt_get(["install", "-y", "bpftrace"]).expect("command");
        assert_eq!(
            shell::display(&cmd),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y bpftrace"
        );
    }
}
