//! The measured modes: nothing attached, and each tracer, with how the results show them.

use clap::ValueEnum;

/// Transitions the bpftrace one-liner prints: the same tracepoint twtrace hooks, one line each,
/// so its cost is what the usual "just use bpftrace" answer costs.
pub const BPFTRACE_PROGRAM: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%d %s %d %d %d %d\n", pid, comm, args->oldstate, args->newstate, args->sport, args->dport); }"#;

/// The tracepoints twtrace attaches to (`hooks` in agent/src/kernel/tracer.rs; a test here
/// checks that list against this one).
pub const TWTRACE_TRACEPOINTS: [&str; 10] = [
    "sock:inet_sock_set_state",
    "tcp:tcp_destroy_sock",
    "tcp:tcp_receive_reset",
    "tcp:tcp_send_reset",
    "syscalls:sys_exit_accept4",
    "syscalls:sys_exit_accept",
    "syscalls:sys_enter_connect",
    "syscalls:sys_exit_connect",
    "syscalls:sys_enter_bind",
    "syscalls:sys_exit_bind",
];

/// Mode f's bpftrace program: an empty program on each of twtrace's tracepoints. What it costs
/// is the floor of any tracer of these tracepoints: the kernel's dispatch (for a classic
/// tracepoint, filling the event's record before the program runs) and the syscall slow path
/// that any syscall tracepoint turns on, before a program does any work.
pub fn floor_hooks_program() -> String {
    TWTRACE_TRACEPOINTS
        .iter()
        .map(|tp| format!("tracepoint:{tp} {{}}"))
        .collect::<Vec<_>>()
        .join(" ")
}

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
    /// Empty bpftrace programs on twtrace's tracepoints ([`floor_hooks_program`]).
    #[value(name = "f")]
    Floor,
}

impl Mode {
    pub fn letter(self) -> char {
        match self {
            Mode::None => 'a',
            Mode::Trace => 'b',
            Mode::Leaderboard => 'c',
            Mode::Record => 'd',
            Mode::Bpftrace => 'e',
            Mode::Floor => 'f',
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mode::None => "nothing attached",
            Mode::Trace => "trace --json",
            Mode::Leaderboard => "leaderboard --json",
            Mode::Record => "record -o FILE",
            Mode::Bpftrace => "bpftrace one-liner",
            Mode::Floor => "empty programs, twtrace's hooks",
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
            Mode::Floor => format!("bpftrace -e '{}'", floor_hooks_program()),
        }
    }

    /// Modes run by bpftrace (installed by the bench, left out by `--no-bpftrace`).
    pub fn is_bpftrace(self) -> bool {
        matches!(self, Mode::Bpftrace | Mode::Floor)
    }

    pub fn is_twtrace(self) -> bool {
        matches!(self, Mode::Trace | Mode::Leaderboard | Mode::Record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor must stay on the tracepoints twtrace really attaches to.
    #[test]
    fn the_floor_covers_the_tracepoints_twtrace_attaches_to() {
        let tracer = include_str!("../../../agent/src/kernel/tracer.rs");
        let hooks = &tracer[tracer.find("let hooks = [").expect("hooks in tracer.rs")..];
        let hooks = &hooks[..hooks.find("];").expect("end of hooks")];
        let attached: Vec<String> = hooks
            .lines()
            .filter_map(|line| {
                let quoted: Vec<&str> = line.split('"').collect();
                // `(programs::X, "category", "name"),`
                (quoted.len() == 5).then(|| format!("{}:{}", quoted[1], quoted[3]))
            })
            .collect();
        assert_eq!(attached, TWTRACE_TRACEPOINTS);
        assert_eq!(
            floor_hooks_program().matches(" {}").count(),
            TWTRACE_TRACEPOINTS.len()
        );
        assert!(floor_hooks_program().starts_with("tracepoint:sock:inet_sock_set_state {} "));
    }
}
