use std::process::ExitCode;

use clap::Parser as _;
use twtrace::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
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
        Err(e) => {
            eprintln!("twtrace: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(twtrace::run::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error with its causes, no backtrace.
            eprintln!("twtrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
