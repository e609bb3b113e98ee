//! `cargo xtask run`: build the agent, then run it with root privileges.

use std::{
    env,
    ffi::OsString,
    io,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::{Context as _, Result};

use crate::{cargo, setup, shell};

pub fn run(release: bool, args: &[OsString]) -> Result<ExitCode> {
    let tools = setup::setup()?;
    cargo::build_agent(&tools, release)?;
    let profile = if release { "release" } else { "debug" };
    let bin = cargo::target_dir(&tools)?.join(profile).join("twtrace");

    // Loading eBPF programs needs root (or CAP_BPF and friends).
    let mut cmd = if shell::is_root() {
        Command::new(&bin)
    } else if let Some(sudo) = find_on_path("sudo") {
        // -E keeps the caller's environment (RUST_LOG and the like) for the agent.
        let mut cmd = Command::new(sudo);
        cmd.arg("-E").arg(&bin);
        cmd
    } else {
        eprintln!("xtask: not root and no sudo on PATH: running twtrace unprivileged");
        Command::new(&bin)
    };
    cmd.args(args);
    eprintln!("xtask: $ {}", shell::display(&cmd));

    // Ctrl-C is meant for the agent, which then prints its summary and exits; it reaches the
    // agent directly because both are in the terminal's foreground process group. xtask must
    // outlive it to forward its exit code, so it ignores SIGINT. It does so before spawning, so
    // there is no window in which Ctrl-C kills xtask but not the agent, and the child puts the
    // default disposition back (ignored signals would otherwise stay ignored across exec).
    ignore_sigint();
    let restore_default = || -> io::Result<()> {
        // SAFETY: signal(2) is async-signal-safe, so it may be called between fork and exec;
        // SIGINT and SIG_DFL are valid arguments.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec; it only calls signal(2), which is
    // async-signal-safe, and neither allocates nor takes locks.
    unsafe { cmd.pre_exec(restore_default) };

    let status = cmd
        .status()
        .with_context(|| format!("step `run`: could not start {}", bin.display()))?;
    Ok(ExitCode::from(exit_code(status)))
}

fn ignore_sigint() {
    // SAFETY: installs the SIG_IGN disposition, no Rust handler, so nothing can run in signal
    // context; SIGINT and SIG_IGN are valid arguments.
    let previous = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        eprintln!("xtask: warning: could not ignore SIGINT; Ctrl-C may drop the agent's exit code");
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The agent's exit code, or 128 + signal like a shell when a signal killed it.
fn exit_code(status: ExitStatus) -> u8 {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    u8::try_from(code).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_forwarded() {
        // Raw wait statuses: exit code in the second byte, terminating signal in the low bits.
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGINT)), 130);
    }

    #[test]
    fn finds_sh_on_path() {
        // Every unix PATH used for builds has a shell; a made-up name is never found.
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("xtask-no-such-program").is_none());
    }
}
