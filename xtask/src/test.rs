//! `cargo xtask test`: everything CI checks, in order, each step announced.

use std::time::Instant;

use anyhow::Result;
use clap::Args;

use crate::{
    cargo::{self, Ebpf},
    dist,
    setup::{self, Tools},
    shell,
};

#[derive(Args)]
pub struct TestArgs {
    /// Skip cargo fmt and both clippy passes (for quick iterations).
    #[arg(long)]
    pub no_lint: bool,
    /// Only run the integration tests whose name contains NAME (passed to the test harness).
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
}

pub fn test(args: &TestArgs) -> Result<()> {
    let mut steps = Steps::default();
    let tools = steps.step("setup", setup::setup)?;
    if args.no_lint {
        eprintln!("xtask: --no-lint: skipping fmt and clippy");
    } else {
        steps.step("fmt", || {
            shell::run(
                "fmt",
                &mut cargo::cargo(&tools, Ebpf::Skip, ["fmt", "--all", "--", "--check"])?,
            )
        })?;
        steps.step("clippy", || clippy_host(&tools))?;
        steps.step("clippy-ebpf", || clippy_ebpf(&tools))?;
    }
    steps.step("unit tests", || {
        // Host-only: the xtask and agent unit tests need no eBPF object.
        let args = ["test", "--package", "twtrace", "--package", "xtask"];
        shell::run("unit tests", &mut cargo::cargo(&tools, Ebpf::Skip, args)?)
    })?;
    // Release: the tests run the generator at the machine's limit (~140,000 events/s), which an
    // unoptimised agent cannot keep up with; the tests check the agent people actually run.
    steps.step("build", || cargo::build_agent(&tools, true))?;
    steps.step("integration tests", || {
        integration_tests(&tools, args.filter.as_deref())
    })?;
    // With --filter, only when the filter names it: a filtered run is a quick look at a few tests.
    if args.filter.as_deref().is_none_or(|f| "dist".contains(f)) {
        steps.step("dist", || dist::check(&tools))?;
    }
    eprintln!("xtask: all steps passed ({})", steps.passed.join(", "));
    Ok(())
}

fn clippy_host(tools: &Tools) -> Result<()> {
    // The eBPF crate is no_std for a bpf target and gets its own pass below.
    let args = [
        "clippy",
        "--workspace",
        "--exclude",
        "twtrace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    shell::run("clippy", &mut cargo::cargo(tools, Ebpf::Skip, args)?)
}

fn clippy_ebpf(tools: &Tools) -> Result<()> {
    // Nightly because of -Zpanic_abort_tests, which lets the no_std (panic=abort) crate be
    // checked with --all-targets on the host.
    let args = [
        "clippy",
        "--package",
        "twtrace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
        "-C",
        "panic=abort",
        "-Zpanic_abort_tests",
    ];
    let mut cmd = cargo::nightly_cargo(tools, Ebpf::Skip, args)?;
    shell::run("clippy-ebpf", &mut cmd)
}

fn integration_tests(tools: &Tools, filter: Option<&str>) -> Result<()> {
    let bin = cargo::target_dir(tools)?.join("release").join("twtrace");
    if !shell::is_root() {
        eprintln!(
            "xtask: not root: the privileged integration tests will report themselves skipped"
        );
    }
    let mut args = vec![
        "test",
        "--package",
        "twtrace-tests",
        "--",
        "--test-threads=1",
    ];
    args.extend(filter);
    let mut cmd = cargo::cargo(tools, Ebpf::Require, args)?;
    // The tests drive the real binary built in the previous step.
    cmd.env("TWTRACE_BIN", &bin);
    shell::run("integration tests", &mut cmd)
}

/// Remembers which steps passed, to name them in the final summary or on failure.
#[derive(Default)]
struct Steps {
    passed: Vec<&'static str>,
}

impl Steps {
    fn step<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("xtask: === step `{name}` ===");
        let start = Instant::now();
        match f() {
            Ok(value) => {
                eprintln!(
                    "xtask: step `{name}` passed ({:.1}s)",
                    start.elapsed().as_secs_f64()
                );
                self.passed.push(name);
                Ok(value)
            }
            Err(err) => {
                let before = if self.passed.is_empty() {
                    "none".to_owned()
                } else {
                    self.passed.join(", ")
                };
                // The error itself names the failed command; this line names the step.
                eprintln!("xtask: step `{name}` FAILED (passed before it: {before})");
                Err(err)
            }
        }
    }
}
