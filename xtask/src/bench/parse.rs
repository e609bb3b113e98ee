//! Parsing what the generator and the tracers print: churn's result line, twtrace's summary line,
//! the leaderboard's JSON snapshots, and bpftrace's output and loss warnings.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// The generator's final line.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GeneratorRun {
    pub connections: u64,
    pub rate: f64,
    pub addr_unavailable: u64,
    pub errors: u64,
}

impl GeneratorRun {
    /// Parses `connections=<n> seconds=<f> rate=<f> [addr_unavailable=<n>] [errors=<n>]`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut run = Self::default();
        let (mut connections, mut rate) = (None, None);
        for field in line.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            match key {
                "connections" => connections = Some(value.parse().ok()?),
                "rate" => rate = Some(value.parse().ok()?),
                "addr_unavailable" => run.addr_unavailable = value.parse().ok()?,
                "errors" => run.errors = value.parse().ok()?,
                // seconds and anything added later.
                _ => {}
            }
        }
        run.connections = connections?;
        run.rate = rate?;
        Some(run)
    }
}

/// twtrace's final stderr line: `twtrace: <n> events, <n> lost, <n> unattributed[, more]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    unattributed: u64,
    /// Of the lost, those the kernel skipped because another BPF program was running on that
    /// CPU (the programs' recursion_misses): `N of the lost skipped by the kernel (...)`.
    pub skipped: u64,
    /// Whatever else follows (e.g. `4 not tracked (socket table full)`), without the leading
    /// comma.
    pub extra: String,
}

impl Summary {
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("twtrace: ")?;
        let mut parts = rest.splitn(4, ", ");
        let mut number = |unit: &str| -> Option<u64> {
            let (n, word) = parts.next()?.split_once(' ')?;
            (word == unit).then_some(())?;
            n.parse().ok()
        };
        let events = number("events")?;
        let lost = number("lost")?;
        let unattributed = number("unattributed")?;
        let mut skipped = 0;
        let mut extra = Vec::new();
        for part in parts.next().unwrap_or_default().split(", ") {
            let counted = part
                .split_once(" of the lost skipped by the kernel")
                .and_then(|(n, _)| n.parse().ok());
            match counted {
                Some(n) => skipped = n,
                None if !part.is_empty() => extra.push(part),
                None => {}
            }
        }
        Some(Self {
            events,
            lost,
            unattributed,
            skipped,
            extra: extra.join(", "),
        })
    }
}

/// The flight recorder's progress line, printed every second:
/// `twtrace: flight recorder: <n> events, ring <size> (<n> s), <n> lost[; capturing to ...]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RingProgress {
    /// What the ring held, as printed (`12.3 MiB`).
    pub size: String,
    /// The same in bytes, to the precision printed.
    pub bytes: f64,
    /// The span of time the ring's chunks covered.
    pub span_secs: u64,
}

impl RingProgress {
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("twtrace: flight recorder: ")?;
        let (_, held) = rest.split_once(", ring ")?;
        let (size, span) = held.split_once(" (")?;
        let span_secs = span.split_once(" s)")?.0.parse().ok()?;
        let (number, unit) = size.split_once(' ')?;
        let scale = match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        Some(Self {
            size: size.to_owned(),
            bytes: number.parse::<f64>().ok()? * scale,
            span_secs,
        })
    }
}

/// The closes of each pid's own connections, in the last snapshot of `twtrace --json` output
/// (one JSON object per line; the last one is printed when it stops, so it holds every event
/// it counted): its timewait entries, `timewait_entered` plus `fin_wait2_entered` (absent
/// before twtrace told orphaned FIN_WAIT2 entries apart), plus the `resets` of its outgoing
/// peers (absent before peers counted them). A generator's client closes first, so each
/// connection ends in one entry, in either substate (a FIN_WAIT2 one when its server thread
/// had not closed by the time the client's FIN was acknowledged), or, rarely, in a reset, which
/// makes none: at peak the timewait table is full, a client's port comes back at once, and a
/// new SYN can meet the server's socket of the port's last connection.
pub fn closes_by_pid(jsonl: &str) -> Result<BTreeMap<u32, u64>> {
    let Some(last) = jsonl.lines().rev().find(|l| !l.trim().is_empty()) else {
        bail!("no snapshot printed");
    };
    let snapshot: serde_json::Value =
        serde_json::from_str(last).with_context(|| format!("not JSON: {last:.80?}"))?;
    let processes = snapshot
        .get("processes")
        .and_then(serde_json::Value::as_array)
        .context("no \"processes\" array in the last snapshot")?;
    let mut counts = BTreeMap::new();
    for process in processes {
        let field = |name: &str| process.get(name).and_then(serde_json::Value::as_u64);
        let (Some(pid), Some(entered)) = (field("pid"), field("timewait_entered")) else {
            bail!("a process without pid or timewait_entered: {process}");
        };
        let pid = u32::try_from(pid).with_context(|| format!("pid {pid} out of range"))?;
        // Accepted connections' peers have an `lport`; their resets are the server's.
        let resets: u64 = process
            .get("peers")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter(|peer| peer.get("lport").is_none())
            .filter_map(|peer| peer.get("resets").and_then(serde_json::Value::as_u64))
            .sum();
        *counts.entry(pid).or_default() +=
            entered + field("fin_wait2_entered").unwrap_or(0) + resets;
    }
    Ok(counts)
}

/// bpftrace's `Lost N events` warning (the perf buffer was full), anywhere in the line.
pub fn bpftrace_lost(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("Lost ")?;
    let (n, rest) = rest.split_once(' ')?;
    rest.starts_with("events").then_some(())?;
    n.parse().ok()
}

/// Output lines of the one-liner, and `Lost N events` found among them (bpftrace prints its
/// warnings on stdout in some versions).
pub fn count_bpftrace_output(path: &Path) -> Result<(u64, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut lines, mut lost) = (0, 0);
    for line in BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8_lossy(&line);
        if let Some(n) = bpftrace_lost(&text) {
            lost += n;
        } else if !text.trim().is_empty() && !text.starts_with("Attaching ") {
            lines += 1;
        }
    }
    Ok((lines, lost))
}

#[cfg(test)]
mod tests {
    use std::{env, fs};

    use super::*;

    #[test]
    fn parses_the_generator_line() {
        assert_eq!(
            GeneratorRun::parse(
                "connections=1500 seconds=0.500 rate=3000.0 addr_unavailable=2 errors=1"
            ),
            Some(GeneratorRun {
                connections: 1500,
                rate: 3000.0,
                addr_unavailable: 2,
                errors: 1,
            })
        );
        // Only connections and rate are required.
        assert!(GeneratorRun::parse("connections=1 seconds=1 rate=1").is_some());
        assert_eq!(GeneratorRun::parse("connections=1 seconds=1"), None);
        assert_eq!(GeneratorRun::parse("1500 conns"), None);
        assert_eq!(GeneratorRun::parse(""), None);
    }

    #[test]
    fn parses_a_real_generator_line() {
        // `churn --clients 1 --servers 1 --duration 1`, captured on the bench machine.
        let line = include_str!("testdata/churn-1c1s.out");
        assert_eq!(
            GeneratorRun::parse(line.trim_end()),
            Some(GeneratorRun {
                connections: 14_165,
                rate: 14_118.0,
                addr_unavailable: 0,
                errors: 0,
            })
        );
    }

    #[test]
    fn reads_closes_per_pid_from_the_last_snapshot() {
        // The final line of `twtrace --json --interval 1` while the generator above ran as pid
        // 994: its 14,165 connections are 14,165 TIME_WAIT entries.
        let last = include_str!("testdata/leaderboard-final.json");
        let earlier = r#"{"processes":[{"pid":994,"timewait_entered":5}]}"#;
        let text = format!("{earlier}\n{last}\n");
        let counts = closes_by_pid(&text).expect("parses");
        assert_eq!(counts.get(&994), Some(&14_165));
        assert_eq!(counts.get(&0), Some(&0));
        assert_eq!(counts.len(), 2);
        // Orphaned FIN_WAIT2 entries count too.
        let split = r#"{"processes":[{"pid":7,"timewait_entered":5,"fin_wait2_entered":2}]}"#;
        assert_eq!(closes_by_pid(split).expect("parses").get(&7), Some(&7));
        // So do the resets of outgoing connections, not those of accepted ones (`lport`).
        let reset = r#"{"processes":[{"pid":7,"timewait_entered":5,"peers":[
            {"raddr":"127.0.0.1","rport":80,"resets":2},
            {"raddr":"127.0.0.1","rport":0,"lport":80,"resets":40}]}]}"#
            .replace('\n', "");
        assert_eq!(closes_by_pid(&reset).expect("parses").get(&7), Some(&7));
        assert!(closes_by_pid("").is_err());
        assert!(closes_by_pid("{\"processes\":[{\"pid\":1}]}").is_err());
        assert!(closes_by_pid("twtrace: 3 events").is_err());
    }

    #[test]
    fn parses_the_summary_line() {
        assert_eq!(
            Summary::parse("twtrace: 20 events, 0 lost, 0 unattributed"),
            Some(Summary {
                events: 20,
                lost: 0,
                unattributed: 0,
                skipped: 0,
                extra: String::new(),
            })
        );
        assert_eq!(
            Summary::parse(
                "twtrace: 10 events, 3 lost, 2 unattributed, 4 not tracked (socket table full), \
                 6 undecodable"
            ),
            Some(Summary {
                events: 10,
                lost: 3,
                unattributed: 2,
                skipped: 0,
                extra: "4 not tracked (socket table full), 6 undecodable".to_owned(),
            })
        );
        // As twtrace prints it (agent/src/stream.rs): the kernel's skips are a part of the lost.
        assert_eq!(
            Summary::parse(
                "twtrace: 10 events, 10 lost, 2 unattributed, 7 of the lost skipped by the kernel \
                 (another BPF program was running on that CPU), 4 not tracked (socket table \
                 full), 5 accepted sockets with no known listener, 6 undecodable"
            ),
            Some(Summary {
                events: 10,
                lost: 10,
                unattributed: 2,
                skipped: 7,
                extra: "4 not tracked (socket table full), 5 accepted sockets with no known \
                        listener, 6 undecodable"
                    .to_owned(),
            })
        );
        // Captured in the bench run at peak (mode d).
        let real = Summary::parse(
            "twtrace: 1716361 events, 205897 lost, 0 unattributed, 630 of the lost skipped by \
             the kernel (another BPF program was running on that CPU)",
        )
        .expect("parses");
        assert_eq!(
            (real.lost, real.skipped, real.extra.as_str()),
            (205_897, 630, "")
        );
        // The running loss announcement and other messages are not the summary.
        for line in [
            "twtrace: 1234 events lost so far (ring buffer full: ...)",
            "twtrace: tracing TCP state changes; Ctrl-C to stop",
            "twtrace: x events, 0 lost, 0 unattributed",
            "10 events, 0 lost, 0 unattributed",
            "",
        ] {
            assert_eq!(Summary::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn parses_bpftrace_losses() {
        assert_eq!(bpftrace_lost("Lost 2583 events"), Some(2583));
        assert_eq!(bpftrace_lost("WARNING: Lost 7 events"), Some(7));
        assert_eq!(bpftrace_lost("Lost track of things"), None);
        assert_eq!(bpftrace_lost("1234 ddd 7 8 1 2"), None);
    }

    #[test]
    fn counts_bpftrace_output() {
        let path = env::temp_dir().join(format!("xtask-bench-count-{}", std::process::id()));
        fs::write(
            &path,
            "Attaching 1 probe...\n1 a 7 2 0 80\n2 b 2 1 5 80\nLost 12 events\n\n3 c 1 4 5 80\n",
        )
        .expect("temp file");
        let counted = count_bpftrace_output(&path);
        fs::remove_file(&path).expect("cleanup");
        assert_eq!(counted.expect("readable"), (3, 12));
    }

    #[test]
    fn parses_the_flight_recorders_progress_line() {
        let p = RingProgress::parse(
            "twtrace: flight recorder: 10650000 events, ring 256.0 MiB (22 s), 0 lost",
        )
        .expect("parses");
        assert_eq!(p.size, "256.0 MiB");
        assert_eq!(p.bytes, 256.0 * 1024.0 * 1024.0);
        assert_eq!(p.span_secs, 22);
        let capturing = RingProgress::parse(
            "twtrace: flight recorder: 7 events, ring 810 B (0 s), 0 lost; capturing to /x",
        )
        .expect("parses");
        assert_eq!((capturing.bytes, capturing.span_secs), (810.0, 0));
        assert!(RingProgress::parse("twtrace: 5 events, 0 lost, 0 unattributed").is_none());
        assert!(
            RingProgress::parse("twtrace: flight recorder: 7 events, ring 1 PiB (0 s)").is_none()
        );
    }
}
