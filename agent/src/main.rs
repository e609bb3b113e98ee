use std::{
    io::{self, Write as _},
    process::ExitCode,
};

use twtrace::{cli::Cli, distfiles, text::escape};

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

/// Keeps glibc from moving large buffers onto its heap. By default glibc serves allocations
/// above 128 KiB with their own mapping, returned to the kernel when freed, but it raises that
/// threshold to the size of each such block freed (up to 32 MiB). Start-up reads the kernel's
/// BTF twice (aya's loader reads the 5.5 MB file) and frees it, after which the agent's large,
/// short-lived buffers (a socket-table dump, a growing map) come from the heap, which keeps the
/// memory. Measured with `trace`, idle after start: heap 21.6 MB without this, against 15.7 MB
/// for the build before twtrace read BTF itself; `MALLOC_MMAP_THRESHOLD_=131072`, which does the
/// same as this, gave VmHWM 53 MB instead of 61 MB after 4 s of churn.
///
/// Only for glibc: the static package build links musl, whose allocator has no sliding
/// threshold to pin (it always gives large allocations their own mapping and unmaps them when
/// freed) and whose libc has no `mallopt`.
#[cfg(target_env = "gnu")]
fn pin_mmap_threshold() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
}

/// Nothing to pin outside glibc (see above).
#[cfg(not(target_env = "gnu"))]
fn pin_mmap_threshold() {}

fn main() -> ExitCode {
    // Packaging only (`cargo xtask dist`): man pages and completions, then exit.
    if let Some(request) = distfiles::requested(std::env::args_os()) {
        return match request.and_then(|dir| {
            let dir = std::path::Path::new(&dir);
            distfiles::write_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("twtrace: {}: {e}", distfiles::ARG)),
        };
    }
    pin_mmap_threshold();
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
