//! Project automation for twtrace, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`).
//!
//! The eBPF half of the agent needs a nightly toolchain with `rust-src` and a `bpf-linker`
//! built against that nightly's own LLVM; none of this is on a fresh machine, so every command
//! that builds starts with the idempotent `setup`. All xtask messages go to stderr, prefixed with
//! `xtask:`, so they interleave in order with cargo's own output and leave stdout to the agent.

mod apt;
mod bench;
mod cargo;
mod dist;
mod run;
mod setup;
mod shell;
mod test;

use std::{ffi::OsString, process::ExitCode};

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  cargo xtask setup                      install nightly rust-src/clippy and bpf-linker if missing
  cargo xtask build --release            build the agent with its embedded eBPF program
  cargo xtask run -- --help              build, then run the agent (via sudo -E when not root)
  cargo xtask test                       everything CI checks (what .ci/run does)
  cargo xtask test --no-lint --filter connect
                                         skip fmt/clippy; only integration tests matching `connect`
  cargo xtask dist                       .deb and tarball with a static binary, man pages
                                         and completions, in target/dist
  cargo xtask bench                      measure twtrace's overhead under connection churn
  cargo xtask bench --rounds 1 --duration 3 --modes a,b
                                         a quick look: nothing attached vs trace --json

Environment:
  TWTRACE_TOOLS_DIR   where bpf-linker and its LLVM prefix live
                      (default: $HOME/.local/share/twtrace/tools)";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test twtrace (an aya/eBPF TCP tracer)",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make this machine able to build the eBPF side (idempotent)
    ///
    /// Installs what is missing: the nightly toolchain with rust-src and clippy, and bpf-linker
    /// built against nightly's own libLLVM (in TWTRACE_TOOLS_DIR, ~1-2 min the first time).
    #[command(after_help = "Example:\n  cargo xtask setup")]
    Setup,
    /// Setup, then build the agent with its embedded eBPF program
    ///
    /// Runs `cargo build --package twtrace` with bpf-linker on PATH and TWTRACE_REQUIRE_EBPF=1.
    #[command(after_help = "Examples:\n  cargo xtask build\n  cargo xtask build --release")]
    Build(BuildArgs),
    /// Build, then run the agent with ARGS (through `sudo -E` when not root)
    ///
    /// Ctrl-C goes to the agent, so it can print its summary; its exit code is forwarded.
    #[command(after_help = "Examples:\n  cargo xtask run -- --help\n  \
                            cargo xtask run --release -- <twtrace arguments>")]
    Run(RunArgs),
    /// Run everything CI checks (what .ci/run does)
    ///
    /// In order: setup, cargo fmt --check, clippy (host crates, then the eBPF crate on nightly),
    /// host unit tests without the eBPF build, the real build, and the privileged integration
    /// tests against the built binary (they skip themselves when not root).
    #[command(after_help = "Examples:\n  cargo xtask test\n  \
                            cargo xtask test --no-lint\n  \
                            cargo xtask test --no-lint --filter connect")]
    Test(test::TestArgs),
    /// Measure what tracing costs a host that churns loopback connections (needs root)
    ///
    /// Builds the release binaries, calibrates the transitions per connection, then runs the
    /// `churn` generator with nothing attached and under each tracer (twtrace trace, leaderboard,
    /// record, and a bpftrace one-liner for comparison), interleaved over --rounds. Prints a
    /// markdown table and writes it to --out.
    #[command(after_help = "Examples:\n  cargo xtask bench\n  \
                            cargo xtask bench --rounds 1 --duration 3 --modes a,b\n  \
                            cargo xtask bench --no-bpftrace --out /tmp/results.md")]
    Bench(bench::BenchArgs),
    /// Build installable packages: a .deb and a tarball (static musl binary, man pages,
    /// completions)
    ///
    /// Writes twtrace_<version>_amd64.deb, twtrace-<version>-x86_64-linux.tar.gz and the staged
    /// tree they hold into --out. The binary is built for x86_64-unknown-linux-musl (the target
    /// is added with rustup when missing), so it needs no particular C library.
    #[command(after_help = "Examples:\n  cargo xtask dist\n  \
                            cargo xtask dist --out /tmp/pkg\n  \
                            cargo xtask dist --glibc\n  \
                            sudo dpkg -i target/dist/twtrace_*_amd64.deb")]
    Dist(dist::DistArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Build and run the release binary.
    #[arg(long)]
    release: bool,
    /// Arguments for twtrace (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup().map(|_| ExitCode::SUCCESS),
        Command::Build(args) => setup::setup()
            .and_then(|tools| cargo::build_agent(&tools, args.release))
            .map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run::run(args.release, &args.args),
        Command::Test(args) => test::test(&args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::bench(&args).map(|()| ExitCode::SUCCESS),
        Command::Dist(args) => dist::dist(&args).map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: the failed step first.
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_args_after_double_dash() {
        let cli = Cli::try_parse_from(["xtask", "run", "--release", "--", "-v", "--port", "1"])
            .expect("valid command line");
        let Command::Run(args) = cli.command else {
            panic!("expected the run command");
        };
        assert!(args.release);
        assert_eq!(args.args, ["-v", "--port", "1"]);
    }
}
