//! The measured modes: nothing attached, and each tracer, with how the results show them.

use clap::ValueEnum;

/// Transitions the bpftrace one-liner prints: the same tracepoint twtrace hooks, one line each,
/// so its cost is what the usual "just use bpftrace" answer costs.
pub const BPFTRACE_PROGRAM: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%d %s %d %d %d %d\n", pid, comm, args->oldstate, args->newstate, args->sport, args->dport); }"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Mode {
    /// Nothing attached: the reference.
    #[value(name = "a")]
    None,
    /// `twtrace trace --json > /dev/null`.
    #[value(name = "b")]
    Trace,
    /// `twtrace --json --interval 1 > /dev/null`.
    #[value(name = "c")]
    Leaderboard,
    /// `twtrace record -o FILE`.
    #[value(name = "d")]
    Record,
    /// The bpftrace one-liner, output to a file so its lines can be counted.
    #[value(name = "e")]
    Bpftrace,
}

impl Mode {
    pub fn letter(self) -> char {
        match self {
            Mode::None => 'a',
            Mode::Trace => 'b',
            Mode::Leaderboard => 'c',
            Mode::Record => 'd',
            Mode::Bpftrace => 'e',
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mode::None => "nothing attached",
            Mode::Trace => "trace --json",
            Mode::Leaderboard => "leaderboard --json",
            Mode::Record => "record -o FILE",
            Mode::Bpftrace => "bpftrace one-liner",
        }
    }

    /// The command as documented in the results (the binary's real path is in the header).
    pub fn shown_command(self) -> String {
        match self {
            Mode::None => "churn alone".to_owned(),
            Mode::Trace => "twtrace trace --json > /dev/null".to_owned(),
            Mode::Leaderboard => "twtrace --json --interval 1 > /dev/null".to_owned(),
            Mode::Record => "twtrace record -o FILE".to_owned(),
            Mode::Bpftrace => format!("bpftrace -e '{BPFTRACE_PROGRAM}' > FILE"),
        }
    }

    pub fn is_twtrace(self) -> bool {
        matches!(self, Mode::Trace | Mode::Leaderboard | Mode::Record)
    }
}
