//! Running cargo the way the eBPF build needs: `<tools>/bin` on PATH and the eBPF switches set.

use std::{
    env,
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::Tools,
    shell::{display, run},
};

/// Set for every cargo run that builds the agent for real: the agent's build.rs then fails
/// instead of silently skipping the eBPF build (a tracer without its program is useless).
pub const REQUIRE_EBPF: &str = "TWTRACE_REQUIRE_EBPF";
/// aya-build's own switch: skip compiling the eBPF crate (for clippy and host-only unit tests).
pub const AYA_BUILD_SKIP: &str = "AYA_BUILD_SKIP";

/// Whether a cargo run compiles the eBPF program.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ebpf {
    /// Build it, and fail if that is impossible.
    Require,
    /// `AYA_BUILD_SKIP=1`: no eBPF build (and no requirement for one).
    Skip,
}

/// `cargo <args>` with `<tools>/bin` first on PATH: aya-build runs `rustup run nightly cargo
/// build --target bpfel-unknown-none`, whose linker `bpf-linker` is looked up on PATH.
pub fn cargo<I, S>(tools: &Tools, ebpf: Ebpf, args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("cargo");
    cmd.args(args);
    set_env(&mut cmd, tools, ebpf)?;
    Ok(cmd)
}

/// `rustup run nightly cargo <args>`, the same as `cargo +nightly <args>` but also right when the
/// `cargo` first on PATH is not the rustup proxy; same environment as [`cargo`].
pub fn nightly_cargo<I, S>(tools: &Tools, ebpf: Ebpf, args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]).args(args);
    set_env(&mut cmd, tools, ebpf)?;
    Ok(cmd)
}

fn set_env(cmd: &mut Command, tools: &Tools, ebpf: Ebpf) -> Result<()> {
    let old_path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(
        [tools.bin_dir()]
            .into_iter()
            .chain(env::split_paths(&old_path)),
    )
    .with_context(|| format!("{} cannot go on PATH", tools.bin_dir().display()))?;
    cmd.env("PATH", path);
    match ebpf {
        // Also drop an AYA_BUILD_SKIP inherited from the caller's shell: a build that is meant
        // to contain the eBPF program must not quietly lose it.
        Ebpf::Require => cmd.env(REQUIRE_EBPF, "1").env_remove(AYA_BUILD_SKIP),
        // An explicit skip would contradict the requirement, so the requirement is dropped.
        Ebpf::Skip => cmd.env(AYA_BUILD_SKIP, "1").env_remove(REQUIRE_EBPF),
    };
    Ok(())
}

/// `cargo build --package twtrace [--release]`, eBPF program included.
pub fn build_agent(tools: &Tools, release: bool) -> Result<()> {
    let mut args = vec!["build", "--package", "twtrace"];
    if release {
        args.push("--release");
    }
    run("build", &mut cargo(tools, Ebpf::Require, args)?)
}

/// The workspace's target directory as cargo sees it (honours `CARGO_TARGET_DIR` and config).
pub fn target_dir(tools: &Tools) -> Result<PathBuf> {
    let mut cmd = cargo(
        tools,
        Ebpf::Skip,
        ["metadata", "--format-version", "1", "--no-deps"],
    )?;
    let shown = display(&cmd);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("parsing `{shown}`"))?;
    let dir = metadata
        .get("target_directory")
        .and_then(serde_json::Value::as_str)
        .with_context(|| format!("`{shown}` has no target_directory"))?;
    Ok(PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Tools {
        Tools {
            dir: PathBuf::from("/opt/tools"),
        }
    }

    #[test]
    fn require_sets_the_flag_and_tools_path() {
        let cmd =
            cargo(&tools(), Ebpf::Require, ["build", "--package", "twtrace"]).expect("command");
        assert_eq!(
            display(&cmd),
            "TWTRACE_REQUIRE_EBPF=1 cargo build --package twtrace"
        );
        let path = cmd
            .get_envs()
            .find(|(key, _)| *key == "PATH")
            .and_then(|(_, value)| value)
            .expect("PATH set");
        let first = env::split_paths(path).next().expect("non-empty PATH");
        assert_eq!(first, PathBuf::from("/opt/tools/bin"));
    }

    #[test]
    fn skip_sets_aya_build_skip_only() {
        let cmd = cargo(&tools(), Ebpf::Skip, ["clippy"]).expect("command");
        assert_eq!(display(&cmd), "AYA_BUILD_SKIP=1 cargo clippy");
    }
}
