//! Recording sinks: the stream written to a file (`twtrace record -o FILE`, `twtrace --record
//! FILE`), or kept in the flight recorder's ring and written on a trigger (`record --ring`).

use std::{
    fs::File,
    io::{self, IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    End, Sink,
    ring::{self, Ring},
    trigger::Trigger,
};
use crate::{
    event::Transition,
    model::snapshot::Snapshot,
    recording::{Writer, human_size},
    stream::{KernelTruth, Stats, Tally},
};

/// Writes every item to a recording file.
pub struct FileRecorder {
    writer: Writer<File>,
    path: PathBuf,
    max_size: Option<u64>,
    progress: Progress,
    /// Set at the first failed write: nothing more is written after it.
    failed: bool,
}

impl FileRecorder {
    pub fn new(writer: Writer<File>, path: &Path, max_size: Option<u64>, progress: bool) -> Self {
        Self {
            writer,
            path: path.to_owned(),
            max_size,
            progress: Progress::new(progress),
            failed: false,
        }
    }

    fn check(&mut self, r: io::Result<()>) -> anyhow::Result<()> {
        if self.failed {
            return Ok(());
        }
        r.map_err(|e| {
            self.failed = true;
            anyhow::anyhow!(
                "writing {} failed: {e}; the recording is readable up to its last complete chunk \
                 ({} events)",
                self.path.display(),
                self.writer.events_written()
            )
        })
    }
}

impl Sink for FileRecorder {
    fn wants_model(&self) -> bool {
        true
    }

    fn raw_events(&self) -> bool {
        true
    }

    fn event(&mut self, t: &Transition) -> anyhow::Result<()> {
        if self.failed {
            return Ok(());
        }
        let r = self.writer.event(t);
        self.check(r)
    }

    fn kernel(&mut self, k: &KernelTruth) -> anyhow::Result<()> {
        if self.failed {
            return Ok(());
        }
        let r = self.writer.kernel(k);
        self.check(r)
    }

    /// Once a second: the counters, and the chunk written (a killed recorder loses at most
    /// this second).
    fn stats(&mut self, s: &Stats, tally: &Tally) -> anyhow::Result<()> {
        if self.failed {
            return Ok(());
        }
        let r = self.writer.stats(s).and_then(|()| self.writer.flush());
        self.check(r)?;
        // Off a terminal, a line saying nothing was written yet would spend the 10 s that the
        // first real figures then wait for.
        let news = self.writer.events_written() > 0;
        self.progress.show(
            news,
            &format!(
                "twtrace: recording: {} events written, {}, {} lost",
                self.writer.events_written(),
                human_size(self.writer.bytes_written()),
                tally.kernel.lost_total()
            ),
        );
        Ok(())
    }

    fn stop_reason(&self) -> Option<String> {
        self.writer.limit_reached().then(|| {
            format!(
                "{} reached --max-size {}",
                self.path.display(),
                human_size(self.max_size.unwrap_or(0))
            )
        })
    }

    fn user_signal(&mut self, _now_ns: u64) -> anyhow::Result<()> {
        self.progress.line(
            "twtrace: SIGUSR1 asks the flight recorder (--ring) for a capture; this recording \
             already keeps everything",
        );
        Ok(())
    }

    fn end(&mut self, end: &End) -> anyhow::Result<()> {
        let r = if self.failed {
            Ok(())
        } else {
            let r = self.writer.end(end.mono_ns);
            self.check(r)
        };
        self.progress.end();
        if let Some(why) = self.stop_reason() {
            self.progress.line(&format!("twtrace: stopped: {why}"));
        }
        self.progress.line(&format!(
            "twtrace: recorded {} ({} events, {}); read it with `twtrace report {}`",
            self.path.display(),
            self.writer.events_written(),
            human_size(self.writer.bytes_written()),
            self.path.display()
        ));
        r
    }
}

/// The flight recorder: the last `--ring` of the stream in memory, written with what follows
/// when a trigger fires or on SIGUSR1.
pub struct FlightRecorder {
    ring: Box<Ring>,
    triggers: Vec<Trigger>,
    /// Per trigger: it fires when its condition becomes true, then waits until it is false.
    armed: Vec<bool>,
    progress: Progress,
    now_ns: u64,
}

impl FlightRecorder {
    pub fn new(ring: Ring, triggers: Vec<Trigger>, progress: bool) -> Self {
        Self {
            armed: vec![true; triggers.len()],
            ring: Box::new(ring),
            triggers,
            progress: Progress::new(progress),
            now_ns: 0,
        }
    }

    /// Starts a capture and says so. A capture that cannot be written is reported; the flight
    /// recorder keeps going.
    fn capture(&mut self, why: &str, now: u64) {
        let line = match self.ring.trigger(why, now) {
            Ok(Some(path)) => format!(
                "twtrace: {why}: capturing the ring and what follows to {}",
                path.display()
            ),
            Ok(None) => format!(
                "twtrace: {why}: already capturing to {}",
                self.ring
                    .capturing()
                    .map_or_else(String::new, |p| p.display().to_string())
            ),
            Err(e) => format!("twtrace: {why}: no capture: {e:#}"),
        };
        self.progress.line(&line);
    }

    fn report_failure(&mut self) {
        if let Some(e) = self.ring.take_failure() {
            self.progress.line(&format!("twtrace: {e:#}"));
        }
    }

    fn captured(&mut self, done: Option<ring::Finished>) {
        if let Some(done) = done {
            self.progress.line(&format!(
                "twtrace: wrote {} ({}); read it with `twtrace report {}`",
                done.path.display(),
                human_size(done.bytes),
                done.path.display()
            ));
        }
    }
}

impl Sink for FlightRecorder {
    fn wants_snapshots(&self) -> bool {
        !self.triggers.is_empty()
    }

    fn wants_model(&self) -> bool {
        true
    }

    fn raw_events(&self) -> bool {
        true
    }

    fn event(&mut self, t: &Transition) -> anyhow::Result<()> {
        Ok(self.ring.event(t, t.mono_ns)?)
    }

    fn kernel(&mut self, k: &KernelTruth) -> anyhow::Result<()> {
        Ok(self.ring.kernel(k, k.dump_ns)?)
    }

    fn stats(&mut self, s: &Stats, tally: &Tally) -> anyhow::Result<()> {
        self.now_ns = s.mono_ns;
        self.ring.stats(s)?;
        match self.ring.finish_capture(s.mono_ns, false) {
            Ok(done) => self.captured(done),
            Err(e) => self
                .progress
                .line(&format!("twtrace: closing the capture: {e}")),
        }
        self.report_failure();
        let (bytes, span) = self.ring.held(s.mono_ns);
        let mut line = format!(
            "twtrace: flight recorder: {} events, {}, {} lost",
            self.ring.events,
            ring::describe(bytes, span),
            tally.kernel.lost_total()
        );
        if let Some(p) = self.ring.capturing() {
            line.push_str(&format!("; capturing to {}", p.display()));
        }
        if let Some(cut) = self.ring.take_cut_short() {
            self.progress.line(&cut);
        }
        self.progress.show(true, &line);
        Ok(())
    }

    fn snapshot(&mut self, snap: &Arc<Snapshot>) -> anyhow::Result<()> {
        let mut fired = None;
        for (t, armed) in self.triggers.iter().zip(&mut self.armed) {
            let holds = t.holds(snap);
            if holds && *armed && fired.is_none() {
                fired = Some(format!("trigger {t} fired (value {})", t.value(snap)));
            }
            *armed = !holds;
        }
        if let Some(why) = fired {
            self.capture(&why, self.now_ns);
        }
        Ok(())
    }

    fn user_signal(&mut self, now_ns: u64) -> anyhow::Result<()> {
        self.capture("SIGUSR1", now_ns);
        Ok(())
    }

    fn end(&mut self, end: &End) -> anyhow::Result<()> {
        let done = self.ring.finish_capture(end.mono_ns, true);
        let r = match done {
            Ok(done) => {
                self.captured(done);
                Ok(())
            }
            Err(e) => Err(anyhow::Error::new(e).context("closing the capture")),
        };
        self.report_failure();
        self.progress.end();
        r
    }
}

/// The progress line: updated in place every second on a terminal; otherwise (a log file, a
/// journal) a plain line at most every [`PLAIN_EVERY`], so an hour's recording logs 360 lines,
/// not 3,600, the first once something was written.
struct Progress {
    enabled: bool,
    tty: bool,
    shown: bool,
    /// When the last plain line was written.
    last_plain: Option<std::time::Instant>,
}

/// The least time between two plain progress lines.
const PLAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Progress {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: io::stderr().is_terminal(),
            shown: false,
            last_plain: None,
        }
    }

    /// Whether a plain line is due at `now` (and, if so, that one is written now).
    fn plain_due(&mut self, now: std::time::Instant) -> bool {
        if self
            .last_plain
            .is_some_and(|last| now.saturating_duration_since(last) < PLAIN_EVERY)
        {
            return false;
        }
        self.last_plain = Some(now);
        true
    }

    /// Shows `line`; off a terminal only when it has `news` and a plain line is due.
    fn show(&mut self, news: bool, line: &str) {
        let shown_now = self.tty || (news && self.plain_due(std::time::Instant::now()));
        if !self.enabled || !shown_now {
            return;
        }
        let line = crate::text::escape(line);
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
        // stderr may be closed: the recording itself matters more than the message. The text
        // holds paths and trigger words a user gave.
        let _ = writeln!(io::stderr(), "{}", crate::text::escape(text));
    }

    fn end(&mut self) {
        if self.tty && self.shown {
            let _ = writeln!(io::stderr());
        }
        self.shown = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn plain_progress_lines_come_at_most_every_ten_seconds() {
        let mut p = Progress {
            enabled: true,
            tty: false,
            shown: false,
            last_plain: None,
        };
        let t0 = Instant::now();
        let due: Vec<u64> = (0..=25)
            .filter(|&s| p.plain_due(t0 + Duration::from_secs(s)))
            .collect();
        assert_eq!(due, vec![0, 10, 20]);
        // A line with nothing written yet is not shown and spends nothing.
        p.last_plain = None;
        p.show(false, "twtrace: recording: 0 events written");
        assert!(p.last_plain.is_none() && !p.shown);
    }
}
