//! fdhog: a process close to its open-file limit, for `twtrace doctor`'s nofile rule.
//!
//! ```text
//! fdhog --limit <SOFT> --open <N> --comm <NAME>
//! ```
//!
//! Sets its soft RLIMIT_NOFILE to SOFT (the hard limit stays), opens /dev/null until N file
//! descriptors are open in all (stdin, stdout and stderr included), then prints
//! `ready <open> <soft> <hard>` (the count as /proc/self/fd lists it, and the limits as
//! getrlimit gives them; `unlimited` for RLIM_INFINITY) and waits until its stdin closes.

use std::{
    fs::File,
    io::{self, Read as _},
    process::ExitCode,
};

use clap::Parser;
use twtrace_tests::child::{say, set_comm};

#[derive(Debug, Parser)]
#[command(name = "fdhog")]
struct Cli {
    /// The soft limit on open files to set.
    #[arg(long, value_parser = clap::value_parser!(u64).range(8..))]
    limit: u64,
    /// File descriptors to have open in all (at most the limit).
    #[arg(long)]
    open: u64,
    /// Process name; at most 15 bytes.
    #[arg(long, value_name = "NAME")]
    comm: String,
}

/// Entries of /proc/self/fd, less the one listing it.
fn open_fds() -> io::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        entry?;
        n += 1;
    }
    Ok(n - 1)
}

fn run(cli: &Cli) -> io::Result<()> {
    set_comm(&cli.comm)?;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to the valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = cli.limit;
    // SAFETY: setrlimit reads one rlimit from the valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut files = Vec::new();
    while open_fds()? < cli.open {
        files.push(File::open("/dev/null")?);
    }
    let hard = if lim.rlim_max == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        lim.rlim_max.to_string()
    };
    say(&format!("ready {} {} {hard}", open_fds()?, lim.rlim_cur))?;
    // Until the harness closes stdin (its guard kills this process in any case).
    let mut buf = [0u8; 64];
    while let Ok(n) = io::stdin().read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    drop(files);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fdhog: {e}");
            ExitCode::FAILURE
        }
    }
}
