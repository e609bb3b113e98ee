//! `twtrace record`: the live tracer and the periodic kernel-truth reconciliation (the
//! leaderboard's, every 2 s), written to a recording instead of shown.

use std::{
    fs::File,
    io::{self, IsTerminal as _, Write as _},
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::{
    Filters, Stats, Writer, header_now, human_size,
    ring::{self, Ring},
    trigger::Trigger,
    writer::create_file,
};
use crate::{
    cli::RecordArgs,
    clock::monotonic_ns,
    event::{Attribution, Transition},
    leaderboard::reconcile_model,
    model::{Limits, Model, Outside},
    run::{Tally, describe_filters, summary},
    snapshot::Snapshot,
    sockdiag,
    tracer::{Options, Tracer},
};

/// The leaderboard's cadence for checks against the kernel's table.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// Where the records go: a file, or the flight recorder's ring.
enum Sink {
    File(Writer<File>),
    Ring(Box<Ring>),
}

/// The recording state the tracer's callback writes into (it cannot return errors).
struct Recorder {
    sink: Sink,
    model: Model,
    tally: Tally,
    error: Option<io::Error>,
}

impl Recorder {
    fn event(&mut self, t: &Transition) {
        self.tally.received += 1;
        if t.attribution == Attribution::Unknown {
            self.tally.unattributed += 1;
        }
        self.model.apply(t);
        if self.error.is_none() {
            let r = match &mut self.sink {
                Sink::File(w) => w.event(t),
                Sink::Ring(r) => r.event(t, t.mono_ns),
            };
            if let Err(e) = r {
                self.error = Some(e);
            }
        }
    }

    fn reconcile(&mut self, tracer: &mut Tracer, opts: &Options) -> anyhow::Result<()> {
        tracer.drain(|t| self.event(t));
        let truth = reconcile_model(&mut self.model, opts)?;
        if self.error.is_none() {
            let r = match &mut self.sink {
                Sink::File(w) => w.kernel(&truth),
                Sink::Ring(r) => r.kernel(&truth, truth.dump_ns),
            };
            if let Err(e) = r {
                self.error = Some(e);
            }
        }
        Ok(())
    }

    /// Once a second: the tracer's counters, a snapshot of the model (as the leaderboard takes
    /// one, so replay sees the same sequence), and the chunk written.
    fn tick(&mut self, tracer: &mut Tracer) -> Snapshot {
        tracer.drain(|t| self.event(t));
        let now = monotonic_ns();
        let stats = Stats {
            mono_ns: now,
            kernel: tracer.stats(),
            timewait_kernel: sockdiag::sockstat().ok().map(|s| s.tw),
        };
        if self.error.is_none() {
            let r = match &mut self.sink {
                Sink::File(w) => w.stats(&stats).and_then(|()| w.flush()),
                Sink::Ring(r) => r.stats(&stats),
            };
            if let Err(e) = r {
                self.error = Some(e);
            }
        }
        let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let outside = Outside {
            lost_events: stats.kernel.lost,
            timewait_kernel: stats.timewait_kernel,
        };
        self.model.snapshot(now, time, outside, &|pid| {
            Path::new(&format!("/proc/{pid}")).exists()
        })
    }

    fn events_written(&self) -> u64 {
        match &self.sink {
            Sink::File(w) => w.events_written(),
            Sink::Ring(r) => r.events,
        }
    }

    fn limit_reached(&self) -> bool {
        matches!(&self.sink, Sink::File(w) if w.limit_reached())
    }
}

/// The flight recorder's triggers, each firing when its condition becomes true.
struct Triggers {
    list: Vec<Trigger>,
    armed: Vec<bool>,
}

impl Triggers {
    /// The first trigger that fires on `snap`, with its value.
    fn check(&mut self, snap: &Snapshot) -> Option<String> {
        let mut fired = None;
        for (t, armed) in self.list.iter().zip(&mut self.armed) {
            let holds = t.holds(snap);
            if holds && *armed && fired.is_none() {
                fired = Some(format!("trigger {t} fired (value {})", t.value(snap)));
            }
            *armed = !holds;
        }
        fired
    }
}

/// Starts a capture and says so. A capture that cannot be written is reported; the flight
/// recorder keeps going.
fn start_capture(ring: &mut Ring, why: &str, now: u64, progress: &mut Progress) {
    let line = match ring.trigger(why, now) {
        Ok(Some(path)) => format!(
            "twtrace: {why}: capturing the ring and what follows to {}",
            path.display()
        ),
        Ok(None) => format!(
            "twtrace: {why}: already capturing to {}",
            ring.capturing()
                .map_or_else(String::new, |p| p.display().to_string())
        ),
        Err(e) => format!("twtrace: {why}: no capture: {e:#}"),
    };
    progress.line(&line);
}

/// Why recording stopped.
enum Stop {
    Signal,
    Duration,
    MaxSize,
}

pub async fn record(args: RecordArgs, verbose: bool) -> anyhow::Result<()> {
    args.filter.validate()?;
    let opts = Options {
        pids: args.filter.pid.clone(),
        ports: args.filter.port.clone(),
        verbose,
    };
    let path = args.output.as_path();
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut sigusr1 =
        signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    let header = header_now(
        std::env::args().collect(),
        Filters {
            pids: opts.pids.clone(),
            ports: opts.ports.clone(),
        },
    );
    let sink = match args.ring {
        None => {
            let file = create_file(path, args.force)?;
            Sink::File(
                Writer::new(file, &header, args.max_size)
                    .with_context(|| format!("writing {}", path.display()))?,
            )
        }
        Some(span) => {
            if path.exists() && !path.is_dir() {
                anyhow::bail!(
                    "{} is not a directory: with --ring, -o names the directory for captures",
                    path.display()
                );
            }
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating {}", path.display()))?;
            Sink::Ring(Box::new(Ring::new(
                path,
                header.clone(),
                u64::try_from(span.as_nanos()).unwrap_or(u64::MAX),
                usize::try_from(args.ring_max).unwrap_or(usize::MAX),
                u64::try_from(args.after.as_nanos()).unwrap_or(u64::MAX),
            )))
        }
    };
    let mut tracer = match Tracer::start(&opts) {
        Ok(t) => t,
        Err(e) => {
            // Nothing was recorded: leave no file behind.
            if let Sink::File(w) = sink {
                drop(w);
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    for notice in &tracer.notices {
        eprintln!("twtrace: {notice}");
    }
    match args.ring {
        None => eprintln!("twtrace: recording to {}", path.display()),
        Some(span) => eprintln!(
            "twtrace: flight recorder: keeping the last {} (at most {}) in memory; captures go to \
             {} on {}",
            humantime::format_duration(span),
            human_size(args.ring_max),
            path.display(),
            if args.trigger.is_empty() {
                "SIGUSR1 (no --trigger given)".to_owned()
            } else {
                let list: Vec<String> = args.trigger.iter().map(ToString::to_string).collect();
                format!("{} or SIGUSR1", list.join(", "))
            }
        ),
    }
    eprintln!(
        "twtrace: tracing TCP state changes{}; Ctrl-C to stop",
        describe_filters(&opts)
    );

    let mut triggers = Triggers {
        armed: vec![true; args.trigger.len()],
        list: args.trigger.clone(),
    };
    let mut rec = Recorder {
        sink,
        model: Model::new(header.start_mono_ns, Limits::default()),
        tally: Tally::default(),
        error: None,
    };
    rec.reconcile(&mut tracer, &opts)?;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut reconcile_tick = tokio::time::interval(RECONCILE_EVERY);
    reconcile_tick.tick().await;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let mut progress = Progress::new();

    let outcome: anyhow::Result<Stop> = loop {
        tokio::select! {
            r = tracer.next_batch(|t| rec.event(t)) => {
                if let Err(e) = r {
                    break Err(anyhow::Error::new(e).context("reading the ring buffer"));
                }
            }
            _ = tick.tick() => {
                let snap = rec.tick(&mut tracer);
                if let Sink::Ring(ring) = &mut rec.sink {
                    let now = monotonic_ns();
                    if let Some(why) = triggers.check(&snap) {
                        start_capture(ring, &why, now, &mut progress);
                    }
                    match ring.finish_capture(now, false) {
                        Ok(Some(done)) => progress.captured(&done),
                        Ok(None) => {}
                        Err(e) => progress.line(&format!("twtrace: closing the capture: {e}")),
                    }
                    if let Some(e) = ring.take_failure() {
                        progress.line(&format!("twtrace: {e:#}"));
                    }
                }
                progress.show(&rec, tracer.stats().lost);
            }
            _ = sigusr1.recv() => {
                // What the kernel already sent belongs in the capture.
                tracer.drain(|t| rec.event(t));
                match &mut rec.sink {
                    Sink::Ring(ring) => {
                        start_capture(ring, "SIGUSR1", monotonic_ns(), &mut progress);
                    }
                    Sink::File(_) => progress.line(
                        "twtrace: SIGUSR1 asks the flight recorder (--ring) for a capture; \
                         this recording already keeps everything",
                    ),
                }
            }
            _ = reconcile_tick.tick() => {
                if let Err(e) = rec.reconcile(&mut tracer, &opts) {
                    break Err(e);
                }
            }
            _ = &mut until_deadline => break Ok(Stop::Duration),
            _ = sigint.recv() => break Ok(Stop::Signal),
            _ = sigterm.recv() => break Ok(Stop::Signal),
        }
        if rec.error.is_some() {
            break Ok(Stop::Signal);
        }
        if rec.limit_reached() {
            break Ok(Stop::MaxSize);
        }
    };
    // What the kernel already queued belongs to the recording, and so do the final counters.
    if outcome.is_ok() && rec.error.is_none() {
        // Under --max-size, the final counters are dropped if they do not fit; the end mark
        // always does.
        rec.tick(&mut tracer);
        let now = monotonic_ns();
        let r = match &mut rec.sink {
            Sink::File(w) => w.end(now),
            Sink::Ring(ring) => ring.finish_capture(now, true).map(|done| {
                if let Some(done) = done {
                    progress.captured(&done);
                }
            }),
        };
        if let Err(e) = r {
            rec.error = Some(e);
        }
    }
    if let Sink::Ring(ring) = &mut rec.sink
        && let Some(e) = ring.take_failure()
    {
        progress.line(&format!("twtrace: {e:#}"));
    }
    progress.end();
    let result = match (&rec.error, outcome) {
        (Some(e), _) => Err(anyhow::anyhow!(
            "writing {} failed: {e}; the recording is readable up to its last complete chunk \
             ({} events)",
            match &rec.sink {
                Sink::Ring(r) => r.capturing().unwrap_or(path).display().to_string(),
                Sink::File(_) => path.display().to_string(),
            },
            rec.events_written()
        )),
        (None, Err(e)) => Err(e),
        (None, Ok(stop)) => {
            match stop {
                Stop::MaxSize => eprintln!(
                    "twtrace: stopped: {} reached --max-size {}",
                    path.display(),
                    human_size(args.max_size.unwrap_or(0))
                ),
                Stop::Duration => eprintln!("twtrace: stopped after --duration"),
                Stop::Signal => {}
            }
            Ok(())
        }
    };
    if let Sink::File(w) = &rec.sink {
        eprintln!(
            "twtrace: recorded {} ({} events, {}); read it with `twtrace report {}`",
            path.display(),
            w.events_written(),
            human_size(w.bytes_written()),
            path.display()
        );
    }
    eprintln!(
        "{}",
        summary(&rec.tally, &tracer.stats(), tracer.undecodable)
    );
    result
}

/// The once-a-second progress line: updated in place on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, rec: &Recorder, lost: u64) {
        let line = match &rec.sink {
            Sink::File(w) => format!(
                "twtrace: recording: {} events written, {}, {} lost",
                w.events_written(),
                human_size(w.bytes_written()),
                lost
            ),
            Sink::Ring(r) => {
                let (bytes, span) = r.held(monotonic_ns());
                let mut line = format!(
                    "twtrace: flight recorder: {} events, {}, {} lost",
                    r.events,
                    ring::describe(bytes, span),
                    lost
                );
                if let Some(p) = r.capturing() {
                    line.push_str(&format!("; capturing to {}", p.display()));
                }
                line
            }
        };
        let mut err = io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.shown = true;
    }

    /// A line of its own, also on a terminal (below the progress line).
    fn line(&mut self, text: &str) {
        self.end();
        self.shown = false;
        eprintln!("{text}");
    }

    fn captured(&mut self, done: &ring::Finished) {
        self.line(&format!(
            "twtrace: wrote {} ({}); read it with `twtrace report {}`",
            done.path.display(),
            human_size(done.bytes),
            done.path.display()
        ));
    }

    fn end(&mut self) {
        if self.tty && self.shown {
            eprintln!();
        }
    }
}
