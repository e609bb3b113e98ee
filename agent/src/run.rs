//! Runs a command: wires the live source to a view and handles signals and the final summary.

use std::io::{self, IsTerminal as _};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    cli::{Cli, Command, FilterArgs, TraceArgs},
    clock::WallClock,
    event::Attribution,
    leaderboard::{self, Output},
    trace::{Format, Printer},
    tracer::{KernelStats, Options, Tracer},
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let verbose = cli.verbose > 0;
    match cli.command {
        Some(Command::Trace(args)) if args.from.is_some() => trace_from(args),
        Some(Command::Trace(args)) => trace(args, verbose).await,
        Some(Command::Record(args)) => crate::record::live::record(args, verbose).await,
        Some(Command::Report(args)) => crate::record::report::report(args),
        None => {
            let output = if cli.live.json {
                Output::Json
            } else if cli.live.once || cli.live.count.is_some() || !io::stdout().is_terminal() {
                Output::Table
            } else {
                Output::Tui
            };
            leaderboard::run(cli.live, verbose, output).await
        }
    }
}

/// What the user is told when the run ends.
#[derive(Debug, Default)]
pub struct Tally {
    pub received: u64,
    pub unattributed: u64,
}

/// What a live command starts with.
pub(crate) struct Started {
    pub(crate) tracer: Tracer,
    pub(crate) opts: Options,
    pub(crate) sigint: Signal,
    pub(crate) sigterm: Signal,
}

/// Checks the filters, installs the signal handlers, starts the tracer and tells the user (the
/// `twtrace: tracing` line is also what scripts and tests wait for; `announce` is false under
/// the full-screen view, which would draw over it).
pub(crate) fn start_live(
    filter: &FilterArgs,
    verbose: bool,
    announce: bool,
) -> anyhow::Result<Started> {
    filter.validate()?;
    let opts = Options {
        pids: filter.pid.clone(),
        ports: filter.port.clone(),
        verbose,
    };
    let sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let tracer = Tracer::start(&opts)?;
    for notice in &tracer.notices {
        eprintln!("twtrace: {notice}");
    }
    if announce {
        eprintln!(
            "twtrace: tracing TCP state changes{}; Ctrl-C to stop",
            describe_filters(&opts)
        );
    }
    Ok(Started {
        tracer,
        opts,
        sigint,
        sigterm,
    })
}

async fn trace(args: TraceArgs, verbose: bool) -> anyhow::Result<()> {
    let Started {
        mut tracer,
        opts: _,
        mut sigint,
        mut sigterm,
    } = start_live(&args.filter, verbose, true)?;

    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let stdout = io::stdout();
    let mut printer = Printer::new(
        io::BufWriter::with_capacity(64 * 1024, stdout.lock()),
        format,
        WallClock::now(),
    );
    let mut tally = Tally::default();
    let mut on_event = |t: &crate::event::Transition, printer: &mut Printer<_>| {
        tally.received += 1;
        if t.attribution == Attribution::Unknown {
            tally.unattributed += 1;
        }
        printer.print(t);
    };

    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut lost_shown = 0;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            r = tracer.next_batch(|t| on_event(t, &mut printer)) => {
                if let Err(e) = r {
                    break Err(anyhow::Error::new(e).context("reading the ring buffer"));
                }
                if let Err(e) = printer.flush() {
                    break Err(e.into());
                }
            }
            _ = tick.tick() => {
                // Losses are announced as they happen, not only at the end.
                let lost = tracer.stats().lost;
                if lost > lost_shown {
                    eprintln!(
                        "twtrace: {} events lost so far (ring buffer full: the output cannot keep up; \
                         narrow with --pid/--port or write to a file)",
                        lost
                    );
                    lost_shown = lost;
                }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    // Whatever the kernel already queued still belongs to the output.
    if outcome.is_ok() {
        tracer.drain(|t| on_event(t, &mut printer));
    }
    let outcome = outcome.and_then(|()| printer.flush().map_err(anyhow::Error::from));
    eprintln!("{}", summary(&tally, &tracer.stats(), tracer.undecodable));
    match outcome {
        // The reader went away (`| head`): that is how pipelines end, not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// `trace --from FILE`: the recorded events, printed as `trace` prints live ones.
fn trace_from(args: TraceArgs) -> anyhow::Result<()> {
    let Some(path) = args.from else {
        return Ok(());
    };
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let mut reader = crate::record::Reader::open(&path)?;
    let stdout = io::stdout();
    let mut printer = Printer::new(
        io::BufWriter::with_capacity(64 * 1024, stdout.lock()),
        format,
        reader.header().clock(),
    );
    let pids = &args.filter.pid;
    let ports = &args.filter.port;
    let mut outcome = Ok(());
    loop {
        let next = reader.next_record();
        for p in reader.take_problems() {
            eprintln!("twtrace: warning: {}: {p}", path.display());
        }
        match next {
            Ok(Some(crate::record::Record::Event(t))) => {
                if (pids.is_empty() || pids.contains(&t.pid))
                    && (ports.is_empty()
                        || ports.contains(&t.local.port())
                        || ports.contains(&t.remote.port()))
                {
                    printer.print(&t);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                outcome = Err(anyhow::Error::new(e).context(format!("reading {}", path.display())));
                break;
            }
        }
    }
    let outcome = outcome.and_then(|()| printer.flush().map_err(anyhow::Error::from));
    if outcome.is_ok() && reader.records_read() == 0 && !reader.problems().is_empty() {
        anyhow::bail!("{}: nothing could be read", path.display());
    }
    match outcome {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

pub(crate) fn describe_filters(opts: &Options) -> String {
    let mut parts = Vec::new();
    if !opts.pids.is_empty() {
        parts.push(format!("pid {}", join(&opts.pids)));
    }
    if !opts.ports.is_empty() {
        parts.push(format!("port {}", join(&opts.ports)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `twtrace: N events, N lost, N unattributed` and whatever else went wrong, never silently.
pub(crate) fn summary(tally: &Tally, stats: &KernelStats, undecodable: u64) -> String {
    let mut s = format!(
        "twtrace: {} events, {} lost, {} unattributed",
        tally.received, stats.lost, tally.unattributed
    );
    let extras = [
        (stats.table_full, "not tracked (socket table full)"),
        (
            stats.listener_miss,
            "accepted sockets with no known listener",
        ),
        (undecodable, "undecodable"),
    ];
    for (n, what) in extras {
        if n > 0 {
            s.push_str(&format!(", {n} {what}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_every_problem_and_only_those() {
        let tally = Tally {
            received: 10,
            unattributed: 2,
        };
        let clean = KernelStats::default();
        assert_eq!(
            summary(&tally, &clean, 0),
            "twtrace: 10 events, 0 lost, 2 unattributed"
        );
        let bad = KernelStats {
            lost: 3,
            table_full: 4,
            listener_miss: 5,
            ..KernelStats::default()
        };
        assert_eq!(
            summary(&tally, &bad, 6),
            "twtrace: 10 events, 3 lost, 2 unattributed, 4 not tracked (socket table full), \
             5 accepted sockets with no known listener, 6 undecodable"
        );
    }

    #[test]
    fn filters_are_described() {
        assert_eq!(describe_filters(&Options::default()), "");
        let o = Options {
            pids: vec![1, 2],
            ports: vec![80],
            verbose: false,
        };
        assert_eq!(describe_filters(&o), " (pid 1,2; port 80)");
    }
}
