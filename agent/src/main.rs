use std::{
    io::{self, Write as _},
    process::ExitCode,
};

use twtrace::{cli::Cli, text::escape};

/// Says why twtrace failed, on stderr. Not `eprintln!`, which panics when stderr cannot be
/// written (a closed pipe, a full disk): the exit code says it failed in any case. Each line is
/// escaped, since errors quote paths and what recordings hold, but an error of several lines
/// (the verifier's log with -v) keeps its lines.
fn fail(message: &str) -> ExitCode {
    let mut err = io::stderr().lock();
    for line in message.lines() {
        if writeln!(err, "{}", escape(line)).is_err() {
            break;
        }
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse_checked();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // env_logger drops the result of each write, so -v with a stderr that fails cannot panic
    // either (tests/tests/output.rs runs `trace -v` and `record -v` that way).
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .init();

    // One thread: the agent's work per event is small, and a second thread would compete with
    // the traced workload for the machine's cores.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("twtrace: starting the async runtime: {e}")),
    };
    match runtime.block_on(twtrace::run::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // One line: the error with its causes, no backtrace.
        Err(e) => fail(&format!("twtrace: {e:#}")),
    }
}
