//! Runs a command: picks its source and its sinks, runs the pipeline, and tells the user how it
//! ended. The only place that knows which command uses which parts.

use std::{
    io::{self, IsTerminal as _, Write as _},
    path::Path,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::Context as _;

use crate::{
    cli::{
        Cli, Command, DoctorArgs, Export, FilterArgs, LeaksArgs, LiveArgs, PortsArgs, RecordArgs,
        ReportArgs, ServeArgs, TraceArgs, TracerArgs, When,
    },
    container::CgroupPaths,
    diagnosis::Thresholds,
    doctor::Watched,
    kernel::{netns, netstat::Counters, procnet, sysctl::PortSettings, tracer::Options},
    model::{Limits, snapshot::Snapshot},
    pipeline::{self, Cadence, Core, Ip, Outcome, Selection, Signals, Stopped},
    recording::{
        Filters, Header, Writer, header_now, human_size,
        writer::{CaptureDir, create_file, smallest_limit},
    },
    sink::{
        Sink, View, detached,
        leaks::LeaksReport,
        ports::{self as ports_sink, PortsPrinter},
        recorder::{FileRecorder, FlightRecorder},
        report::{self, Report},
        ring::Ring,
        serve::ServeSink,
        table::{self, SnapshotPrinter},
        trace::{Format, Printer, TraceSink},
        tui::TuiSink,
    },
    source::{
        Recorded, Source,
        live::{self, Live, ProcFs},
        recording::{Recording, Window},
    },
    text::escape,
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let verbose = cli.verbose > 0;
    let result = match cli.command {
        Some(Command::Trace(args)) => trace(args, verbose).await,
        Some(Command::Record(args)) => record(args, verbose).await,
        Some(Command::Report(args)) => report(args).await,
        Some(Command::Doctor(args)) => doctor(args, verbose).await,
        Some(Command::Leaks(args)) => leaks(args, verbose).await,
        Some(Command::Ports(args)) => ports(args, verbose).await,
        Some(Command::Serve(args)) => serve(args, verbose).await,
        None => leaderboard(cli.live, verbose).await,
    };
    match result {
        // The reader went away (`| head`): that is how pipelines end, not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Buffered stdout: flushed by the sinks per batch or per snapshot.
fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(64 * 1024, io::stdout().lock())
}

fn options(filter: &FilterArgs, tracer: &TracerArgs, verbose: bool) -> anyhow::Result<Options> {
    Ok(Options {
        pids: filter.pid.clone(),
        // The kernel program matches either end's port; the pipeline's selection narrows that
        // down to --lport/--rport.
        ports: filter.selection().kernel_ports(),
        netns: filter.netns_id()?,
        cgroup: filter.cgroup_dir()?,
        syscall_hooks: !tracer.no_syscall_hooks,
        verbose,
    })
}

/// What a live command shows (with [`options`], what its kernel program keeps).
fn selection(filter: &FilterArgs) -> anyhow::Result<Selection> {
    Ok(Selection {
        netns: filter.netns_id()?,
        cgroup: filter.cgroup_dir()?.map(|c| c.path),
        ..filter.selection()
    })
}

/// What a replay of a recording shows, beyond the recording's own filters.
fn replay_selection(filter: &FilterArgs) -> anyhow::Result<Selection> {
    filter.check_replay()?;
    Ok(Selection {
        netns: filter.netns_id()?,
        ..filter.selection()
    })
}

/// Starts the live source and tells the user (the `twtrace: tracing` line is also what scripts
/// and tests wait for; `announce` is false under the full-screen view, which would draw over it).
/// `select` is what the start line names; `ends` says that the command stops by itself
/// (`--duration`, `--once`, `--count`, a watch), so the line does not ask for Ctrl-C.
fn start_live(
    opts: &Options,
    select: &Selection,
    cadence: live::Cadence,
    announce: bool,
    ends: bool,
) -> anyhow::Result<Live> {
    let source = Live::start(opts, cadence)?;
    for notice in source.notices() {
        say(&format!("twtrace: {notice}"));
    }
    if announce {
        say(&start_line(select, ends || cadence.duration.is_some()));
    }
    Ok(source)
}

/// `twtrace: tracing TCP state changes (filters); Ctrl-C to stop`, without the Ctrl-C part for
/// a command that ends by itself.
fn start_line(select: &Selection, ends: bool) -> String {
    format!(
        "twtrace: tracing TCP state changes{}{}",
        describe(select),
        if ends { "" } else { "; Ctrl-C to stop" }
    )
}

/// A line on stderr; a closed or full stderr must not stop the command. Escaped, since lines
/// quote paths and what a recording's header says (its host name may be anything).
fn say(line: &str) {
    let _ = writeln!(io::stderr(), "{}", escape(line));
}

/// The end of every command: the summary, why it stopped, and its error.
fn finish(outcome: Outcome) -> anyhow::Result<()> {
    say(&outcome.tally.summary());
    match outcome.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn run_pipeline<S: Source>(
    source: &mut S,
    core: Core<'_>,
    user_signal: bool,
    view: Option<View<'_>>,
) -> anyhow::Result<Outcome> {
    let mut signals = Signals::install(user_signal)?;
    Ok(pipeline::run(source, core, &mut signals, view).await)
}

/// `twtrace trace`: every transition, live or from a recording.
async fn trace(args: TraceArgs, verbose: bool) -> anyhow::Result<()> {
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    if let Some(path) = &args.from {
        let select = replay_selection(&args.filter)?;
        let mut source = Recording::open(path, Window::default(), 0.0)?;
        let printer = Printer::new(stdout(), format, source.header().clock());
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(TraceSink::new(printer, false))];
        let core = new_core(
            &source,
            sinks,
            Box::new(Recorded),
            select,
            Cadence::default(),
        );
        let outcome = run_pipeline(&mut source, core, false, None).await?;
        // A replayed stream has no summary of its own to print; its errors do.
        return outcome.error.map_or(Ok(()), Err);
    }
    args.filter.validate()?;
    let select = selection(&args.filter)?;
    let opts = options(&args.filter, &args.tracer, verbose)?;
    let cadence = live::Cadence {
        stats: Duration::from_secs(1),
        // The kernel's table tells which sockets an exited owner left to another process.
        reconcile: Some(Duration::from_secs(2)),
        duration: None,
    };
    let mut source = start_live(&opts, &select, cadence, true, false)?;
    let printer = Printer::new(stdout(), format, source.clock())
        .with_containers(CgroupPaths::new(procnet::cgroup2_mount()));
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(TraceSink::new(printer, true))];
    let core = new_core(
        &source,
        sinks,
        Box::new(ProcFs::new()),
        select,
        Cadence::default(),
    );
    finish(run_pipeline(&mut source, core, false, None).await?)
}

fn new_core<'a, S: Source>(
    source: &S,
    sinks: Vec<Box<dyn Sink + 'a>>,
    processes: Box<dyn crate::source::Processes + 'a>,
    selection: Selection,
    cadence: Cadence,
) -> Core<'a> {
    Core::new(
        sinks,
        processes,
        selection,
        cadence,
        source.clock(),
        source.start_ns(),
    )
}

/// The default command: the leaderboard, live or replayed, in the terminal or printed.
async fn leaderboard(args: LiveArgs, verbose: bool) -> anyhow::Result<()> {
    let limits = leak_limits(args.min_age);
    let tui = !(args.json || args.once || args.count.is_some() || !io::stdout().is_terminal());
    let interval = Duration::from_secs_f64(args.interval);
    let cadence = Cadence {
        interval,
        count: if args.once { Some(1) } else { args.count },
    };
    let style = if args.json {
        table::Style::Json
    } else {
        table::Style::Table { top: args.top }
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let view;
    let view_sink = |title: String, sinks: &mut Vec<Box<dyn Sink>>| {
        if tui {
            let (sink, v) = TuiSink::new(title);
            sinks.push(Box::new(sink));
            Ok::<_, io::Error>(Some(v))
        } else {
            sinks.push(Box::new(SnapshotPrinter::new(detached::stdout()?, style)));
            Ok(None)
        }
    };

    if let Some(path) = &args.from {
        let asked = replay_selection(&args.filter)?;
        let mut source = Recording::open(path, Window::default(), args.speed)?;
        let header = source.header().clone();
        let filters = describe(&recorded_selection(&header));
        if !tui {
            say(&format!(
                "twtrace: replaying {} (recorded on {} from {}{filters}) at {}",
                path.display(),
                header.hostname,
                header.start_time,
                if args.speed == 0.0 {
                    "full speed".to_owned()
                } else {
                    format!("{}x speed", args.speed)
                }
            ));
        }
        let title = format!(
            "twtrace replay of {} ({}){filters}",
            path.display(),
            header.hostname
        );
        view = view_sink(title, &mut sinks)?;
        let select = recorded_selection(&header).and(&asked);
        let mut core =
            new_core(&source, sinks, Box::new(Recorded), select, cadence).with_limits(limits);
        core.set_port_fallback(PortSettings::from_sysctls(&header.sysctls));
        return finish(run_pipeline(&mut source, core, false, view).await?);
    }

    args.filter.validate()?;
    let opts = options(&args.filter, &args.tracer, verbose)?;
    let select = selection(&args.filter)?;
    // Created before the tracer starts, so a file that cannot be written costs no attach.
    let recorder = match &args.record {
        // No progress lines: the leaderboard itself shows what is going on.
        Some(path) => Some(file_recorder(path, args.force, None, &select, false)?),
        None => None,
    };
    let live_cadence = live::Cadence {
        stats: interval.min(Duration::from_secs(1)),
        reconcile: Some(Duration::from_secs_f64(args.reconcile)),
        duration: None,
    };
    let ends = cadence.count.is_some();
    let mut source = match start_live(&opts, &select, live_cadence, !tui, ends) {
        Ok(s) => s,
        Err(e) => return Err(discard(recorder, args.record.as_deref(), e)),
    };
    let title = format!("twtrace{}", describe(&select));
    view = match view_sink(title, &mut sinks) {
        Ok(v) => v,
        Err(e) => return Err(discard(recorder, args.record.as_deref(), e.into())),
    };
    if let (Some(sink), Some(path)) = (recorder, &args.record) {
        if !tui {
            say(&format!("twtrace: recording to {}", path.display()));
        }
        sinks.push(Box::new(sink));
    }
    let core =
        new_core(&source, sinks, Box::new(ProcFs::new()), select, cadence).with_limits(limits);
    finish(run_pipeline(&mut source, core, false, view).await?)
}

/// A recording's own filters, as a selection.
fn recorded_selection(header: &Header) -> Selection {
    let f = &header.filters;
    Selection {
        pids: f.pids.clone(),
        ports: f.ports.clone(),
        lports: f.lports.clone(),
        rports: f.rports.clone(),
        ip: f.ip.and_then(Ip::from_number),
        netns: f.netns,
        cgroup: f.cgroup.clone(),
    }
}

/// The filters a live command records in its header.
fn recorded_filters(select: &Selection) -> Filters {
    Filters {
        pids: select.pids.clone(),
        ports: select.ports.clone(),
        lports: select.lports.clone(),
        rports: select.rports.clone(),
        ip: select.ip.map(Ip::number),
        netns: select.netns,
        cgroup: select.cgroup.clone(),
    }
}

/// Creates the recording file and its sink.
fn file_recorder(
    path: &Path,
    force: bool,
    max_size: Option<u64>,
    select: &Selection,
    progress: bool,
) -> anyhow::Result<FileRecorder> {
    let header = header_now(std::env::args().collect(), recorded_filters(select));
    if let Some(max) = max_size {
        let least = smallest_limit(&header);
        if max < least {
            // The header holds the command line, so the suggestion leaves room for a longer
            // --max-size value in it.
            anyhow::bail!(
                "--max-size {} is too small: this recording's header and end mark alone take {}; \
                 use --max-size {}K or more",
                human_size(max),
                human_size(least),
                (least + 64).div_ceil(1024)
            );
        }
    }
    let created = create_file(path, force)?;
    if let Some(target) = &created.replaced_link {
        say(&format!(
            "twtrace: {} was a symbolic link (to {}); replaced it with a new file, its target \
             is untouched",
            path.display(),
            target.display()
        ));
    }
    let writer = Writer::new(created.file, &header, max_size)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(FileRecorder::new(writer, path, max_size, progress))
}

/// The tracer did not start: nothing was recorded, so no file is left behind.
fn discard<T>(recorder: Option<T>, path: Option<&Path>, e: anyhow::Error) -> anyhow::Error {
    if let (Some(rec), Some(path)) = (recorder, path) {
        drop(rec);
        let _ = std::fs::remove_file(path);
    }
    e
}

/// `twtrace record`: the stream to a file, or the flight recorder.
async fn record(args: RecordArgs, verbose: bool) -> anyhow::Result<()> {
    args.filter.validate()?;
    let opts = options(&args.filter, &args.tracer, verbose)?;
    let select = selection(&args.filter)?;
    let path = args.output.as_path();
    let live_cadence = live::Cadence {
        stats: Duration::from_secs(1),
        reconcile: Some(Duration::from_secs(2)),
        duration: args.duration,
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let source = match args.ring {
        None => {
            let sink = file_recorder(path, args.force, args.max_size, &select, true)?;
            let source = match start_live(&opts, &select, live_cadence, false, true) {
                Ok(s) => s,
                Err(e) => return Err(discard(Some(sink), Some(path), e)),
            };
            say(&format!("twtrace: recording to {}", path.display()));
            sinks.push(Box::new(sink));
            source
        }
        Some(span) => {
            // Opened before the tracer starts: a bad directory costs no attach.
            let dir = CaptureDir::open(path)?;
            let header = header_now(std::env::args().collect(), recorded_filters(&select));
            let ring = Ring::new(
                dir,
                header,
                u64::try_from(span.as_nanos()).unwrap_or(u64::MAX),
                usize::try_from(args.ring_max).unwrap_or(usize::MAX),
                u64::try_from(args.after.as_nanos()).unwrap_or(u64::MAX),
            );
            let source = start_live(&opts, &select, live_cadence, false, true)?;
            say(&format!(
                "twtrace: flight recorder: keeping the last {} (at most {}) in memory; captures \
                 go to {} on {}",
                humantime::format_duration(span),
                human_size(args.ring_max),
                path.display(),
                if args.trigger.is_empty() {
                    "SIGUSR1 (no --trigger given)".to_owned()
                } else {
                    let list: Vec<String> = args.trigger.iter().map(ToString::to_string).collect();
                    format!("{} or SIGUSR1", list.join(", "))
                }
            ));
            sinks.push(Box::new(FlightRecorder::new(ring, args.trigger, true)));
            source
        }
    };
    let mut source = source;
    say(&start_line(&select, args.duration.is_some()));
    let core = new_core(
        &source,
        sinks,
        Box::new(ProcFs::new()),
        select,
        Cadence::default(),
    );
    let outcome = run_pipeline(&mut source, core, true, None).await?;
    if outcome.stopped == Stopped::SourceEnded && args.duration.is_some() {
        say("twtrace: stopped after --duration");
    }
    finish(outcome)
}

/// `twtrace report FILE`: the recording replayed into a report (or exported). No root.
async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let header = Recording::open(&args.file, Window::default(), 0.0)?
        .header()
        .clone();
    let window = Window {
        since_ns: args.since.map(|w| mono_of(w, &header)),
        until_ns: args.until.map(|w| mono_of(w, &header)),
    };
    let mut source = Recording::open(&args.file, window, 0.0)?;
    let select = recorded_selection(&header).and(&replay_selection(&args.filter)?);
    if let Some(out) = &args.html {
        return html_report(&args, out, source, select, header).await;
    }
    let sink: Box<dyn Sink> = match args.export {
        Some(Export::Jsonl) => Box::new(TraceSink::new(
            Printer::new(stdout(), Format::Json, header.clock()),
            false,
        )),
        None => {
            let style = if args.json {
                report::Style::Json
            } else {
                report::Style::Text { top: args.top }
            };
            Box::new(Report::new(stdout(), style, &args.file, header.clone()))
        }
    };
    let mut core = new_core(
        &source,
        vec![sink],
        Box::new(Recorded),
        select,
        Cadence::default(),
    );
    core.set_port_fallback(PortSettings::from_sysctls(&header.sysctls));
    let outcome = run_pipeline(&mut source, core, false, None).await?;
    outcome.error.map_or(Ok(()), Err)
}

/// `twtrace doctor`: this host's settings, counters and limits, after `--watch` if asked.
async fn doctor(args: DoctorArgs, verbose: bool) -> anyhow::Result<()> {
    let watched = match args.watch {
        Some(span) => Some(watch(span, verbose).await?),
        None => None,
    };
    crate::doctor::run(&mut stdout(), args.json, args.explain, watched)?;
    Ok(())
}

/// `doctor --watch`: the live leaderboard for `span`, unfiltered, and its last snapshot, with
/// the kernel's counters from before it began.
async fn watch(span: Duration, verbose: bool) -> anyhow::Result<Watched> {
    let opts = Options {
        pids: Vec::new(),
        ports: Vec::new(),
        netns: None,
        cgroup: None,
        syscall_hooks: true,
        verbose,
    };
    let live_cadence = live::Cadence {
        stats: Duration::from_secs(1),
        reconcile: Some(Duration::from_secs(2)),
        duration: Some(span),
    };
    let mut source = start_live(&opts, &Selection::default(), live_cadence, true, true)?;
    let counters_before = Counters::read().ok();
    let last = std::rc::Rc::new(std::cell::RefCell::new(None));
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(LastSnapshot(std::rc::Rc::clone(&last)))];
    // A snapshot a second, so the command lines of processes that come and go during the watch
    // are read while they run; the rules use the last one's totals since the start.
    let cadence = Cadence::default();
    let core = new_core(
        &source,
        sinks,
        Box::new(ProcFs::new()),
        Selection::default(),
        cadence,
    );
    let outcome = run_pipeline(&mut source, core, false, None).await?;
    let seconds = span.as_secs_f64();
    finish(outcome)?;
    let snapshot = last.borrow_mut().take();
    Ok(Watched {
        seconds: snapshot
            .as_ref()
            .map_or(seconds, |s: &Arc<Snapshot>| s.uptime_s),
        snapshot,
        counters_before,
    })
}

/// Keeps the last snapshot (`doctor --watch`).
struct LastSnapshot(std::rc::Rc<std::cell::RefCell<Option<Arc<Snapshot>>>>);

impl Sink for LastSnapshot {
    fn wants_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        *self.0.borrow_mut() = Some(Arc::clone(snap));
        Ok(())
    }
}

/// The model's defaults with the leak threshold of `--min-age` (the leaderboard's and leaks').
fn leak_limits(min_age: Duration) -> Limits {
    Limits {
        leak_min_age_ns: u64::try_from(min_age.as_nanos()).unwrap_or(u64::MAX),
        ..Limits::default()
    }
}

/// `twtrace leaks`: watch (or replay a recording), then diagnose the last snapshot.
async fn leaks(args: LeaksArgs, verbose: bool) -> anyhow::Result<()> {
    let limits = leak_limits(args.min_age);
    let thresholds = Thresholds {
        churn_per_s: args.churn_rate,
    };
    if let Some(path) = &args.from {
        let asked = replay_selection(&args.filter)?;
        let mut source = Recording::open(path, Window::default(), 0.0)?;
        let select = recorded_selection(source.header()).and(&asked);
        let sink = LeaksReport::new(stdout(), args.json, thresholds, None);
        let core = new_core(
            &source,
            vec![Box::new(sink)],
            Box::new(Recorded),
            select,
            Cadence::default(),
        )
        .with_limits(limits);
        let outcome = run_pipeline(&mut source, core, false, None).await?;
        return outcome.error.map_or(Ok(()), Err);
    }
    args.filter.validate()?;
    let opts = options(&args.filter, &args.tracer, verbose)?;
    let cadence = live::Cadence {
        stats: Duration::from_secs(1),
        reconcile: Some(Duration::from_secs(2)),
        duration: Some(args.watch),
    };
    let select = selection(&args.filter)?;
    let mut source = start_live(&opts, &select, cadence, true, true)?;
    say(&format!(
        "twtrace: reporting leak suspects after {} (Ctrl-C reports early)",
        humantime::format_duration(args.watch)
    ));
    let sink = LeaksReport::new(
        stdout(),
        args.json,
        thresholds,
        Some(args.watch.as_secs_f64()),
    );
    let core = new_core(
        &source,
        vec![Box::new(sink)],
        Box::new(ProcFs::new()),
        select,
        Cadence::default(),
    )
    .with_limits(limits);
    finish(run_pipeline(&mut source, core, false, None).await?)
}

/// `twtrace ports`: local ports in use per destination, live, through the leaderboard's
/// pipeline; printed every interval, or once after `--watch`.
async fn ports(args: PortsArgs, verbose: bool) -> anyhow::Result<()> {
    args.filter.validate()?;
    let opts = options(&args.filter, &args.tracer, verbose)?;
    let interval = Duration::from_secs_f64(args.interval);
    let cadence = match args.watch {
        // One snapshot at the end: its open rates cover the whole watch.
        Some(watch) => Cadence {
            interval: watch,
            count: Some(1),
        },
        None => Cadence {
            interval,
            count: None,
        },
    };
    // The kernel's table every second: `in_use` and its growth (the ETA) come from it.
    let live_cadence = live::Cadence {
        stats: interval.min(Duration::from_secs(1)),
        reconcile: Some(Duration::from_secs(1)),
        duration: None,
    };
    let select = selection(&args.filter)?;
    let mut source = start_live(&opts, &select, live_cadence, false, true)?;
    say(&format!(
        "twtrace: tracing TCP state changes{}{}",
        describe(&select),
        match args.watch {
            Some(watch) => format!(
                "; printing once after {}",
                humantime::format_duration(watch)
            ),
            None => "; Ctrl-C to stop".to_owned(),
        }
    ));
    let style = if args.json {
        ports_sink::Style::Json
    } else {
        ports_sink::Style::Table
    };
    let top = usize::try_from(args.top).unwrap_or(usize::MAX);
    let head = opts.netns.or_else(|| netns::own().ok());
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(PortsPrinter::new(
        detached::stdout()?,
        style,
        top,
        head,
    ))];
    let core = new_core(&source, sinks, Box::new(ProcFs::new()), select, cadence);
    finish(run_pipeline(&mut source, core, false, None).await?)
}

/// `twtrace serve`: the leaderboard's snapshots as Prometheus metrics over HTTP.
async fn serve(args: ServeArgs, verbose: bool) -> anyhow::Result<()> {
    args.filter.validate()?;
    let opts = options(&args.filter, &args.tracer, verbose)?;
    // Bound before the tracer starts: a port already taken costs no attach.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => anyhow::anyhow!(
                "--listen {}: the address is already in use (another twtrace serve?)",
                args.listen
            ),
            _ => anyhow::anyhow!("--listen {}: {e}", args.listen),
        })?;
    let bound = listener.local_addr().unwrap_or(args.listen);
    let live_cadence = live::Cadence {
        stats: Duration::from_secs(1),
        reconcile: Some(Duration::from_secs(2)),
        duration: None,
    };
    let select = selection(&args.filter)?;
    let mut source = start_live(&opts, &select, live_cadence, true, false)?;
    say(&format!(
        "twtrace: serving http://{bound}/metrics and /healthz"
    ));
    let shared = crate::sink::serve::Shared::default();
    let k = usize::try_from(args.top_k).unwrap_or(usize::MAX);
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ServeSink::new(shared.clone(), k))];
    // On the same one-thread runtime as the pipeline: a scrape is a short encode between batches.
    let server = tokio::spawn(crate::sink::serve::http::run(listener, shared));
    let core = new_core(
        &source,
        sinks,
        Box::new(ProcFs::new()),
        select,
        Cadence::default(),
    );
    let outcome = run_pipeline(&mut source, core, false, None).await;
    server.abort();
    finish(outcome?)
}

/// `twtrace report FILE --html OUT`: the page is created before the replay (a bad path costs
/// no reading), written at its end, and removed if the replay fails.
async fn html_report(
    args: &ReportArgs,
    out: &Path,
    mut source: Recording,
    select: Selection,
    header: Header,
) -> anyhow::Result<()> {
    let created = create_file(out, args.force)?;
    if let Some(target) = &created.replaced_link {
        say(&format!(
            "twtrace: {} was a symbolic link (to {}); replaced it with a new file, its target \
             is untouched",
            out.display(),
            target.display()
        ));
    }
    let style = report::Style::Html { top: args.top };
    let file = io::BufWriter::new(created.file);
    let fallback = PortSettings::from_sysctls(&header.sysctls);
    let sink: Box<dyn Sink> = Box::new(Report::new(file, style, &args.file, header));
    let mut core = new_core(
        &source,
        vec![sink],
        Box::new(Recorded),
        select,
        Cadence::default(),
    );
    core.set_port_fallback(fallback);
    let outcome = run_pipeline(&mut source, core, false, None).await?;
    if let Some(e) = outcome.error {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    say(&format!("twtrace: wrote {}", out.display()));
    Ok(())
}

/// A `--since`/`--until` moment as the recording's monotonic ns.
pub fn mono_of(when: When, header: &Header) -> u64 {
    match when {
        When::FromStart(d) => header
            .start_mono_ns
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        When::At(t) => {
            let wall = t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            let mono = wall - i128::from(header.mono_to_wall_ns);
            u64::try_from(mono.max(0)).unwrap_or(u64::MAX)
        }
    }
}

pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// ` (pid 1,2; port 80)`, or nothing without filters.
pub(crate) fn describe(select: &Selection) -> String {
    let Selection {
        pids,
        ports,
        lports,
        rports,
        ip,
        netns,
        cgroup,
    } = select;
    fn join<T: ToString>(v: &[T]) -> String {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
    let mut parts = Vec::new();
    if !pids.is_empty() {
        parts.push(format!("pid {}", join(pids)));
    }
    if !ports.is_empty() {
        parts.push(format!("port {}", join(ports)));
    }
    if !lports.is_empty() {
        parts.push(format!("lport {}", join(lports)));
    }
    if !rports.is_empty() {
        parts.push(format!("rport {}", join(rports)));
    }
    if let Some(ip) = ip {
        parts.push(format!("IPv{} only", ip.number()));
    }
    if let Some(netns) = netns {
        parts.push(format!("netns {netns}"));
    }
    if let Some(cgroup) = cgroup {
        parts.push(format!("cgroup {cgroup}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_described() {
        assert_eq!(describe(&Selection::default()), "");
        assert_eq!(
            describe(&Selection {
                pids: vec![1, 2],
                ports: vec![80],
                netns: Some(4026531840),
                ..Selection::default()
            }),
            " (pid 1,2; port 80; netns 4026531840)"
        );
        assert_eq!(
            describe(&Selection {
                cgroup: Some("/kubepods/burstable".into()),
                ..Selection::default()
            }),
            " (cgroup /kubepods/burstable)"
        );
        assert_eq!(
            describe(&Selection {
                lports: vec![8080],
                rports: vec![443, 80],
                ip: Some(Ip::V6),
                ..Selection::default()
            }),
            " (lport 8080; rport 443,80; IPv6 only)"
        );
    }

    #[test]
    fn report_times_are_durations_from_the_start_or_rfc3339() {
        let h = Header {
            start_mono_ns: 1_000_000_000,
            mono_to_wall_ns: 1_795_564_800_000_000_000,
            ..Header::default()
        };
        assert_eq!(
            mono_of(When::FromStart(Duration::from_secs(30)), &h),
            31_000_000_000
        );
        let at = humantime::parse_rfc3339_weak("2026-11-25T00:00:02Z").expect("time");
        assert_eq!(mono_of(When::At(at), &h), 2_000_000_000);
    }
}
