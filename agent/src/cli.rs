//! Command line.

use clap::{Args, Parser, Subcommand};
use twtrace_ebpf::{MAX_PID_FILTER, MAX_PORT_FILTER};

const EXAMPLES: &str = "\
Examples:
  sudo twtrace                          live leaderboard: who makes TIME_WAIT, who leaks CLOSE_WAIT
  sudo twtrace --pid 4242               only sockets owned by process 4242
  sudo twtrace --json --interval 5      one JSON snapshot every 5 seconds (also when piped)
  sudo twtrace --once                   one table after one second, then exit
  sudo twtrace trace --port 8080        every transition of connections to or from port 8080
  sudo twtrace trace --json | jq -c 'select(.new == \"TIME_WAIT\")'
                                        who creates TIME_WAIT sockets, as JSON Lines

twtrace attributes each transition to the process that owns the socket, not to whichever task
the kernel happened to run when a packet arrived (what tcpstates and bpftrace print).";

#[derive(Debug, Parser)]
#[command(
    name = "twtrace",
    version,
    about = "Which process, talking to which peer, is churning or leaking TCP connections right now",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of the default live view, the leaderboard (used when no command is given).
    #[command(flatten)]
    pub live: LiveArgs,

    /// Show debug messages, the kernel program's log and, on load errors, the verifier's log.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every TCP state transition with its owning process, one line each.
    #[command(after_help = "Examples:
  sudo twtrace trace
  sudo twtrace trace --pid 4242 --pid 4243
  sudo twtrace trace --port 443,8080 --json > transitions.jsonl

TIME_WAIT is inferred: the kernel reports the full socket's FIN_WAIT2 -> CLOSE when it hands the
connection to a timewait socket. Closes caused by a reset are shown as CLOSE with the reset's side.")]
    Trace(TraceArgs),
}

/// The leaderboard: a full-screen view on a terminal, snapshots otherwise.
#[derive(Debug, Args, Clone)]
pub struct LiveArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Print one JSON object per interval instead of the full-screen view.
    #[arg(long)]
    pub json: bool,

    /// Print one snapshot after one interval and exit (a table, or JSON with --json).
    #[arg(long)]
    pub once: bool,

    /// Seconds between snapshots.
    #[arg(long, default_value_t = 1.0, value_name = "SECS", value_parser = parse_interval)]
    pub interval: f64,

    /// Stop after this many snapshots.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Seconds between checks against the kernel's socket table (sock_diag).
    #[arg(long, default_value_t = 2.0, value_name = "SECS", value_parser = parse_interval)]
    pub reconcile: f64,

    /// Processes shown in the printed table.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top: usize,
}

impl Default for LiveArgs {
    fn default() -> Self {
        Self {
            filter: FilterArgs::default(),
            json: false,
            once: false,
            interval: 1.0,
            count: None,
            reconcile: 2.0,
            top: 20,
        }
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if (0.1..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range (0.1 to 3600 seconds)"))
    }
}

#[derive(Debug, Args, Default, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Write JSON Lines (one object per transition) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct FilterArgs {
    /// Only sockets owned by this process id (repeat or comma-separate for several).
    #[arg(long, value_name = "PID", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Vec<u32>,

    /// Only connections with this local or remote port (repeat or comma-separate for several).
    #[arg(long, value_name = "PORT", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Vec<u16>,
}

impl FilterArgs {
    /// Checks what clap cannot: limits of the kernel filter maps and that the pids exist.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.pid.len() > MAX_PID_FILTER as usize {
            anyhow::bail!("at most {MAX_PID_FILTER} --pid values are supported");
        }
        if self.port.len() > MAX_PORT_FILTER as usize {
            anyhow::bail!("at most {MAX_PORT_FILTER} --port values are supported");
        }
        for pid in &self.pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                anyhow::bail!("no process with pid {pid}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("twtrace").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_is_the_live_view_with_its_filters() {
        let cli = parse(&[
            "--pid",
            "12",
            "--port",
            "80,443",
            "--interval",
            "0.5",
            "--count",
            "3",
        ])
        .expect("parses");
        assert_eq!(
            (cli.live.interval, cli.live.count, cli.live.reconcile),
            (0.5, Some(3), 2.0)
        );
        assert!(cli.command.is_none());
        assert_eq!(cli.live.filter.pid, vec![12]);
        assert_eq!(cli.live.filter.port, vec![80, 443]);
    }

    #[test]
    fn trace_takes_repeated_and_comma_separated_values() {
        let cli = parse(&["trace", "--pid", "1", "--pid", "2,3", "--json", "-v"]).expect("parses");
        let Some(Command::Trace(args)) = cli.command else {
            panic!("trace expected")
        };
        assert_eq!(args.filter.pid, vec![1, 2, 3]);
        assert!(args.json);
        assert_eq!(cli.verbose, 1);
    }

    #[test]
    fn bad_values_and_conflicts_are_rejected() {
        assert!(parse(&["--pid", "0"]).is_err());
        assert!(parse(&["--pid", "abc"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--port", "0"]).is_err());
        assert!(
            parse(&["--pid", "1", "trace"]).is_err(),
            "top-level flags conflict with a command"
        );
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&["--interval", "0"]).is_err());
        assert!(parse(&["--interval", "x"]).is_err());
        assert!(parse(&["--count", "0"]).is_err());
        assert!(
            parse(&["trace", "--interval", "1"]).is_err(),
            "trace has no interval"
        );
    }

    #[test]
    fn validate_rejects_missing_pids_and_too_many_values() {
        let missing = FilterArgs {
            pid: vec![u32::MAX - 1],
            port: vec![],
        };
        assert!(
            missing
                .validate()
                .expect_err("no such pid")
                .to_string()
                .contains("no process with pid")
        );
        let own = FilterArgs {
            pid: vec![std::process::id()],
            port: vec![],
        };
        own.validate().expect("own pid exists");
        let many = FilterArgs {
            pid: vec![],
            port: (1..=65).collect(),
        };
        assert!(many.validate().is_err());
    }
}
