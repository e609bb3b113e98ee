//! The default command: the live per-process leaderboard. Events feed the model; every
//! `--interval` a snapshot goes to the terminal UI, or is printed as a table or JSON line; every
//! `--reconcile` seconds the model is checked against the kernel's socket table (sock_diag).

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::LiveArgs,
    clock::monotonic_ns,
    event::{Attribution, Comm, Transition},
    model::{KernelSocket, Limits, Model, Outside},
    procnet,
    record::{
        KernelTruth, Reader,
        replay::{Replay, Selection},
    },
    run::{Started, Tally, describe_filters, is_broken_pipe, start_live, summary},
    snapshot::Snapshot,
    sockdiag,
    state::TcpState,
    tracer::{Options, Tracer},
};

/// How snapshots are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Tui,
    Table,
    Json,
}

pub async fn run(args: LiveArgs, verbose: bool, output: Output) -> anyhow::Result<()> {
    if let Some(path) = args.from.clone() {
        return replay(args, &path, output).await;
    }
    let Started {
        mut tracer,
        opts,
        mut sigint,
        mut sigterm,
    } = start_live(&args.filter, verbose, output != Output::Tui)?;

    let mut model = Model::new(monotonic_ns(), Limits::default());
    let mut live = Live {
        tally: Tally::default(),
        model: &mut model,
    };
    // Sockets that existed before the start: seeded now, so the first snapshot is complete.
    reconcile(&mut tracer, &mut live, &opts)?;

    let interval = Duration::from_secs_f64(args.interval);
    let mut snapshot_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut reconcile_tick = tokio::time::interval(Duration::from_secs_f64(args.reconcile));
    reconcile_tick.tick().await;
    let count = if args.once { Some(1) } else { args.count };
    let mut printed = 0u64;

    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let title = format!("twtrace{}", describe_filters(&opts));
    let mut tui = terminal_view(output, rx, title);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());

    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            r = tracer.next_batch(|t| live.apply(t)) => {
                if let Err(e) = r {
                    break Err(anyhow::Error::new(e).context("reading the ring buffer"));
                }
            }
            _ = snapshot_tick.tick() => {
                // Events already queued belong to this snapshot: without them the counts would
                // lag the kernel's (sockstat is read at the same moment) under heavy churn.
                tracer.drain(|t| live.apply(t));
                let snap = live.snapshot(&tracer);
                if let Err(e) = show(output, snap, &tx, &mut out, args.top) {
                    break Err(e.into());
                }
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    break Ok(());
                }
            }
            _ = reconcile_tick.tick() => {
                if let Err(e) = reconcile(&mut tracer, &mut live, &opts) {
                    break Err(e);
                }
            }
            r = tui.as_mut() => break r,
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    drop(tui);
    // Events still queued (the kernel wakes the agent only every 64 events) count in the summary.
    tracer.drain(|t| live.apply(t));
    eprintln!(
        "{}",
        summary(&live.tally, &tracer.stats(), tracer.undecodable)
    );
    match outcome {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// The full-screen view when it is the output, else a future that never completes, so the
/// loops' `select!` can always poll it. Boxed so it can be dropped, restoring the terminal,
/// before the summary is printed.
fn terminal_view(
    output: Output,
    rx: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    title: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>> {
    Box::pin(async move {
        if output == Output::Tui {
            crate::tui::run(rx, title).await
        } else {
            std::future::pending().await
        }
    })
}

/// Hands a snapshot to the view.
fn show(
    output: Output,
    snap: Snapshot,
    tx: &tokio::sync::watch::Sender<Arc<Snapshot>>,
    out: &mut impl Write,
    top: usize,
) -> io::Result<()> {
    match output {
        Output::Tui => {
            let _ = tx.send(Arc::new(snap));
            Ok(())
        }
        Output::Json => print_json(out, &snap),
        Output::Table => print_table(out, &snap, top),
    }
}

/// `twtrace --from FILE`: the same model and views, fed from a recording at `--speed`, one
/// snapshot per recorded `--interval`. No kernel, no root.
async fn replay(args: LiveArgs, path: &Path, output: Output) -> anyhow::Result<()> {
    let mut reader = Reader::open(path)?;
    let header = reader.header().clone();
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let sel = Selection {
        pids: args.filter.pid.clone(),
        ports: args.filter.port.clone(),
        ..Selection::default()
    };
    let mut replay = Replay::new(header.clone(), sel);
    replay.set_interval(args.interval);
    let opts = Options {
        pids: header.filters.pids.clone(),
        ports: header.filters.ports.clone(),
        verbose: false,
    };
    if output != Output::Tui {
        eprintln!(
            "twtrace: replaying {} (recorded on {} from {}{}) at {}",
            path.display(),
            header.hostname,
            header.start_time,
            describe_filters(&opts),
            if args.speed == 0.0 {
                "full speed".to_owned()
            } else {
                format!("{}x speed", args.speed)
            }
        );
    }
    let count = if args.once { Some(1) } else { args.count };
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let title = format!(
        "twtrace replay of {} ({}){}",
        path.display(),
        header.hostname,
        describe_filters(&opts)
    );
    let mut tui = terminal_view(output, rx, title);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let started = tokio::time::Instant::now();
    let mut first_ns = None;
    let mut printed = 0u64;
    // Warnings would garble the full-screen view: they wait for its end there.
    let mut warnings = Vec::new();
    let mut quit = false;

    let outcome: anyhow::Result<()> = loop {
        let next = reader
            .next_record()
            .with_context(|| format!("reading {}", path.display()));
        for p in reader.take_problems() {
            warnings.push(format!("twtrace: warning: {}: {p}", path.display()));
        }
        if output != Output::Tui {
            for w in warnings.drain(..) {
                eprintln!("{w}");
            }
        }
        let record = match next {
            Ok(Some(r)) => r,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let first = *first_ns.get_or_insert(record.mono_ns());
        let before = replay.snapshots();
        if !replay.feed(&record) {
            break Ok(());
        }
        if replay.snapshots() == before {
            continue;
        }
        let Some(snap) = replay.last.clone() else {
            continue;
        };
        // Wait until the recorded moment, scaled by --speed (0: no wait).
        let offset = record.mono_ns().saturating_sub(first);
        let due = if args.speed > 0.0 {
            started + Duration::from_secs_f64(offset as f64 / 1e9 / args.speed)
        } else {
            tokio::time::Instant::now()
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            r = tui.as_mut() => { quit = true; break r; }
            _ = sigint.recv() => { quit = true; break Ok(()); }
            _ = sigterm.recv() => { quit = true; break Ok(()); }
        }
        if let Err(e) = show(output, snap, &tx, &mut out, args.top) {
            break Err(e.into());
        }
        printed += 1;
        if count.is_some_and(|c| printed >= c) {
            quit = true;
            break Ok(());
        }
    };
    // The end of the recording: the TUI keeps the last picture, marked ENDED, until the user
    // quits.
    drop(tx);
    let outcome = if output == Output::Tui && !quit && outcome.is_ok() {
        tokio::select! {
            r = tui.as_mut() => r,
            _ = sigint.recv() => Ok(()),
            _ = sigterm.recv() => Ok(()),
        }
    } else {
        outcome
    };
    drop(tui);
    for w in warnings {
        eprintln!("{w}");
    }
    eprintln!("{}", summary(&replay.tally, &replay.stats, 0));
    match outcome {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

struct Live<'m> {
    tally: Tally,
    model: &'m mut Model,
}

impl Live<'_> {
    fn apply(&mut self, t: &Transition) {
        self.tally.received += 1;
        if t.attribution == Attribution::Unknown {
            self.tally.unattributed += 1;
        }
        self.model.apply(t);
    }

    fn snapshot(&mut self, tracer: &Tracer) -> Snapshot {
        let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let outside = Outside {
            lost_events: tracer.stats().lost,
            timewait_kernel: sockdiag::sockstat().ok().map(|s| s.tw),
        };
        self.model.snapshot(monotonic_ns(), time, outside, &|pid| {
            Path::new(&format!("/proc/{pid}")).exists()
        })
    }
}

/// Drains what the kernel already sent (so the dump is not older than the model), then
/// reconciles with the kernel's table.
fn reconcile(tracer: &mut Tracer, live: &mut Live<'_>, opts: &Options) -> anyhow::Result<()> {
    tracer.drain(|t| live.apply(t));
    reconcile_model(live.model, opts)?;
    Ok(())
}

/// Dumps the kernel's table and reconciles `model` with it. With filters, only the sockets the
/// user asked about count. Returns exactly what the model was given (the sockets, the owners
/// found for unowned ones, sockstat's `tw`), so a recording can replay the same reconciliation.
pub(crate) fn reconcile_model(model: &mut Model, opts: &Options) -> anyhow::Result<KernelTruth> {
    let dump_ns = monotonic_ns();
    let dump = sockdiag::dump_tcp()?;
    let timewait_kernel = sockdiag::sockstat().ok().map(|s| s.tw);
    let ports: HashSet<u16> = opts.ports.iter().copied().collect();
    let kernel: Vec<KernelSocket> = dump
        .iter()
        .filter(|d| {
            ports.is_empty() || ports.contains(&d.local.port()) || ports.contains(&d.remote.port())
        })
        .filter_map(|d| {
            Some(KernelSocket {
                state: TcpState::try_from(u32::from(d.state)).ok()?,
                local: d.local,
                remote: d.remote,
                cookie: d.cookie,
                inode: d.inode,
                timewait: d.timewait,
                expires_ns: u64::from(d.expires_ms) * 1_000_000,
            })
        })
        .collect();
    let pids: HashSet<u32> = opts.pids.iter().copied().collect();
    let cgroup_root = procnet::cgroup2_mount();
    let mut found = Vec::new();
    let mut owners = |inodes: &[u64]| -> HashMap<u64, (u32, Comm)> {
        let wanted: HashSet<u64> = inodes.iter().copied().collect();
        let answer: HashMap<u64, (u32, Comm)> = procnet::socket_holders(&wanted)
            .into_iter()
            .filter_map(|(inode, holders)| {
                let pid = holders.into_iter().min()?;
                let owner = procnet::owner_of(pid, cgroup_root.as_deref());
                Some((inode, (pid, Comm::new(owner.comm))))
            })
            .collect();
        found.extend(
            answer
                .iter()
                .map(|(&inode, &(pid, comm))| (inode, pid, comm)),
        );
        answer
    };
    model.reconcile(&kernel, dump_ns, &mut owners, &|pid| {
        pids.is_empty() || pids.contains(&pid)
    });
    Ok(KernelTruth {
        dump_ns,
        sockets: kernel,
        owners: found,
        timewait_kernel,
    })
}

fn print_json(out: &mut impl Write, snap: &Snapshot) -> io::Result<()> {
    serde_json::to_writer(&mut *out, snap)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// A plain table for pipes and logs: header line, then the top processes.
pub fn print_table(out: &mut impl Write, snap: &Snapshot, top: usize) -> io::Result<()> {
    let t = &snap.totals;
    let kernel = t
        .timewait_kernel
        .map_or_else(|| "?".to_owned(), |k| k.to_string());
    writeln!(
        out,
        "{}  TIME_WAIT now {} (kernel {})  CLOSE_WAIT {}  ESTABLISHED {}  TIME_WAIT/s {:.1}  lost {}  unattributed {}",
        snap.time,
        t.timewait_now,
        kernel,
        t.close_wait_now,
        t.established_now,
        t.timewait_per_s,
        snap.lost_events,
        snap.unattributed_events
    )?;
    writeln!(
        out,
        "{:>7} {:<16} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>6}  TOP PEER",
        "PID",
        "COMM",
        "TW/s",
        "TW_TOTAL",
        "TW_NOW",
        "CW_NOW",
        "EST_NOW",
        "OPEN/s",
        "CLOSE/s",
        "RESETS"
    )?;
    for p in snap.processes.iter().take(top) {
        let peer = p.peers.first().map_or_else(String::new, |r| match r.lport {
            Some(lport) => format!("{} -> :{lport}", r.raddr),
            None if r.raddr == "other" => "other".to_owned(),
            None => format!("{}:{}", bracket(&r.raddr), r.rport),
        });
        let comm: String = p.comm.chars().take(16).collect();
        writeln!(
            out,
            "{:>7} {:<16} {:>8.1} {:>9} {:>7} {:>7} {:>7} {:>7.1} {:>8.1} {:>6}  {peer}",
            p.pid,
            comm,
            p.timewait_per_s,
            p.timewait_entered,
            p.timewait_now,
            p.close_wait_now,
            p.established_now,
            p.opens_per_s,
            p.closes_per_s,
            p.resets
        )?;
    }
    if snap.processes.len() > top {
        writeln!(
            out,
            "({} more processes; --top N shows more)",
            snap.processes.len() - top
        )?;
    }
    writeln!(out)?;
    out.flush()
}

/// IPv6 addresses get brackets before a port.
fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{PeerRow, ProcessRow, Totals};

    fn sample() -> Snapshot {
        Snapshot {
            time: "2026-11-25T16:00:00Z".into(),
            interval_s: 1.0,
            uptime_s: 10.0,
            lost_events: 0,
            unattributed_events: 2,
            totals: Totals {
                timewait_now: 5,
                timewait_kernel: Some(6),
                close_wait_now: 1,
                established_now: 2,
                timewait_entered: 9,
                timewait_per_s: 3.0,
            },
            processes: vec![ProcessRow {
                pid: 42,
                comm: "a-very-long-command-name".into(),
                timewait_entered: 9,
                timewait_per_s: 3.0,
                timewait_now: 5,
                peers: vec![PeerRow {
                    raddr: "::1".into(),
                    rport: 443,
                    timewait_entered: 9,
                    ..PeerRow::default()
                }],
                ..ProcessRow::default()
            }],
        }
    }

    #[test]
    fn table_has_totals_header_and_rows() {
        let mut out = Vec::new();
        print_table(&mut out, &sample(), 20).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("TIME_WAIT now 5 (kernel 6)"),
            "{}",
            lines[0]
        );
        assert!(lines[1].trim_start().starts_with("PID COMM"));
        assert!(
            lines[2].contains("     42 a-very-long-comm "),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with("[::1]:443"), "{}", lines[2]);
    }

    #[test]
    fn table_says_how_many_rows_it_left_out() {
        let mut snap = sample();
        snap.processes.push(ProcessRow {
            pid: 7,
            comm: "x".into(),
            ..ProcessRow::default()
        });
        let mut out = Vec::new();
        print_table(&mut out, &snap, 1).expect("print");
        assert!(
            String::from_utf8(out)
                .expect("utf8")
                .contains("(1 more processes")
        );
    }

    #[test]
    fn json_is_one_line_with_the_schema() {
        let mut out = Vec::new();
        print_json(&mut out, &sample()).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["totals"]["timewait_kernel"], 6);
        assert_eq!(v["processes"][0]["pid"], 42);
        assert_eq!(v["processes"][0]["peers"][0]["rport"], 443);
        assert!(v["processes"][0]["peers"][0].get("lport").is_none());
        assert!(v["processes"][0].get("timewait_history").is_none());
        assert_eq!(v["lost_events"], 0);
    }
}
